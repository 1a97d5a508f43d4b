"""``python -m real.engine_bench``: measure, with torch alone, the data paths that decide the
headline (ENGINES.md section 4) and write ``engine_profile.yaml``, which an engine model reads with
``engine.measured=PATH`` (harness/engines/measured.py; docs/real_backend.md).

    python -m real.engine_bench --device cuda --out DIR          # on the GPU machine (~1 min expected on an H200; not yet measured)
    python -m real.engine_bench --device cpu --out DIR --dry-run # tiny shapes on CPU (tests)

Parts, in this order (each a warm-up plus a few timed reps; a part that fails is recorded under
``parts`` and the rest go on; the profile is rewritten after every part, so a killed run leaves one):
- ``path_04``: SGLang 0.4's load, per layer an advanced-index gather from an unpinned host pool
  ``(2, L, size, H, D)`` + one synchronous pageable ``.to(device)`` + a GPU scatter, for each model's
  KV shape and token count; and its backup (GPU gather, pageable ``.cpu()``, CPU scatter).
- ``direct_05``: 0.5's direct backend, one ``cudaMemcpyAsync`` per page per layer (K and V) from a
  pinned layer-first pool at page sizes 1/16/64/256 and one whole-layer copy (a Python loop and
  ``torch._foreach_copy_``; the faster counts), fitted to ``latency x copies + bytes / gbps``.
- ``bidirectional``: large pinned copies alone and with the other direction busy.
- ``overlap``: per-layer side-stream H2D against a 32- and a 2k-token prefill-sized matmul load:
  compute alone, load alone, both independent (does compute slow?), and layer l's compute waiting
  for layer l's copy, next to the model ``max(compute, load) + load / L``.
- ``graph_decode``: a batch-1 decode step of a random-weight decoder with the model's shapes,
  eager and replayed as a CUDA graph.
- ``kernel_05``: 0.5's kernel backend, one SM gather kernel per layer reading pinned memory (a
  zero-copy CUDA view of the pinned pool, for layer_first and page_first layouts), and the
  index_select-into-a-pinned-staging-buffer + one async copy per layer variant. Last: a broken
  zero-copy view must not take the other parts' CUDA context with it.
On CPU (no CUDA) pinned memory, streams and graphs are skipped and marked ``skipped: no CUDA``;
``.to(device)`` becomes a host copy, so a CPU profile describes host memcpy, not PCIe.
"""

from real.engine_bench.context import (
    DRY_SIZES,
    ENGINE_PARAMS,
    FORMAT,
    GPU_SIZES,
    HARDWARE_PARAMS,
    NO_CUDA,
    PAGE_SIZES,
    PROFILE_NAME,
    Ctx,
    PartResult,
    Sizes,
)
from real.engine_bench.decoder import SyntheticDecoder
from real.engine_bench.graph_decode import part_graph_decode
from real.engine_bench.runner import PARTS, main, run, write_profile

__all__ = [
    "DRY_SIZES",
    "ENGINE_PARAMS",
    "FORMAT",
    "GPU_SIZES",
    "HARDWARE_PARAMS",
    "NO_CUDA",
    "PAGE_SIZES",
    "PARTS",
    "PROFILE_NAME",
    "Ctx",
    "PartResult",
    "Sizes",
    "SyntheticDecoder",
    "main",
    "part_graph_decode",
    "run",
    "write_profile",
]
