"""Small building blocks shared by the model's modules."""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn


def rms_norm(x: Tensor, eps: float | None = None) -> Tensor:
    """RMS normalisation over the last dimension, without a learned gain."""
    return F.rms_norm(x, (x.size(-1),), eps=eps)


class RMSNorm(nn.Module):
    """Parameter-free RMSNorm, as in the official baseline."""

    def __init__(self, eps: float | None = None):
        super().__init__()
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        return rms_norm(x, self.eps)


class CastedLinear(nn.Linear):
    """Linear layer whose fp32 weight is cast to the activation dtype at matmul time.

    Keeps master weights in fp32 for the optimizer while bf16 autocast runs the matmul.
    `zero_init=True` marks output projections that start at zero (official baseline).
    """

    def __init__(self, in_features: int, out_features: int, zero_init: bool = False):
        super().__init__(in_features, out_features, bias=False)
        self.zero_init = zero_init
        if zero_init:
            nn.init.zeros_(self.weight)

    # A training-time weight transform (QAT's fake quantization sets it; paramgolf.quant.qat).
    # None: the layer uses its weight as is. Not part of the state dict.
    weight_fn = None

    def forward(self, x: Tensor) -> Tensor:
        w = self.weight if self.weight_fn is None else self.weight_fn(self.weight)
        return F.linear(x, w.to(x.dtype))
