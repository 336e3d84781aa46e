"""Feed-forward blocks."""
from __future__ import annotations

import torch
from torch import Tensor, nn

from paramgolf.model.layers import CastedLinear


class ReluSquaredMLP(nn.Module):
    """relu(x W_fc)² W_proj with hidden width mult × dim and a zero-init projection (baseline)."""

    def __init__(self, dim: int, mult: float = 2.0):
        super().__init__()
        hidden = int(round(mult * dim))
        if hidden <= 0:
            raise ValueError(f"arch.mlp.mult={mult} gives an empty hidden layer")
        self.fc = CastedLinear(dim, hidden)
        self.proj = CastedLinear(hidden, dim, zero_init=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(torch.relu(self.fc(x)).square())
