"""Memory check before the real backend allocates: weights + KV pools + pinned arena vs what is free.

Without it a CPU machine exhausts its memory building an 8B model, or torch raises an allocator
traceback half-way through reserving a pinned arena. ``check_memory`` turns that into one line that
names every size and the key to change (a ``SetupError``: the CLI prints it and exits 2).
Free memory: ``psutil`` if installed, else ``/proc/meminfo`` (``MemAvailable``) or ``os.sysconf``,
lowered to the cgroup v2 limit when one is set; on CUDA ``torch.cuda.mem_get_info`` for the device.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch

from harness.errors import SetupError

__all__ = ["HEADROOM", "MemoryItem", "available_device_bytes", "available_host_bytes", "check_memory"]

HEADROOM = 0.9  # use at most this share of the free memory: activations, working buffers, the rest of us


@dataclass(frozen=True)
class MemoryItem:
    """One allocation: what it is, how big, and the key a user changes to shrink it."""

    what: str
    nbytes: int
    key: str


def available_host_bytes() -> int:
    """Host memory that can be allocated now (bytes)."""
    try:
        import psutil  # optional

        free = int(psutil.virtual_memory().available)
    except ImportError:
        free = _meminfo_available() or _sysconf_available()
    limit = _cgroup_free()
    return min(free, limit) if limit is not None else free


def _meminfo_available() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _sysconf_available() -> int:
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):  # pragma: no cover - not POSIX
        return 1 << 62  # unknown: do not block


def _cgroup_free() -> int | None:
    """cgroup v2 ``memory.max - memory.current`` (a container's limit), None when unlimited."""
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if limit == "max":
            return None
        return max(0, int(limit) - int(Path("/sys/fs/cgroup/memory.current").read_text().strip()))
    except (OSError, ValueError):
        return None


def available_device_bytes(device: torch.device) -> int:
    """Free memory where the device's tensors live: the GPU's, or the host's for ``cpu``."""
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return int(free)
    return available_host_bytes()


def check_memory(items: list[MemoryItem], device: torch.device) -> None:
    """Raise a one-line ``SetupError`` when the items do not fit in ``HEADROOM`` x the free memory.

    On CUDA the items whose key is a host pool (``cache.cpu_capacity_tokens``) are checked against
    host memory, the rest against the device; on CPU everything shares the host."""
    groups: dict[str, list[MemoryItem]] = {}
    for item in items:
        host = device.type != "cuda" or item.key == "cache.cpu_capacity_tokens"
        groups.setdefault("host" if host else str(device), []).append(item)
    for where, group in groups.items():
        need = sum(i.nbytes for i in group)
        free = available_host_bytes() if where == "host" else available_device_bytes(device)
        if need > HEADROOM * free:
            parts = " + ".join(f"{i.what} {_gb(i.nbytes)}" for i in group if i.nbytes)
            total = f" = {_gb(need)}" if sum(1 for i in group if i.nbytes) > 1 else ""
            biggest = max(group, key=lambda i: i.nbytes)
            label = "host (cpu)" if where == "host" else where
            raise SetupError(
                f"not enough memory on {label}: {parts}{total} > {_gb(int(HEADROOM * free))} usable "
                f"({100 * HEADROOM:.0f}% of {_gb(free)} free); change {biggest.key} (the largest)"
            )


def _gb(nbytes: int) -> str:
    return f"{nbytes / 1e9:.2f} GB" if nbytes >= 1e9 else f"{nbytes / 1e6:.2f} MB"
