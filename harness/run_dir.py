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
import hashlib
import io
import json
import os
import re
import socket
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
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
CONFIG_HASH = "config_sha256"  # summary key: hash of the resolved config, CONFIG_KEYS_IGNORED left out
LOCK = ".kvflow.lock"
HOST = socket.gethostname()  # kept in a lock: a pid is only checkable on its own host

Timeline = Sequence[tuple[str, float, float, str]]  # resource (gpu|h2d|d2h), start_s, end_s, label


class RunError(SetupError):
    """A malformed or partial run directory; ``str()`` is the one line shown to the user."""


# ----- writing ------------------------------------------------------------------------------------
class WriteError(OSError):
    """An output that could not be written; ``str()`` names the path (the previous file is kept)."""


@contextmanager
def atomic_output(path: Path | str) -> Iterator[Path]:
    """A temp path next to ``path`` (same suffix, so writers that pick a format by name still do)
    that replaces ``path`` only when the block succeeds; on any failure the temp file is removed,
    the previous ``path`` is left intact and an ``OSError`` becomes a ``WriteError`` naming ``path``."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp{path.suffix}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        yield tmp
        os.replace(tmp, path)
    except OSError as exc:
        reason = exc.strerror or str(exc) or type(exc).__name__
        raise WriteError(f"{path}: cannot write ({reason}); the previous file, if any, is unchanged") from None
    finally:
        tmp.unlink(missing_ok=True)


def write_atomic(path: Path, text: str | bytes) -> None:
    """Write via a temp file + os.replace so a reader never sees a half-written file."""
    with atomic_output(path) as tmp:
        if isinstance(text, bytes):
            tmp.write_bytes(text)
        else:
            tmp.write_text(text)


def splice_block(path: Path, body: str, begin: str, end: str, new_file_head: str = "") -> None:
    """Replace the generated block between the ``begin`` and ``end`` markers of ``path`` (a results
    page), keeping the hand-written text around it; a file without the markers gets the block
    appended, a missing one is created (starting with ``new_file_head``). Written atomically."""
    block = f"{begin}\n{body.rstrip()}\n{end}\n"
    old = path.read_text() if path.is_file() else ""
    if begin in old and end in old:
        head, rest = old.split(begin, 1)
        text = head + block + rest.split(end, 1)[1].lstrip("\n")
    else:
        text = new_file_head + block if not old else old.rstrip() + "\n\n" + block
    write_atomic(path, text)


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
    ``.hydra/`` when ``overrides`` is given (backends that are not Hydra apps), ``summary.json`` last.
    A backend that resumes sweeps puts ``config_hash(config)`` into the summary as ``config_sha256``
    (``with_config_hash``): ``should_skip`` compares it, so a run counts as done only for its config."""
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


