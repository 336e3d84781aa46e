"""XSA, exclusive self-attention (records 2026-03-20 "EfficientPartialXSA", PRs #537/#754/#1185/#1263)."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor


def exclusive_self_attention(y: Tensor, v: Tensor) -> Tensor:
    """Remove from each head's output its component along the token's own normalised value.

    y: (B, T, H, D) attention outputs; v: (B, T, Hkv, D) values, H a multiple of Hkv. Query head h
    uses KV head h // (H / Hkv); the KV heads are broadcast, never repeated in memory.
    """
    B, T, H, D = y.shape
    hkv = v.size(2)
    yg = y.view(B, T, hkv, H // hkv, D)
    vn = F.normalize(v, dim=-1).unsqueeze(3)  # (B, T, Hkv, 1, D)
    return (yg - (yg * vn).sum(-1, keepdim=True) * vn).view(B, T, H, D)
