"""SmearGate: mixes each position's input with the previous position's.

`SmearGate`: the per-channel form (2026-03-19 record, PRs #537–#1263), after the embedding norm.
`InputSmearGate`: the input-dependent form (#1667, modded-nanogpt) with #1851/#1855's BOS mask,
on the raw token embedding before the norm.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from paramgolf.errors import UserError
from paramgolf.model.layers import control_parameter


class SmearGate(nn.Module):
    """x_j ← (1 − g)·x_j + g·x_{j−1}, g = sigmoid(gate) per channel (gate 0 → 0.5); x_{−1} = 0."""

    before_norm = False  # GPT applies it to the normalised embedding

    def __init__(self, dim: int, gate_init: float = 0.0):
        """`gate_init`: the per-channel gate logit at init (0 → each position mixes half of the previous one)."""
        super().__init__()
        self.gate = control_parameter(torch.full((dim,), float(gate_init)))

    def forward(self, x: Tensor) -> Tensor:
        g = torch.sigmoid(self.gate).to(x.dtype)
        prev = F.pad(x, (0, 0, 1, 0))[:, :-1]  # shift right by one position, zeros at position 0
        return (1 - g) * x + g * prev


class InputSmearGate(nn.Module):
    """x_t ← x_t + λ·σ(w · x_t[:window]) · x_{t−1} for t ≥ 1, on the raw embedding (w = 0, λ = 0: identity at init).

    With `bos_mask` (the default, #1855 T:1330-1338) a position holding `bos_id` takes nothing
    from its predecessor. Without it (the form of #1667, where the gate never trained, and of #1797
    before its fix) the last token of document N leaks into the BOS of document N+1 in a packed
    stream: that breaks document independence (and Issue #1017's causality across documents);
    #1797 measured a 0.00255 BPB favourable bias.
    """

    before_norm = True  # GPT applies it to the raw token embedding, with the token ids

    def __init__(self, dim: int, window: int = 12, bos_mask: bool = True, bos_id: int = 1):
        """`window`: how many leading embedding dims the gate reads; `bos_id`: the document-start token."""
        super().__init__()
        if not 0 < window <= dim:
            raise UserError(f"arch.smear.window={window} must be in 1..model_dim={dim}")
        self.window, self.bos_mask, self.bos_id = window, bos_mask, bos_id
        self.gate_w = control_parameter(torch.zeros(1, window))
        self.lam = control_parameter(torch.zeros(1))

    def forward(self, x: Tensor, idx: Tensor) -> Tensor:
        """x: (B, T, dim) raw embeddings of the token ids idx: (B, T)."""
        g = self.lam.to(x.dtype) * torch.sigmoid(
            F.linear(x[:, 1:, : self.window].contiguous(), self.gate_w.to(x.dtype))
        )
        smeared = g * x[:, :-1]
        if self.bos_mask:
            smeared = smeared * (idx[:, 1:] != self.bos_id).to(x.dtype).unsqueeze(-1)
        return torch.cat((x[:, :1], x[:, 1:] + smeared), dim=1)
