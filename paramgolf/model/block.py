"""One transformer block: attention and MLP branches on a residual stream."""
from __future__ import annotations

import torch
from torch import Tensor, nn

from paramgolf.model.layers import RMSNorm


class Block(nn.Module):
    """Pre-norm block with per-channel branch scales and a learned mix of the stream with x0.

    x ← m0·x + m1·x0 (resid_mix); x ← x + attn_scale·attn(norm x); x ← x + mlp_scale·mlp(norm x).
    """

    def __init__(self, dim: int, attn: nn.Module, mlp: nn.Module):
        super().__init__()
        self.attn_norm = RMSNorm()
        self.mlp_norm = RMSNorm()
        self.attn = attn
        self.mlp = mlp
        self.attn_scale = nn.Parameter(torch.ones(dim))
        self.mlp_scale = nn.Parameter(torch.ones(dim))
        self.resid_mix = nn.Parameter(torch.stack((torch.ones(dim), torch.zeros(dim))))

    def forward(self, x: Tensor, x0: Tensor) -> Tensor:
        mix = self.resid_mix.to(x.dtype)
        x = mix[0] * x + mix[1] * x0
        x = x + self.attn_scale.to(x.dtype) * self.attn(self.attn_norm(x))
        x = x + self.mlp_scale.to(x.dtype) * self.mlp(self.mlp_norm(x))
        return x
