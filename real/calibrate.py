"""``kvflow-real calibrate``: measure this machine and fit the simulator's measured cost model.

Measures, on the real backend's own code paths:
- prefill over a grid of (new tokens n, cached context p): gather the prefix from a node tensor,
  forward the n tokens against it, sample, copy the new KV into a node tensor;
- decode over a grid of (batch B, context c): one batched greedy step;
- H2D / D2H copies of node-sized KV tensors between pinned host memory and the device, alone and
  with the other direction busy (the bidirectional factor).
Then fits, with non-negative least squares on relative error, the blocks that
``harness/cost_model.py`` reads from ``hardware.measured`` (docs/cost_model.md):
``prefill: a + b sum(n) + c sum(n p) + d sum(n(n+1)/2)`` (d: the new tokens' own causal attention),
``decode: a + b B + c sum(context)``,
``h2d/d2h: latency + bytes / gbps``. Bytes are the model's bf16 KV bytes (``ModelSpec``), the unit
the simulator uses, whatever dtype the measurement ran in. Writes a hardware profile YAML: the
base profile's fields, the ``measured`` block, and a ``calibration`` block with the raw points
and the fit error of each term.
"""

from __future__ import annotations

import datetime as _dt
import itertools
import random
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from harness.fit import Fit, fit_copy, fit_decode, fit_prefill
from kvflow.model_spec import ModelSpec
from real.model import Seq, Transformer

GIB = 1 << 30


