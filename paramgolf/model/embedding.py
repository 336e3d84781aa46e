"""Token embeddings."""

from __future__ import annotations

from torch import nn

from paramgolf.model.layers import set_role


class TokenEmbedding(nn.Embedding):
    """Token embedding table, normal(0, init_std) initialised; reused as the output head when tied."""

    def __init__(self, vocab_size: int, dim: int, init_std: float = 0.005):
        super().__init__(vocab_size, dim)
        self.init_std = init_std
        nn.init.normal_(self.weight, mean=0.0, std=init_std)
        set_role(self.weight, "embedding")
