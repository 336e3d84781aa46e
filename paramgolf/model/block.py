"""One transformer block: attention and MLP branches on a residual stream."""
from __future__ import annotations

import torch
from torch import Tensor, nn

from paramgolf.model.layers import RMSNorm


class Block(nn.Module):
    """Pre-norm block with per-channel branch scales and a learned mix of the stream with x0.

    x ← m0·x + m1·x0 (resid_mix); x ← x + attn_scale·attn(norm x); x ← x + mlp_scale·mlp(norm x).
    `depth_scale` s = 1/sqrt(layer+1) multiplies the normalised branch inputs ("input", LN scale of
    PRs #537/#754/#1185/#1263) or the branch outputs ("output", PR #620); 1.0 leaves the block plain.
    """

    def __init__(self, dim: int, attn: nn.Module | None, mlp: nn.Module | None, depth_scale: float = 1.0,
                 scale_where: str = "input"):
        super().__init__()
        if scale_where not in ("input", "output"):
            raise ValueError(f"arch.depth_scale={scale_where!r} must be none, input or output")
        self.depth_scale, self.scale_where = depth_scale, scale_where
        self.attn_norm = RMSNorm()
        self.mlp_norm = RMSNorm()
        self.attn = attn
        self.mlp = mlp
        self.attn_scale = nn.Parameter(torch.ones(dim))
        self.mlp_scale = nn.Parameter(torch.ones(dim))
        self.resid_mix = nn.Parameter(torch.stack((torch.ones(dim), torch.zeros(dim))))

    def forward(self, x: Tensor, x0: Tensor, v_extra: Tensor | None = None, state: dict | None = None,
                core: nn.Module | None = None) -> Tensor:
        """`core`: a shared Core whose attn/mlp this block runs (depth recurrence); else its own."""
        attn, mlp = (core.attn, core.mlp) if core is not None else (self.attn, self.mlp)
        mix = self.resid_mix.to(x.dtype)
        x = mix[0] * x + mix[1] * x0
        s_in, s_out = (self.depth_scale, 1.0) if self.scale_where == "input" else (1.0, self.depth_scale)
        x = x + self.attn_scale.to(x.dtype) * s_out * attn(self.attn_norm(x) * s_in, v_extra, state)
        x = x + self.mlp_scale.to(x.dtype) * s_out * mlp(self.mlp_norm(x) * s_in)
        return x


class Core(nn.Module):
    """The attention and MLP weights that several logical layers share under depth recurrence (PR #537)."""

    def __init__(self, attn: nn.Module, mlp: nn.Module):
        super().__init__()
        self.attn = attn
        self.mlp = mlp