@dataclass
class Grid:
    prefill_new: list[int]
    prefill_ctx: list[int]
    decode_batch: list[int]
    decode_ctx: list[int]
    copy_tokens: list[int]
    reps: int = 3
    memory_budget_bytes: int = 24 * GIB  # KV buffers of the decode grid at most
    max_prompt_tokens: int | None = None  # prefill points need n + p <= this (shapes a workload can have)
    interleave: bool = False  # reps in shuffled rounds over all points (a shared host's load hits every point)

    @classmethod
    def default(cls, device: torch.device, spec: ModelSpec) -> Grid:
        if device.type == "cuda":
            per_mib = max(1, (1 << 20) // spec.kv_bytes_per_token)
            return cls(
                [128, 512, 2048, 8192],
                [0, 4096, 8192],
                [1, 4, 16, 32],
                [1024, 4096, 8192],
                [per_mib * m for m in (1, 8, 64, 256, 1024)],
            )
        return cls([16, 64, 256, 512], [0, 256, 1024], [1, 2, 4, 8], [64, 512, 2048], [64, 256, 1024, 4096, 16384])

    @classmethod
    def for_trace(cls, trace: Any, chunk_tokens: int, max_batch: int) -> Grid:
        """The shapes ``trace`` can produce, so the fit interpolates instead of extrapolating: new
        tokens up to the longest prompt (or chunk), contexts up to the longest fixed prompt, the
        median suffix exactly, decode batches up to ``max_batch``, copies up to four fixed prompts."""
        invs = trace.invocations
        longest = max(trace.prompt_len(i) for i in invs)
        fixed = max(1, max(trace.fixed_tokens(i) for i in invs))
        suffix = int(statistics.median(trace.prompt_len(i) - trace.fixed_tokens(i) for i in invs))
        out = max(i.output_tokens for i in invs)
        new_max = max(16, min(longest, chunk_tokens))
        new = {n for n in _geometric(16, new_max) if n * 1.5 < new_max} | {new_max, max(1, suffix)}
        return cls(
            prefill_new=sorted(new),
            prefill_ctx=sorted({0, fixed // 2, fixed}),
            decode_batch=[b for b in (1, 2, 4, 8, 16) if b <= max(1, max_batch)],
            decode_ctx=sorted({min(64, longest), longest // 2 or 1, longest + out}),
            copy_tokens=sorted({16, *_geometric(64, 4 * fixed)}),
            reps=15,
            max_prompt_tokens=longest,
            interleave=True,
        )


def _geometric(lo: int, hi: int, factor: int = 4) -> list[int]:
    out, v = [], lo
    while v < hi:
        out.append(v)
        v *= factor
    return [*out, hi]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time(fn: Callable[[], Any], device: torch.device, reps: int) -> float:
    """Median wall time of ``fn`` after one warm-up call, synchronised around each call."""
    fn()
    _sync(device)
    samples = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        samples.append(time.perf_counter() - t0)
    return statistics.median(samples)


def _time_all(fns: list[Callable[[], Any]], device: torch.device, reps: int, interleave: bool) -> list[float]:
    """Median time of each function: point after point, or (``interleave``) in ``reps`` rounds that
    visit every point in a shuffled order, so a burst of load from other processes is spread over
    all points instead of skewing a few (the fit's slope would follow the burst)."""
    if not interleave:
        return [_time(fn, device, reps) for fn in fns]
    samples: list[list[float]] = [[] for _ in fns]
    order = list(range(len(fns)))
    rng = random.Random(0)
    for fn in fns:
        fn()
    _sync(device)
    for _ in range(reps):
        rng.shuffle(order)
        for i in order:
            t0 = time.perf_counter()
            fns[i]()
            _sync(device)
            samples[i].append(time.perf_counter() - t0)
    return [statistics.median(x) for x in samples]


# ----- measurements -------------------------------------------------------------------------------
def measure_prefill(net: Transformer, grid: Grid) -> list[dict[str, float]]:
    s = net.spec
    cap = max(grid.prefill_new) + max(grid.prefill_ctx)
    kv = net.new_kv(cap)
    token_shape = (s.layers, 2, s.kv_heads, s.head_dim)
    prefix = torch.randn((max(grid.prefill_ctx) or 1, *token_shape), device=net.device).to(net.dtype)
    gen = np.random.default_rng(0)
    shapes, fns = [], []
    for n, p in itertools.product(grid.prefill_new, grid.prefill_ctx):
        if grid.max_prompt_tokens is not None and p and n + p > grid.max_prompt_tokens:
            continue  # no prompt of the workload has this shape
        ids = gen.integers(0, s.vocab, n).tolist()

        def step(n: int = n, p: int = p, ids: list[int] = ids) -> None:
            if p:
                kv[:, :, :, :p].copy_(prefix[:p].permute(1, 2, 3, 0, 4))  # gather the cached prefix
            net.greedy(net.forward(ids, [Seq(kv, p, n)]))
            kv[:, :, :, p : p + n].permute(3, 0, 1, 2, 4).contiguous()  # new node's own tensor

        shapes.append((n, p))
        fns.append(step)
    times = _time_all(fns, net.device, grid.reps, grid.interleave)
    return [{"new_tokens": n, "context_tokens": p, "time_s": t} for (n, p), t in zip(shapes, times)]


def measure_decode(net: Transformer, grid: Grid) -> list[dict[str, float]]:
    s = net.spec
    token_bytes = 2 * s.layers * s.kv_heads * s.head_dim * torch.tensor([], dtype=net.dtype).element_size()
    points = []
    shapes, fns = [], []  # interleaved: every context's buffers stay alive until all are timed
    for c in sorted(grid.decode_ctx):
        bufs: list[torch.Tensor] = []
        if net.device.type == "cuda" and not grid.interleave:
            torch.cuda.empty_cache()
        for b in sorted(grid.decode_batch):
            if b * (c + 1) * token_bytes > grid.memory_budget_bytes:
                continue
            while len(bufs) < b:
                t = net.new_kv(c + 1)
                t.normal_()
                bufs.append(t)
            seqs = [Seq(bufs[i], c, 1) for i in range(b)]
            ids = list(range(b))

            def step(ids: list[int] = ids, seqs: list[Seq] = seqs) -> None:
                net.greedy(net.forward(ids, seqs))

            if grid.interleave:
                shapes.append((b, c))
                fns.append(step)
            else:
                points.append({"batch": b, "context_tokens": c, "time_s": _time(step, net.device, max(grid.reps, 5))})
    times = _time_all(fns, net.device, max(grid.reps, 5), True)
    return points + [{"batch": b, "context_tokens": c, "time_s": t} for (b, c), t in zip(shapes, times)]


def measure_copies(net: Transformer, grid: Grid, spec_token_bytes: int) -> dict[str, list[dict[str, float]]]:
    """Node-shaped copies on their own stream (GPU) or plain copies (CPU), alone and contended."""
    s = net.spec
    token_shape = (s.layers, 2, s.kv_heads, s.head_dim)
    cuda = net.device.type == "cuda"
    biggest = max(grid.copy_tokens)
    host = torch.empty((biggest, *token_shape), dtype=net.dtype, pin_memory=cuda)
    host_b = torch.empty((biggest, *token_shape), dtype=net.dtype, pin_memory=cuda)
    dev = torch.empty((biggest, *token_shape), dtype=net.dtype, device=net.device)
    dev_b = torch.empty((biggest, *token_shape), dtype=net.dtype, device=net.device)
    streams = {d: torch.cuda.Stream(net.device) for d in ("h2d", "d2h")} if cuda else {}

    def copy(direction: str, n: int) -> None:
        dst, src = (dev[:n], host[:n]) if direction == "h2d" else (host_b[:n], dev_b[:n])
        if cuda:
            with torch.cuda.stream(streams[direction]):
                dst.copy_(src, non_blocking=True)
            streams[direction].synchronize()
        else:
            dst.copy_(src)

    out: dict[str, list[dict[str, float]]] = {"h2d": [], "d2h": []}
    for direction in out:
        for n in grid.copy_tokens:
            t = _time(lambda: copy(direction, n), net.device, max(grid.reps, 5))
            out[direction].append({"tokens": n, "bytes": n * spec_token_bytes, "time_s": t})
    # CPU "copies" are memcpys with no link to share: no contention factor (1.0) is measured there
    out["bidirectional"] = _measure_bidirectional(copy, biggest, net.device, max(grid.reps, 3)) if cuda else []
    return out


def _measure_bidirectional(
    copy: Callable[[str, int], None], n: int, device: torch.device, reps: int
) -> list[dict[str, float]]:
    """Each direction's time alone and while the other direction copies the same size."""
    import threading

    rows = []
    for direction, other in (("h2d", "d2h"), ("d2h", "h2d")):
        alone = _time(lambda: copy(direction, n), device, reps)
        samples = []
        for _ in range(reps):
            th = threading.Thread(target=copy, args=(other, n))
            th.start()
            t0 = time.perf_counter()
            copy(direction, n)
            samples.append(time.perf_counter() - t0)
            th.join()
        rows.append({"direction": direction, "alone_s": alone, "contended_s": statistics.median(samples)})
    return rows


# ----- fitting: harness/fit.py (shared with benchmarks/aic_fit.py) -------------------------------


# ----- driver ---------------------------------------------------------------------------------------
def calibrate(
    net: Transformer, grid: Grid, log: Callable[[str], None] = print, loop_fixed_tokens: int | None = None
) -> dict[str, Any]:
    """Measure and fit; returns {'measured': {...}, 'fits': {...}, 'bidirectional': {...}}."""
    spec_token_bytes = net.spec.kv_bytes_per_token
    t0 = time.perf_counter()
    pre = fit_prefill(measure_prefill(net, grid), own_attention=True)
    log(f"prefill: {len(pre.points)} points in {time.perf_counter() - t0:.1f}s")
    t1 = time.perf_counter()
    dec = fit_decode(measure_decode(net, grid))
    log(f"decode: {len(dec.points)} points in {time.perf_counter() - t1:.1f}s")
    t2 = time.perf_counter()
    copies = measure_copies(net, grid, spec_token_bytes)
    links = {d: fit_copy(copies[d]) for d in ("h2d", "d2h")}
    log(f"copies: {sum(len(f.points) for f in links.values())} points in {time.perf_counter() - t2:.1f}s")
    factors = {
        f"bidirectional_{r['direction']}_factor": round(min(1.0, r["alone_s"] / r["contended_s"]), 3)
        for r in copies["bidirectional"]
        if r["contended_s"] > 0
    }
    if net.device.type != "cuda":
        factors = {"bidirectional_h2d_factor": 1.0, "bidirectional_d2h_factor": 1.0}
    fits = {"prefill": pre, "decode": dec, **links}
    measured = {k: {n: float(v) for n, v in f.coef.items()} for k, f in fits.items()}
    result = {
        "measured": measured,
        "fits": fits,
        "bidirectional": factors,
        "raw_bidirectional": copies["bidirectional"],
    }
    if loop_fixed_tokens:
        measure_loop(net, result, loop_fixed_tokens, log, typical=grid.interleave)
    return result


def loop_overheads(
    measured: dict[str, dict[str, float]], log_rows: list[tuple[str, list, int, float]], percentile: float = 25
) -> dict[str, float]:
    """Time the engine loop spends per prefill iteration / per decode step beyond what the
    fitted compute terms predict (scheduling, KV gathers and fills, sampling, bookkeeping)."""
    pre, dec = measured["prefill"], measured["decode"]
    d = pre.get("d_s_per_token_pair", 0.0)
    r_pre, r_dec = [], []
    for kind, shape, steps, seconds in log_rows:
        if kind == "prefill":
            pred = pre["a_s"] + sum(
                pre["b_s_per_token"] * n + pre["c_s_per_token_ctx"] * n * p + d * n * (n + 1) / 2 for n, p in shape
            )
            r_pre.append(seconds - pred)
        elif steps:
            b = len(shape)
            pred = sum(
                dec["a_s"] + dec["b_s_per_seq"] * b + dec["c_s_per_ctx_token"] * (sum(shape) + b * k)
                for k in range(steps)
            )
            r_dec.append((seconds - pred) / steps)
    # lower quartile by default, not mean: on a dedicated host interference only ever adds time
    return {
        "prefill_s": max(0.0, float(np.percentile(r_pre, percentile))) if r_pre else 0.0,
        "decode_step_s": max(0.0, float(np.percentile(r_dec, percentile))) if r_dec else 0.0,
        "prefill_iterations": len(r_pre),
        "decode_iterations": len(r_dec),
    }


def measure_loop(
    net: Transformer,
    result: dict[str, Any],
    fixed_tokens: int,
    log: Callable[[str], None] = print,
    typical: bool = False,
) -> None:
    """Run a short sequential workflow on the real engine loop and fold the per-iteration overhead
    into the ``a_s`` terms (the simulator charges one ``a_s`` per prefill iteration / decode step).
    ``typical`` (a shared host, ``Grid.interleave``): the median residual over three runs instead of
    the quietest run's lower quartile, because the run being predicted shares the same load."""
    from harness.profile import conf_profile
    from real.runner import RealOptions, run_real

    cfg = {
        "model": net.spec.name,
        "seed": 0,
        "hardware": {
            **conf_profile("h200"),
            "name": "calibration",
            "chunked_prefill_tokens": 1 << 20,
            "measured": None,
        },  # a complete profile; only the chunk size matters for this run
        "workload": {
            "name": "calibration",
            "generator": "sequential",
            "params": {
                "agents": 4,
                "warmup": 1,
                "runs": 2,
                "fixed_tokens": fixed_tokens,
                "dynamic_tokens": 32,
                "output_tokens": 16,
            },
        },
        "policy": {"name": "sglang", "eviction": {"name": "lru"}, "cpu_capacity_ratio": 0.0, "hints": False},
        "cache": {"gpu_capacity_tokens": 8 * (fixed_tokens + 64)},
        "engine": {"max_running_requests": 1},
    }
    t0 = time.perf_counter()
    overs = []
    for _ in range(3 if typical else 2):  # dedicated host: twice, keep the quieter
        res = run_real(cfg, opts=RealOptions(device=str(net.device), warmup=False), net=net)
        overs.append(loop_overheads(result["measured"], res.loop.iteration_log, 50 if typical else 25))
    overs.sort(key=lambda o: o["prefill_s"] + 16 * o["decode_step_s"])
    over = overs[len(overs) // 2] if typical else overs[0]
    result["measured"]["prefill"]["a_s"] += over["prefill_s"]
    result["measured"]["decode"]["a_s"] += over["decode_step_s"]
    result["loop_overhead"] = over
    log(
        f"engine loop: {len(overs)} x {len(res.loop.iteration_log)} iterations in {time.perf_counter() - t0:.1f}s; overhead "
        f"{1e3 * over['prefill_s']:.3f} ms/prefill iteration, {1e3 * over['decode_step_s']:.3f} ms/decode step "
        f"(added to a_s)"
    )


def fit_report(fits: dict[str, Fit]) -> str:
    lines = ["term      coefficients                                              MAPE    max err"]
    for name, f in fits.items():
        coef = ", ".join(f"{k}={v:.4g}" for k, v in f.coef.items())
        lines.append(f"{name:<9} {coef:<57} {100 * f.mape:6.2f}% {100 * f.max_err:7.2f}%")
    return "\n".join(lines)


def write_profile(
    path: Path, base: dict[str, Any], name: str, result: dict[str, Any], net: Transformer, grid: Grid
) -> Path:
    """Base profile + measured block + calibration metadata, as YAML that ``kvflow-sim`` reads."""
    prof = dict(base)
    device_name = torch.cuda.get_device_name(net.device) if net.device.type == "cuda" else "cpu"
    prof["name"] = name
    prof["gpu"] = f"{device_name} (calibrated by kvflow-real from base profile '{base.get('name')}')"
    prof.update(result["bidirectional"])
    prof["measured"] = result["measured"]
    prof["measured_model"] = net.spec.name  # the simulator refuses the block for another model
    prof["calibration"] = {
        "date": _dt.datetime.now().isoformat(timespec="seconds"),
        "device": device_name,
        "torch": torch.__version__,
        "dtype": str(net.dtype).replace("torch.", ""),
        "model": net.spec.name,
        "base_profile": base.get("name"),
        "reps": grid.reps,
        "bytes_unit": f"ModelSpec.kv_bytes_per_token = {net.spec.kv_bytes_per_token} per token",
        "fit_error": {k: {"mape": round(f.mape, 5), "max": round(f.max_err, 5)} for k, f in result["fits"].items()},
        "points": {k: f.points for k, f in result["fits"].items()},
        "bidirectional_points": result["raw_bidirectional"],
        "loop_overhead": result.get("loop_overhead"),
    }
    cpu_note = (
        "# CPU PROFILE: measured on a CPU host, not a GPU; only for validating the simulator on this host.\n"
        if net.device.type != "cuda"
        else ""
    )
    header = cpu_note + (
        f"# Hardware profile measured by `kvflow-real calibrate` on {device_name} "
        f"(model {net.spec.name}, {prof['calibration']['date']}).\n"
        f"# Spec fields come from the base profile '{base.get('name')}'; `measured` overrides the\n"
        f"# spec-derived cost model (docs/cost_model.md). Use: kvflow-sim hardware={name}\n"
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(header + yaml.safe_dump(_plain(prof), sort_keys=False))
    return path


def _plain(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    if isinstance(x, (np.floating, np.integer)):
        return x.item()
    if isinstance(x, str):
        return str(x)  # e.g. torch.__version__ is a str subclass
    return x
