"""The interface every engine model implements: how a serving engine moves KV between host and GPU.

An engine model (``conf/engine/<name>.yaml``, docs/engines.md) turns ENGINES.md's data path into
what the backends need: a copy time per direction (``copy_link``: a fixed part plus bytes at a rate,
which is exact for each modelled path because their costs are per copy, per layer or per page and
pages are whole), which forwards a running load gates (``gating``), whether issuing a load waits for
the GPU (``scheduler_sync``), and the cache settings it fixes (write policy and threshold, host pool
ratio, page size, load fallbacks) and which events count as a node's hits (SGLang 0.4 counts
every match and every insert walk, and inserts each prefill chunk). Subclasses hold only their
own sourced parameters.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar

from kvflow.model_spec import ModelSpec

GATINGS = ("global", "consumer")  # global: every forward waits for a running load; consumer: only its batch
WRITE_POLICIES = ("write_through", "write_back", "none")


@dataclass(frozen=True)
class CopyLink:
    """One direction of the data path: ``fixed_s + nbytes / (gbps x 1e9)`` per copy."""

    fixed_s: float
    gbps: float  # math.inf: the bytes cost nothing (the ideal engine)


@dataclass(frozen=True, kw_only=True)
class EngineModel(ABC):
    """Common settings of an engine model; ``copy_link`` is the part each version implements."""

    KIND: ClassVar[str] = ""
    PAGED: ClassVar[bool] = True  # its host layout takes any page size (False: page size 1 only)

    name: str
    gating: str  # GATINGS
    scheduler_sync: bool  # issuing a load synchronizes the scheduler thread with the GPU stream
    write_policy: str  # WRITE_POLICIES
    write_through_hits: int  # accesses (insert counts as one) before a node is backed up
    host_ratio: float  # host pool = ratio x device pool (policies with a CPU tier)
    page_size: int
    load_back_threshold_tokens: int  # a CPU-only prefix shorter than this is recomputed, not loaded
    load_mem_quota: bool  # a load larger than the GPU memory left for it is skipped and recomputed
    unbounded_host_pool: bool  # the host pool holds everything ever computed (ideal)
    # What counts as a hit (SGLang 0.4's inc_hit_count; all False: one hit per admission, and a
    # new node's insert counts as its first):
    count_match_hits: bool  # every admission attempt's prefix match counts, admitted or not
    count_insert_hits: bool  # every insert walk over a node on the GPU counts, and the re-match after
    #                          a prefill chunk's insert counts again (new nodes start at 0)
    chunk_inserts: bool  # each non-last prefill chunk's KV joins the tree at the chunk's end

    def cuda_graph_max_bs(self, gpu_memory_bytes: float) -> int:
        """Largest decode batch replayed as a CUDA graph, whose layers no load gates (0: none)."""
        return 0

    @abstractmethod
    def copy_link(self, direction: str, link_gbps: float, latency_s: float, model: ModelSpec) -> CopyLink:
        """The data path's cost for ``direction`` (h2d: loads, d2h: backups) on a host link whose
        ceiling is ``link_gbps`` with ``latency_s`` per copy launch."""