def config_hash(config: Mapping[str, Any]) -> str:
    """SHA-256 of the resolved config without the keys that change nothing simulated."""
    text = json.dumps(_normalise(config), sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def with_config_hash(summary: Mapping[str, Any], config: Mapping[str, Any]) -> dict[str, Any]:
    """``summary`` plus ``config_sha256`` of the config the run directory will store."""
    return {**summary, CONFIG_HASH: config_hash(config)}


def should_skip(run_dir: Path, config: Mapping[str, Any] | None = None, force: bool = False) -> bool:
    """Resume rule for sweeps, keyed by the run directory: skip a run whose summary is complete.

    With ``config`` (the resolved config the run would write as ``config.yaml``), also require the
    summary's ``config_sha256`` (or, for older runs without one, the stored ``config.yaml``) to match
    it (ignoring ``force``/``output``), so a different sweep pointed at the same ``hydra.sweep.dir``
    (job dirs are numbered by job index) recomputes instead of silently reusing another setting's
    results. ``force`` always recomputes.
    """
    run_dir = Path(run_dir)
    if force or not is_complete(run_dir):
        return False
    if config is None:
        return True
    stored_hash = read_summary(run_dir).get(CONFIG_HASH)
    if stored_hash is not None:
        return bool(stored_hash == config_hash(config))
    try:
        return _normalise(yaml.safe_load((run_dir / CONFIG).read_text()) or {}) == _normalise(config)
    except (OSError, yaml.YAMLError, AttributeError):
        return False


# ----- locking ------------------------------------------------------------------------------------
def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def _lock_owner(lock: Path) -> int | None:
    try:
        return int(lock.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def _lock_host(lock: Path) -> str | None:
    """The host that wrote ``lock`` (third line; None for locks written before hosts were kept)."""
    try:
        lines = lock.read_text().splitlines()
    except OSError:
        return None
    return (lines[2].strip() or None) if len(lines) > 2 else None


_TEMP = re.compile(r"^\..+\.(\d+)\.tmp")


def _remove_stale_temps(directory: Path) -> None:
    """Delete the temporary files ``atomic_output`` left in ``directory`` when its process was
    killed mid-write (``.NAME.PID.tmpSUFFIX`` whose PID is dead): nothing reads them, and a rerun
    would otherwise leave them forever. Only this host's: a pid means nothing on another one."""
    for path in directory.glob(".*.tmp*"):
        m = _TEMP.match(path.name)
        if m and int(m.group(1)) != os.getpid() and not _alive(int(m.group(1))):
            path.unlink(missing_ok=True)


def lock_dir(
    directory: Path, what: str = "sweep", total_runs: int | None = None, other_hosts_hold: bool = True
) -> Path:
    """Take ``directory/.kvflow.lock`` for this process: a second live writer is refused with a
    ``RunError`` naming its pid; a lock left by a dead process (Ctrl-C, kill) is taken over.
    Re-entrant for the holding process. ``total_runs`` (runs the sweep will make) is kept in the
    lock for the Ctrl-C message (``lock_total``). A lock written on another host is never taken over when
    ``other_hosts_hold`` (its pid cannot be checked here: a sweep lock); a run lock passes False, so a job
    that Ray or Slurm retries on another node takes over its killed attempt's lock. Returns the lock path
    (``unlock_dir`` releases it)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    lock = directory / LOCK
    for _ in range(3):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            owner, host = _lock_owner(lock), _lock_host(lock)
            if owner == os.getpid() and host in (None, HOST):
                return lock
            if other_hosts_hold and host not in (None, HOST):  # its pid cannot be checked from here
                raise RunError(
                    f"{directory}: a {what} on host {host} (pid {owner}) holds {lock}; wait for it to finish or "
                    "choose another directory (delete the lock only if that process is gone)"
                ) from None
            if owner is not None and _alive(owner):
                raise RunError(
                    f"{directory}: another {what} (pid {owner}) is writing into this directory; wait for it to "
                    f"finish or choose another directory (delete {lock} only if that process is gone)"
                ) from None
            if owner is None and time.time() - _mtime(lock) < 2.0:
                time.sleep(0.1)  # being written right now by its creator
                continue
            lock.unlink(missing_ok=True)  # stale: its process is dead
            continue
        with os.fdopen(fd, "w") as f:
            f.write(f"{os.getpid()}\n{'' if total_runs is None else total_runs}\n{HOST}\n")
        _remove_stale_temps(directory)
        return lock
    raise RunError(f"{directory}: could not take {lock} (another process keeps replacing it)")


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


def lock_total(directory: Path) -> int | None:
    """The ``total_runs`` recorded in ``directory``'s lock, if any."""
    try:
        return int((Path(directory) / LOCK).read_text().split()[1])
    except (OSError, ValueError, IndexError):
        return None


def unlock_dir(directory: Path) -> None:
    """Release ``directory``'s lock if this process holds it."""
    lock = Path(directory) / LOCK
    if _lock_owner(lock) == os.getpid():
        lock.unlink(missing_ok=True)


def complete_runs(root: Path) -> int:
    """Complete runs (a valid ``summary.json``) at or under ``root``: what a resume would skip."""
    root = Path(root)
    if not root.is_dir():
        return 0
    return sum(1 for p in root.rglob(SUMMARY) if is_complete(p.parent))


def looks_like_run(d: Path) -> bool:
    """A dir with a run marker or a summary (complete or not)."""
    return any((d / m).exists() for m in RUN_MARKERS) or (d / SUMMARY).exists()
