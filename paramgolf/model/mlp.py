"""Feed-forward blocks."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from paramgolf.errors import UserError
from paramgolf.model.layers import CastedLinear


class LeakyReluSquaredMLP(nn.Module):
    """leaky_relu(x W_fc, a)² W_proj, hidden = mult × dim, zero-init projection.

    a = 0 is the baseline's ReLU² (modded-nanogpt); a = 0.5 is LeakyReLU(0.5)² of the
    2026-03-23 record and PRs #537/#620/#754/#1185/#1263 (negatives contribute 0.25·x²).
    """

    def __init__(self, dim: int, mult: float = 2.0, negative_slope: float = 0.0):
        super().__init__()
        hidden = int(mult * dim)  # the records use int(mult * dim): 3.0 × 512 → 1536
        if hidden <= 0:
            raise UserError(f"arch.mlp.mult={mult} gives an empty hidden layer")
        self.negative_slope = negative_slope
        self.fc = CastedLinear(dim, hidden)
        self.proj = CastedLinear(hidden, dim, zero_init=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(F.leaky_relu(self.fc(x), self.negative_slope).square())
