"""The one error class for bad setup input (profiles, workloads, capacities, run directories)."""

from __future__ import annotations


class SetupError(ValueError):
    """Bad input; ``str()`` is the one line a CLI shows the user (no traceback)."""
