"""The run-directory contract (docs/architecture.md "Run directory"): one writer, one reader, one
schema check, and the resume rule, for every backend and for ``kvflow-report``.

A run directory holds ``config.yaml``, ``requests.csv`` (optional: ``output.requests_csv=false``),
``workflows.csv``, ``timeline.csv`` (when recorded), ``.hydra/{config,overrides}.yaml`` (Hydra writes
them for ``kvflow-sim``; the writer does for other backends) and ``summary.json``. Every file is
written via a temp file + ``os.replace``; ``summary.json`` goes last, so its presence means the run
is complete, and both a resumed sweep and the report key on that one file.
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from harness.errors import SetupError
from harness.rows import ROW_FIELDS, TIMELINE_FIELDS, WORKFLOW_FIELDS
from harness.summary import BACKENDS, DETAIL_KEYS, SUMMARY_KEYS

SUMMARY = "summary.json"
CONFIG = "config.yaml"
REQUESTS = "requests.csv"
WORKFLOWS = "workflows.csv"
TIMELINE = "timeline.csv"
CSV_FIELDS = {REQUESTS: ROW_FIELDS, WORKFLOWS: WORKFLOW_FIELDS, TIMELINE: TIMELINE_FIELDS}
RUN_MARKERS = (".hydra", CONFIG, REQUESTS)  # a dir holding one of these looks like a run
CONFIG_KEYS_IGNORED = ("force", "output", "hydra")  # change nothing simulated: no reason to recompute

Timeline = Sequence[tuple[str, float, float, str]]  # resource (gpu|h2d|d2h), start_s, end_s, label


class RunError(SetupError):
    """A malformed or partial run directory; ``str()`` is the one line shown to the user."""


# ----- writing ------------------------------------------------------------------------------------
def write_atomic(path: Path, text: str) -> None:
    """Write via a temp file + os.replace so a reader never sees a half-written file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_json_atomic(path: Path, obj: Any) -> None:
    """JSON (indented, sorted keys) via ``write_atomic``."""
    write_atomic(Path(path), json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def csv_text(rows: Sequence[Mapping[str, Any]], fields: Sequence[str]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(fields), lineterminator="\n", extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def write_run_dir(
    run_dir: Path,
    summary: Mapping[str, Any],
    rows: Sequence[Mapping[str, Any]],
    workflows: Sequence[Mapping[str, Any]],
    config: str | Mapping[str, Any],
    timeline: Timeline = (),
    requests_csv: bool = True,
    overrides: Sequence[str] | None = None,
) -> Path:
    """Write one run: ``config`` (resolved; YAML text or a mapping), the CSVs, ``timeline`` if any,
    ``.hydra/`` when ``overrides`` is given (backends that are not Hydra apps), ``summary.json`` last."""
    run_dir = Path(run_dir)
    text = config if isinstance(config, str) else yaml.safe_dump(dict(config), sort_keys=False)
    write_atomic(run_dir / CONFIG, text)
    if overrides is not None:
        write_atomic(run_dir / ".hydra" / "config.yaml", text)
        write_atomic(run_dir / ".hydra" / "overrides.yaml", yaml.safe_dump(list(overrides)))
    if requests_csv:
        write_atomic(run_dir / REQUESTS, csv_text(rows, ROW_FIELDS))
    write_atomic(run_dir / WORKFLOWS, csv_text(workflows, WORKFLOW_FIELDS))
    if timeline:
        write_atomic(run_dir / TIMELINE, csv_text([dict(zip(TIMELINE_FIELDS, r)) for r in timeline], TIMELINE_FIELDS))
    write_json_atomic(run_dir / SUMMARY, summary)
    return run_dir


# ----- reading ------------------------------------------------------------------------------------
def read_summary(run_dir: Path) -> dict[str, Any]:
    """The run's summary, or ``RunError`` saying in one line why it is unusable."""
    path = Path(run_dir) / SUMMARY
    if not path.is_file():
        raise RunError(f"{run_dir}: no {SUMMARY} (run incomplete or interrupted)")
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError) as exc:
        raise RunError(f"{path}: unreadable ({exc.__class__.__name__})") from None
    except json.JSONDecodeError as exc:
        raise RunError(f"{path}: not valid JSON (line {exc.lineno}: {exc.msg})") from None
    if not isinstance(data, dict):
        raise RunError(f"{path}: expected a JSON object, got {type(data).__name__}")
    if not data.get("policy") or not isinstance(data["policy"], str):
        raise RunError(f"{path}: missing or non-string field 'policy'")
    return data


def is_complete(run_dir: Path) -> bool:
    """True when ``run_dir/summary.json`` exists and is a valid summary."""
    try:
        read_summary(run_dir)
    except RunError:
        return False
    return True


def _csv_header(path: Path) -> list[str]:
    try:
        with path.open(newline="") as f:
            return next(csv.reader(f), [])
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise RunError(f"{path}: unreadable ({exc.__class__.__name__})") from None


def check_summary(summary: Mapping[str, Any], path: Path) -> None:
    """The summary part of the schema: every key, ``details`` keys, a known backend; ``RunError``
    naming the file and the key otherwise."""
    for key in SUMMARY_KEYS:
        if key not in summary:
            raise RunError(f"{path}: missing key {key!r}")
    if summary["backend"] not in BACKENDS:
        raise RunError(f"{path}: backend {summary['backend']!r} not one of {', '.join(BACKENDS)}")
    for key in ("params", "details"):
        if not isinstance(summary[key], dict):
            raise RunError(f"{path}: {key!r} must be an object")
    for key in DETAIL_KEYS:
        if key not in summary["details"]:
            raise RunError(f"{path}: missing key 'details.{key}'")


def read_run_summary(run_dir: Path) -> dict[str, Any]:
    """What ``kvflow-report`` reads: the summary of a complete run, schema-checked."""
    summary = read_summary(run_dir)
    check_summary(summary, Path(run_dir) / SUMMARY)
    return summary


def validate_run_dir(run_dir: Path) -> dict[str, Any]:
    """Schema check of a whole complete run: the summary (``check_summary``), ``config.yaml``, and
    the header of each CSV present (``workflows.csv`` required); returns the summary or raises
    ``RunError`` naming the file and the key or column."""
    run_dir = Path(run_dir)
    summary = read_run_summary(run_dir)
    if not (run_dir / CONFIG).is_file():
        raise RunError(f"{run_dir}: no {CONFIG}")
    for name, fields in CSV_FIELDS.items():
        csv_path = run_dir / name
        if name == WORKFLOWS and not csv_path.is_file():
            raise RunError(f"{run_dir}: no {WORKFLOWS}")
        if csv_path.is_file() and _csv_header(csv_path) != list(fields):
            raise RunError(f"{csv_path}: columns {_csv_header(csv_path)} != {list(fields)}")
    return summary


# ----- resuming -----------------------------------------------------------------------------------
def _normalise(config: Mapping[str, Any]) -> Any:
    plain = {k: v for k, v in config.items() if k not in CONFIG_KEYS_IGNORED}
    return yaml.safe_load(yaml.safe_dump(plain, sort_keys=True))


def should_skip(run_dir: Path, config: Mapping[str, Any] | None = None, force: bool = False) -> bool:
    """Resume rule for sweeps, keyed by the run directory: skip a run whose summary is complete.

    With ``config`` (the resolved config the run would write as ``config.yaml``), also require the
    stored ``config.yaml`` to match it (ignoring ``force``/``output``), so a different sweep pointed
    at the same ``hydra.sweep.dir`` (job dirs are numbered by job index) recomputes instead of
    silently reusing another setting's results. ``force`` always recomputes.
    """
    run_dir = Path(run_dir)
    if force or not is_complete(run_dir):
        return False
    if config is None:
        return True
    try:
        return _normalise(yaml.safe_load((run_dir / CONFIG).read_text()) or {}) == _normalise(config)
    except (OSError, yaml.YAMLError, AttributeError):
        return False


def looks_like_run(d: Path) -> bool:
    """A dir with a run marker or a summary (complete or not)."""
    return any((d / m).exists() for m in RUN_MARKERS) or (d / SUMMARY).exists()
