"""One transformer block: attention and MLP branches on a residual stream."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from paramgolf.model.layers import RMSNorm, control_parameter


class Block(nn.Module):
    """Pre-norm block with per-channel branch scales and a learned mix of the stream with x0.

    x ← m0·x + m1·x0 (resid_mix); x ← x + attn_scale·attn(norm x); x ← x + mlp_scale·mlp(norm x).
    `depth_scale` s = 1/sqrt(layer+1) multiplies the normalised branch inputs ("input", LN scale of
    PRs #537/#754/#1185/#1263) or the branch outputs ("output", PR #620); 1.0 leaves the block plain.
    `has_attention=False`: an MLP-only block with no attention parameters (#1204's DISABLE_LAYER0_ATTN).
    """

    def __init__(
        self,
        dim: int,
        attn: nn.Module | None,
        mlp: nn.Module | None,
        depth_scale: float = 1.0,
        scale_where: str = "input",
        attn_scale_init: float = 1.0,
        mlp_scale_init: float = 1.0,
        resid_mix_init: float = 1.0,
        resid_mix_x0_init: float = 0.0,
        has_attention: bool = True,
    ):
        """`attn_scale_init` / `mlp_scale_init`: the per-channel branch scales at init; `resid_mix_init` /
        `resid_mix_x0_init`: the mix's weights m0 on the stream and m1 on x0 at init."""
        super().__init__()
        # GPT checks arch.depth_scale and passes "input" for none.
        assert scale_where in ("input", "output"), f"scale_where={scale_where!r} must be input or output"
        assert has_attention or attn is None, "an MLP-only block gets no attention module"
        self.depth_scale, self.scale_where, self.has_attention = depth_scale, scale_where, has_attention
        self.attn_norm = RMSNorm()
        self.mlp_norm = RMSNorm()
        self.attn = attn
        self.mlp = mlp
        if has_attention:
            self.attn_scale = control_parameter(torch.full((dim,), float(attn_scale_init)))
        self.mlp_scale = control_parameter(torch.full((dim,), float(mlp_scale_init)))
        self.resid_mix = control_parameter(
            torch.stack((torch.full((dim,), float(resid_mix_init)), torch.full((dim,), float(resid_mix_x0_init))))
        )

    def forward(
        self,
        x: Tensor,
        x0: Tensor,
        v_extra: Tensor | None = None,
        state: dict | None = None,
        core: nn.Module | None = None,
    ) -> Tensor:
        """`core`: a shared Core whose attn/mlp this block runs (depth recurrence); else its own."""
        attn, mlp = (core.attn, core.mlp) if core is not None else (self.attn, self.mlp)
        mix = self.resid_mix.to(x.dtype)
        x = mix[0] * x + mix[1] * x0
        s_in, s_out = self._scales()
        if self.has_attention:
            x = x + self.attn_scale.to(x.dtype) * s_out * attn(self.attn_norm(x) * s_in, v_extra, state)
        x = x + self.mlp_scale.to(x.dtype) * s_out * mlp(self.mlp_norm(x) * s_in)
        return x

    def parallel_branches(
        self,
        lane0: Tensor,
        lane1: Tensor,
        x0: Tensor,
        v_extra: Tensor | None = None,
        state: dict | None = None,
        core: nn.Module | None = None,
    ) -> tuple[Tensor, Tensor]:
        """The scaled attention and MLP branch outputs for two-lane residuals (TwoLaneResidual):
        attention reads the mix of lane0 with x0, the MLP reads lane1 (#1855 T:1291-1316)."""
        attn, mlp = (core.attn, core.mlp) if core is not None else (self.attn, self.mlp)
        mix = self.resid_mix.to(lane0.dtype)
        s_in, s_out = self._scales()
        if self.has_attention:
            read = self.attn_norm(mix[0] * lane0 + mix[1] * x0) * s_in
            a = self.attn_scale.to(lane0.dtype) * s_out * attn(read, v_extra, state)
        else:
            a = torch.zeros_like(lane0)
        m = self.mlp_scale.to(lane1.dtype) * s_out * mlp(self.mlp_norm(lane1) * s_in)
        return a, m

    def _scales(self) -> tuple[float, float]:
        return (self.depth_scale, 1.0) if self.scale_where == "input" else (1.0, self.depth_scale)


class Core(nn.Module):
    """The attention and MLP weights that several logical layers share under depth recurrence (PR #537)."""

    def __init__(self, attn: nn.Module, mlp: nn.Module):
        super().__init__()
        self.attn = attn
        self.mlp = mlp
