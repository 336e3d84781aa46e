"""Causal self-attention with grouped-query KV heads (official baseline)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from paramgolf.model.layers import CastedLinear, rms_norm
from paramgolf.model.rotary import Rotary

try:  # FlashAttention-3 (Hopper); absent on CPU machines.
    from flash_attn_interface import flash_attn_func as _fa3_func
except ImportError:  # pragma: no cover - depends on the machine
    _fa3_func = None


def fa3_available() -> bool:
    return _fa3_func is not None and torch.cuda.is_available()


def causal_attention(q: Tensor, k: Tensor, v: Tensor, use_fa3: bool | None = None) -> Tensor:
    """Causal softmax attention. q: (B, T, H, D); k, v: (B, T, Hkv, D) with H % Hkv == 0.

    Uses FlashAttention-3 on a CUDA tensor when it is importable, PyTorch SDPA otherwise;
    both compute the same function (tests compare SDPA with the explicit formula).
    """
    if use_fa3 is None:
        use_fa3 = _fa3_func is not None and q.is_cuda and (
            q.dtype in (torch.bfloat16, torch.float16) or torch.is_autocast_enabled("cuda"))
    if use_fa3:
        # FA3 takes half precision only; under autocast q/k come out of the fp32 RMSNorm.
        half = q.dtype if q.dtype in (torch.bfloat16, torch.float16) else torch.get_autocast_dtype("cuda")
        out = _fa3_func(q.to(half), k.to(half), v.to(half), causal=True)
        return out[0] if isinstance(out, tuple) else out
    y = F.scaled_dot_product_attention(
        q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
        is_causal=True, enable_gqa=k.size(2) != q.size(2),
    )
    return y.transpose(1, 2)


class CausalSelfAttention(nn.Module):
    """GQA attention: RMS-normed q/k, RoPE, a learnable per-head query gain, zero-init output.

    Official naive baseline (records/track_10min_16mb/2026-03-17_NaiveBaseline).
    """

    def __init__(self, dim: int, num_heads: int = 8, num_kv_heads: int = 4,
                 rope_base: float = 10000.0, qk_gain_init: float = 1.5):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"arch.model_dim={dim} must be divisible by arch.attention.num_heads={num_heads}")
        if num_heads % num_kv_heads:
            raise ValueError(
                f"arch.attention.num_heads={num_heads} must be divisible by num_kv_heads={num_kv_heads}")
        self.num_heads, self.num_kv_heads = num_heads, num_kv_heads
        self.head_dim = dim // num_heads
        kv_dim = num_kv_heads * self.head_dim
        self.c_q = CastedLinear(dim, dim)
        self.c_k = CastedLinear(dim, kv_dim)
        self.c_v = CastedLinear(dim, kv_dim)
        self.proj = CastedLinear(dim, dim, zero_init=True)
        self.q_gain = nn.Parameter(torch.full((num_heads,), float(qk_gain_init)))
        self.rotary = Rotary(self.head_dim, base=rope_base)

    def forward(self, x: Tensor) -> Tensor:
        B, T, C = x.shape
        q = self.c_q(x).view(B, T, self.num_heads, self.head_dim)
        k = self.c_k(x).view(B, T, self.num_kv_heads, self.head_dim)
        v = self.c_v(x).view(B, T, self.num_kv_heads, self.head_dim)
        q, k = self.rotary(rms_norm(q)), self.rotary(rms_norm(k))
        q = q * self.q_gain.to(q.dtype)[None, None, :, None]
        y = causal_attention(q, k, v)
        return self.proj(y.reshape(B, T, C))
