"""Property test: random small workloads and pools keep the simulator's invariants on every policy."""

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_sim_invariants import POLICIES, conf

from sim.runner import simulate


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    policy=st.sampled_from(POLICIES),
    generator=st.sampled_from(["concurrent", "peer_loop", "fanout"]),
    workflows=st.integers(1, 5),
    fixed=st.integers(1, 300),
    output=st.integers(1, 40),
    slack=st.integers(0, 2000),
    seed=st.integers(0, 3),
)
def test_random_workloads_keep_invariants(policy, generator, workflows, fixed, output, slack, seed):
    params = {"workflows": workflows, "fixed_tokens": fixed, "output_tokens": output, "dynamic_tokens": 16}
    if generator == "peer_loop":
        params["common_tokens"] = 8
    cfg = {
        "seed": seed,
        "hardware": conf("hardware", "h100"),
        "model": conf("model", "tiny"),
        "workload": {"name": generator, "generator": generator, "params": params},
        "policy": conf("policy", policy),
        "cache": {"gpu_capacity_tokens": fixed + 16 + 16 + output + slack, "cpu_capacity_tokens": 4000},
        "engine": {},
        "sim": {"check_invariants": True},
    }
    result = simulate(cfg)
    for r in result.rows:
        assert r["hit_gpu_tokens"] + r["loaded_cpu_tokens"] + r["recomputed_tokens"] == r["prompt_tokens"]
        assert r["finish_s"] >= r["first_token_s"] >= r["admit_s"] >= r["arrival_s"]
