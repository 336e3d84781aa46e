"""Symmetric per-row integer quantization at 2..8 bits, the building block of every int export.

For a matrix W [rows, cols] and a clip value c_r per row (the row max, a quantile of |w|, or
what a clip search chose): scale_r = max(c_r / qmax, scale_floor), rounded to the stored scale
dtype (fp16) *before* quantizing, and q = clamp(round(w / scale_r), -qmax, qmax) with
qmax = 2^(bits-1) - 1 (127, 31, 15 for int8/6/5). So every element with |w| <= qmax · scale_r
reconstructs within scale_r / 2; only clipped elements can be further off.

The records floor the scale at 1 / qmax (int6: 1/31), which coarsens every row whose clip value
is below 1; `scale_floor` reproduces that when a preset asks for it (default: no floor).
"""
from __future__ import annotations

import torch
from torch import Tensor

SCALE_EPS = 1e-12  # keeps all-zero rows from dividing by zero


def qmax(bits: int) -> int:
    """Largest code of the symmetric `bits`-bit grid (codes run -qmax..qmax)."""
    if not 2 <= bits <= 8:
        raise ValueError(f"bits must be between 2 and 8, got {bits}")
    return 2 ** (bits - 1) - 1


def row_scales(clip: Tensor, bits: int, scale_floor: float | None = None,
               scale_dtype: torch.dtype = torch.float16) -> Tensor:
    """Per-row scale, rounded to `scale_dtype` (returned in that dtype)."""
    s = clip.float() / qmax(bits)
    s = s.clamp_min(scale_floor if scale_floor else SCALE_EPS)
    stored = s.to(scale_dtype)
    # A scale that rounds to 0 (fp16 underflow) would zero its row; use the smallest positive value.
    tiny = torch.finfo(scale_dtype).tiny if scale_dtype.is_floating_point else SCALE_EPS
    return torch.where(stored > 0, stored, torch.tensor(tiny, dtype=scale_dtype))


def quantize_rows(w: Tensor, scale: Tensor, bits: int) -> Tensor:
    """int8 codes of W [rows, cols] on the grid scale[r] · {-qmax..qmax}."""
    m = qmax(bits)
    s = scale.float().view(-1, *([1] * (w.dim() - 1)))
    return torch.clamp(torch.round(w.float() / s), -m, m).to(torch.int8)


def dequantize_rows(q: Tensor, scale: Tensor) -> Tensor:
    """q[r] · scale[r] in fp32."""
    return q.float() * scale.float().view(-1, *([1] * (q.dim() - 1)))


def row_abs_max(w: Tensor) -> Tensor:
    return w.float().abs().amax(dim=tuple(range(1, w.dim()))) if w.dim() > 1 else w.float().abs().reshape(1)


def round_trip_rows(w: Tensor, clip: Tensor, bits: int, scale_floor: float | None = None,
                    scale_dtype: torch.dtype = torch.float16) -> tuple[Tensor, Tensor, Tensor]:
    """(codes, stored scales, reconstruction) of W under per-row clip values."""
    scale = row_scales(clip, bits, scale_floor, scale_dtype)
    q = quantize_rows(w, scale, bits)
    return q, scale, dequantize_rows(q, scale)
