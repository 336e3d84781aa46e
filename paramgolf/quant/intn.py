"""Symmetric per-row integer quantization at 2..8 bits, the building block of every int export.

For a matrix W [rows, cols] and a clip value c_r per row (the row max, a quantile of |w|, or
what a clip search chose): scale_r = max(c_r / qmax, scale_floor), rounded to the stored scale
dtype (fp16) *before* quantizing, and q = clamp(round(w / scale_r), -qmax, qmax) with
qmax = 2^(bits-1) - 1 (127, 31, 15 for int8/6/5). So every element with |w| <= qmax · scale_r
reconstructs within scale_r / 2; only clipped elements can be further off.

The official int8 baseline rounds in the other order: it quantizes with the fp32 scale and only
stores the scale as fp16 (`scale_rounding="after"`), so its codes sit on the fp32 grid and the
reconstruction q · fp16(scale) carries the scale's rounding error as well.

The records floor the scale at 1 / qmax (int6: 1/31), which coarsens every row whose clip value
is below 1; `scale_floor` reproduces that when a preset asks for it (default: no floor).

SDClip (#1394, #1855): the scale comes from the row's spread instead of a clip value,
scale_r = fp16(k · std(W_r) / qmax) with std the sample standard deviation (n − 1) of the row,
and q = clamp(round(w / scale_r), -qmax, qmax): no clip search; k trades accuracy for entropy.

Clip quantiles: `abs_quantile_rows` equals torch.quantile(|x|, q, dim=1) bit for bit, without its
16M-element limit and without sorting whole rows when only the top few values matter.
"""

from __future__ import annotations

import torch
from torch import Tensor

from paramgolf.errors import UserError

SCALE_EPS = 1e-12  # keeps all-zero rows from dividing by zero
SCALE_ROUNDINGS = ("before", "after")
_TOPK_LIMIT = 64  # above this many order statistics a full sort is cheaper than topk


def qmax(bits: int) -> int:
    """Largest code of the symmetric `bits`-bit grid (codes run -qmax..qmax)."""
    if not 2 <= bits <= 8:
        raise UserError(f"bits must be between 2 and 8, got {bits}")
    return 2 ** (bits - 1) - 1


def row_scales_fp32(clip: Tensor, bits: int, scale_floor: float | None = None) -> Tensor:
    """Per-row scale clip / qmax in fp32, floored at `scale_floor` (or SCALE_EPS), not yet rounded."""
    s = clip.float() / qmax(bits)
    return s.clamp_min(scale_floor if scale_floor else SCALE_EPS)


def row_scales(
    clip: Tensor, bits: int, scale_floor: float | None = None, scale_dtype: torch.dtype = torch.float16
) -> Tensor:
    """Per-row scale, rounded to `scale_dtype` (returned in that dtype)."""
    return store_scales(row_scales_fp32(clip, bits, scale_floor), scale_dtype)


def store_scales(s: Tensor, scale_dtype: torch.dtype = torch.float16) -> Tensor:
    """fp32 scales rounded to the stored dtype."""
    stored = s.to(scale_dtype)
    # A scale that rounds to 0 (fp16 underflow) would zero its row; use the smallest positive value.
    tiny = torch.finfo(scale_dtype).tiny if scale_dtype.is_floating_point else SCALE_EPS
    return torch.where(stored > 0, stored, torch.tensor(tiny, dtype=scale_dtype))


def sdclip_scales_fp32(rows: Tensor, sigmas: float, bits: int, scale_floor: float | None = None) -> Tensor:
    """SDClip's per-row scale of W [rows, cols] in fp32 (not yet rounded): k · std(row) / qmax.

    std is torch.std's sample deviation (n − 1) of the whole row, as #1855 computes it (T:2163-2164).
    """
    return row_scales_fp32(sigmas * row_std(rows), bits, scale_floor)


def row_std(rows: Tensor) -> Tensor:
    """Sample standard deviation (n − 1) of each row of a 2-D tensor (0 for one-column rows)."""
    return rows.float().std(dim=1) if rows.shape[1] > 1 else rows.new_zeros(rows.shape[0], dtype=torch.float32)


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


def round_trip_rows(
    w: Tensor,
    clip: Tensor,
    bits: int,
    scale_floor: float | None = None,
    scale_dtype: torch.dtype = torch.float16,
    scale_rounding: str = "before",
) -> tuple[Tensor, Tensor, Tensor]:
    """(codes, stored scales, reconstruction) of W under per-row clip values.

    `scale_rounding`: "before" quantizes with the stored (rounded) scale, "after" with the fp32
    scale (the official int8 baseline); the stored scale and the reconstruction are the same kind.
    """
    assert scale_rounding in SCALE_ROUNDINGS, (
        f"scale_rounding={scale_rounding!r} is not one of {', '.join(SCALE_ROUNDINGS)}"
    )
    s32 = row_scales_fp32(clip, bits, scale_floor)
    scale = store_scales(s32, scale_dtype)
    q = quantize_rows(w, scale if scale_rounding == "before" else s32, bits)
    return q, scale, dequantize_rows(q, scale)


def abs_quantile_rows(x: Tensor, q: float) -> Tensor:
    """Per-row `q` quantile of |x| for a 2-D tensor, equal to torch.quantile(|x|, q, dim=1)."""
    assert x.dim() == 2 and x.shape[1] > 0, (
        f"abs_quantile_rows needs a 2-D tensor with columns, got shape {tuple(x.shape)}"
    )
    assert 0.0 <= q <= 1.0, f"quantile must be in [0, 1], got {q}"
    return abs_quantile_with_plan(x, quantile_plan(q, x.shape[1]))[0]


def quantile_plan(q: float, n: int) -> tuple[int, int, float]:
    """(lower index, upper index, interpolation weight) of the `q` quantile of n sorted values.

    The same float32 rank arithmetic as torch.quantile's linear interpolation. Computed once,
    outside any compiled region, so QAT can reuse it as constants.
    """
    rank = torch.tensor(q, dtype=torch.float32) * (n - 1)
    lo, hi = int(rank.floor()), int(rank.ceil())
    return lo, hi, float(rank - lo)


def abs_quantile_with_plan(x: Tensor, plan: tuple[int, int, float]) -> tuple[Tensor, Tensor]:
    """(per-row quantile of |x| at a precomputed plan, per-row max of |x|; NaN where a row has NaN).

    Clip quantiles sit near 1, so only the largest few values of each row matter: topk finds
    them without sorting whole rows.
    """
    lo, hi, w = plan
    a = x.float().abs()
    n = a.shape[1]
    weight = torch.full((1,), w, dtype=torch.float32, device=a.device)
    if n - lo <= _TOPK_LIMIT:
        top = torch.topk(a, n - lo, dim=1, sorted=True).values  # descending, NaN first
        below, above, largest = top[:, n - 1 - lo], top[:, n - 1 - hi], top[:, 0]
    else:
        s = torch.sort(a, dim=1).values  # ascending, NaN last
        below, above, largest = s[:, lo], s[:, hi], s[:, -1]
    return torch.lerp(below, above, weight), largest
