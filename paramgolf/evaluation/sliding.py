"""Sliding-window evaluation: every validation token scored once, with the longest context a window allows.

Windows of seq_len inputs start at 0, stride, 2*stride, ...; the first window scores all its
targets and each later one only its last `stride` (the earlier ones were scored with less
context by the window before). A final window ends exactly at the last token, so no tail is
dropped. Smaller strides give more context per token and cost seq_len/stride more compute.
"""

from __future__ import annotations

import time
from typing import NamedTuple

import torch
from torch import Tensor, nn

from paramgolf.errors import UserError
from paramgolf.evaluation.bpb import (
    ByteCounter,
    EvalResult,
    as_token_tensor,
    check_batch_seqs,
    check_ranks,
    eval_mode,
    finish,
    progress_bar,
    score_batch,
)


class Window(NamedTuple):
    """tokens[start:end] is one forward pass (inputs [:-1], targets [1:]); targets tokens[score_from:end] are scored."""

    start: int
    end: int
    score_from: int


def check_stride(stride: int, seq_len: int) -> None:
    if seq_len < 1:
        raise UserError(f"eval.seq_len must be >= 1, got {seq_len}")
    if not 1 <= stride <= seq_len:
        raise UserError(
            f"eval.stride must satisfy 1 <= stride <= seq_len ({seq_len}), got {stride}; "
            "stride = seq_len scores like non-overlapping evaluation, smaller strides give more context"
        )


def num_sliding_windows(num_tokens: int, seq_len: int, stride: int) -> int:
    """How many windows `sliding_windows` yields for `num_tokens` validation tokens."""
    check_stride(stride, seq_len)
    num_targets = num_tokens - 1
    if num_targets < 1:
        raise UserError(f"sliding evaluation needs at least 2 validation tokens, got {num_tokens}")
    if num_targets <= seq_len:
        return 1
    num_regular = (num_targets - seq_len) // stride + 1
    last_regular_end = (num_regular - 1) * stride + seq_len + 1
    return num_regular + (last_regular_end < num_tokens)


def sliding_window(index: int, num_tokens: int, seq_len: int, stride: int) -> Window:
    """The `index`-th window; computed, not stored, since a full validation set has ~10^6 of them."""
    num_targets = num_tokens - 1
    if num_targets <= seq_len:  # one short window holds everything
        return Window(0, num_tokens, 1)
    num_regular = (num_targets - seq_len) // stride + 1
    if index == 0:
        return Window(0, seq_len + 1, 1)
    if index < num_regular:
        start = index * stride
        end = start + seq_len + 1
        return Window(start, end, end - stride)
    # The tail window ends at the last token and scores what the last regular window left.
    last_regular_end = (num_regular - 1) * stride + seq_len + 1
    return Window(num_tokens - seq_len - 1, num_tokens, last_regular_end)


def sliding_windows(num_tokens: int, seq_len: int, stride: int) -> list[Window]:
    """All windows over `num_tokens` tokens; their scored ranges partition targets 1..num_tokens-1."""
    count = num_sliding_windows(num_tokens, seq_len, stride)
    return [sliding_window(i, num_tokens, seq_len, stride) for i in range(count)]


def evaluate_sliding(
    model: nn.Module,
    val_tokens: Tensor,
    byte_table: ByteCounter,
    *,
    seq_len: int,
    stride: int,
    batch_seqs: int,
    device: torch.device | str,
    rank: int = 0,
    world_size: int = 1,
    autocast_dtype: torch.dtype | None = None,
    progress: bool = False,
) -> EvalResult:
    """Sliding-window val_loss/val_bpb over every target of `val_tokens`; windows split contiguously over ranks."""
    started = time.perf_counter()
    device = torch.device(device)
    tokens = as_token_tensor(val_tokens)
    check_batch_seqs(batch_seqs)
    check_ranks(rank, world_size)
    num_windows = num_sliding_windows(tokens.numel(), seq_len, stride)
    first_window = num_windows * rank // world_size
    end_window = num_windows * (rank + 1) // world_size
    byte_table = byte_table.to(device)
    batch_starts = range(first_window, end_window, batch_seqs)

    with eval_mode(model, device, autocast_dtype):
        sums = torch.zeros(3, dtype=torch.float64, device=device)
        bar = progress_bar(len(batch_starts), f"eval sliding/{stride}", progress and rank == 0)
        for first in batch_starts:
            windows = [
                sliding_window(i, tokens.numel(), seq_len, stride)
                for i in range(first, min(first + batch_seqs, end_window))
            ]
            # All windows of a run have the same length, so a batch is one gather.
            span = windows[0].end - windows[0].start
            starts = torch.tensor([w.start for w in windows])
            chunk = tokens[starts[:, None] + torch.arange(span)].to(device, non_blocking=True)
            x, y = chunk[:, :-1], chunk[:, 1:]
            # Target j of a window sits at token position start + 1 + j.
            first_scored = torch.tensor([w.score_from - w.start - 1 for w in windows], device=device)
            score_mask = torch.arange(span - 1, device=device)[None, :] >= first_scored[:, None]
            positions = (starts[:, None] + 1 + torch.arange(span - 1)).to(device, non_blocking=True)
            sums += score_batch(model, x, y, byte_table, score_mask, positions)
            bar.update(1)
        bar.close()
        return finish(sums, method="sliding", seq_len=seq_len, stride=stride, started=started)
