"""``cost_model=aiconfigurator``: each iteration's kernel time from NVIDIA aiconfigurator's measured
operator database (extra ``.[aic]``, aiconfigurator-core 0.12.0) instead of the profile's formula.

Only compute changes: copies, capacity and ``scheduler_overhead_s`` (which the database does not
model) still come from the hardware profile, so a run with this backend and one with the profile
fitted to the same database (``conf/hardware/*_sglang.yaml``) differ by the fit error only. The
database takes an iteration as sums (prefill requests, new tokens, cached tokens; decode requests,
summed contexts), so decode runs are answered one step per call (tens of µs each), memoised on
exactly those sums: a decode run cut short is asked again from where it stopped.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from harness.cost_model import CostModel
from harness.engines import EngineModel
from harness.errors import SetupError
from kvflow.model_spec import ModelSpec

MISSING_EXTRA = "cost_model=aiconfigurator needs the aic extra: pip install -e '.[aic]'"
# Models the package ships a config for; others get a config.json written from the ModelSpec.
AIC_MODELS = {"llama-3.1-8b": "meta-llama/Meta-Llama-3.1-8B"}
# The SGLang data version per system: the package's "current" slot (systems/query_versions.yaml).
SGLANG_DATA = {"h100_sxm": "0.5.14", "h200_sxm": "0.5.14", "a100_sxm": "0.5.10"}


def _config_json(model: ModelSpec) -> dict[str, Any]:
    """A Hugging Face config.json for a dense model (Qwen2 with attention bias, else Llama)."""
    qwen = model.name.startswith("qwen2")
    return {
        "architectures": ["Qwen2ForCausalLM" if qwen else "LlamaForCausalLM"],
        "model_type": "qwen2" if qwen else "llama",
        "hidden_size": model.hidden,
        "intermediate_size": model.intermediate,
        "num_attention_heads": model.heads,
        "num_hidden_layers": model.layers,
        "num_key_value_heads": model.kv_heads,
        "head_dim": model.head_dim,
        "vocab_size": model.vocab,
        "max_position_embeddings": 131072,
        "rms_norm_eps": 1e-06 if qwen else 1e-05,
        "hidden_act": "silu",
        "tie_word_embeddings": False,
        "torch_dtype": "bfloat16",
        "attention_bias": qwen,
    }


def perf_model(model: ModelSpec, system: str) -> Any:
    """aiconfigurator's forward-pass model of ``model`` on ``system`` (SGLang data, bf16, TP=1)."""
    try:
        from aiconfigurator_core.sdk import RustForwardPassPerfModel
    except ImportError:
        raise SetupError(MISSING_EXTRA) from None
    if system not in SGLANG_DATA:
        raise SetupError(f"hardware.aic_system={system!r}: no SGLang data; valid: {', '.join(SGLANG_DATA)}")
    with tempfile.TemporaryDirectory() as tmp:
        name = AIC_MODELS.get(model.name)
        if name is None:
            (Path(tmp) / "config.json").write_text(json.dumps(_config_json(model)))
            name = tmp
        native = {"schema_version": 1, "model_name": name, "system_name": system, "backend": "sglang"}
        native.update(backend_version=SGLANG_DATA[system], tp_size=1, pp_size=1, extra={})
        try:
            return RustForwardPassPerfModel.from_native(native)
        except ValueError as exc:
            raise SetupError(f"aiconfigurator: model {model.name!r} on {system}: {str(exc).splitlines()[0]}") from None


class AicCostModel(CostModel):
    """``CostModel`` whose kernel times are aiconfigurator's; everything else is the profile's."""

    perf: Any = None
    memo: dict[tuple[int, int, int, int, int], float] | None = None
    MEMO_ENTRIES = 1 << 20  # cleared when full (a few tens of MB)

    @classmethod
    def from_config(
        cls, hardware: Mapping[str, Any], model: ModelSpec, engine: EngineModel | None = None
    ) -> AicCostModel:
        system = hardware.get("aic_system")
        if not system:
            raise SetupError(f"hardware {hardware.get('name')!r}: cost_model=aiconfigurator needs key 'aic_system'")
        cost = super().from_config(hardware, model, engine)
        assert isinstance(cost, AicCostModel)
        cost.perf = perf_model(model, str(system))
        cost.memo = {}
        return cost

    def _ask_s(self, prefill: Sequence[tuple[int, int]], batch: int, ctx_sum: int) -> float:
        key = (len(prefill), sum(n for n, _ in prefill), sum(p for _, p in prefill), batch, ctx_sum)
        assert self.memo is not None
        hit = self.memo.get(key)
        if hit is not None:
            return hit
        names = ("num_prefill_requests", "sum_prefill_tokens", "sum_prefill_kv_tokens")
        req = dict(zip((*names, "num_decode_requests", "sum_decode_kv_tokens"), key))
        ms = self.perf.estimate_forward_pass_time_ms({"version": 1, "scheduled_requests": req})
        if len(self.memo) >= self.MEMO_ENTRIES:
            self.memo.clear()
        self.memo[key] = t = float(ms) / 1e3
        return t

    def kernel_time_s(self, chunks: Sequence[tuple[int, int]], contexts: Sequence[int]) -> float:
        if not chunks and not len(contexts):
            return 0.0
        return self._ask_s(chunks, len(contexts), int(sum(contexts)))

    def _decode_kernel_s(self, contexts: Sequence[int], steps: int) -> np.ndarray:
        batch, total = len(contexts), int(sum(contexts))
        return np.array([self._ask_s((), batch, total + batch * k) for k in range(steps)])
