"""The same composed config as ``kvflow-sim``: Hydra's compose API over the installed ``conf``
package (``conf/config.yaml`` + groups), as a plain dict. ``hardware=PATH.yaml`` also accepts a
profile file (e.g. one written by ``kvflow-real calibrate --out``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml


def compose(overrides: list[str] | None = None) -> dict[str, Any]:
    """Resolve ``conf/config.yaml`` with command-line style overrides (``policy=kvflow``, ...)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_module
    from omegaconf import OmegaConf

    overrides = list(overrides or [])
    profile = None
    for i, o in enumerate(overrides):
        key, _, value = o.partition("=")
        if key.lstrip("+") == "hardware" and value.endswith((".yaml", ".yml")):
            profile = value
            overrides[i] = "hardware=h200"  # placeholder group choice, replaced below
    with initialize_config_module(config_module="conf", version_base=None):
        cfg = hydra_compose(config_name="config", overrides=overrides)
    data = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(data, dict)
    data.pop("hydra", None)
    if profile is not None:
        data["hardware"] = load_profile(profile)
    return data


def load_profile(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"{p}: no such hardware profile")
    data = yaml.safe_load(p.read_text())
    if not isinstance(data, dict):
        raise ValueError(f"{p}: a hardware profile must be a mapping")
    return data
