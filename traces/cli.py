"""`kvflow-trace`: generate, import, validate and summarize traces.

Every user error is one line on stderr and exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import zlib
from pathlib import Path

from traces.export import EXPORTERS, export_trace
from traces.generators import WORKLOADS, generate
from traces.importers import IMPORTERS, import_trace
from traces.io import load_trace, read_trace, write_trace
from traces.limits import DEFAULT_MAX_PROMPT_TOKENS
from traces.schema import Trace, TraceError
from traces.stats import compute_stats, format_stats
from traces.validate import summary, validate_file

EXIT_USAGE = 2


class _Parser(argparse.ArgumentParser):
    """argparse that reports errors in one line (argparse prints usage + message by default)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise _UsageError(message)


class _UsageError(Exception):
    pass


def _known_params(workload: str) -> str:
    """The generator's parameter names, from the error it gives for an unknown one (the generators
    keep their specs inside each function)."""
    try:
        generate(workload, **{"?": 1})
    except ValueError as exc:
        return str(exc).partition("(known: ")[2].rstrip(")")
    return ""


def _generate_epilog() -> str:
    lines = ["workloads and their parameters (key=value):"]
    for name, fn in WORKLOADS.items():
        doc = (fn.__doc__ or "").strip().splitlines()
        lines += [f"  {name}: {doc[0] if doc else ''}", f"      {_known_params(name)}"]
    lines.append("example: kvflow-trace generate sequential agents=4 runs=2 fixed_tokens=2048 -o seq.jsonl.gz")
    return "\n".join(lines)


def _import_epilog() -> str:
    import importlib

    lines = ["formats:"]
    for fmt in IMPORTERS:
        doc = (importlib.import_module(f"traces.importers.{fmt}").__doc__ or "").strip().splitlines()
        lines.append(f"  {fmt}: {doc[0] if doc else ''}")
    lines.append("example: kvflow-trace import chatdev ../shared/data/chatdev -o chatdev.jsonl.gz")
    return "\n".join(lines)


def _positive_int(text: str) -> int:
    """argparse type of --max-prompt-tokens: a positive integer (argparse reports the rest)."""
    value = int(text)
    if value < 1:
        raise ValueError(text)
    return value


