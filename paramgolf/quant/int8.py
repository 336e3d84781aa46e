"""Int8 per-row quantization: the export format of the official naive baseline.

Rules (records/track_10min_16mb/2026-03-17_NaiveBaseline/train_gpt.py):
- non-float tensors are stored exactly;
- float tensors with at most `keep_float_max_numel` elements are kept as floats:
  control tensors (name contains a `keep_fp32_patterns` entry) in fp32, fp32/bf16
  ones in `keep_float_dtype`, other float dtypes unchanged;
- larger 2-D tensors get one int8 scale per row, clipped at the row's
  `clip_quantile` of |w|; larger tensors of any other rank get one scale.
"""
from __future__ import annotations

import torch
from torch import Tensor

from paramgolf.quant.schemes import QuantizedTensor, Quantizer, dequantize_state, dtype_from_name, dtype_name

CONTROL_TENSOR_PATTERNS: tuple[str, ...] = (
    "attn_scale",
    "attn_scales",
    "mlp_scale",
    "mlp_scales",
    "resid_mix",
    "resid_mixes",
    "q_gain",
    "skip_weight",
    "skip_weights",
)

_KEEP_FLOAT_SCHEMES = {torch.float16: "fp16", torch.bfloat16: "bf16", torch.float32: "fp32"}
_TOPK_LIMIT = 64  # above this many order statistics a full sort is cheaper than topk


def abs_quantile_rows(x: Tensor, q: float) -> Tensor:
    """Per-row `q` quantile of |x| for a 2-D tensor, equal to torch.quantile(|x|, q, dim=1)."""
    return _abs_quantile_and_max(x, q)[0]


def _abs_quantile_and_max(x: Tensor, q: float) -> tuple[Tensor, Tensor]:
    """(per-row q quantile of |x|, per-row max of |x|, NaN where a row has NaN).

    Clip quantiles sit near 1, so only the largest few values of each row matter:
    topk finds them without sorting whole rows (and has no 16M-element limit).
    """
    if x.dim() != 2 or x.shape[1] == 0:
        raise ValueError(f"abs_quantile_rows needs a 2-D tensor with columns, got shape {tuple(x.shape)}")
    if not 0.0 <= q <= 1.0:
        raise ValueError(f"quantile must be in [0, 1], got {q}")
    return abs_quantile_with_plan(x, quantile_plan(q, x.shape[1]))


def quantile_plan(q: float, n: int) -> tuple[int, int, float]:
    """(lower index, upper index, interpolation weight) of the `q` quantile of n sorted values.

    The same float32 rank arithmetic as torch.quantile's linear interpolation. Computed once,
    outside any compiled region, so QAT can reuse it as constants.
    """
    rank = torch.tensor(q, dtype=torch.float32) * (n - 1)
    lo, hi = int(rank.floor()), int(rank.ceil())
    return lo, hi, float(rank - lo)


def abs_quantile_with_plan(x: Tensor, plan: tuple[int, int, float]) -> tuple[Tensor, Tensor]:
    """(per-row quantile of |x| at a precomputed plan, per-row max of |x|)."""
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


class Int8PerRow:
    """The baseline's int8 export: per-row int8 matrices, small tensors kept as floats."""

    def __init__(
        self,
        clip_quantile: float = 0.9999984,
        keep_float_max_numel: int = 65536,
        keep_fp32_patterns: list[str] = list(CONTROL_TENSOR_PATTERNS),
        keep_float_dtype: str = "float16",
        scale_dtype: str = "float16",
    ) -> None:
        if not 0.0 < clip_quantile <= 1.0:
            raise ValueError(f"quant.clip_quantile must be in (0, 1], got {clip_quantile}")
        if keep_float_max_numel < 0:
            raise ValueError(f"quant.keep_float_max_numel must be >= 0, got {keep_float_max_numel}")
        for key, value in (("keep_float_dtype", keep_float_dtype), ("scale_dtype", scale_dtype)):
            if value not in ("float16", "bfloat16", "float32"):
                raise ValueError(f"quant.{key} must be float16, bfloat16 or float32, got {value!r}")
        self.clip_quantile = clip_quantile
        self.keep_float_max_numel = keep_float_max_numel
        self.keep_fp32_patterns = tuple(keep_fp32_patterns)
        self.keep_float_dtype = dtype_from_name(keep_float_dtype)
        self.scale_dtype = dtype_from_name(scale_dtype)

    def quantize(self, state_dict: dict[str, Tensor]) -> dict[str, QuantizedTensor]:
        """Quantize every tensor of `state_dict` (same keys, same order)."""
        return {name: self.quantize_tensor(name, t) for name, t in state_dict.items()}

    def quantize_tensor(self, name: str, tensor: Tensor) -> QuantizedTensor:
        t = tensor.detach().to("cpu").contiguous()
        shape, dtype = tuple(t.shape), dtype_name(t.dtype)
        if not t.is_floating_point():
            return QuantizedTensor("raw", shape, dtype, {"w": t})
        if t.numel() <= self.keep_float_max_numel:
            return self._keep_float(name, t)
        t32 = t.float()
        rows = t32 if t32.dim() == 2 else t32.reshape(1, -1)
        clip, largest = _abs_quantile_and_max(rows, self.clip_quantile)
        if not bool(torch.isfinite(largest).all()):
            raise ValueError(f"tensor {name!r} has NaN or inf values; cannot quantize it")
        if t.dim() == 2:
            q, scale = self._quantize_rows(t32, clip)
            return QuantizedTensor("int8_row", shape, dtype, {"q": q, "scale": scale})
        q, scale = self._quantize_whole(t32, float(clip[0]))
        return QuantizedTensor("int8_tensor", shape, dtype, {"q": q, "scale": scale})

    def _keep_float(self, name: str, t: Tensor) -> QuantizedTensor:
        shape, dtype = tuple(t.shape), dtype_name(t.dtype)
        if any(p in name for p in self.keep_fp32_patterns):
            return QuantizedTensor("fp32", shape, dtype, {"w": t.float()})
        if t.dtype in (torch.float32, torch.bfloat16):
            kept = t.to(self.keep_float_dtype)
            return QuantizedTensor(_KEEP_FLOAT_SCHEMES[self.keep_float_dtype], shape, dtype, {"w": kept})
        return QuantizedTensor("raw", shape, dtype, {"w": t})  # fp16 / fp64 stay as they are

    def _quantize_rows(self, t32: Tensor, clip: Tensor) -> tuple[Tensor, Tensor]:
        # The floor on the scale keeps rows with tiny weights from blowing up 1/scale.
        scale = (clip / 127.0).clamp_min(1.0 / 127.0)
        # In-place steps: the same arithmetic as the official, without 17M-element temporaries.
        q = torch.clamp(t32, -clip[:, None], clip[:, None]).div_(scale[:, None]).round_().clamp_(-127, 127)
        return q.to(torch.int8).contiguous(), scale.to(self.scale_dtype).contiguous()

    def _quantize_whole(self, t32: Tensor, clip: float) -> tuple[Tensor, Tensor]:
        scale = torch.tensor(clip / 127.0 if clip > 0 else 1.0, dtype=torch.float32)
        q = torch.clamp(torch.round(torch.clamp(t32, -clip, clip) / scale), -127, 127).to(torch.int8)
        return q.contiguous(), scale


def quantize_dequantize(quantizer: Quantizer, state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
    """The state dict a model sees after an in-memory quantization round trip."""
    return dequantize_state(quantizer.quantize(state_dict))
