"""Transformer shape numbers the cost model and the KV pools need (pure Python, no heavy imports).

A model is described by ``conf/model/<name>.yaml`` (copied from its ``config.json``; sources in
REFERENCE_NUMBERS.md section 5). FLOP counts follow section 6 of the same page:
``2 N_mm`` per token for the matmuls (incl. lm_head, excl. the embedding lookup) plus
``a = 4 L H Q`` per attended context token.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property
from importlib.resources import files
from importlib.resources.abc import Traversable
from typing import Any

import yaml


@dataclass(frozen=True)
class ModelSpec:
    """Shape of a Llama/Qwen-style decoder: what the KV pool size and the FLOP estimate need.

    The derived sizes are computed once per spec (``cached_property``): the cost model reads them
    on every simulated iteration."""

    name: str
    layers: int
    hidden: int
    intermediate: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    params: int
    dtype_bytes: int = 2

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name != "name" and (not isinstance(value, int) or value <= 0):
                raise ValueError(f"model '{self.name}': {f.name} must be a positive integer, got {value!r}")

    @cached_property
    def kv_bytes_per_token(self) -> int:
        """K and V for every layer: 2 x layers x kv_heads x head_dim x dtype bytes."""
        return 2 * self.layers * self.kv_heads * self.head_dim * self.dtype_bytes

    @cached_property
    def weight_bytes(self) -> int:
        """All parameters (incl. embedding) at ``dtype_bytes``: what a decode step streams from HBM."""
        return self.params * self.dtype_bytes

    @cached_property
    def matmul_params(self) -> int:
        """N_mm: q/k/v/o + gated MLP per layer, plus lm_head; the embedding lookup is not a matmul."""
        q_width = self.heads * self.head_dim
        kv_width = self.kv_heads * self.head_dim
        per_layer = 2 * self.hidden * q_width + 2 * self.hidden * kv_width + 3 * self.hidden * self.intermediate
        return self.layers * per_layer + self.vocab * self.hidden

    @cached_property
    def matmul_flops_per_token(self) -> int:
        """2 N_mm: one multiply-add per matmul weight per token."""
        return 2 * self.matmul_params

    @cached_property
    def attn_flops_per_ctx_token(self) -> int:
        """a = 4 L H Q: QK^T and AV FLOPs for one query token attending to one context token."""
        return 4 * self.layers * self.heads * self.head_dim


def _model_dir() -> Traversable:
    return files("conf") / "model"


def _model_names() -> tuple[str, ...]:
    return tuple(sorted(p.name[: -len(".yaml")] for p in _model_dir().iterdir() if p.name.endswith(".yaml")))


MODEL_NAMES: tuple[str, ...] = _model_names()

_FIELDS = {f.name for f in dataclasses.fields(ModelSpec)}


def _from_mapping(d: Mapping[str, Any]) -> ModelSpec:
    missing = sorted(f for f in _FIELDS - {"dtype_bytes"} if f not in d)
    if missing:
        raise ValueError(f"model '{d.get('name', '?')}': missing field(s) {', '.join(missing)}")
    return ModelSpec(**{k: d[k] for k in _FIELDS if k in d})


def load_model_spec(name_or_dict: str | Mapping[str, Any]) -> ModelSpec:
    """Build a ModelSpec from ``conf/model/<name>.yaml`` or from an already loaded mapping
    (e.g. the ``model`` node of a Hydra config); unknown keys in the mapping are ignored."""
    if isinstance(name_or_dict, Mapping) or hasattr(name_or_dict, "items"):
        return _from_mapping(dict(name_or_dict.items()))
    name = str(name_or_dict)
    if name not in MODEL_NAMES:
        raise ValueError(f"unknown model {name!r}; valid: {', '.join(MODEL_NAMES)}")
    data = yaml.safe_load((_model_dir() / f"{name}.yaml").read_text())
    data.setdefault("name", name)
    return _from_mapping(data)