def _limit_parent() -> argparse.ArgumentParser:
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument(
        "--max-prompt-tokens",
        type=_positive_int,
        default=DEFAULT_MAX_PROMPT_TOKENS,
        metavar="N",
        help=f"reject a call whose prompt or output exceeds N tokens (FILE:LINE: problem; default {DEFAULT_MAX_PROMPT_TOKENS:,})",
    )
    return parent


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="kvflow-trace", description="KVFlow workload traces: generate, import, export, validate, stats.")
    limit = _limit_parent()
    sub = p.add_subparsers(dest="cmd", required=True, parser_class=_Parser)
    g = sub.add_parser(
        "generate",
        help=f"synthetic workload: {', '.join(WORKLOADS)}",
        epilog=_generate_epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    g.add_argument("workload", help=f"one of: {', '.join(WORKLOADS)}")
    g.add_argument(
        "params",
        nargs="*",
        metavar="key=value",
        help="parameters (below); values: N or uniform:LO:HI, normal:M:SD, ...",
    )
    g.add_argument("-o", "--output", required=True)
    i = sub.add_parser(
        "import",
        parents=[limit],
        help=f"import real logs: {', '.join(IMPORTERS)}",
        epilog=_import_epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    i.add_argument("format", help=f"one of: {', '.join(IMPORTERS)}")
    i.add_argument("inputs", nargs="+")
    i.add_argument("-o", "--output", required=True)
    i.add_argument("--seed", type=int, default=0)
    i.add_argument(
        "--blocks",
        action="store_true",
        help="weka: one block segment per hash id instead of shared chains (large; for a few sessions)",
    )
    e = sub.add_parser(
        "export",
        parents=[limit],
        help=f"block-hash records for other tools: {', '.join(EXPORTERS)} "
        "(mooncake: one JSONL file; weka: a directory of session files)",
    )
    e.add_argument("format", help=f"one of: {', '.join(EXPORTERS)}")
    e.add_argument("file", help="a kvflow trace (.jsonl or .jsonl.gz)")
    e.add_argument("-o", "--output", required=True)
    e.add_argument(
        "--block-tokens", type=int, default=None, help="tokens per hash block (default: the trace's block_tokens)"
    )
    v = sub.add_parser("validate", parents=[limit], help="check a trace; one FILE:LINE: problem per error")
    v.add_argument("file")
    s = sub.add_parser("stats", parents=[limit], help="workload shape, prefix reuse, ideal hit-rate ceiling, loops")
    s.add_argument("file")
    s.add_argument("--json", action="store_true", help="print the statistics as JSON")
    return p


def _key_values(items: list[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in items:
        key, eq, value = item.partition("=")
        if not eq or not key:
            raise ValueError(f"bad parameter {item!r}: expected key=value")
        out[key] = value
    return out


def _finite(params: dict[str, str]) -> dict[str, str]:
    """``fixed_tokens=nan`` used to drop the fixed prompt: NaN/inf are never a count or a size."""
    for key, value in params.items():
        if value.strip().lower().lstrip("+-") in ("nan", "inf", "infinity"):
            raise ValueError(f"parameter {key!r}: bad value {value!r}: must be a finite number")
    return params


def _write_trace_atomic(trace: Trace, output: str, check_limit: int | None = None) -> None:
    """``write_trace`` into a temp file next to ``output`` (same suffix, so .gz still gzips), then
    rename: a failed write (disk full) leaves a previous ``output`` intact and names the path.
    ``check_limit``: read the temp file back first (an import must never write a trace its own
    reader rejects) with that token limit."""
    path = Path(output)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp{path.suffix}")
    try:
        write_trace(trace, tmp)
        if check_limit is not None:
            _check_written(tmp, path, check_limit)
        os.replace(tmp, path)
    except OSError as exc:
        raise _OutputError(
            f"kvflow-trace: error: {path}: cannot write ({exc.strerror or exc}); "
            "the previous file, if any, is unchanged"
        ) from None
    finally:
        tmp.unlink(missing_ok=True)


class _OutputError(Exception):
    pass


def _check_written(tmp: Path, path: Path, limit: int) -> None:
    """_OutputError (nothing replaced) when the written trace fails the reader."""
    _, errors = read_trace(tmp, max_errors=1, max_prompt_tokens=limit)
    if errors:
        problem = str(errors[0]).replace(str(tmp), str(path), 1)
        raise _OutputError(
            f"kvflow-trace: error: {path}: the imported trace fails validation ({problem}); nothing was written"
        )


def _run(args: argparse.Namespace) -> int:
    if args.cmd == "generate":
        trace = generate(args.workload, **_finite(_key_values(args.params)))
        _write_trace_atomic(trace, args.output)
        print(f"{args.output}: {len(trace.invocations)} invocations ({args.workload})")
    elif args.cmd == "import":
        if args.blocks and args.format != "weka":
            raise ValueError(f"--blocks applies to the weka importer only, not {args.format!r}")
        extra = {"blocks": True} if args.blocks else {}
        trace = import_trace(
            args.format, args.inputs, seed=args.seed, max_prompt_tokens=args.max_prompt_tokens, **extra
        )
        _write_trace_atomic(trace, args.output, check_limit=args.max_prompt_tokens)
        skipped = trace.meta.get("provenance", {}).get("skipped", [])
        print(
            f"{args.output}: {len(trace.invocations)} invocations from "
            f"{len(args.inputs) - len(skipped)} input(s), {len(skipped)} skipped"
        )
    elif args.cmd == "export":
        if args.format not in EXPORTERS:
            raise ValueError(f"unknown export format {args.format!r} (known: {', '.join(EXPORTERS)})")
        if args.block_tokens is not None and args.block_tokens < 1:
            raise ValueError(f"--block-tokens must be a positive integer, got {args.block_tokens}")
        n = export_trace(args.format, load_trace(args.file, args.max_prompt_tokens), args.output, args.block_tokens)
        print(f"{args.output}: {n} {'record(s)' if args.format == 'mooncake' else 'session(s)'} ({args.format})")
    elif args.cmd == "validate":
        trace, errors = validate_file(args.file, max_prompt_tokens=args.max_prompt_tokens)
        for err in errors:
            print(err, file=sys.stderr)
        if errors:
            return EXIT_USAGE
        assert trace is not None
        print(summary(args.file, trace))
    else:
        st = compute_stats(load_trace(args.file, args.max_prompt_tokens))
        print(json.dumps(st, indent=1) if args.json else format_stats(args.file, st))
    return 0


def _inputs(args: argparse.Namespace | None) -> list[str]:
    """The input paths of the command (for naming them in an error)."""
    if args is None:
        return []
    return [str(p) for p in ([args.file] if getattr(args, "file", None) else getattr(args, "inputs", None) or [])]


def main(argv: list[str] | None = None) -> int:
    args: argparse.Namespace | None = None
    try:
        args = _parser().parse_args(argv)
        return _run(args)
    except _UsageError as exc:
        print(f"kvflow-trace: error: {exc}", file=sys.stderr)
    except _OutputError as exc:
        print(exc, file=sys.stderr)
    except (TraceError, ValueError) as exc:
        line = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        inputs = _inputs(args)
        print(
            line if not inputs or any(p in line for p in inputs) else f"{line} ({', '.join(inputs)})", file=sys.stderr
        )
    except OSError as exc:
        where = exc.filename or ", ".join(_inputs(args)) or "kvflow-trace"
        print(f"kvflow-trace: error: {where}: {exc.strerror or exc}", file=sys.stderr)
    except (EOFError, zlib.error, MemoryError) as exc:  # a reader that did not say FILE:LINE itself
        problem = " ".join(str(exc).split()) or type(exc).__name__
        print(f"kvflow-trace: error: {', '.join(_inputs(args))}: unreadable ({problem})", file=sys.stderr)
    except KeyboardInterrupt:
        print("kvflow-trace: interrupted; no output file was replaced", file=sys.stderr)
        return 130
    return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
