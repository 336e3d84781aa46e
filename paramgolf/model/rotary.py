"""Rotary position embedding (RoPE)."""
from __future__ import annotations

import torch
from torch import Tensor, nn


class Rotary(nn.Module):
    """Rotates the two halves of each head dimension by position-dependent angles.

    Angles are position × base^(−2i/head_dim); cos/sin tables are cached per length.
    """

    def __init__(self, head_dim: int, base: float = 10000.0):
        super().__init__()
        if head_dim % 2:
            raise ValueError(f"arch.attention: head_dim={head_dim} must be even for RoPE")
        inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
        self.register_buffer("inv_freq", inv_freq, persistent=False)
        self._cache: tuple[int, torch.device, Tensor, Tensor] | None = None

    def tables(self, seq_len: int, device: torch.device, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        if self._cache is None or self._cache[0] != seq_len or self._cache[1] != device:
            t = torch.arange(seq_len, device=device, dtype=torch.float32)
            freqs = torch.outer(t, self.inv_freq.to(device))
            # [1, T, 1, D/2]: broadcasts over batch and heads in (B, T, H, D) layout.
            self._cache = (seq_len, device, freqs.cos()[None, :, None, :], freqs.sin()[None, :, None, :])
        return self._cache[2].to(dtype), self._cache[3].to(dtype)

    def forward(self, x: Tensor) -> Tensor:
        """x: (B, T, H, D) → same shape, rotated."""
        cos, sin = self.tables(x.size(1), x.device, x.dtype)
        half = x.size(-1) // 2
        x1, x2 = x[..., :half], x[..., half:]
        return torch.cat((x1 * cos + x2 * sin, x2 * cos - x1 * sin), dim=-1)
