"""Rotary position embedding (RoPE), full or partial, with NTK-aware base scaling."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from paramgolf.errors import UserError


class Rotary(nn.Module):
    """Rotates the first `rope_dims` dims of each head (all by default) by position-dependent angles.

    Within the rotated dims, dim m pairs with m + rope_dims/2; angles are position × base^(−2m/rope_dims).
    Partial RoPE (16 of 64 dims) is from PRs #537/#754/#1185/#1263. With `train_seq_len` set, a
    sequence longer than it uses the NTK-aware base base·(T/train_seq_len)^(r/(r−2)), r = rope_dims.
    """

    def __init__(
        self, head_dim: int, base: float = 10000.0, rope_dims: int | None = None, train_seq_len: int | None = None
    ):
        super().__init__()
        r = head_dim if rope_dims is None else rope_dims
        if r % 2 or not 0 < r <= head_dim:
            raise UserError(f"arch.attention.rope_dims={r} must be even and in 1..head_dim={head_dim}")
        if train_seq_len is not None and train_seq_len < 1:
            raise UserError(f"arch.attention.rope_train_seq_len={train_seq_len} must be ≥ 1")
        self.rope_dims, self.base, self.train_seq_len = r, base, train_seq_len
        self._cache: tuple[int, torch.device, Tensor, Tensor] | None = None

    def effective_base(self, seq_len: int) -> float:
        if self.train_seq_len is None or seq_len <= self.train_seq_len:
            return self.base
        r = self.rope_dims
        return self.base * (seq_len / self.train_seq_len) ** (r / (r - 2))

    def tables(self, seq_len: int, device: torch.device, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        if self._cache is None or self._cache[0] != seq_len or self._cache[1] != device:
            r = self.rope_dims
            inv_freq = 1.0 / (
                self.effective_base(seq_len) ** (torch.arange(0, r, 2, dtype=torch.float32, device=device) / r)
            )
            freqs = torch.outer(torch.arange(seq_len, device=device, dtype=torch.float32), inv_freq)
            # [1, T, 1, r/2]: broadcasts over batch and heads in (B, T, H, D) layout.
            self._cache = (seq_len, device, freqs.cos()[None, :, None, :], freqs.sin()[None, :, None, :])
        return self._cache[2].to(dtype), self._cache[3].to(dtype)

    def forward(self, x: Tensor) -> Tensor:
        """x: (B, T, H, D) → same shape, the first rope_dims dims rotated."""
        cos, sin = self.tables(x.size(1), x.device, x.dtype)
        r = self.rope_dims
        half = r // 2
        x1, x2, rest = x[..., :half], x[..., half:r], x[..., r:]
        return torch.cat((x1 * cos + x2 * sin, x2 * cos - x1 * sin, rest), dim=-1)
