"""The same composed config as ``kvflow-sim``: Hydra's compose API over the installed ``conf``
package (``conf/config.yaml`` + groups), as a plain dict. ``hardware=PATH.yaml`` also accepts a
profile file (e.g. one written by ``kvflow-real calibrate --out``)."""

from __future__ import annotations

from typing import Any

from harness.profile import load_profile

__all__ = ["compose", "load_profile"]


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
