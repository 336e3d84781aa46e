"""Bits per byte (the challenge score) and the official non-overlapping evaluation.

val_loss is the mean next-token cross-entropy in nats; val_bpb rescales it to bits per
UTF-8 byte of the text, so that tokenizers with different vocabularies compare fairly:
val_bpb = (sum of nll / ln 2) / (number of bytes the scored tokens decode to).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Protocol

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from paramgolf.errors import UserError


class ByteCounter(Protocol):
    """What evaluation needs from a byte table (`paramgolf.data.byte_table.ByteTable`).

    `count` is the one place every evaluation path gets the bytes of its scored targets: from the
    tokenizer's tables by (previous, target) id, or from the dataset's byte sidecar by the targets'
    `positions` in the validation tokens (`SidecarByteTable`, CaseOps). Every caller passes both.
    """

    def to(self, device: torch.device) -> ByteCounter: ...

    def count(self, prev_ids: Tensor, tgt_ids: Tensor, positions: Tensor | None = None) -> Tensor: ...


@dataclass
class EvalResult:
    """One evaluation's score and the sums behind it."""

    val_loss: float  # mean nll in nats per scored token
    val_bpb: float  # bits per byte of the scored tokens' text
    num_tokens: int  # scored tokens, all ranks together
    num_bytes: int  # UTF-8 bytes of the scored tokens, all ranks together
    method: str  # "non_overlapping" or "sliding"
    seq_len: int
    stride: int | None  # None for non-overlapping evaluation
    eval_time_s: float

    def to_dict(self) -> dict[str, float | int | str | None]:
        return dataclasses.asdict(self)


def bpb_from_sums(nll_sum_nats: float, num_bytes: float) -> float:
    """Bits per byte from a summed nll in nats and the byte count of the same tokens."""
    if num_bytes <= 0:
        raise UserError(f"bits per byte needs a positive byte count, got num_bytes={num_bytes}")
    return nll_sum_nats / (math.log(2.0) * num_bytes)


def token_nll(logits: Tensor, targets: Tensor) -> Tensor:
    """Per-position cross-entropy in nats, float32, shaped like `targets`."""
    # Upcast before the softmax: bf16 logits lose about 3 digits of the loss.
    nll = F.cross_entropy(logits.reshape(-1, logits.size(-1)).float(), targets.reshape(-1), reduction="none")
    return nll.view(targets.shape)


def as_token_tensor(val_tokens: Tensor) -> Tensor:
    """Validation tokens as a 1-D int64 CPU tensor (shards may be stored as uint16)."""
    assert val_tokens.dim() == 1, f"val_tokens must be a 1-D tensor of token ids, got shape {tuple(val_tokens.shape)}"
    assert not (val_tokens.dtype.is_floating_point or val_tokens.dtype.is_complex or val_tokens.dtype == torch.bool), (
        f"val_tokens must hold integer token ids, got dtype {val_tokens.dtype}"
    )
    return val_tokens.detach().to(device="cpu", dtype=torch.int64)


def check_batch_seqs(batch_seqs: int) -> None:
    if batch_seqs < 1:
        raise UserError(f"eval.batch_seqs must be >= 1 (sequences per forward pass), got {batch_seqs}")


def check_ranks(rank: int, world_size: int) -> None:
    """Catch a rank/world size that disagrees with the process group: the shards would overlap."""
    if not 0 <= rank < world_size:
        raise RuntimeError(f"rank must be in [0, world_size), got rank={rank}, world_size={world_size}")
    if dist.is_available() and dist.is_initialized():
        if (rank, world_size) != (dist.get_rank(), dist.get_world_size()):
            raise RuntimeError(
                f"rank={rank}, world_size={world_size} disagree with torch.distributed "
                f"(rank {dist.get_rank()} of {dist.get_world_size()}); pass the process group's values"
            )


@contextlib.contextmanager
def eval_mode(model: nn.Module, device: torch.device, autocast_dtype: torch.dtype | None) -> Iterator[None]:
    """Eval mode, no autograd and optional autocast; restores the model's training flag after."""
    was_training = model.training
    model.eval()
    autocast = (
        torch.autocast(device_type=device.type, dtype=autocast_dtype)
        if autocast_dtype is not None
        else contextlib.nullcontext()
    )
    try:
        with torch.inference_mode(), autocast:
            yield
    finally:
        model.train(was_training)


