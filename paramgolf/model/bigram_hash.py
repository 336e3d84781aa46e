"""BigramHash: a hashed (previous token, token) embedding added to the token embedding.

From the 2026-03-20 records and PRs #537/#620/#754/#1185/#1263 (hash constants and the reserved
position-0 bucket as in the 2026-03-23 record).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from paramgolf.errors import UserError
from paramgolf.model.layers import CastedLinear, control_parameter, set_role


def bigram_buckets(idx: Tensor, buckets: int) -> Tensor:
    """Bucket of (t_{j−1}, t_j): (36313·t_j XOR 27191·t_{j−1}) mod (buckets−1); position 0 → buckets−1."""
    cur = idx.to(torch.int64)
    h = torch.bitwise_xor(36313 * cur[:, 1:], 27191 * cur[:, :-1]) % (buckets - 1)
    first = torch.full_like(cur[:, :1], buckets - 1)
    return torch.cat((first, h), dim=1)


class BigramHash(nn.Module):
    """scale · proj(embed[bucket(t_{j−1}, t_j)]): embed (buckets × dim, zero init) → model width."""

    def __init__(
        self,
        vocab_size: int,
        model_dim: int,
        buckets: int = 2048,
        dim: int = 128,
        scale_init: float = 0.05,
        init_std: float = 0.0,
    ):
        """`scale_init`: the output scale at init; `init_std`: the table's N(0, std) init (0: zeros, a no-op at start)."""
        super().__init__()
        if buckets < 2:
            raise UserError(f"arch.bigram.buckets={buckets} must be ≥ 2 (one is reserved for position 0)")
        self.buckets = buckets
        self.embed = nn.Embedding(buckets, dim)
        if init_std == 0:
            nn.init.zeros_(self.embed.weight)  # draws no random numbers, unlike normal_(std=0)
        else:
            nn.init.normal_(self.embed.weight, std=init_std)
        set_role(self.embed.weight, "embedding")
        self.proj = CastedLinear(dim, model_dim)
        self.scale = control_parameter(torch.tensor(float(scale_init)))

    def forward(self, idx: Tensor) -> Tensor:
        h = self.proj(self.embed(bigram_buckets(idx, self.buckets)))
        return h * self.scale.to(h.dtype)
