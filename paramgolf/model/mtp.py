"""MTP: auxiliary multi-token-prediction heads, trained with a loss weight and dropped at export (PR #1185)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from paramgolf.errors import UserError
from paramgolf.model.layers import CastedLinear, set_role


class MTPHeads(nn.Module):
    """Head k (k = 0…count−1) reads the final hidden state at t and predicts token t+k+2.

    loss = weight · mean_k CE(softcap(head_k(h[:, :T−k−1])), targets[:, k+1:]); heads start at zero.
    """

    def __init__(self, model_dim: int, vocab_size: int, logit_softcap: float, count: int = 2, weight: float = 0.15):
        super().__init__()
        if count < 1 or weight < 0:
            raise UserError(f"arch.mtp: count={count} must be ≥ 1 and weight={weight} ≥ 0")
        self.weight, self.logit_softcap = weight, logit_softcap
        self.heads = nn.ModuleList(CastedLinear(model_dim, vocab_size, zero_init=True) for _ in range(count))
        for head in self.heads:
            set_role(head.weight, "head")

    def loss(self, hidden: Tensor, targets: Tensor) -> Tensor:
        """hidden: (B, T, d) after the final norm; targets: (B, T) next tokens of the main head."""
        T, c = hidden.size(1), self.logit_softcap
        losses = []
        for k, head in enumerate(self.heads):
            if T - k - 1 <= 0:
                break
            logits = c * torch.tanh(head(hidden[:, : T - k - 1]) / c)
            losses.append(F.cross_entropy(logits.float().flatten(0, 1), targets[:, k + 1 :].flatten()))
        if not losses:
            return hidden.new_zeros(())
        return self.weight * torch.stack(losses).mean()
