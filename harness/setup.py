"""One setup path for every backend (simulator, real, SGLang replay): config in, what a run needs out.

``prepare(cfg)`` reads the model spec and the hardware profile into a ``CostModel``, builds the
trace (a file, raw logs imported on the fly, or a generator), sizes the GPU and CPU KV pools and
checks that every invocation fits; ``build_core`` makes the policy, cache manager and engine from
it with the profile's link rate and gain per token. The backends then only add their clock.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.cost_model import CostModel
from harness.engines import EngineModel, load_engine
from harness.errors import SetupError
from harness.profile import load_model
from kvflow.build import DataPath, build_engine
from kvflow.engine import Engine
from kvflow.model_spec import ModelSpec
from kvflow.release import ReleaseOptions, ReleaseRule
from traces.schema import Trace

LOG_SUFFIXES = (".log.gz", ".log", ".jsonl", ".jsonl.gz", ".json.gz", ".json")  # chatdev, openai, weka, otel
GAIN_CHUNK_TOKENS = 512
HELD_OUT_EVERY = 5  # workload.sessions=test: every 5th session (file order) is held out


@dataclass
class Setup:
    """What ``prepare`` resolved for one run."""

    model: ModelSpec
    cost: CostModel
    trace: Trace
    gpu_tokens: int
    cpu_tokens: int
    release: ReleaseRule | None = None  # when each invocation is released (workload.replay / start)


def build_trace(workload: Mapping[str, Any], seed: int) -> Trace:
    """A trace file (``workload.trace``), raw logs imported on the fly (``workload.import_format`` +
    ``workload.import_from``: files or folders), or a generated workload (``generator`` + ``params``);
    then ``workload.model_map`` (``traces.model_map``) and ``workload.sessions`` (a held-out split)."""
    from traces.model_map import apply_model_map

    trace = _raw_trace(workload, seed)
    trace = select_sessions(trace, workload.get("sessions"))
    try:
        return apply_model_map(trace, workload.get("model_map"))
    except ValueError as exc:
        raise SetupError(str(exc)) from None


def _raw_trace(workload: Mapping[str, Any], seed: int) -> Trace:
    from traces.generators import generate
    from traces.io import load_trace

    if workload.get("import_format"):
        return import_logs(str(workload["import_format"]), str(workload.get("import_from") or ""), seed)
    if workload.get("trace"):
        return load_trace(str(workload["trace"]))
    params = dict(workload.get("params") or {})
    params.setdefault("seed", seed)
    try:
        return generate(str(workload["generator"]), **params)
    except ValueError as exc:
        raise SetupError(f"workload {workload.get('name')!r}: {exc}") from None


def select_sessions(trace: Trace, split: Any) -> Trace:
    """``workload.sessions``: ``all`` (default), ``test`` (every 5th session in the trace's order,
    the 5th, 10th, ...: the held-out set) or ``train`` (the others, for tuning)."""
    if split in (None, "all"):
        return trace
    if split not in ("test", "train"):
        raise SetupError(f"workload.sessions: {split!r} is not one of all, test, train")
    order = list(dict.fromkeys(inv.client_id for inv in trace.invocations))
    test = set(order[HELD_OUT_EVERY - 1 :: HELD_OUT_EVERY])
    keep = [inv for inv in trace.invocations if (inv.client_id in test) == (split == "test")]
    if not keep:
        raise SetupError(f"workload.sessions: {split!r} selects no session of {len(order)}")
    return Trace({**trace.meta, "sessions": split}, trace.workflows, keep)


def import_logs(fmt: str, source: str, seed: int) -> Trace:
    """Import raw logs (comma-separated files or folders) with the ``fmt`` importer of ``traces``."""
    from traces.importers import import_trace

    paths: list[str] = []
    for part in filter(None, source.split(",")):
        path = Path(part)
        if path.is_dir():
            paths += sorted(str(p) for p in path.iterdir() if p.name.endswith(LOG_SUFFIXES))
        elif path.exists():
            paths.append(str(path))
        else:
            raise SetupError(f"workload.import_from: no such file or folder: {part}")
    if not paths:
        raise SetupError(f"workload.import_from: no {fmt} logs found in {source!r}")
    try:
        return import_trace(fmt, paths, seed=seed)
    except ValueError as exc:
        raise SetupError(str(exc)) from None


def capacities(cfg: Mapping[str, Any], cost: CostModel, trace: Trace) -> tuple[int, int]:
    """(GPU, CPU) KV pool sizes in tokens: ``cache.gpu_capacity_tokens``, else
    ``cache.gpu_tokens_per_client`` x clients, else the profile's pool; CPU: ``cache.cpu_capacity_tokens``
    or ``policy.cpu_capacity_ratio`` (null: the engine's ``host_ratio``) x GPU, and 0 when the policy
    has no CPU tier (ratio 0). An engine with an unbounded host pool (ideal) holds every token of the
    trace."""
    cache_cfg = cfg.get("cache") or {}
    gpu = cache_cfg.get("gpu_capacity_tokens")
    per_client = cache_cfg.get("gpu_tokens_per_client")
    if gpu is None and per_client:
        gpu = int(per_client) * len({inv.client_id for inv in trace.invocations})
    gpu = int(gpu) if gpu is not None else cost.gpu_kv_capacity_tokens()
    engine = cost.engine or load_engine(cfg.get("engine"))
    ratio = (cfg.get("policy") or {}).get("cpu_capacity_ratio", 0.0)
    ratio = engine.host_ratio if ratio is None else float(ratio)
    cpu = cache_cfg.get("cpu_capacity_tokens")
    cpu = 0 if ratio <= 0 else (int(cpu) if cpu is not None else int(ratio * gpu))
    if cpu and engine.unbounded_host_pool:  # the ideal engine: nothing computed is ever lost
        cpu = max(cpu, sum(trace.prompt_len(inv) + inv.output_tokens for inv in trace.invocations))
    return gpu, cpu


def check_fits(trace: Trace, gpu_tokens: int) -> None:
    """Every invocation's prompt + output must fit in the GPU pool, or it could never run."""
    for inv in trace.invocations:
        need = trace.prompt_len(inv) + inv.output_tokens
        if need > gpu_tokens:
            raise SetupError(
                f"invocation {inv.id!r} needs {need} KV tokens (prompt + output) but the GPU KV pool holds "
                f"{gpu_tokens}: it can never run (raise cache.gpu_capacity_tokens or use a bigger GPU)"
            )


def gain_s_per_token(cost: CostModel, context_tokens: int = 2048) -> float:
    """Seconds saved per cached token: recomputing it (one token of a prefill chunk at a typical
    context) minus reloading it over PCIe. Negative when reloading is slower than recomputing.
    With a measured prefill block this is ``b_s_per_token + c_s_per_token_ctx x context``."""
    chunk = GAIN_CHUNK_TOKENS
    recompute = (cost.prefill_time_s([(chunk, context_tokens)]) - cost.prefill_time_s([(1, context_tokens)])) / (
        chunk - 1
    )
    reload = cost.transfer_time_s(cost.model.kv_bytes_per_token * chunk, "h2d") / chunk
    return recompute - reload


def prepare(cfg: Mapping[str, Any], trace: Trace | None = None) -> Setup:
    """Model, cost model, trace (``trace`` if given) and capacities of one run, fit-checked."""
    model = load_model(cfg["model"])
    cost = CostModel.for_run(cfg, model)
    trace = trace if trace is not None else build_trace(cfg["workload"], int(cfg.get("seed", 0)))
    gpu_tokens, cpu_tokens = capacities(cfg, cost, trace)
    check_fits(trace, gpu_tokens)
    release = release_rule(cfg, cost, trace)
    return Setup(model, cost, trace, gpu_tokens, cpu_tokens, release)


def release_options(cfg: Mapping[str, Any]) -> ReleaseOptions:
    """``workload.replay`` (open|closed; default closed for traces with dependencies), ``workload.start``
    (recorded|together|poisson) and ``workload.start_rate_per_s``, with the run's seed."""
    wl = cfg.get("workload") or {}
    try:
        rate = float(wl.get("start_rate_per_s") or 0.0)
    except (TypeError, ValueError):
        raise SetupError(f"workload.start_rate_per_s: {wl.get('start_rate_per_s')!r} is not a number") from None
    replay = wl.get("replay")
    opts = ReleaseOptions(
        replay=None if replay in (None, "auto") else str(replay),
        start=str(wl.get("start") or "recorded"),
        start_rate_per_s=rate,
        seed=int(cfg.get("seed", 0)),
    )
    try:
        opts.check()
    except ValueError as exc:
        raise SetupError(str(exc)) from None
    return opts


def service_estimate_s(cost: CostModel, trace: Trace, chunk: int) -> Callable[[Any], float]:
    """A call's service time alone on the configured hardware (chunked prefill of its whole prompt,
    then its decode steps): what a closed-loop gap subtracts where the log recorded no service time."""

    def estimate(inv: Any) -> float:
        prompt = trace.prompt_len(inv)
        t = sum(cost.prefill_time_s([(min(chunk, prompt - c), c)]) for c in range(0, prompt, chunk))
        if inv.output_tokens > 0:
            t += float(cost.decode_run_times_s([prompt], inv.output_tokens)[-1])
        return t

    return estimate


def release_rule(cfg: Mapping[str, Any], cost: CostModel, trace: Trace) -> ReleaseRule:
    """The release rule every backend's driver applies (``kvflow.release``)."""
    chunk = int(
        ((cfg.get("engine") or {}).get("chunk_tokens"))
        or (cfg.get("hardware") or {}).get("chunked_prefill_tokens")
        or 8192
    )
    return ReleaseRule(trace, release_options(cfg), service_estimate_s(cost, trace, chunk))


def chunk_tokens(cfg: Mapping[str, Any]) -> int:
    """Prefill chunk: ``engine.chunk_tokens``, else the profile's ``chunked_prefill_tokens``."""
    return int((cfg.get("engine") or {}).get("chunk_tokens") or cfg["hardware"]["chunked_prefill_tokens"])


def data_path(engine: EngineModel, chunk_inserts: bool = True) -> DataPath:
    """The engine model's settings the core applies (write policy, load fallbacks, what counts as a
    hit); ``chunk_inserts`` False keeps one insert per prompt whatever the engine does."""
    return DataPath(
        write_policy=engine.write_policy,
        write_through_hits=engine.write_through_hits,
        load_back_threshold_tokens=engine.load_back_threshold_tokens,
        load_mem_quota=engine.load_mem_quota,
        count_match_hits=engine.count_match_hits,
        count_insert_hits=engine.count_insert_hits,
        chunk_inserts=engine.chunk_inserts and chunk_inserts,
    )


def page_size(cfg: Mapping[str, Any], engine: EngineModel, trace: Trace | None = None) -> int:
    """``cache.page_size`` when set; else, on an engine whose layout takes pages, the block size a
    hash-id trace declares (``block_tokens`` in its header: Weka 64, Mooncake 512; its content is
    known per block only, so the simulator pages by it); else the engine model's."""
    value = (cfg.get("cache") or {}).get("page_size")
    if value is not None:
        return int(value)
    if trace is not None and engine.PAGED and "block_tokens" in trace.meta:
        return trace.block_tokens
    return engine.page_size


def build_core(cfg: Mapping[str, Any], setup: Setup, free_ops: bool = True, chunk_inserts: bool = True) -> Engine:
    """The policy, cache manager and engine every backend drives (``kvflow.build``); ``free_ops``
    False for the simulator, which counts tokens and has no memory to free per node. The engine
    model (``engine``) sets the write policy, page size, load fallbacks and hit counting;
    ``chunk_inserts`` False for a backend that fills a node's KV only at the prompt's end (real/),
    so no other request can match a prefill chunk's node before its KV exists."""
    cost = setup.cost
    engine_cfg = cfg.get("engine") or {}
    model = cost.engine or load_engine(engine_cfg)
    return build_engine(
        cfg["policy"],
        gpu_tokens=setup.gpu_tokens,
        cpu_tokens=setup.cpu_tokens,
        kv_bytes_per_token=setup.model.kv_bytes_per_token,
        chunk_tokens=chunk_tokens(cfg),
        h2d_gbps=cost.transfer_gbps("h2d"),
        page_size=page_size(cfg, model, setup.trace),
        max_running=engine_cfg.get("max_running_requests"),
        gain_s_per_token=lambda: gain_s_per_token(cost),
        free_ops=free_ops,
        data_path=data_path(model, chunk_inserts),
    )
