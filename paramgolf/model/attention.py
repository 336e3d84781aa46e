"""Causal self-attention with grouped-query KV heads (official baseline)."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from paramgolf.errors import UserError
from paramgolf.model.layers import CastedLinear, control_parameter, rms_norm
from paramgolf.model.rotary import Rotary
from paramgolf.model.xsa import exclusive_self_attention

try:  # FlashAttention-3 (Hopper); absent on CPU machines.
    from flash_attn_interface import flash_attn_func as _fa3_func
except ImportError:  # pragma: no cover - depends on the machine
    _fa3_func = None


def fa3_applies(kernel, q: Tensor) -> bool:
    """Whether a FlashAttention-3 `kernel` (None: not importable) runs for q: on CUDA, in half precision."""
    return (
        kernel is not None
        and q.is_cuda
        and (q.dtype in (torch.bfloat16, torch.float16) or torch.is_autocast_enabled("cuda"))
    )


def fa3_dtype(q: Tensor) -> torch.dtype:
    """The half precision FA3 computes in: q's own, or autocast's (q/k come out of the fp32 RMSNorm)."""
    return q.dtype if q.dtype in (torch.bfloat16, torch.float16) else torch.get_autocast_dtype("cuda")


def causal_attention(q: Tensor, k: Tensor, v: Tensor, use_fa3: bool | None = None) -> Tensor:
    """Causal softmax attention. q: (B, T, H, D); k, v: (B, T, Hkv, D) with H % Hkv == 0.

    Uses FlashAttention-3 on a CUDA tensor when it is importable, PyTorch SDPA otherwise;
    both compute the same function (tests compare SDPA with the explicit formula).
    """
    if use_fa3 is None:
        use_fa3 = fa3_applies(_fa3_func, q)
    if use_fa3:
        half = fa3_dtype(q)
        out = _fa3_func(q.to(half), k.to(half), v.to(half), causal=True)
        return out[0] if isinstance(out, tuple) else out
    y = F.scaled_dot_product_attention(
        q.transpose(1, 2),
        k.transpose(1, 2),
        v.transpose(1, 2),
        is_causal=True,
        enable_gqa=k.size(2) != q.size(2),
    )
    return y.transpose(1, 2)


class CausalSelfAttention(nn.Module):
    """GQA attention: RMS-normed q/k, RoPE, a learnable per-head query gain, zero-init output.

    Official naive baseline (records/track_10min_16mb/2026-03-17_NaiveBaseline); options from the
    seed records: partial RoPE with NTK scaling (`rope_dims`, `rope_train_seq_len`), XSA on chosen
    layers (`xsa_layers`, or the last `xsa_last_n` of `num_layers`), a per-head output gate
    (`gated`, PRs #754/#1185) and the value residual (`value_residual`, PRs #754/#1185); from the
    later records, a narrow per-head output gate (`output_gate(dim, num_heads)`, an AttnOutputGate:
    #1667/#1736/#1787). Given `cu_seqlens` in the per-forward state (packed documents, batch 1),
    attention stays within each document (varlen, #1530).
    """

    def __init__(
        self,
        dim: int,
        layer: int = 0,
        num_layers: int = 1,
        num_heads: int = 8,
        num_kv_heads: int = 4,
        rope_base: float = 10000.0,
        qk_gain_init: float = 1.5,
        rope_dims: int | None = None,
        rope_train_seq_len: int | None = None,
        xsa_layers: list[int] | None = None,
        xsa_last_n: int = 0,
        gated: bool = False,
        value_residual: bool = False,
        gate_bias_init: float = 4.0,
        value_residual_first_init: float = 0.5,
        value_residual_self_init: float = 0.5,
        output_gate: Callable[[int, int], nn.Module] | None = None,
    ):
        """`gate_bias_init`: the gated-attention gate's bias at init (sigmoid(4) ≈ 0.982, nearly open);
        `value_residual_first_init` / `_self_init`: the value residual's λ0 (first layer's values) / λ1 (own)."""
        super().__init__()
        if dim % num_heads:
            raise UserError(f"arch.model_dim={dim} must be divisible by arch.attention.num_heads={num_heads}")
        if num_heads % num_kv_heads:
            raise UserError(f"arch.attention.num_heads={num_heads} must be divisible by num_kv_heads={num_kv_heads}")
        xsa = set(xsa_layers or []) | set(range(max(0, num_layers - xsa_last_n), num_layers))
        if any(not 0 <= i < num_layers for i in xsa):
            raise UserError(f"arch.attention.xsa_layers={sorted(xsa)}: layers must be in 0..{num_layers - 1}")
        self.layer, self.use_xsa = layer, layer in xsa
        self.num_heads, self.num_kv_heads = num_heads, num_kv_heads
        self.head_dim = dim // num_heads
        kv_dim = num_kv_heads * self.head_dim
        self.c_q = CastedLinear(dim, dim)
        self.c_k = CastedLinear(dim, kv_dim)
        self.c_v = CastedLinear(dim, kv_dim)
        self.proj = CastedLinear(dim, dim, zero_init=True)
        self.q_gain = control_parameter(torch.full((num_heads,), float(qk_gain_init)))
        self.rotary = Rotary(self.head_dim, base=rope_base, rope_dims=rope_dims, train_seq_len=rope_train_seq_len)
        if gated and output_gate is not None:
            raise UserError("arch.attention: `gated` and `output_gate` are two output gates; choose one")
        self.attn_gate = HeadGate(dim, num_heads, bias_init=gate_bias_init) if gated else None
        self.output_gate = output_gate(dim, num_heads) if output_gate is not None else None
        self.value_residual = (
            ValueResidual(first_init=value_residual_first_init, self_init=value_residual_self_init)
            if value_residual
            else None
        )

    def forward(self, x: Tensor, v_extra: Tensor | None = None, state: dict | None = None) -> Tensor:
        """x: normalised block input; v_extra: added to the values (VE); state: shared across layers."""
        B, T, C = x.shape
        q = self.c_q(x).view(B, T, self.num_heads, self.head_dim)
        k = self.c_k(x).view(B, T, self.num_kv_heads, self.head_dim)
        v = self.c_v(x)
        if v_extra is not None:
            v = v + v_extra.to(v.dtype)
        v = v.view(B, T, self.num_kv_heads, self.head_dim)
        if self.value_residual is not None:
            v = self.value_residual(v, state if state is not None else {})
        q, k = self.rotary(rms_norm(q)), self.rotary(rms_norm(k))
        q = q * self.q_gain.to(q.dtype)[None, None, :, None]
        cu_seqlens = state.get("cu_seqlens") if state is not None else None
        if cu_seqlens is not None:
            from paramgolf.model.varlen import varlen_causal_attention

            y = varlen_causal_attention(q, k, v, cu_seqlens, state["max_seqlen"])
        else:
            y = causal_attention(q, k, v)
        if self.use_xsa:
            y = exclusive_self_attention(y, v.to(y.dtype))
        if self.attn_gate is not None:
            y = y * self.attn_gate(x).to(y.dtype).unsqueeze(-1)
        if self.output_gate is not None:
            y = y * self.output_gate(x).to(y.dtype).unsqueeze(-1)
        return self.proj(y.reshape(B, T, C))


class HeadGate(nn.Module):
    """Gated attention: sigmoid(x W + b) per head scales that head's output (W = 0, b = 4 → gate ≈ 0.982)."""

    def __init__(self, dim: int, num_heads: int, bias_init: float = 4.0):
        """`bias_init`: the gate's bias at init; the weight starts at zero, so every gate is sigmoid(bias_init)."""
        super().__init__()
        self.proj = nn.Linear(dim, num_heads)
        nn.init.zeros_(self.proj.weight)
        nn.init.constant_(self.proj.bias, bias_init)
        control_parameter(self.proj.weight)  # a gate, weight and bias alike (the records train it with Adam)
        control_parameter(self.proj.bias)

    def forward(self, x: Tensor) -> Tensor:
        return torch.sigmoid(self.proj(x))


class ValueResidual(nn.Module):
    """The first layer's values blended into later layers': v ← λ0·v_first + λ1·v (λ = [0.5, 0.5])."""

    def __init__(self, first_init: float = 0.5, self_init: float = 0.5):
        """`first_init`: λ0 at init, the weight of the first layer's values; `self_init`: λ1, the layer's own."""
        super().__init__()
        self.vr_lambda = control_parameter(torch.tensor([float(first_init), float(self_init)]))

    def forward(self, v: Tensor, state: dict) -> Tensor:
        if "v_first" not in state:  # the first layer to run keeps its own values and publishes them
            state["v_first"] = v
            return v
        lam = self.vr_lambda.to(v.dtype)
        return lam[0] * state["v_first"] + lam[1] * v
