"""``kvflow-replay``: cache-only replay (no timing) of a trace through the radix tree.

Input: Mooncake JSONL (plain or gzipped; capacity in whole blocks = floor(budget / bytes per
block), one unit per ``--block-tokens`` block) or a kvflow trace (token level, or block level when
every segment is a block hash, as the Mooncake importer writes them). The last line of stdout is
one JSON object; bad input is one line ``kvflow-replay: error: FILE:LINE: problem``, exit 2.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
import zlib
from pathlib import Path

from kvflow.model_spec import MODEL_NAMES, load_model_spec
from sim.replay import (
    ReplayInputError,
    ReplayRequest,
    ReplayResult,
    replay,
    replay_policy_names,
    requests_from_trace,
    resolve_policy,
)
from traces.importers import mooncake
from traces.io import load_trace
from traces.limits import DEFAULT_MAX_PROMPT_TOKENS
from traces.schema import Trace

GIB = 1 << 30


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kvflow-replay",
        description="Cache-only replay of a trace (Mooncake JSONL or kvflow trace) through the radix "
        "tree under one eviction policy. The last line of stdout is one JSON object.",
    )
    parser.add_argument("--trace", required=True, type=Path, help="Mooncake JSONL (.jsonl[.gz]) or kvflow trace")
    parser.add_argument(
        "--policy",
        default="lru",
        help=f"eviction policy: {', '.join(replay_policy_names())} (default lru; belady: exact Belady, the hit-rate bound; oracle = belady)",
    )
    parser.add_argument("--model", default="llama-3.1-8b", help=f"model for KV bytes/token: {', '.join(MODEL_NAMES)}")
    parser.add_argument("--budget-gib", type=float, default=16.0, help="GPU KV budget in GiB (default 16)")
    parser.add_argument("--block-tokens", type=int, default=512, help="tokens per hash block (default 512)")
    parser.add_argument(
        "--warmup-fraction",
        type=float,
        default=0.5,
        help="fraction of requests replayed before hits are counted (default 0.5)",
    )
    parser.add_argument(
        "--max-prompt-tokens",
        type=int,
        default=DEFAULT_MAX_PROMPT_TOKENS,
        help=f"reject a request of more than this many tokens (default {DEFAULT_MAX_PROMPT_TOKENS:,})",
    )
    return parser


def load_requests(
    path: Path, block_tokens: int, max_prompt_tokens: int = DEFAULT_MAX_PROMPT_TOKENS
) -> tuple[list[ReplayRequest], bool]:
    """Requests of a Mooncake file or a kvflow trace (told apart by the first record); True when
    keyed by block hashes. Every input problem, a request over ``max_prompt_tokens`` tokens
    included, is a ReplayInputError("FILE:LINE: problem")."""
    try:
        trace: Trace
        if mooncake.is_mooncake_file(path):
            trace = mooncake.import_files([str(path)], block_tokens=block_tokens, max_prompt_tokens=max_prompt_tokens)
        else:
            trace = load_trace(path, max_prompt_tokens)
    except ValueError as exc:  # TraceError is one; both say FILE:LINE: problem
        raise ReplayInputError(str(exc)) from None
    if not trace.invocations:
        raise ReplayInputError(f"{path}:1: no requests")
    return requests_from_trace(trace)


def run(argv: list[str] | None = None) -> ReplayResult:
    """Parse flags, read the trace, replay it; the result plus the run's settings and wall time."""
    args = build_parser().parse_args(argv)
    resolve_policy(args.policy)  # before reading a possibly large trace
    try:
        model = load_model_spec(args.model)
    except ValueError as exc:
        raise ReplayInputError(str(exc)) from None
    if not 0 <= args.warmup_fraction < 1:  # NaN fails this too
        raise ReplayInputError(f"--warmup-fraction must be in [0, 1), got {args.warmup_fraction}")
    if args.block_tokens <= 0:
        raise ReplayInputError(f"--block-tokens must be a positive integer, got {args.block_tokens}")
    if not math.isfinite(args.budget_gib) or args.budget_gib <= 0:
        raise ReplayInputError(f"--budget-gib must be a positive finite number of GiB, got {args.budget_gib}")
    if args.max_prompt_tokens < 1:
        raise ReplayInputError(f"--max-prompt-tokens must be a positive integer, got {args.max_prompt_tokens}")
    started = time.perf_counter()
    requests, block_mode = load_requests(args.trace, args.block_tokens, args.max_prompt_tokens)
    unit_bytes = model.kv_bytes_per_token * (args.block_tokens if block_mode else 1)
    capacity = math.floor(args.budget_gib * GIB / unit_bytes)
    result = replay(requests, args.policy, capacity, args.warmup_fraction)
    result.update(
        budget_gib=args.budget_gib,
        model=model.name,
        block_tokens=args.block_tokens,
        unit="block" if block_mode else "token",
        trace=str(args.trace),
        wall_s=round(time.perf_counter() - started, 3),
    )
    return result


def _trace_arg(argv: list[str] | None) -> str:
    words = list(sys.argv[1:] if argv is None else argv)
    for i, word in enumerate(words):
        if word.startswith("--trace="):
            return word.split("=", 1)[1]
        if word == "--trace" and i + 1 < len(words):
            return words[i + 1]
    return "kvflow-replay"


def main(argv: list[str] | None = None) -> int:
    try:
        result = run(argv)
    except ReplayInputError as exc:
        print(f"kvflow-replay: error: {exc}", file=sys.stderr)
        return 2
    except (OSError, EOFError, zlib.error, UnicodeDecodeError, ValueError, MemoryError) as exc:
        # a reader problem that escaped its FILE:LINE report: still one line naming the input
        where = getattr(exc, "filename", None) or _trace_arg(argv)
        print(f"kvflow-replay: error: {where}: {' '.join(str(exc).split()) or type(exc).__name__}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("kvflow-replay: interrupted; nothing written (the replay writes only stdout)", file=sys.stderr)
        return 130
    try:
        print(
            f"{result['policy']}: hit rate {100 * result['hit_rate']:.2f}% "
            f"({result['hit_tokens']:,} of {result['total_tokens']:,} tokens, {result['requests']} requests)"
        )
        print(json.dumps(result, sort_keys=True))
    except BrokenPipeError:  # e.g. piped into `head`: the reader has what it wanted
        sys.stderr.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
