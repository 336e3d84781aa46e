"""Score-first test-time training (`ttt=score_first`; seeds #549, #537, #754, #1185).

The scoring stream (`paramgolf.evaluation.stream`) scores chunk c of the validation tokens,
then calls `adapt`, which trains the model on that chunk's already-scored tokens; the last
chunk is never trained on. Batched like the records: sequences of the chunk, SGD with momentum,
gradients averaged over ranks so every rank holds the same weights.
"""

from __future__ import annotations

import math
import re

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from paramgolf.errors import UserError
from paramgolf.evaluation.identity import Identity
from paramgolf.evaluation.stream import Chunk, TokenView, autocast


class ScoreFirstTTT(Identity):
    """After chunk c is scored, SGD on its tokens for `epochs` epochs; never on the last chunk.

    `lr`: SGD learning rate at chunk 0, cosine-decayed to 0 over the chunks (and also within a chunk
    when `cosine_within_chunk`); `momentum`: SGD momentum, its buffer kept across chunks; `batch_seqs`:
    sequences per step over all ranks (gradients averaged); `grad_clip`: global norm (0: none);
    `freeze_blocks`: the first k blocks stay fixed (a shared core stays frozen in all its uses);
    `lr_multipliers`: {regex: factor} on parameter names, e.g. {"mlp\\.proj": 3.0, "mlp\\.fc": 0.5} (#537);
    `seq_len` None: the evaluation's window length; `chunk_tokens`: tokens per chunk (the stream's).
    """

    name = "score_first"

    def __init__(
        self,
        lr: float = 0.002,
        epochs: int = 3,
        momentum: float = 0.9,
        batch_seqs: int = 32,
        grad_clip: float = 1.0,
        freeze_blocks: int = 0,
        lr_multipliers: dict[str, float] | None = None,
        cosine_within_chunk: bool = False,
        chunk_tokens: int = 32_768,
        seq_len: int | None = None,
    ) -> None:
        for key, value, low in (
            ("epochs", epochs, 1),
            ("batch_seqs", batch_seqs, 1),
            ("chunk_tokens", chunk_tokens, 1),
        ):
            if value < low:
                raise UserError(f"ttt.{key}={value} must be ≥ {low}")
        if lr <= 0 or not 0 <= momentum < 1 or grad_clip < 0 or freeze_blocks < 0:
            raise UserError(
                f"ttt: lr={lr} must be > 0, momentum={momentum} in [0, 1), grad_clip={grad_clip} ≥ 0, "
                f"freeze_blocks={freeze_blocks} ≥ 0"
            )
        self.lr, self.epochs, self.momentum, self.batch_seqs = lr, epochs, momentum, batch_seqs
        self.grad_clip, self.freeze_blocks, self.cosine_within_chunk = grad_clip, freeze_blocks, cosine_within_chunk
        self.lr_multipliers = dict(lr_multipliers or {})
        self.chunk_tokens, self.seq_len = chunk_tokens, seq_len
        self.optimizer: torch.optim.SGD | None = None
        self.autocast_dtype: torch.dtype | None = None  # set by the score stage (bf16 on CUDA)
        self.steps = 0
        self._trainable: dict[str, bool] = {}

    def _frozen(self, name: str, frozen_cores: set[int]) -> bool:
        m = re.match(r"(blocks|cores)\.(\d+)\.", name)
        if m is None:
            return False
        index = int(m.group(2))
        return index < self.freeze_blocks if m.group(1) == "blocks" else index in frozen_cores

    def begin(self, model: nn.Module) -> None:
        # With depth recurrence the first blocks' shared cores stay frozen in every later use too (#537).
        core_of = getattr(model, "core_of", None) if getattr(model, "cores", None) is not None else None
        frozen_cores = {core_of[i] for i in range(min(self.freeze_blocks, len(core_of)))} if core_of else set()
        groups: dict[float, list[nn.Parameter]] = {}
        self._trainable = {name: p.requires_grad for name, p in model.named_parameters()}
        for name, p in model.named_parameters():
            if self._frozen(name, frozen_cores):
                p.requires_grad_(False)
                continue
            factor = next((f for pat, f in self.lr_multipliers.items() if re.search(pat, name)), 1.0)
            groups.setdefault(factor, []).append(p)
        self.optimizer = torch.optim.SGD(
            [{"params": ps, "factor": f, "lr": self.lr * f} for f, ps in groups.items()],
            lr=self.lr,
            momentum=self.momentum,
        )
        self.steps = 0

    def end(self, model: nn.Module) -> None:
        """The frozen blocks' parameters get their requires_grad back."""
        for name, p in model.named_parameters():
            p.requires_grad_(self._trainable.get(name, p.requires_grad))

    def _set_lr(self, scale: float) -> None:
        for g in self.optimizer.param_groups:
            g["lr"] = self.lr * g["factor"] * scale

    def adapt(self, model: nn.Module, seen: TokenView, chunk: Chunk) -> None:
        """Train on the chunk's targets (already scored): inputs tokens[first-1:end-1], targets tokens[first:end]."""
        seq_len = self.seq_len or getattr(model, "train_seq_len", None) or 1024
        span = seen[chunk.first - 1 : chunk.end]
        n_seq = max(1, (span.numel() - 1) // seq_len)
        length = min(seq_len, span.numel() - 1)
        x = torch.stack([span[i * length : i * length + length] for i in range(n_seq)])
        y = torch.stack([span[i * length + 1 : i * length + length + 1] for i in range(n_seq)])
        device = next(model.parameters()).device
        rank, world = chunk.rank, chunk.world_size  # the stream's split (1 process in the legality check)
        chunk_scale = 0.5 * (1 + math.cos(math.pi * chunk.index / max(chunk.count - 1, 1)))
        batches = range(0, n_seq, self.batch_seqs)
        total = self.epochs * len(batches)
        model.train()
        step = 0
        for _ in range(self.epochs):
            for b in batches:
                within = 0.5 * (1 + math.cos(math.pi * step / total)) if self.cosine_within_chunk else 1.0
                self._set_lr(chunk_scale * within)
                lo, hi = (
                    b + (min(self.batch_seqs, n_seq - b) * rank) // world,
                    b + (min(self.batch_seqs, n_seq - b) * (rank + 1)) // world,
                )
                self.optimizer.zero_grad(set_to_none=True)
                params = [p for g in self.optimizer.param_groups for p in g["params"]]
                if hi > lo:
                    with autocast(device, self.autocast_dtype):
                        logits = model(x[lo:hi].to(device))
                    loss = F.cross_entropy(logits.float().reshape(-1, logits.size(-1)), y[lo:hi].to(device).reshape(-1))
                    (loss * (hi - lo) / min(self.batch_seqs, n_seq - b)).backward()
                if world > 1:  # the batch's mean gradient on every rank
                    for p in params:
                        if p.grad is None:
                            p.grad = torch.zeros_like(p)
                        dist.all_reduce(p.grad, op=dist.ReduceOp.SUM)
                if self.grad_clip:
                    torch.nn.utils.clip_grad_norm_([p for p in params if p.grad is not None], self.grad_clip)
                self.optimizer.step()
                step += 1
                self.steps += 1
        model.eval()
