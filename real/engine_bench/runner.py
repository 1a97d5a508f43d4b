"""Runs the parts in order and writes ``engine_profile.yaml`` after each (a killed run leaves one)."""

from __future__ import annotations

import argparse
import datetime as _dt
import gc
import math
import platform
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import yaml

from real.engine_bench.bidirectional import part_bidirectional
from real.engine_bench.context import (
    DRY_SIZES,
    ENGINE_PARAMS,
    FORMAT,
    GPU_SIZES,
    HARDWARE_PARAMS,
    PROFILE_NAME,
    Ctx,
    PartResult,
    one_line,
)
from real.engine_bench.direct_05 import part_direct_05
from real.engine_bench.graph_decode import part_graph_decode
from real.engine_bench.kernel_05 import part_kernel_05
from real.engine_bench.overlap import part_overlap
from real.engine_bench.path_04 import part_path_04

# -- driver -----------------------------------------------------------------------------------------
DESCRIPTION = (
    "Measure, with torch alone, the data paths that decide the headline (ENGINES.md section 4) and write "
    "engine_profile.yaml, which an engine model reads with engine.measured=PATH (docs/real_backend.md)."
)
PARTS: tuple[tuple[str, Callable[[Ctx], PartResult]], ...] = (
    ("path_04", part_path_04),
    ("direct_05", part_direct_05),
    ("bidirectional", part_bidirectional),
    ("overlap", part_overlap),
    ("graph_decode", part_graph_decode),
    ("kernel_05", part_kernel_05),
)


def _header(ctx: Ctx, dry_run: bool) -> dict[str, Any]:
    return {
        "format": FORMAT,
        "device": ctx.device.type,
        "device_name": torch.cuda.get_device_name(ctx.device) if ctx.cuda else platform.processor() or "cpu",
        "torch": torch.__version__,
        "python": platform.python_version(),
        "dry_run": dry_run,
        "measured_at": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "command": "python -m real.engine_bench " + " ".join(sys.argv[1:]),
        **dict.fromkeys(ENGINE_PARAMS),
        "hardware": dict.fromkeys(HARDWARE_PARAMS),
        "parts": {},
        "raw": {},
    }


def _plain(value: Any) -> Any:
    """YAML-safe: numpy and torch scalars as floats, inf as null."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, str):
        return str(value)  # torch.__version__ is a str subclass yaml cannot represent
    if isinstance(value, (bool, int)) or value is None:
        return value
    number = float(value)
    return number if math.isfinite(number) else None


def write_profile(profile: dict[str, Any], out: Path) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    path, tmp = out / PROFILE_NAME, out / f".{PROFILE_NAME}.tmp"
    head = "# engine profile from real.engine_bench (docs/real_backend.md); read by engine.measured=PATH\n"
    tmp.write_text(head + yaml.safe_dump(_plain(profile), sort_keys=False))
    tmp.replace(path)
    return path


def _free(ctx: Ctx, keep_decoder: bool) -> None:
    if not keep_decoder:
        ctx.decoder = None
    gc.collect()
    if ctx.cuda:
        torch.cuda.empty_cache()


def run(
    ctx: Ctx,
    out: Path,
    dry_run: bool,
    budget_s: float,
    only: set[str] | None = None,
    parts: Sequence[tuple[str, Callable[[Ctx], PartResult]]] = PARTS,
) -> dict[str, Any]:
    """Every part of ``parts`` (default: all, in order), the profile rewritten after each; returns the profile."""
    profile, t0 = _header(ctx, dry_run), time.perf_counter()
    for i, (name, fn) in enumerate(parts):
        used = time.perf_counter() - t0
        if only is not None and name not in only:
            profile["parts"][name] = "skipped: not selected"
        elif used > budget_s:
            profile["parts"][name] = f"skipped: time budget ({used:.0f} s used of {budget_s:.0f} s)"
        else:
            print(f"engine_bench: {name} ...", flush=True)
            t_part = time.perf_counter()
            try:
                res = fn(ctx)
                profile.update({k: v for k, v in res.engine.items() if v is not None})
                profile["hardware"].update(res.hardware)
                profile["raw"][name] = {**res.raw, "wall_s": time.perf_counter() - t_part}
                profile["parts"][name] = res.status
            except Exception as exc:  # noqa: BLE001 - one part's failure is recorded, the rest go on
                traceback.print_exc()
                profile["parts"][name] = f"failed: {one_line(exc)}"
            print(f"engine_bench: {name}: {profile['parts'][name]} ({time.perf_counter() - t_part:.1f} s)", flush=True)
        _free(ctx, keep_decoder=any(n in ("overlap", "graph_decode") for n, _ in parts[i + 1 : i + 2]))
        profile["wall_s"] = time.perf_counter() - t0
        write_profile(profile, out)
    return profile


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m real.engine_bench", description=DESCRIPTION)
    p.add_argument("--device", default=None, help="cuda or cpu (default: cuda if available)")
    p.add_argument("--out", type=Path, required=True, help=f"folder for {PROFILE_NAME}")
    p.add_argument("--dry-run", action="store_true", help="tiny shapes (CPU tests)")
    p.add_argument("--budget-s", type=float, default=240.0, help="parts not started by then are skipped")
    p.add_argument(
        "--parts", default=None, help=f"comma list of parts to run (default all: {', '.join(n for n, _ in PARTS)})"
    )
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    names = {n for n, _ in PARTS}
    only = set(args.parts.split(",")) if args.parts else None
    if device.split(":")[0] not in ("cuda", "cpu"):
        print(f"engine_bench: error: --device={device}: use cuda or cpu", file=sys.stderr)
        return 2
    if device.startswith("cuda") and not torch.cuda.is_available():
        print(
            f"engine_bench: error: --device={device}: no CUDA device here (torch {torch.__version__})", file=sys.stderr
        )
        return 2
    if only is not None and only - names:
        print(
            f"engine_bench: error: --parts: unknown {sorted(only - names)[0]!r}; valid: {', '.join(names)}",
            file=sys.stderr,
        )
        return 2
    ctx = Ctx(torch.device(device), DRY_SIZES if args.dry_run else GPU_SIZES)
    profile = run(ctx, args.out, args.dry_run, args.budget_s, only)
    print(f"engine_bench: wrote {args.out / PROFILE_NAME} in {profile['wall_s']:.1f} s")
    failed = [n for n, s in profile["parts"].items() if s.startswith("failed")]
    return 1 if failed else 0
