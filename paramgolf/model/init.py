"""OrthoInit: orthogonal initialisation of the model's matrices (2026-03-19 record, PR #754)."""

from __future__ import annotations

import torch
from torch import nn

from paramgolf.model.layers import CastedLinear


@torch.no_grad()
def orthogonal_init_(model: nn.Module, min_dim: int = 64) -> None:
    """Orthogonal (gain 1) for every linear layer with both dims ≥ min_dim that does not start at zero."""
    for module in model.modules():
        if isinstance(module, CastedLinear) and not module.zero_init and min(module.weight.shape) >= min_dim:
            if module.weight.is_meta:
                continue
            nn.init.orthogonal_(module.weight)
