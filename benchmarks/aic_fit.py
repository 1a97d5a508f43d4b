"""Regenerate the measured hardware profiles ``conf/hardware/{h100,h200,a100}_sglang.yaml``: step
times from aiconfigurator's measured operator database (SGLang data, bf16, TP=1, Llama-3.1-8B) over
a prefill and a decode grid, fitted with the project's calibration fit (``harness/fit.py``, the one
``kvflow-real calibrate`` uses). Each profile is its spec profile (``conf/hardware/<gpu>.yaml``) plus
the ``measured`` prefill/decode blocks (copies stay spec-derived: the database has no host link),
``scheduler_overhead_s`` and a ``calibration`` block: source, package versions, grid, fit error per
term and the error on mixed steps (not fitted: prefill + decode - one decode ``a_s``).

Usage (the aic venv has aiconfigurator but maybe not pyyaml; the main venv the reverse):
  python benchmarks/aic_fit.py                       collect and write (both installed)
  python benchmarks/aic_fit.py --collect-only P.json collect the database points (needs the aic extra)
  python benchmarks/aic_fit.py --points P.json       fit and write from collected points
  --check: compare with the committed profiles' measured blocks instead of writing (exit 1 on a change)
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))  # aic_reference: the systems and model set-up
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # harness.fit (pure numpy)

from aic_reference import BACKEND_VERSIONS, SYSTEMS, perf_model  # noqa: E402

from harness.fit import Fit, fit_decode, fit_prefill  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
MODEL = "llama-3.1-8b"
PREFILL_NEW = (64, 128, 256, 512, 1024, 2048, 3072, 4096, 6144, 8192)
PREFILL_CACHED = (0, 1024, 2048, 4096, 8192, 16384)
DECODE_BATCH = (1, 2, 4, 8, 16, 32, 48, 64, 96, 128)
DECODE_CONTEXT = (512, 1024, 2048, 4096, 8192, 16384)
DECODE_MAX_KV_TOKENS = 1 << 19  # batch x context at most: a KV pool an 80 GB GPU holds for this model
MIXED = ((512, 4096, 64, 2048), (2048, 0, 16, 4096), (256, 8192, 8, 8192), (1024, 2048, 32, 1024), (128, 0, 64, 4096))
# Per-iteration CPU time the database does not model. Upper bound from SGLang's CI floor for
# Llama-3.1-8B bf16 batch-1 decode on H100 (> 135 tok/s, < 7.4 ms a step; ENGINES.md section 3) minus
# the database's batch-1 step at 1,024 context; UNCONFIRMED as a value, and on H200/A100.
SGLANG_CI_STEP_S = 1 / 135
SGLANG_CI_CONTEXT = 1024


def _ms(perf: Any, new: int, cached: int, batch: int, context: int) -> float:
    req = {
        "num_prefill_requests": 1 if new else 0,
        "sum_prefill_tokens": new,
        "sum_prefill_kv_tokens": cached if new else 0,
        "num_decode_requests": batch,
        "sum_decode_kv_tokens": batch * context,
    }
    return float(perf.estimate_forward_pass_time_ms({"version": 1, "scheduled_requests": req}))


def collect() -> dict[str, Any]:
    """Database step times (seconds) over the fit grids, per hardware name."""
    from importlib.metadata import version

    out: dict[str, Any] = {"aiconfigurator-core": version("aiconfigurator-core"), "systems": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for hw, system in SYSTEMS.items():
            perf = perf_model(MODEL, system, Path(tmp))
            pts: dict[str, list[dict[str, float]]] = {"prefill": [], "decode": [], "mixed": []}
            for n in PREFILL_NEW:
                for p in PREFILL_CACHED:
                    pts["prefill"].append({"new_tokens": n, "context_tokens": p, "time_s": _ms(perf, n, p, 0, 0) / 1e3})
            for b in DECODE_BATCH:
                for c in DECODE_CONTEXT:
                    if b * c <= DECODE_MAX_KV_TOKENS:
                        pts["decode"].append({"batch": b, "context_tokens": c, "time_s": _ms(perf, 0, 0, b, c) / 1e3})
            for n, p, b, c in MIXED:
                t = _ms(perf, n, p, b, c) / 1e3
                pts["mixed"].append(
                    {"new_tokens": n, "context_tokens": p, "batch": b, "decode_context": c, "time_s": t}
                )
            ci = _ms(perf, 0, 0, 1, SGLANG_CI_CONTEXT) / 1e3
            out["systems"][hw] = {"system": system, "points": pts, "ci_batch1_s": ci}
    return out


def mixed_error(pre: Fit, dec: Fit, mixed: list[dict[str, float]]) -> tuple[float, float]:
    """(mean, max) relative error of the cost model's mixed rule with the fitted blocks."""
    p, d = pre.coef, dec.coef
    errs = []
    for m in mixed:
        n, ctx = m["new_tokens"], m["context_tokens"]
        t = p["a_s"] + p["b_s_per_token"] * n + p["c_s_per_token_ctx"] * n * ctx
        t += p["d_s_per_token_pair"] * n * (n + 1) / 2
        t += d["b_s_per_seq"] * m["batch"] + d["c_s_per_ctx_token"] * m["batch"] * m["decode_context"]
        errs.append(abs(t - m["time_s"]) / m["time_s"])
    return sum(errs) / len(errs), max(errs)


