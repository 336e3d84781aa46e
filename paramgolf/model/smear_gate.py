"""SmearGate: mixes each position's input with the previous position's (2026-03-19 record, PRs #537–#1263)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from paramgolf.model.layers import control_parameter


class SmearGate(nn.Module):
    """x_j ← (1 − g)·x_j + g·x_{j−1}, g = sigmoid(gate) per channel (gate 0 → 0.5); x_{−1} = 0."""

    def __init__(self, dim: int, gate_init: float = 0.0):
        """`gate_init`: the per-channel gate logit at init (0 → each position mixes half of the previous one)."""
        super().__init__()
        self.gate = control_parameter(torch.full((dim,), float(gate_init)))

    def forward(self, x: Tensor) -> Tensor:
        g = torch.sigmoid(self.gate).to(x.dtype)
        prev = F.pad(x, (0, 0, 1, 0))[:, :-1]  # shift right by one position, zeros at position 0
        return (1 - g) * x + g * prev