def score_batch(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    byte_table: ByteCounter,
    score_mask: Tensor | None = None,
    positions: Tensor | None = None,
) -> Tensor:
    """float64 [nll sum, token count, byte count] over the targets `y` that `score_mask` selects (all if None).

    `positions`: where each target sits in the validation tokens (what a byte sidecar reads)."""
    logits = model(x)
    if logits.dim() != 3 or logits.shape[:2] != x.shape:
        raise RuntimeError(
            f"model(idx) must return logits [B, T, V] for idx [B, T]; got {tuple(logits.shape)} for {tuple(x.shape)}"
        )
    nll = token_nll(logits, y).double()
    num_bytes = byte_table.count(x, y, positions)
    if score_mask is None:
        num_tokens = torch.tensor(float(y.numel()), dtype=torch.float64, device=nll.device)
    else:  # masking instead of boolean indexing avoids a host sync per batch on GPU
        nll = torch.where(score_mask, nll, 0.0)
        num_bytes = num_bytes * score_mask
        num_tokens = score_mask.sum().double()
    return torch.stack([nll.sum(), num_tokens, num_bytes.sum().double()])


def all_reduce_sums(sums: Tensor) -> Tensor:
    """Sum the float64 totals over ranks when a process group exists (on CPU for gloo)."""
    if not (dist.is_available() and dist.is_initialized()):
        return sums
    comm = sums.cpu() if dist.get_backend() == "gloo" else sums.clone()
    dist.all_reduce(comm, op=dist.ReduceOp.SUM)
    return comm


class _NoBar:
    def update(self, n: int = 1) -> None:
        pass

    def close(self) -> None:
        pass


def progress_bar(total: int, desc: str, enabled: bool) -> Any:
    """A tqdm bar on stderr; without one (tqdm imported only then: an exported script ships without it)."""
    if not enabled:
        return _NoBar()
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="batch", file=sys.stderr, leave=False)


def finish(
    sums: Tensor, *, method: str, seq_len: int, stride: int | None, started: float, reduce: bool = True
) -> EvalResult:
    """Turn [nll sum, tokens, bytes] into an EvalResult, all-reduced over the ranks unless `reduce` is False."""
    nll_sum, num_tokens, num_bytes = (all_reduce_sums(sums) if reduce else sums).tolist()
    if num_tokens <= 0:
        raise UserError("evaluation scored no tokens: val_tokens is too short for eval.seq_len")
    return EvalResult(
        val_loss=nll_sum / num_tokens,
        val_bpb=bpb_from_sums(nll_sum, num_bytes),
        num_tokens=round(num_tokens),
        num_bytes=round(num_bytes),
        method=method,
        seq_len=seq_len,
        stride=stride,
        eval_time_s=time.perf_counter() - started,
    )


def evaluate_non_overlapping(
    model: nn.Module,
    val_tokens: Tensor,
    byte_table: ByteCounter,
    *,
    seq_len: int,
    batch_seqs: int,
    device: torch.device | str,
    rank: int = 0,
    world_size: int = 1,
    autocast_dtype: torch.dtype | None = None,
    progress: bool = False,
) -> EvalResult:
    """The official evaluation: contiguous seq_len chunks, each token predicted from its chunk only.

    Scores targets 1..total_seqs*seq_len with total_seqs = (len(val_tokens) - 1) // seq_len (the
    tail is dropped, as the official loader does); sequences are split contiguously over ranks.
    """
    started = time.perf_counter()
    device = torch.device(device)
    tokens = as_token_tensor(val_tokens)
    check_batch_seqs(batch_seqs)
    check_ranks(rank, world_size)
    if seq_len < 1:
        raise UserError(f"eval.seq_len must be >= 1, got {seq_len}")
    total_seqs = (tokens.numel() - 1) // seq_len
    if total_seqs < 1:
        raise UserError(
            f"val_tokens has {tokens.numel()} tokens, fewer than eval.seq_len + 1 = {seq_len + 1}; "
            "lower eval.seq_len or use more validation data"
        )
    seq_start = total_seqs * rank // world_size
    seq_end = total_seqs * (rank + 1) // world_size
    byte_table = byte_table.to(device)
    batch_starts = range(seq_start, seq_end, batch_seqs)

    with eval_mode(model, device, autocast_dtype):
        sums = torch.zeros(3, dtype=torch.float64, device=device)
        bar = progress_bar(len(batch_starts), "eval non_overlapping", progress and rank == 0)
        for first in batch_starts:
            last = min(first + batch_seqs, seq_end)
            # One extra token: the last input's target.
            chunk = tokens[first * seq_len : last * seq_len + 1].to(device, non_blocking=True)
            x = chunk[:-1].view(-1, seq_len)
            y = chunk[1:].view(-1, seq_len)
            positions = torch.arange(first * seq_len + 1, last * seq_len + 1, device=device).view(-1, seq_len)
            sums += score_batch(model, x, y, byte_table, positions=positions)
            bar.update(1)
        bar.close()
        return finish(sums, method="non_overlapping", seq_len=seq_len, stride=None, started=started)
