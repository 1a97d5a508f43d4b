"""A random-weight decoder with a model's shapes: the overlap part's compute load and the
graph_decode part's decode step."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from kvflow.model_spec import ModelSpec


@dataclass
class _Layer:
    wqkv: torch.Tensor
    wo: torch.Tensor
    wgu: torch.Tensor
    wdown: torch.Tensor
    n1: torch.Tensor
    n2: torch.Tensor


def _rms(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    return x * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + 1e-6).to(x.dtype) * w


class SyntheticDecoder:
    """Random weights with a model's shapes: the matmuls of a prefill (the overlap's compute load)
    and one batch-1 decode step over a static KV cache. The decode step allocates nothing that
    depends on data and never syncs the host, so it can be captured as a CUDA graph."""

    def __init__(self, spec: ModelSpec, device: torch.device, dtype: torch.dtype, ctx_tokens: int) -> None:
        torch.manual_seed(0)
        self.spec = spec
        h, q, kv, inter = spec.hidden, spec.heads * spec.head_dim, spec.kv_heads * spec.head_dim, spec.intermediate

        def w(rows: int, cols: int) -> torch.Tensor:
            return torch.randn(rows, cols, device=device, dtype=dtype).mul_(rows**-0.5)

        ones = torch.ones(h, device=device, dtype=dtype)
        self.layers = [
            _Layer(w(h, q + 2 * kv), w(q, h), w(h, 2 * inter), w(inter, h), ones, ones) for _ in range(spec.layers)
        ]
        self.norm, self.lm_head = ones, w(h, spec.vocab)
        self.cache = torch.randn(spec.layers, 2, spec.kv_heads, ctx_tokens, spec.head_dim, device=device, dtype=dtype)
        angle = (ctx_tokens - 1) / (
            10000.0 ** (torch.arange(0, spec.head_dim, 2, device=device).float() / spec.head_dim)
        )
        self.cos = torch.cat([angle.cos(), angle.cos()]).to(dtype)
        self.sin = torch.cat([angle.sin(), angle.sin()]).to(dtype)
        self.pos = ctx_tokens - 1  # the step writes its K/V into the last slot (static: graph replays do too)

    def prefill_layer(self, layer: int, x: torch.Tensor) -> torch.Tensor:
        """A prefill layer's matmuls for ``x`` (tokens, hidden); attention itself is left out."""
        lw, q, inter = self.layers[layer], self.spec.heads * self.spec.head_dim, self.spec.intermediate
        x = x + (x @ lw.wqkv)[:, :q] @ lw.wo
        gu = x @ lw.wgu
        return x + (F.silu(gu[:, :inter]) * gu[:, inter:]) @ lw.wdown

    def _rope(self, t: torch.Tensor) -> torch.Tensor:
        half = t.shape[-1] // 2
        return t * self.cos + torch.cat([-t[..., half:], t[..., :half]], dim=-1) * self.sin

    def decode_step(self, x: torch.Tensor) -> torch.Tensor:
        """One batch-1 decode step from hidden state ``x`` (1, hidden): the next token id."""
        s = self.spec
        q, kv, group = s.heads * s.head_dim, s.kv_heads * s.head_dim, s.heads // s.kv_heads
        for layer, lw in enumerate(self.layers):
            qkv = _rms(x, lw.n1) @ lw.wqkv
            qv, k, v = qkv.split([q, kv, kv], dim=-1)
            self.cache[layer, 0, :, self.pos].copy_(self._rope(k.view(s.kv_heads, s.head_dim)))
            self.cache[layer, 1, :, self.pos].copy_(v.view(s.kv_heads, s.head_dim))
            qg = self._rope(qv.view(s.kv_heads, group, s.head_dim)).unsqueeze(0)  # the group folded onto its KV head
            att = F.scaled_dot_product_attention(
                qg, self.cache[layer, 0].unsqueeze(0), self.cache[layer, 1].unsqueeze(0)
            )
            x = x + att.reshape(1, q) @ lw.wo
            gu = _rms(x, lw.n2) @ lw.wgu
            x = x + (F.silu(gu[:, : s.intermediate]) * gu[:, s.intermediate :]) @ lw.wdown
        return (_rms(x, self.norm) @ self.lm_head).argmax(dim=-1)
