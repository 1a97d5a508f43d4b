"""Shared fixtures: paths to the read-only project data next to the checkout."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
MOONCAKE = SHARED_DATA / "mooncake" / "synthetic_trace.jsonl"
CHATDEV = SHARED_DATA / "chatdev"

collect_ignore = ["sglang", "cluster"]  # own venvs: .ci/sglang_stage.sh, .ci/cluster_stage.sh


@pytest.fixture
def mooncake_path() -> Path:
    if not MOONCAKE.exists():
        pytest.skip(f"shared data not found at {MOONCAKE}")
    return MOONCAKE
