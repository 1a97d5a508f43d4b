"""``kvflow-real``: the real (torch) backend from the command line.

  kvflow-real run [options] [OVERRIDES...]         one run per policy (--policies a,b,c) -> run dirs
  kvflow-real calibrate [options]                  measure, fit, write a hardware profile YAML
  kvflow-real validate [options] [OVERRIDES...]    real vs simulator on one trace, MAPE + scatter

OVERRIDES are the simulator's Hydra overrides over the same ``conf/`` (``policy=kvflow``,
``workload=sequential``, ``workload.params.fixed_tokens=4096``, ``cache.gpu_capacity_tokens=...``);
``hardware=`` also takes a profile path (``hardware=results/h200.yaml``). An argparse front end over
Hydra's compose API rather than a Hydra app, so the three subcommands share one entry point.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import sys
from pathlib import Path

from harness import interrupt

POLICIES = ("sglang", "hicache", "kvflow", "kvflow_evict_only", "clairvoyant")


def _default_out(kind: str) -> Path:
    now = _dt.datetime.now()
    return Path("outputs") / "real" / now.strftime("%Y-%m-%d") / f"{now.strftime('%H-%M-%S')}-{kind}"


def _backend_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda, cuda:1 ...")
    p.add_argument("--dtype", default="auto", help="auto (bf16 on GPU, fp32 on CPU), bf16, fp16, fp32")
    p.add_argument("--weights", default=None, help="local safetensors file or folder (default: random weights)")
    p.add_argument("--weight-seed", type=int, default=0)
    p.add_argument("--check-invariants", action="store_true", help="O(tree) cache + KV store checks per iteration")
    p.add_argument("--out", type=Path, default=None, help="output folder (default outputs/real/<date>/<time>-<cmd>)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kvflow-real", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)

    run = sub.add_parser("run", help="run the workload on the real backend")
    _backend_args(run)
    run.add_argument(
        "--policies",
        default=None,
        help=f"comma list, one run dir each under --out (e.g. {','.join(POLICIES)}); "
        "default: the policy= override (or kvflow)",
    )
    run.add_argument("overrides", nargs="*")

    cal = sub.add_parser("calibrate", help="measure prefill/decode/PCIe and write a hardware profile")
    _backend_args(cal)
    cal.add_argument("--model", default=None, help="conf/model name (default llama-3.1-8b on a GPU, tiny on CPU)")
    cal.add_argument("--base", default="h200", help="hardware profile whose spec fields are kept (name or path)")
    cal.add_argument(
        "--name", default=None, help="profile name (default <base>_<model>_measured; cpu_<model>_measured on CPU)"
    )
    cal.add_argument(
        "--profile-out",
        type=Path,
        default=None,
        help="YAML path (default conf/hardware/<name>.yaml, so kvflow-sim hardware=<name> finds it)",
    )
    cal.add_argument("--reps", type=int, default=None, help="timed repetitions per point (default 3; 15 on CPU)")
    cal.add_argument(
        "--loop-fixed-tokens",
        type=int,
        default=None,
        help="fixed prompt of the short engine-loop run whose per-iteration overhead is added "
        "to a_s (default 4096 on GPU; on CPU the default CPU workload's fixed prompt; 0 disables)",
    )
    for flag in ("prefill-new", "prefill-ctx", "decode-batch", "decode-ctx", "copy-tokens"):
        cal.add_argument(f"--{flag}", default=None, help="comma list overriding the default grid")

    val = sub.add_parser("validate", help="replay one trace on the real backend and the simulator")
    _backend_args(val)
    val.add_argument("overrides", nargs="*", help="e.g. hardware=PROFILE.yaml policy=kvflow workload=...")
    return parser


def _opts(args: argparse.Namespace):
    from real.runner import RealOptions

    return RealOptions(
        device=args.device,
        dtype=args.dtype,
        weights=args.weights,
        weight_seed=args.weight_seed,
        check_invariants=args.check_invariants,
    )


def cmd_run(args: argparse.Namespace) -> int:
    from harness.config_schema import validate_config
    from harness.setup import build_trace
    from kvflow.model_spec import load_model_spec
    from real.config import compose
    from real.runner import build_model, run_real

    out = args.out or _default_out("run")
    policies = [p for p in (args.policies or "").split(",") if p]
    given = _cpu_overrides(args, "run", args.overrides)
    base = [o for o in given if not o.startswith("policy=")]
    if not policies:
        policies = [o.split("=", 1)[1] for o in args.overrides if o.startswith("policy=")] or ["kvflow"]
    opts = _opts(args)
    net = trace = None
    for policy in policies:
        overrides = base + [f"policy={policy}"]
        cfg = validate_config(compose(overrides))
        trace = trace or build_trace(cfg["workload"], int(cfg.get("seed", 0)))
        net = net or build_model(load_model_spec(cfg["model"]), opts)
        run_dir = out / policy if len(policies) > 1 else out
        res = run_real(cfg, trace, run_dir, opts, net=net, overrides=overrides)
        s = res.summary
        print(
            f"{policy:<18} workflow latency {s['workflow_latency_mean_s']:.4f}s  makespan {s['makespan_s']:.3f}s  "
            f"hit gpu {100 * s['hit_rate_gpu']:.1f}% cpu {100 * s['hit_rate_cpu']:.1f}%  "
            f"recompute {100 * s['recompute_rate']:.1f}%  -> {run_dir}",
            flush=True,
        )
    return 0


def _ints(text: str | None) -> list[int] | None:
    return [int(v) for v in text.split(",")] if text else None


def cmd_calibrate(args: argparse.Namespace) -> int:
    from importlib.resources import files

    from harness.profile import load_profile
    from kvflow.model_spec import load_model_spec
    from real.calibrate import Grid
    from real.cpu_calibration import calibrate_to, cpu_grid
    from real.model import pick_device

    on_cpu = pick_device(args.device).type == "cpu"
    spec = load_model_spec(args.model or ("tiny" if on_cpu else "llama-3.1-8b"))
    grid = Grid.default(pick_device(args.device), spec)
    loop_tokens = args.loop_fixed_tokens
    if on_cpu and not any(getattr(args, a) for a in _GRID_FLAGS):  # the shapes of the default CPU workload
        grid, fixed = cpu_grid(spec.name)
        loop_tokens = fixed if loop_tokens is None else loop_tokens
    grid.reps = args.reps or grid.reps
    for attr in _GRID_FLAGS:
        value = _ints(getattr(args, attr))
        if value:
            setattr(grid, attr, value)
    base_path = (
        Path(args.base)
        if args.base.endswith((".yaml", ".yml"))
        else Path(str(files("conf") / "hardware" / f"{args.base}.yaml"))
    )
    base = load_profile(base_path)
    prefix = "cpu" if on_cpu else base.get("name", "custom")
    name = args.name or f"{prefix}_{spec.name}_measured".replace(".", "")
    path = args.profile_out or Path(str(files("conf") / "hardware" / f"{name}.yaml"))
    calibrate_to(path, spec, grid, base, name, _opts(args), loop_tokens, args.out)
    print(f"profile written: {path}  (kvflow-sim hardware={name} when under conf/hardware/)")
    return 0


_GRID_FLAGS = ("prefill_new", "prefill_ctx", "decode_batch", "decode_ctx", "copy_tokens")


def cmd_validate(args: argparse.Namespace) -> int:
    from harness.config_schema import validate_config
    from real.config import compose
    from real.cpu_calibration import Bracket
    from real.validate import report, validate

    overrides = _cpu_overrides(args, "validate", args.overrides)
    cfg = validate_config(compose(overrides))
    if not isinstance(cfg.get("policy"), dict):
        raise ValueError("validate needs one policy=NAME override")
    out = args.out or _default_out("validate")
    bracket = None
    if overrides is not args.overrides and not _has_key(args.overrides, "hardware"):
        bracket = Bracket(cfg, out, _opts(args))  # no profile on CPU: calibrate this host around the run
        overrides = [*overrides, f"hardware={bracket.before()}"]
        cfg = validate_config(compose(overrides))
    summary = validate(
        cfg,
        out,
        _opts(args),
        overrides=overrides,
        net=bracket.net if bracket else None,
        recalibrate=bracket.after if bracket else None,
    )
    print(report(summary))
    print(f"written: {out}/validation.json, comparison_*.csv, scatter.png")
    return 0


def _has_key(overrides: list[str], key: str) -> bool:
    return any(o.split("=", 1)[0].lstrip("+~") == key for o in overrides)


def _cpu_overrides(args: argparse.Namespace, cmd: str, overrides: list[str]) -> list[str]:
    """On a CPU device: the CPU-sized defaults (printed in one line) under the user's overrides;
    elsewhere the overrides unchanged (the same list object)."""
    import torch

    from real.cpu_defaults import apply
    from real.model import pick_device

    if pick_device(args.device).type != "cpu":
        return overrides
    why = "no CUDA device" if not torch.cuda.is_available() else "--device cpu"
    choice = apply(cmd, list(overrides), why=why)
    print(choice.line, flush=True)
    return choice.overrides


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    interrupt.watch()
    user_errors: tuple[type[BaseException], ...] = (ValueError, OSError)
    try:
        from hydra.errors import HydraException
        from omegaconf.errors import OmegaConfBaseException

        user_errors += (HydraException, OmegaConfBaseException)
    except ImportError:  # pragma: no cover
        pass
    try:
        return {"run": cmd_run, "calibrate": cmd_calibrate, "validate": cmd_validate}[args.cmd](args)
    except user_errors as exc:  # bad input: one line, no traceback
        if interrupt.received():  # a Ctrl-C that a library turned into its own error
            return _interrupted()
        text = " ".join(str(exc).split()).split(" Config search path")[0]
        print(f"kvflow-real: error: {text}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return _interrupted()
    except Exception:
        if interrupt.received():
            return _interrupted()
        raise


def _interrupted() -> int:
    print(
        "kvflow-real: interrupted; finished run dirs are complete, rerun the same command for the rest", file=sys.stderr
    )
    return interrupt.EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
