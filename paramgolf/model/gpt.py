"""The GPT assembly: embeddings → blocks with U-Net skips → norm → (tied) head → softcap."""
from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor, nn

from paramgolf.model.block import Block
from paramgolf.model.layers import CastedLinear, RMSNorm, rms_norm


class GPT(nn.Module):
    """Decoder-only LM; `forward(idx) -> logits` for every position (the loss lives outside).

    The first half of the layers stores its outputs, the second half adds them back in
    reverse order with learned per-channel weights (U-Net skips, official baseline).
    Swappable parts come in as factories: `attention(dim)`, `mlp(dim)`, `embedding(vocab, dim)`.
    """

    def __init__(
        self,
        attention: Callable[[int], nn.Module],
        mlp: Callable[[int], nn.Module],
        embedding: Callable[[int, int], nn.Module],
        vocab_size: int = 1024,
        num_layers: int = 9,
        model_dim: int = 512,
        tie_embeddings: bool = True,
        logit_softcap: float = 30.0,
        unet_skips: bool = True,
    ):
        super().__init__()
        if logit_softcap <= 0:
            raise ValueError(f"arch.logit_softcap must be positive, got {logit_softcap}")
        if num_layers < 1 or model_dim < 1 or vocab_size < 2:
            raise ValueError(f"arch: need num_layers ≥ 1, model_dim ≥ 1, vocab_size ≥ 2 "
                             f"(got {num_layers}, {model_dim}, {vocab_size})")
        self.vocab_size = vocab_size
        self.logit_softcap = logit_softcap
        self.tok_emb = embedding(vocab_size, model_dim)
        self.blocks = nn.ModuleList(Block(model_dim, attention(model_dim), mlp(model_dim))
                                    for _ in range(num_layers))
        self.num_encoder_layers = num_layers // 2 if unet_skips else 0
        num_skips = min(self.num_encoder_layers, num_layers - self.num_encoder_layers)
        self.skip_weights = nn.Parameter(torch.ones(num_skips, model_dim))
        self.final_norm = RMSNorm()
        self.lm_head = None if tie_embeddings else CastedLinear(model_dim, vocab_size, zero_init=True)

    def forward(self, idx: Tensor) -> Tensor:
        x = rms_norm(self.tok_emb(idx))
        x0 = x
        skips: list[Tensor] = []
        for i, block in enumerate(self.blocks):
            if i >= self.num_encoder_layers and skips:
                j = i - self.num_encoder_layers
                x = x + self.skip_weights[j].to(x.dtype) * skips.pop()
            x = block(x, x0)
            if i < self.num_encoder_layers:
                skips.append(x)
        x = self.final_norm(x)
        if self.lm_head is None:
            logits = x @ self.tok_emb.weight.to(x.dtype).t()
        else:
            logits = self.lm_head(x)
        c = self.logit_softcap
        return c * torch.tanh(logits / c)
