"""Engine models (conf/engine, harness/engines, docs/engines.md): sglang_0.4 and sglang_0.5 differ
where ENGINES.md says they must, and the ideal engine is a latency floor."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import simpy

from harness.config_schema import ConfigError, validate_config
from harness.cost_model import CostModel
from harness.engines import EngineModel, IdealEngine, SGLang04, SGLang05, conf_engine, load_engine
from harness.setup import data_path
from kvflow.build import build_engine
from kvflow.engine import Iteration, Request
from kvflow.model_spec import load_model_spec
from kvflow.ops import Load
from kvflow.radix import RadixNode
from sim.engine_loop import EngineLoop
from sim.pcie import PCIeLink
from sim.runner import load_conf, simulate

REPO = Path(__file__).resolve().parents[1]
GIB = 1 << 30
LLAMA = load_model_spec("llama-3.1-8b")

GATHER_GBPS = float(conf_engine("sglang_0.4")["host_gather_gbps"])  # the fitted value (sim.paper)


def engine(name: str, **overrides: Any) -> EngineModel:
    return load_engine({**conf_engine(name), **overrides})


def cost(name: str, hardware: str = "h100", **overrides: Any) -> CostModel:
    return CostModel.from_config(load_conf("hardware", hardware), LLAMA, engine(name, **overrides))


# -- copy rates ----------------------------------------------------------------------------------
def test_each_name_builds_its_class() -> None:
    assert isinstance(engine("sglang_0.4"), SGLang04)
    assert isinstance(engine("sglang_0.5"), SGLang05)
    assert isinstance(engine("ideal"), IdealEngine)
    assert isinstance(load_engine({}), SGLang05)  # the default


def test_04_is_gather_then_pageable_copy_per_layer() -> None:
    t = cost("sglang_0.4").transfer_time_s(GIB, "h2d")
    assert t == pytest.approx(32 * 1e-5 + GIB / (GATHER_GBPS * 1e9) + GIB / 11.1e9)
    backup = cost("sglang_0.4").transfer_time_s(GIB, "d2h")  # one copy per node, not per layer
    assert backup == pytest.approx(1e-5 + GIB / (GATHER_GBPS * 1e9) + GIB / 11.1e9)


def test_pageable_04_is_slower_than_pinned_05_and_the_link_caps_both() -> None:
    old, new = cost("sglang_0.4"), cost("sglang_0.5")
    assert new.transfer_time_s(GIB, "h2d") == pytest.approx(32 * 1e-5 + GIB / 19.6e9)
    assert old.transfer_time_s(GIB, "h2d") > 2 * new.transfer_time_s(GIB, "h2d")
    assert cost("sglang_0.5", host_layout="layer_first").transfer_gbps("h2d") == pytest.approx(28.4)
    # the paper's A10G link (2 GB/s) is below every path rate
    assert cost("sglang_0.5", "a10g_paper").transfer_gbps("h2d") == pytest.approx(2.0)
    assert cost("sglang_0.4", "a10g_paper").transfer_gbps("h2d") == pytest.approx(1 / (1 / GATHER_GBPS + 1 / 2.0))


def test_direct_copies_cost_per_page() -> None:
    """Direct IO: one cudaMemcpyAsync per page per layer, so small pages are slow."""
    times = {p: cost("sglang_0.5", io_backend="direct", page_size=p).transfer_time_s(GIB, "h2d") for p in (1, 16, 64)}
    for page, t in times.items():
        pages = GIB // (page * LLAMA.kv_bytes_per_token)
        assert t == pytest.approx(1e-5 + pages * 32 * 2.7e-6 + GIB / 52.4e9)
    assert times[1] > 10 * times[16] > times[64]


def test_efficiency_override_and_ideal() -> None:
    over = CostModel.from_config({**load_conf("hardware", "h100"), "pcie_efficiency": 0.5}, LLAMA, engine("sglang_0.4"))
    assert over.transfer_gbps("h2d") == pytest.approx(31.5)
    assert cost("ideal").transfer_time_s(GIB, "h2d") == 0.0
    assert cost("ideal").transfer_time_s(GIB, "d2h", other_direction_busy=True) == 0.0


# -- forward gating and scheduler sync -------------------------------------------------------------
class OneIteration:
    """The engine-loop's view of an engine: one queued background load, then one iteration."""

    def __init__(self, iteration: Iteration, load_bytes: int) -> None:
        node = RadixNode([], None)
        self.ops: list[Any] = [Load(node, load_bytes // LLAMA.kv_bytes_per_token, load_bytes, prefetch=True)]
        self.cache = SimpleNamespace(pending_ops=self.ops)
        self.iteration: Iteration | None = iteration
        self.finished_at: float | None = None

    def take_ops(self) -> list[Any]:
        out = list(self.ops)
        self.ops.clear()
        return out

    def step(self, now_s: float) -> Iteration | None:
        it, self.iteration = self.iteration, None
        return it

    def finish(self, it: Iteration, now_s: float, decode_steps_done: int | None = None) -> list[Any]:
        self.finished_at = now_s
        return []

    def complete_op(self, op: Any, now_s: float) -> None:
        pass


def run_loop(name: str, fake: OneIteration, until_s: float = 10.0, **overrides: Any) -> tuple[EngineLoop, list]:
    model = cost(name, **overrides)
    env = simpy.Environment()
    timeline: list = []
    pcie = PCIeLink(env, model, timeline=timeline)
    loop = EngineLoop(env, fake, model, pcie, on_finished=lambda _: None, timeline=timeline)
    env.process(loop.run())
    env.run(until=until_s)
    return loop, timeline


def decode_of_another_request() -> Iteration:
    other = Request("r2", "c2", "a", [1, 2, 3], 0, 8)
    return Iteration(decode=[other], decode_contexts=[1000], decode_steps=1)


def test_a_decode_batch_waits_for_a_load_in_04_not_in_05() -> None:
    """Eager decode (cuda_graph_bs 0) in 0.4 waits layer by layer; 0.5 only gates the consumer."""
    step_s = cost("sglang_0.5").decode_time_s([1000])
    load_05 = cost("sglang_0.5").transfer_time_s(GIB, "h2d")
    fake = OneIteration(decode_of_another_request(), GIB)
    loop, _ = run_loop("sglang_0.5", fake)
    assert fake.finished_at == pytest.approx(step_s)  # only the consumer waits: this batch does not
    assert load_05 > step_s and loop.gated_s == 0.0
    fake = OneIteration(decode_of_another_request(), GIB)
    loop, _ = run_loop("sglang_0.4", fake, cuda_graph_bs=0)
    load_04 = cost("sglang_0.4").transfer_time_s(GIB, "h2d")
    assert fake.finished_at == pytest.approx(load_04 + load_04 / 32)  # max(step, load) + load / layers
    assert loop.gated_s == pytest.approx(load_04 + load_04 / 32 - step_s)


def test_a_cuda_graph_decode_is_not_gated_in_04() -> None:
    """The counter wait is Python in get_key_buffer; a graph replay skips it (batch <= max bs)."""
    step_s = cost("sglang_0.4").decode_time_s([1000])
    fake = OneIteration(decode_of_another_request(), GIB)
    loop, _ = run_loop("sglang_0.4", fake)  # H100 80 GB: ServerArgs' default 160
    assert fake.finished_at == pytest.approx(step_s) and loop.gated_s == 0.0
    assert engine("sglang_0.4").cuda_graph_max_bs(cost("sglang_0.4").gpu_memory_bytes) == 160
    assert engine("sglang_0.4").cuda_graph_max_bs(cost("sglang_0.4", "a10g_paper").gpu_memory_bytes) == 8
    fake = OneIteration(decode_of_another_request(), GIB)
    loop, _ = run_loop("sglang_0.4", fake, cuda_graph_bs=1)
    assert fake.finished_at == pytest.approx(step_s)  # batch 1 <= 1: replayed
    two = Iteration(decode=[Request(f"r{i}", "c", "a", [1, 2], 0, 8) for i in range(2)], decode_contexts=[1000] * 2)
    fake = OneIteration(two, GIB)
    loop, _ = run_loop("sglang_0.4", fake, cuda_graph_bs=1)  # batch 2 > 1: eager, gated
    load_04 = cost("sglang_0.4").transfer_time_s(GIB, "h2d")
    assert fake.finished_at == pytest.approx(load_04 + load_04 / 32)


class LateLoad(OneIteration):
    """A long prefill iteration; a load is queued 1 ms into it."""

    def __init__(self, env_holder: list) -> None:
        chunk = SimpleNamespace(new_tokens=8192, context_tokens=0)
        super().__init__(Iteration(prefill=[chunk]), GIB)  # type: ignore[list-item]
        self.late = self.ops.pop()


def test_04_loads_wait_for_the_running_iteration_without_the_overlap_scheduler() -> None:
    """scheduler_sync (--disable-overlap-schedule): a load issued mid-iteration starts when it ends;
    under the default overlap scheduler the sync is on the scheduler's stream and waits for nothing."""
    starts = {}
    for name, sync in (("sglang_0.4", True), ("sglang_0.4_overlap", False), ("sglang_0.5", False)):
        model = cost(name.removesuffix("_overlap"), scheduler_sync=sync)
        env = simpy.Environment()
        timeline: list = []
        pcie = PCIeLink(env, model, timeline=timeline)
        fake = LateLoad([])
        loop = EngineLoop(env, fake, model, pcie, on_finished=lambda _: None, timeline=timeline)

        def queue_late(env=env, fake=fake, loop=loop):
            yield env.timeout(1e-3)
            fake.ops.append(fake.late)
            loop.poke()

        env.process(loop.run())
        env.process(queue_late())
        env.run(until=5.0)
        starts[name] = [start for resource, start, _end, _label in timeline if resource == "h2d"][0]
        iteration_s = model.prefill_time_s([(8192, 0)])
    assert starts["sglang_0.5"] == pytest.approx(1e-3)
    assert starts["sglang_0.4_overlap"] == pytest.approx(1e-3)
    assert starts["sglang_0.4"] == pytest.approx(iteration_s)
    assert not engine("sglang_0.4").scheduler_sync  # the committed 0.4: overlap scheduler on


# -- write policy ------------------------------------------------------------------------------------
def core(name: str, gpu_tokens: int = 64) -> Any:
    return build_engine(
        load_conf("policy", "hicache"),
        gpu_tokens=gpu_tokens,
        cpu_tokens=4 * gpu_tokens,
        kv_bytes_per_token=1,
        chunk_tokens=1024,
        h2d_gbps=1.0,
        data_path=data_path(engine(name)),
    )


def serve(eng: Any, rid: str, tokens: list[int]) -> None:
    """Run one request to completion, acknowledging every op at once."""
    eng.submit(Request(rid, "c", "a", tokens, len(tokens), 1), 0.0)
    while eng.has_work():
        it = eng.step(0.0)
        for op in eng.take_ops():
            eng.complete_op(op, 0.0)
        if it is not None:
            eng.finish(it, 0.0)
    for op in eng.take_ops():
        eng.complete_op(op, 0.0)


def test_selective_write_through_backs_up_on_the_2nd_hit_in_04() -> None:
    prompt = list(range(40))
    new, old = core("sglang_0.5"), core("sglang_0.4")
    serve(new, "r1", prompt)
    serve(old, "r1", prompt)
    assert new.cache.stats.d2h_bytes >= 40  # 0.5: the first use backs it up
    assert old.cache.stats.d2h_bytes == 0  # 0.4: not yet
    serve(old, "r2", prompt)
    assert old.cache.stats.d2h_bytes >= 39  # the 2nd hit does (the last prompt token is recomputed)


def test_04_deletes_an_unbacked_node_on_gpu_eviction() -> None:
    prompt = list(range(40))
    found = {}
    for name in ("sglang_0.4", "sglang_0.5"):
        eng = core(name)
        serve(eng, "r1", prompt)
        eng.cache.evict_gpu(eng.cache.config.gpu_capacity_tokens)
        match = eng.cache.match(prompt, touch=False)
        found[name] = (match.gpu_tokens, match.cpu_tokens)
    assert found["sglang_0.5"] == (0, 40)  # backed up on the 1st hit: still on the CPU
    assert found["sglang_0.4"] == (0, 0)  # never backed up: gone


def test_load_back_threshold_recomputes_short_prefixes() -> None:
    assert engine("sglang_0.4").load_back_threshold_tokens == 10
    prompt = list(range(40))
    eng = core("sglang_0.5")
    eng.config.load_back_threshold_tokens = 100  # the whole prefix is below it
    serve(eng, "r1", prompt)
    eng.cache.evict_gpu(eng.cache.config.gpu_capacity_tokens)
    eng.submit(Request("r2", "c", "a", prompt, 40, 1), 0.0)
    eng.step(0.0)
    req = eng.prefilling[0]
    assert req.loaded_cpu_tokens == 0 and req.recomputed_tokens == 40


# -- the ideal engine is a floor ----------------------------------------------------------------------
WORKLOADS = {
    "sequential": {
        "generator": "sequential",
        "params": dict(agents=5, warmup=1, runs=2, fixed_tokens=600, dynamic_tokens=20, output_tokens=8),
    },
    "concurrent": {
        "generator": "concurrent",
        "params": dict(workflows=6, agents=4, runs=2, warmup=1, fixed_tokens=300, dynamic_tokens=40, output_tokens=30),
    },
}


def sim_cfg(workload: str, policy: str, engine_name: str, gpu_tokens: int) -> dict[str, Any]:
    return {
        "seed": 0,
        "hardware": load_conf("hardware", "a10g_paper"),
        "model": load_conf("model", "llama-3.1-8b"),
        "workload": {"name": workload, **WORKLOADS[workload]},
        "policy": load_conf("policy", policy),
        "cache": {"gpu_capacity_tokens": gpu_tokens},
        "engine": conf_engine(engine_name),
        "sim": {},
    }


@pytest.mark.parametrize(("workload", "gpu_tokens"), [("sequential", 2000), ("concurrent", 3000)])
def test_ideal_is_below_every_engine_and_policy(workload: str, gpu_tokens: int) -> None:
    latency = {
        (e, p): simulate(sim_cfg(workload, p, e, gpu_tokens)).summary["workflow_latency_mean_s"]
        for e in ("sglang_0.4", "sglang_0.5")
        for p in ("sglang", "hicache", "kvflow", "kvflow_cost")
    }
    floor = simulate(sim_cfg(workload, "hicache", "ideal", gpu_tokens)).summary["workflow_latency_mean_s"]
    assert all(floor <= t * (1 + 1e-9) for t in latency.values()), (floor, latency)
    assert floor < latency[("sglang_0.5", "hicache")]  # reactive loads cost something (a perfect prefetch may tie)


# -- configuration ---------------------------------------------------------------------------------
def composed(engine_name: str, **engine_overrides: Any) -> dict[str, Any]:
    cfg = sim_cfg("sequential", "hicache", engine_name, 2000)
    cfg["engine"] = {**cfg["engine"], "chunk_tokens": None, "max_running_requests": None, **engine_overrides}
    return cfg


@pytest.mark.parametrize(
    ("name", "overrides", "message"),
    [
        ("sglang_0.4", {"host_gather_gbps": 0}, "engine.host_gather_gbps=0: must be a number > 0"),
        ("sglang_0.4", {"page_size": 64}, "engine.page_size=64: sglang_0.4's layer-first host pool needs page size 1"),
        ("sglang_0.4", {"io_backend": "kernel"}, "engine.io_backend='kernel': unknown key"),
        ("sglang_0.5", {"io_backend": "dma"}, "engine.io_backend='dma': must be one of kernel, direct"),
        ("sglang_0.5", {"kernel_gbps": {"page_first": 1.0}}, "engine.kernel_gbps="),
        ("sglang_0.5", {"gating": "none"}, "engine.gating='none': must be one of global, consumer"),
        ("sglang_0.5", {"write_through_hits": 0}, "engine.write_through_hits=0"),
        ("sglang_0.5", {"kind": "sglang_0.6"}, "engine.kind='sglang_0.6': must be one of"),
        ("ideal", {"direct_gbps": 1.0}, "engine.direct_gbps=1.0: unknown key"),
    ],
)
def test_bad_engine_keys_are_one_line(name: str, overrides: dict, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        validate_config(composed(name, **overrides))
    assert str(err.value).startswith(message) and "\n" not in str(err.value)


def test_every_shipped_engine_validates() -> None:
    for name in ("sglang_0.4", "sglang_0.5", "ideal"):
        validate_config(composed(name))


def test_cli_engine_group_and_bad_key_exit_2(tmp_path: Path) -> None:
    bin_dir = Path(sys.executable).parent
    base = [str(bin_dir / "kvflow-sim"), "policy=hicache", "workload=sequential", "output.report=false"]
    base += ["workload.params.runs=1", "workload.params.agents=2", f"hydra.run.dir={tmp_path}/run"]
    env = {"PYTHONPATH": str(REPO), "PATH": str(bin_dir)}
    ok = subprocess.run([*base, "engine=sglang_0.4"], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert ok.returncode == 0, ok.stderr[-2000:]
    bad = subprocess.run(
        [*base, "engine=sglang_0.4", "engine.pageable_h2d_gbps=-1"],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
    )
    assert bad.returncode == 2
    lines = bad.stderr.strip().splitlines()
    assert lines == ["kvflow-sim: error: engine.pageable_h2d_gbps=-1: must be a number > 0"], lines
