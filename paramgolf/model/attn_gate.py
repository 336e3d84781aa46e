"""Per-head gates on the attention output, read from a narrow slice of the block's input (#1667, #1736, #1787)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from paramgolf.errors import UserError
from paramgolf.model.layers import control_parameter


class AttnOutputGate(nn.Module):
    """g_{t,h} = k·σ(s · W_h · x_t[:window]) scales head h's output at position t (after XSA, before c_proj).

    x is the attention's (normalised) input; W ∈ R^{heads×window} is named `attn_gate_w` (the
    records' name: scalar AdamW, int8-per-row QuantGate). The three record forms:
    SparseAttnGate (#1787, the top record's: window 12, W = 0, s = SPARSE_ATTN_GATE_SCALE, k = 1),
    dense GatedAttn (#1736: window None = all dims, W ~ N(0, 0.005), s = 1, k = 1) and
    AttnOutGate (#1667: window 12, W = 0, `double`: k = 2, so the gate starts at 1).
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        window: int | None = 12,
        scale: float = 1.0,
        init_std: float = 0.0,
        double: bool = False,
    ):
        """`window`: how many leading input dims the gate reads (None: all); `scale`: s; `init_std`:
        W's normal init std (0: zeros); `double`: k = 2 instead of 1."""
        super().__init__()
        width = dim if window is None else window
        if not 0 < width <= dim:
            raise UserError(f"arch.attention.output_gate.window={window} must be in 1..model_dim={dim} (or null)")
        if init_std < 0:
            raise UserError(f"arch.attention.output_gate.init_std={init_std} must be ≥ 0")
        self.window, self.scale, self.double, self.init_std = window, scale, double, init_std
        w = torch.zeros(num_heads, width)
        if init_std > 0:
            nn.init.normal_(w, mean=0.0, std=init_std)
        self.attn_gate_w = control_parameter(w)

    def forward(self, x: Tensor) -> Tensor:
        """x: (B, T, dim) → gates (B, T, heads)."""
        src = x if self.window is None else x[..., : self.window].contiguous()
        g = torch.sigmoid(self.scale * F.linear(src, self.attn_gate_w.to(x.dtype)))
        return 2.0 * g if self.double else g
