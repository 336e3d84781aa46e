"""Tiny models, byte tables and reference loops shared by the evaluation tests."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from paramgolf.data.byte_table import ByteTable


def make_byte_table(vocab: int, seed: int = 0) -> ByteTable:
    """Random lookup tables: 1-4 base bytes, some leading spaces, token 0 a boundary (like <s>)."""
    g = torch.Generator().manual_seed(seed)
    base = torch.randint(1, 5, (vocab,), generator=g).to(torch.int16)
    base[0] = 0
    space = torch.rand(vocab, generator=g) < 0.5
    space[0] = False
    boundary = torch.zeros(vocab, dtype=torch.bool)
    boundary[0] = True
    return ByteTable(base, space, boundary)


def hand_bytes(table: ByteTable, prev: list[int], tgt: list[int]) -> int:
    """The official byte rule, one token at a time."""
    total = 0
    for p, t in zip(prev, tgt):
        total += int(table.base_bytes[t])
        if bool(table.has_leading_space[t]) and not bool(table.is_boundary[p]):
            total += 1
    return total


class UniformLM(nn.Module):
    """Equal logits everywhere: every token costs exactly ln V nats."""

    def __init__(self, vocab: int) -> None:
        super().__init__()
        self.vocab = vocab
        self.scale = nn.Parameter(torch.ones(()))

    def forward(self, idx: Tensor) -> Tensor:
        return torch.zeros(*idx.shape, self.vocab) * self.scale


class BigramLM(nn.Module):
    """Logits depend on the current token only: context-free."""

    def __init__(self, vocab: int, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.table = nn.Embedding(vocab, vocab)

    def forward(self, idx: Tensor) -> Tensor:
        return self.table(idx)


class CacheAttentionLM(nn.Module):
    """One causal attention layer with equal scores over one-hot values: predicts the
    smoothed frequency of each token in the context so far, so more context helps."""

    def __init__(self, vocab: int, smoothing: float = 0.1) -> None:
        super().__init__()
        self.vocab = vocab
        self.smoothing = smoothing
        self.query = nn.Linear(vocab, 4, bias=False)
        self.key = nn.Linear(vocab, 4, bias=False)
        nn.init.zeros_(self.query.weight)  # zero scores: uniform attention over the prefix
        nn.init.zeros_(self.key.weight)

    def forward(self, idx: Tensor) -> Tensor:
        v = F.one_hot(idx, self.vocab).float()
        q, k = self.query(v), self.key(v)
        freq = F.scaled_dot_product_attention(q[:, None], k[:, None], v[:, None], is_causal=True)[:, 0]
        return torch.log(freq + self.smoothing)


def direct_nll(model: nn.Module, inputs: list[int], targets: list[int]) -> list[float]:
    """Per-target nll (nats, float64) from one forward pass over `inputs`."""
    with torch.no_grad():
        logits = model(torch.tensor([inputs]))[0].double()
    logp = torch.log_softmax(logits, dim=-1)
    return [-float(logp[i, t]) for i, t in enumerate(targets)]
