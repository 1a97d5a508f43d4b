"""Engine models: SGLang's HiCache data path as each version built it (``engine=sglang_0.4 |
sglang_0.5 | ideal``, ``conf/engine/*.yaml``, docs/engines.md).

``load_engine(engine_cfg)`` builds the model an ``engine`` config section names with ``kind``; a
section without ``kind`` (hand-built configs, tests) is read over ``conf/engine/sglang_0.5.yaml``,
the default. ``SCHEDULER_KEYS`` are the section's scheduler settings, which no model reads.
``measured: PATH`` (``engine.measured=PATH``) puts a measured engine profile's rates over the
section's (harness/engines/measured.py).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import MISSING, fields
from importlib.resources import files
from typing import Any

import yaml

from harness.engines.base import GATINGS, WRITE_POLICIES, CopyLink, EngineModel
from harness.engines.ideal import IdealEngine
from harness.engines.measured import MEASURED_KEY, with_measured
from harness.engines.sglang_04 import SGLang04
from harness.engines.sglang_05 import HOST_LAYOUTS, IO_BACKENDS, SGLang05
from harness.errors import SetupError

__all__ = [
    "DEFAULT_ENGINE",
    "ENGINE_CLASSES",
    "GATINGS",
    "HOST_LAYOUTS",
    "IO_BACKENDS",
    "SCHEDULER_KEYS",
    "WRITE_POLICIES",
    "CopyLink",
    "EngineModel",
    "IdealEngine",
    "SGLang04",
    "SGLang05",
    "conf_engine",
    "engine_keys",
    "load_engine",
    "resolved",
]

ENGINE_CLASSES: dict[str, type[EngineModel]] = {cls.KIND: cls for cls in (SGLang04, SGLang05, IdealEngine)}
DEFAULT_ENGINE = "sglang_0.5"
SCHEDULER_KEYS = ("chunk_tokens", "max_running_requests")  # read by harness.setup, not by a model
META_KEYS = ("kind",)


def engine_keys(kind: str) -> tuple[str, ...]:
    """The model parameters an engine of ``kind`` takes (its dataclass fields)."""
    return tuple(f.name for f in fields(ENGINE_CLASSES[kind]))


def conf_engine(name: str) -> dict[str, Any]:
    """The packaged ``conf/engine/<name>.yaml`` as a dict."""
    path = files("conf") / "engine" / f"{name}.yaml"
    if not path.is_file():
        raise SetupError(f"engine {name!r}: no conf/engine/{name}.yaml; valid: {', '.join(ENGINE_CLASSES)}")
    return dict(yaml.safe_load(path.read_text()))


def resolved(engine_cfg: Mapping[str, Any] | None) -> dict[str, Any]:
    """The section with the default engine's file under it when it names no ``kind``, and the
    rates of its ``measured`` profile, if any, over the file's."""
    cfg = dict(engine_cfg or {})
    cfg = cfg if cfg.get("kind") else {**conf_engine(DEFAULT_ENGINE), **cfg}
    if MEASURED_KEY not in cfg:
        return cfg
    kind = str(cfg.get("kind"))
    return with_measured(cfg, engine_keys(kind) if kind in ENGINE_CLASSES else ())


def load_engine(engine_cfg: Mapping[str, Any] | None) -> EngineModel:
    """The engine model of a composed ``engine`` section (validated by ``harness.config_schema``)."""
    cfg = resolved(engine_cfg)
    kind = str(cfg["kind"])
    if kind not in ENGINE_CLASSES:
        raise SetupError(f"engine.kind={kind!r}: valid: {', '.join(ENGINE_CLASSES)}")
    params = {k: v for k, v in cfg.items() if k not in SCHEDULER_KEYS and k not in META_KEYS}
    unknown = sorted(set(params) - set(engine_keys(kind)))
    if unknown:
        raise SetupError(f"engine.{unknown[0]}: unknown key for kind {kind!r}; valid: {', '.join(engine_keys(kind))}")
    missing = [f.name for f in fields(ENGINE_CLASSES[kind]) if f.name not in params and f.default is MISSING]
    if missing:
        raise SetupError(f"engine {cfg.get('name')!r}: missing key {missing[0]!r}")
    return ENGINE_CLASSES[kind](**params)
