"""A Llama/Qwen-style decoder in plain torch, sized from a ``kvflow.model_spec.ModelSpec``.

RMSNorm, RoPE (HF rotate-half), grouped-query attention through ``scaled_dot_product_attention``,
SwiGLU MLP. Weights are random (seeded, created directly on the device) or loaded from local
safetensors files with Hugging Face names. bf16 on a GPU, float32 on CPU.

One ``forward`` runs any mix of sequences: each ``Seq`` names its KV working buffer (layout
``(layers, 2, kv_heads, capacity, head_dim)``), the position of its first new token and how many
new tokens it brings. New K/V are written into the buffer at their positions and the queries attend
to the prefix plus the new keys (causal, lower-right aligned). Linear layers run on all tokens of
the iteration at once; attention runs per sequence.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from kvflow.model_spec import ModelSpec

try:  # torch >= 2.3: lower-right causal mask that flash / efficient attention understand
    from torch.nn.attention.bias import causal_lower_right
except ImportError:  # pragma: no cover - older torch
    causal_lower_right = None


def pick_device(name: str | None = None) -> torch.device:
    """``auto`` (or None): CUDA when available, else CPU."""
    if name in (None, "", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def pick_dtype(device: torch.device, name: str | None = None) -> torch.dtype:
    """``auto``: bf16 on a GPU, float32 on CPU."""
    if name in (None, "", "auto"):
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return {
        "bf16": torch.bfloat16,
        "bfloat16": torch.bfloat16,
        "fp16": torch.float16,
        "float16": torch.float16,
        "fp32": torch.float32,
        "float32": torch.float32,
    }[name]


@dataclass
class Seq:
    """One request's share of an iteration: ``n`` new tokens at positions ``start..start+n-1``."""

    kv: torch.Tensor  # (layers, 2, kv_heads, capacity, head_dim)
    start: int
    n: int


def _layer_names(i: int) -> dict[str, str]:
    p = f"model.layers.{i}."
    return {
        "attn_norm": p + "input_layernorm.weight",
        "mlp_norm": p + "post_attention_layernorm.weight",
        "q": p + "self_attn.q_proj.weight",
        "k": p + "self_attn.k_proj.weight",
        "v": p + "self_attn.v_proj.weight",
        "o": p + "self_attn.o_proj.weight",
        "q_bias": p + "self_attn.q_proj.bias",
        "k_bias": p + "self_attn.k_proj.bias",
        "v_bias": p + "self_attn.v_proj.bias",
        "gate": p + "mlp.gate_proj.weight",
        "up": p + "mlp.up_proj.weight",
        "down": p + "mlp.down_proj.weight",
    }


