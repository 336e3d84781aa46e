"""SmearGate: mixes each position's input with the previous position's (2026-03-19 record, PRs #537–#1263)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class SmearGate(nn.Module):
    """x_j ← (1 − g)·x_j + g·x_{j−1}, g = sigmoid(gate) per channel (gate 0 → 0.5); x_{−1} = 0."""

    def __init__(self, dim: int):
        super().__init__()
        self.gate = nn.Parameter(torch.zeros(dim))

    def forward(self, x: Tensor) -> Tensor:
        g = torch.sigmoid(self.gate).to(x.dtype)
        prev = F.pad(x, (0, 0, 1, 0))[:, :-1]  # shift right by one position, zeros at position 0
        return (1 - g) * x + g * prev
