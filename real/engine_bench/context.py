"""What every engine_bench part shares: the profile's names, the sizes, the device context, a
part's result, and small helpers (rates, medians, one-line errors)."""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from harness.engines.measured import PROFILE_FORMAT, RATE_KEYS
from kvflow.model_spec import ModelSpec, load_model_spec
from real.engine_bench.decoder import SyntheticDecoder

PROFILE_NAME = "engine_profile.yaml"
FORMAT = PROFILE_FORMAT  # harness.engines.measured checks it
NO_CUDA = "skipped: no CUDA"
PAGE_SIZES = (1, 16, 64, 256)
# the engine-model parameters it writes (conf/engine/*.yaml): the ones a profile may set
ENGINE_PARAMS = RATE_KEYS
HARDWARE_PARAMS = ("pcie_h2d_gbps", "pcie_d2h_gbps", "bidirectional_h2d_factor", "bidirectional_d2h_factor")
MIB = 1 << 20


@dataclass(frozen=True)
class Sizes:
    """What each part measures: shapes, token counts and repetitions."""

    models: tuple[str, ...]  # conf/model names whose KV shapes the 0.4 path moves
    tokens: tuple[int, ...]  # tokens per 0.4 load
    direct_tokens: int  # tokens per direct-copy measurement (fewer when it would exceed max_copies)
    max_copies: int  # cudaMemcpyAsync calls per direct measurement at most
    kernel_tokens: int  # tokens per kernel-backend load
    bulk_bytes: int  # one large pinned copy (bidirectional)
    compute_model: str  # shapes of the synthetic decoder (overlap, graph_decode) and of direct/kernel
    compute_tokens: tuple[int, ...]  # prefill sizes of the overlap's compute load
    overlap_load_tokens: int  # tokens loaded during the overlap (per layer: their K and V)
    decode_ctx: int  # KV context of the decode step
    decode_steps: int  # decode steps per timed rep
    reps: int
    single_thread_gather: bool = True  # also time the first model's largest gather on one CPU thread


GPU_SIZES = Sizes(
    models=("llama-3.1-8b", "qwen2.5-32b"),
    tokens=(1024, 8192),
    direct_tokens=4096,
    max_copies=16384,
    kernel_tokens=8192,
    bulk_bytes=256 * MIB,
    compute_model="llama-3.1-8b",
    compute_tokens=(32, 2048),
    overlap_load_tokens=8192,
    decode_ctx=1024,
    decode_steps=20,
    reps=3,
)
DRY_SIZES = Sizes(
    models=("tiny",),
    tokens=(64, 512),
    direct_tokens=512,
    max_copies=2048,
    kernel_tokens=512,
    bulk_bytes=4 * MIB,
    compute_model="tiny",
    compute_tokens=(8, 64),
    overlap_load_tokens=512,
    decode_ctx=64,
    decode_steps=4,
    reps=2,
)


@dataclass
class Ctx:
    """The device and sizes every part shares, plus the synthetic decoder two parts reuse."""

    device: torch.device
    sizes: Sizes
    dtype: torch.dtype = torch.bfloat16
    decoder: SyntheticDecoder | None = None

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.device)

    def timed(self, fn: Callable[[], Any], reps: int | None = None) -> float:
        """Median wall seconds of ``fn`` after one warm-up, synchronized around each call."""
        fn()
        self.sync()
        samples = []
        for _ in range(reps or self.sizes.reps):
            t0 = time.perf_counter()
            fn()
            self.sync()
            samples.append(time.perf_counter() - t0)
        return statistics.median(samples)

    def to_device(self, t: torch.Tensor) -> torch.Tensor:
        """A synchronous copy to the device (pageable when ``t`` is); on CPU a host copy."""
        return t.to(self.device) if self.cuda else t.clone()

    def to_host(self, t: torch.Tensor) -> torch.Tensor:
        return t.cpu() if self.cuda else t.clone()

    def get_decoder(self) -> SyntheticDecoder:
        if self.decoder is None:
            spec = load_model_spec(self.sizes.compute_model)
            self.decoder = SyntheticDecoder(spec, self.device, self.dtype, self.sizes.decode_ctx)
        return self.decoder


@dataclass
class PartResult:
    """What a part measured: engine-model rates, hardware-profile rates, raw figures."""

    engine: dict[str, Any] = field(default_factory=dict)
    hardware: dict[str, Any] = field(default_factory=dict)
    raw: dict[str, Any] = field(default_factory=dict)
    status: str = "ok"


def gbps(nbytes: float, seconds: float) -> float:
    return nbytes / seconds / 1e9 if seconds > 0 else math.inf


def kv_dims(spec: ModelSpec) -> tuple[int, int, int]:
    return spec.layers, spec.kv_heads, spec.head_dim


def median_runs(fn: Callable[[], list[float]], reps: int) -> list[float]:
    fn()
    runs = [fn() for _ in range(reps)]
    return [statistics.median(r[i] for r in runs) for i in range(len(runs[0]))]


def one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text[:300]}"