class Transformer:
    """Inference-only decoder; weights live in ``self.w`` under their Hugging Face names."""

    def __init__(
        self,
        spec: ModelSpec,
        device: torch.device | str = "cpu",
        dtype: torch.dtype | None = None,
        seed: int = 0,
        qkv_bias: bool | None = None,
        rope_theta: float | None = None,
        norm_eps: float = 1e-5,
    ) -> None:
        self.spec = spec
        self.device = torch.device(device)
        self.dtype = dtype or pick_dtype(self.device)
        self.qkv_bias = ("qwen2" in spec.name.lower()) if qkv_bias is None else qkv_bias
        self.rope_theta = rope_theta or (1e6 if "qwen" in spec.name.lower() else 5e5)
        self.norm_eps = norm_eps
        self.groups = spec.heads // spec.kv_heads
        self.layer_names = [_layer_names(i) for i in range(spec.layers)]
        self.w: dict[str, torch.Tensor] = {}
        self._init_random(seed)
        half = spec.head_dim // 2
        self.inv_freq = 1.0 / (
            self.rope_theta ** (torch.arange(0, half, device=self.device, dtype=torch.float32) / half)
        )
        self._lower_right_ok = causal_lower_right is not None

    # ----- weights --------------------------------------------------------------------------------
    def _shapes(self) -> dict[str, tuple[int, ...]]:
        s = self.spec
        q_w, kv_w = s.heads * s.head_dim, s.kv_heads * s.head_dim
        shapes: dict[str, tuple[int, ...]] = {
            "model.embed_tokens.weight": (s.vocab, s.hidden),
            "model.norm.weight": (s.hidden,),
            "lm_head.weight": (s.vocab, s.hidden),
        }
        for names in self.layer_names:
            shapes.update(
                {
                    names["attn_norm"]: (s.hidden,),
                    names["mlp_norm"]: (s.hidden,),
                    names["q"]: (q_w, s.hidden),
                    names["k"]: (kv_w, s.hidden),
                    names["v"]: (kv_w, s.hidden),
                    names["o"]: (s.hidden, q_w),
                    names["gate"]: (s.intermediate, s.hidden),
                    names["up"]: (s.intermediate, s.hidden),
                    names["down"]: (s.hidden, s.intermediate),
                }
            )
            if self.qkv_bias:
                shapes.update({names["q_bias"]: (q_w,), names["k_bias"]: (kv_w,), names["v_bias"]: (kv_w,)})
        return shapes

    @torch.no_grad()
    def _init_random(self, seed: int) -> None:
        gen = torch.Generator(device=self.device)
        gen.manual_seed(seed)
        for name, shape in self._shapes().items():
            t = torch.empty(shape, device=self.device, dtype=self.dtype)
            if name.endswith("norm.weight") or "layernorm" in name:
                t.fill_(1.0)
            elif name.endswith(".bias"):
                t.normal_(0.0, 0.02, generator=gen)
            else:
                t.normal_(0.0, 1.0 / math.sqrt(shape[-1]), generator=gen)
            self.w[name] = t

    @torch.no_grad()
    def load_safetensors(self, path: str | Path) -> int:
        """Copy weights from ``*.safetensors`` under ``path`` (a file or a folder); returns tensors
        loaded. Names and shapes must match the Hugging Face Llama/Qwen2 layout."""
        from safetensors.torch import load_file  # optional dependency

        path = Path(path)
        files = sorted(path.glob("*.safetensors")) if path.is_dir() else [path]
        if not files:
            raise ValueError(f"{path}: no .safetensors files")
        loaded = 0
        for f in files:
            for name, tensor in load_file(str(f)).items():
                if name not in self.w:
                    continue
                if tuple(tensor.shape) != tuple(self.w[name].shape):
                    raise ValueError(
                        f"{f}: {name} has shape {tuple(tensor.shape)}, model expects {tuple(self.w[name].shape)}"
                    )
                self.w[name].copy_(tensor.to(self.dtype))
                loaded += 1
        if "lm_head.weight" not in self.w or loaded == 0:
            raise ValueError(f"{path}: no tensor matched the model's names")
        return loaded

    # ----- KV buffers -----------------------------------------------------------------------------
    def new_kv(self, capacity: int) -> torch.Tensor:
        s = self.spec
        return torch.empty((s.layers, 2, s.kv_heads, capacity, s.head_dim), device=self.device, dtype=self.dtype)

    # ----- forward --------------------------------------------------------------------------------
    def _rms(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.norm_eps)
        return xf.to(self.dtype) * weight

    def _rope(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        freqs = positions.float()[:, None] * self.inv_freq[None, :]
        emb = torch.cat((freqs, freqs), dim=-1)
        return emb.cos().to(self.dtype)[:, None, :], emb.sin().to(self.dtype)[:, None, :]

    @staticmethod
    def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        half = x.shape[-1] // 2
        rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
        return x * cos + rotated * sin

    def _attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, start: int) -> torch.Tensor:
        """q (H, n, D) over k, v (Hkv, S, D) with S = start + n; returns (H, n, D)."""
        h, n, d = q.shape
        if n == 1:  # decode: one query attends to everything; fold the query group into its KV head
            qg = q.reshape(k.shape[0], self.groups, d)
            return F.scaled_dot_product_attention(qg[None], k[None], v[None])[0].reshape(h, 1, d)
        ke = k.repeat_interleave(self.groups, dim=0)[None]
        ve = v.repeat_interleave(self.groups, dim=0)[None]
        if start == 0:
            return F.scaled_dot_product_attention(q[None], ke, ve, is_causal=True)[0]
        if self._lower_right_ok:
            try:
                return F.scaled_dot_product_attention(q[None], ke, ve, attn_mask=causal_lower_right(n, start + n))[0]
            except (RuntimeError, NotImplementedError):
                self._lower_right_ok = False  # this backend lacks it: explicit mask from now on
        mask = torch.ones(n, start + n, dtype=torch.bool, device=q.device).tril(diagonal=start)
        return F.scaled_dot_product_attention(q[None], ke, ve, attn_mask=mask)[0]

    @torch.no_grad()
    def forward(self, ids: list[int] | torch.Tensor, seqs: list[Seq]) -> torch.Tensor:
        """Logits (len(seqs), vocab) of each sequence's last new token; K/V written into the buffers."""
        s = self.spec
        ids_t = torch.as_tensor(ids, dtype=torch.long).remainder(s.vocab).to(self.device, non_blocking=True)
        positions = torch.cat([torch.arange(q.start, q.start + q.n) for q in seqs]).to(self.device)
        cos, sin = self._rope(positions)
        x = F.embedding(ids_t, self.w["model.embed_tokens.weight"])
        for layer, names in enumerate(self.layer_names):
            x = x + self._attention_block(x, layer, names, seqs, cos, sin)
            h = self._rms(x, self.w[names["mlp_norm"]])
            x = x + F.linear(
                F.silu(F.linear(h, self.w[names["gate"]])) * F.linear(h, self.w[names["up"]]), self.w[names["down"]]
            )
        last = torch.tensor([0] + [q.n for q in seqs]).cumsum(0)[1:] - 1
        h = self._rms(x[last.to(self.device)], self.w["model.norm.weight"])
        return F.linear(h, self.w["lm_head.weight"])

    def _attention_block(
        self, x: torch.Tensor, layer: int, names: dict[str, str], seqs: list[Seq], cos: torch.Tensor, sin: torch.Tensor
    ) -> torch.Tensor:
        s, w = self.spec, self.w
        h = self._rms(x, w[names["attn_norm"]])
        q = F.linear(h, w[names["q"]], w.get(names["q_bias"]))
        k = F.linear(h, w[names["k"]], w.get(names["k_bias"]))
        v = F.linear(h, w[names["v"]], w.get(names["v_bias"]))
        q = self._rotate(q.view(-1, s.heads, s.head_dim), cos, sin)
        k = self._rotate(k.view(-1, s.kv_heads, s.head_dim), cos, sin)
        v = v.view(-1, s.kv_heads, s.head_dim)
        outs, off = [], 0
        for seq in seqs:
            end = seq.start + seq.n
            buf = seq.kv[layer]
            buf[0, :, seq.start : end].copy_(k[off : off + seq.n].transpose(0, 1))
            buf[1, :, seq.start : end].copy_(v[off : off + seq.n].transpose(0, 1))
            o = self._attend(q[off : off + seq.n].transpose(0, 1), buf[0, :, :end], buf[1, :, :end], seq.start)
            outs.append(o.transpose(0, 1).reshape(seq.n, s.heads * s.head_dim))
            off += seq.n
        return F.linear(torch.cat(outs) if len(outs) > 1 else outs[0], w[names["o"]])

    def greedy(self, logits: torch.Tensor) -> list[int]:
        """Argmax per row; the host copy is the iteration's synchronisation point."""
        return logits.argmax(dim=-1).tolist()
