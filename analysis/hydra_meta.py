"""What Hydra recorded about a run: the overrides that made it, its config-group choices and the
command line that reproduces it (``.hydra/overrides.yaml``, ``.hydra/hydra.yaml``, ``multirun.yaml``).

Read with plain YAML (no OmegaConf resolution): the files hold unresolvable ``${now:...}`` strings
and only a few fields are needed.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml

IGNORED_PREFIXES = ("hydra", "output.", "force")  # launcher/display knobs, not experiment settings
APP_NAMES = {"cli": "kvflow-sim"}  # Hydra job name (module file) -> console script
SEARCH_UP = 3  # multirun.yaml sits in the sweep dir, at most this many levels above a run


@dataclass
class Meta:
    overrides: dict[str, Any] = field(default_factory=dict)
    choices: dict[str, Any] = field(default_factory=dict)
    command: str | None = None


@lru_cache(maxsize=256)
def _load_yaml(path: str) -> Any:
    try:
        return yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError, UnicodeDecodeError):
        return None


def _typed(text: str) -> Any:
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    return value if isinstance(value, (int, float, bool, str)) or value is None else text


def parse_overrides(items: list[Any]) -> dict[str, Any]:
    """``["policy=kvflow", "+a.b=3"]`` -> ``{"policy": "kvflow", "a.b": 3}``; deletions and
    Hydra/launcher/display overrides are dropped because they do not change what is simulated."""
    out: dict[str, Any] = {}
    for item in items or []:
        text = str(item)
        if "=" not in text or text.startswith("~"):
            continue
        key, value = text.split("=", 1)
        key = key.lstrip("+")
        if key.startswith(IGNORED_PREFIXES):
            continue
        out[key] = _typed(value)
    return out


def _hydra_dir(run_dir: Path) -> Path | None:
    """The run's own ``.hydra``; compare-mode policy sub-runs use their parent's."""
    for d in (run_dir, run_dir.parent):
        if (d / ".hydra").is_dir():
            return d / ".hydra"
    return None


def _multirun_yaml(run_dir: Path) -> Path | None:
    d = run_dir
    for _ in range(SEARCH_UP + 1):
        if (d / "multirun.yaml").is_file():
            return d / "multirun.yaml"
        d = d.parent
    return None


def command_from(hydra_cfg: dict[str, Any]) -> str | None:
    """The console command line Hydra was given (``-m`` for a sweep), shell-quoted."""
    try:
        ov = hydra_cfg["overrides"]
        job_name = hydra_cfg.get("job", {}).get("name", "cli")
    except (KeyError, TypeError, AttributeError):
        return None
    multirun = hydra_cfg.get("mode") == "MULTIRUN"
    args = [a for a in (ov.get("hydra") or []) if not str(a).startswith("hydra.mode=")] + list(ov.get("task") or [])
    words = [APP_NAMES.get(job_name, job_name)] + (["-m"] if multirun else []) + [str(a) for a in args]
    return " ".join(shlex.quote(w) for w in words)


def read(run_dir: Path) -> Meta:
    """Everything Hydra left about ``run_dir``; empty fields where it left nothing."""
    meta = Meta()
    hdir = _hydra_dir(run_dir)
    if hdir is not None:
        items = _load_yaml(str(hdir / "overrides.yaml"))
        meta.overrides = parse_overrides(items if isinstance(items, list) else [])
        job = _load_yaml(str(hdir / "hydra.yaml"))
        hydra_cfg = job.get("hydra") if isinstance(job, dict) else None
        if isinstance(hydra_cfg, dict):
            meta.choices = dict((hydra_cfg.get("runtime") or {}).get("choices") or {})
            meta.command = command_from(hydra_cfg)
    sweep = _multirun_yaml(run_dir)
    if sweep is not None:
        data = _load_yaml(str(sweep))
        if isinstance(data, dict) and isinstance(data.get("hydra"), dict):
            meta.command = command_from(data["hydra"]) or meta.command
    return meta