def build_profile(hw: str, data: dict[str, Any], version: str) -> dict[str, Any]:
    """The spec profile of ``hw`` plus the fitted blocks and their provenance."""
    import yaml

    base = yaml.safe_load((ROOT / "conf" / "hardware" / f"{hw}.yaml").read_text())
    sysd = data["systems"][hw]
    pre = fit_prefill(sysd["points"]["prefill"], own_attention=True)
    dec = fit_decode(sysd["points"]["decode"])
    mix_mean, mix_max = mixed_error(pre, dec, sysd["points"]["mixed"])
    overhead_s = max(0.0, SGLANG_CI_STEP_S - data["systems"]["h100"]["ci_batch1_s"])
    prof = {**base, "name": f"{hw}_sglang", "gpu": f"{base['gpu']} (SGLang kernels, aiconfigurator database)"}
    prof.update(
        scheduler_overhead_s=round(overhead_s, 6),
        measured_model=MODEL,
        measured={
            "prefill": {k: float(f"{v:.6g}") for k, v in pre.coef.items()},
            "decode": {k: float(f"{v:.6g}") for k, v in dec.coef.items()},
        },
        calibration={
            "source": f"aiconfigurator-core measured operator database, system {sysd['system']}, SGLang data "
            f"{BACKEND_VERSIONS[sysd['system']]}, bf16, TP=1",
            "versions": {"aiconfigurator-core": version, "sglang_data": BACKEND_VERSIONS[sysd["system"]]},
            "command": "python benchmarks/aic_fit.py",
            "model": MODEL,
            "fit": "harness.fit.fit_prefill(own_attention=True), fit_decode (NNLS on relative error)",
            "grid": {
                "prefill_new_tokens": list(PREFILL_NEW),
                "prefill_cached_tokens": list(PREFILL_CACHED),
                "decode_batch": list(DECODE_BATCH),
                "decode_context_tokens": list(DECODE_CONTEXT),
                "decode_max_kv_tokens": DECODE_MAX_KV_TOKENS,
                "mixed": [list(m) for m in MIXED],
            },
            "fit_error": {
                "prefill": {"mape": round(pre.mape, 5), "max": round(pre.max_err, 5), "points": len(pre.points)},
                "decode": {"mape": round(dec.mape, 5), "max": round(dec.max_err, 5), "points": len(dec.points)},
                "mixed": {"mape": round(mix_mean, 5), "max": round(mix_max, 5), "points": len(MIXED)},
            },
            "scheduler_overhead": f"UNCONFIRMED upper bound: SGLang CI floor 1/135 s per batch-1 decode step "
            f"(ENGINES.md section 3) minus the h100_sxm database step at {SGLANG_CI_CONTEXT} context "
            f"({1e3 * data['systems']['h100']['ci_batch1_s']:.3f} ms); same value for every GPU",
        },
    )
    return prof


HEADER = """# Measured hardware profile: {gpu} with SGLang kernel times from NVIDIA aiconfigurator's operator
# database, fitted by benchmarks/aic_fit.py with harness/fit.py (the kvflow-real calibrate fit).
# Do not edit by hand: rerun `python benchmarks/aic_fit.py`. Spec fields come from {base}.yaml;
# `measured` (Llama-3.1-8B only: measured_model) replaces its compute model, copies stay spec-derived.
# Use: kvflow-sim hardware={name} model=llama-3.1-8b
"""


def write(data: dict[str, Any], check: bool) -> int:
    import yaml

    changed = 0
    for hw in SYSTEMS:
        prof = build_profile(hw, data, data["aiconfigurator-core"])
        path = ROOT / "conf" / "hardware" / f"{hw}_sglang.yaml"
        if check:
            old = yaml.safe_load(path.read_text()) if path.is_file() else {}
            same = old.get("measured") == prof["measured"]
            changed += not same
            print(f"{path.name}: {'matches' if same else 'DIFFERS'}")
            continue
        text = HEADER.format(gpu=prof["gpu"].split(" (")[0], base=hw, name=prof["name"])
        path.write_text(text + yaml.safe_dump(prof, sort_keys=False, width=110))
        err = prof["calibration"]["fit_error"]
        print(
            f"{path.name}: "
            + ", ".join(f"{k} mape {100 * v['mape']:.2f}% max {100 * v['max']:.2f}%" for k, v in err.items())
        )
    return 1 if changed else 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--collect-only", type=Path, help="write the database points to this JSON file and stop")
    ap.add_argument("--points", type=Path, help="fit from points collected earlier instead of the database")
    ap.add_argument("--check", action="store_true", help="compare with the committed profiles instead of writing")
    args = ap.parse_args(argv)
    if args.points:
        data = json.loads(args.points.read_text())
    else:
        try:
            data = collect()
        except ImportError:
            print("aic_fit: error: aiconfigurator-core is not installed (pip install -e '.[aic]')", file=sys.stderr)
            return 2
    if args.collect_only:
        args.collect_only.write_text(json.dumps(data) + "\n")
        print(f"{args.collect_only}: database points for {', '.join(data['systems'])}")
        return 0
    return write(data, args.check)


if __name__ == "__main__":
    sys.exit(main())
