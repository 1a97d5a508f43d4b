"""The cluster launcher suite: runs only where the ``.[cluster]`` extra is installed (its own venv).

The default run excludes this folder (tests/conftest.py); ``bash .ci/cluster_stage.sh`` builds the
venv and runs it. Without the launchers the run stops at once with one line saying so, rather than
skipping: in that venv a missing launcher is a broken install, not an optional feature.
"""

from __future__ import annotations

import importlib.util

import pytest

NEEDED = (
    "ray",
    "submitit",
    "hydra_plugins.hydra_ray_launcher.ray_launcher",
    "hydra_plugins.hydra_submitit_launcher.submitit_launcher",
)


def _missing() -> list[str]:
    out = []
    for name in NEEDED:
        try:
            found = importlib.util.find_spec(name) is not None
        except ModuleNotFoundError:
            found = False
        if not found:
            out.append(name)
    return out


def pytest_configure(config: pytest.Config) -> None:
    missing = _missing()
    if missing:
        pytest.exit(
            f"tests/cluster needs the cluster extra (missing: {', '.join(missing)}); run bash .ci/cluster_stage.sh",
            returncode=2,
        )
