"""Two-lane parallel residuals (#1529's "parallel in time" routing, the top record #1855's variant)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from paramgolf.errors import UserError
from paramgolf.model.layers import control_parameter


class TwoLaneResidual(nn.Module):
    """From physical layer `start` on, the stream splits into an attention lane and an MLP lane.

    Attention reads lane0 (mixed with x0), the MLP reads lane1; with a = attention branch, m = MLP
    branch of layer i: lane_j ← r[i,j]·lane_j + P[i,0,j]·a + P[i,1,j]·m. The U-Net skip goes into
    lane0 only; the final hidden state is the lanes' mean. r starts at `resid_init` (1.1), P at
    `post_init` (1); both hold a row for every physical layer, as in #1855 (T:1227-1232).
    """

    def __init__(self, num_layers: int, start: int = 8, resid_init: float = 1.1, post_init: float = 1.0):
        super().__init__()
        if not 0 <= start < num_layers:
            raise UserError(f"arch.parallel.start={start} must be a physical layer in 0..{num_layers - 1}")
        self.start = start
        self.resid_lambdas = control_parameter(torch.full((num_layers, 2), float(resid_init)))
        self.post_lambdas = control_parameter(torch.full((num_layers, 2, 2), float(post_init)))

    def forward(self, layer: int, lane0: Tensor, lane1: Tensor, a: Tensor, m: Tensor) -> tuple[Tensor, Tensor]:
        r = self.resid_lambdas[layer].to(lane0.dtype)
        p = self.post_lambdas[layer].to(lane0.dtype)
        lane0 = r[0] * lane0 + p[0, 0] * a + p[1, 0] * m
        lane1 = r[1] * lane1 + p[0, 1] * a + p[1, 1] * m
        return lane0, lane1

    @staticmethod
    def merge(lane0: Tensor, lane1: Tensor) -> Tensor:
        return 0.5 * (lane0 + lane1)
