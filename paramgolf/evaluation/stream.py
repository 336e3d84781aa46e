"""One scoring stream for every evaluation-time method: score a chunk, then reveal it.

The validation targets are cut into chunks of `chunk_tokens`; each sliding window belongs to
the chunk of its first scored target. For chunk c the stream (1) scores all of c's windows with
the current adaptive state (TTT weights, cache counts) and records every score, then (2) hands
the methods a `TokenView` of the tokens scored so far, and only those, to adapt on. A method
that reads past what was scored raises `ReadAheadError`: score before update holds by
construction. Every target is scored exactly once (`counts` proves it in the legality check).

A method is two objects: a `ttt` (adapts the model's weights: `begin(model)`,
`adapt(model, seen, chunk)`) and an `eval_cache` (mixes another distribution into the model's:
`begin(vocab_size)`, `mix(x, log_probs) -> log_probs`, `update(seen, chunk)`). `none` of each
is the identity (`paramgolf.evaluation.identity`).
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from paramgolf.evaluation.bpb import ByteCounter, EvalResult, as_token_tensor, check_ranks, finish
from paramgolf.evaluation.sliding import Window, sliding_windows


class ReadAheadError(RuntimeError):
    """A method read validation tokens it had not yet been scored on."""


class TokenView:
    """The validation tokens revealed so far: positions [0, revealed). Reading further raises."""

    def __init__(self, tokens: Tensor, revealed: int):
        self._tokens, self.revealed = tokens, revealed

    def __len__(self) -> int:
        return self.revealed

    def __getitem__(self, index: slice) -> Tensor:
        if not isinstance(index, slice) or index.step not in (None, 1):
            raise TypeError("TokenView supports contiguous slices only")
        start, stop = index.start or 0, self.revealed if index.stop is None else index.stop
        if start < 0 or stop < start:
            raise IndexError(f"TokenView slice [{start}:{stop}] is not a forward range")
        if stop > self.revealed:
            raise ReadAheadError(
                f"read tokens [{start}:{stop}] but only [0:{self.revealed}] have been scored "
                f"(position {self.revealed} is not scored yet)"
            )
        return self._tokens[start:stop]


@dataclass(frozen=True)
class Chunk:
    """Chunk `index` of `count`: its targets are token positions [first, end)."""

    index: int
    count: int
    first: int
    end: int
    rank: int = 0  # this process among the `world_size` that share the stream
    world_size: int = 1

    @property
    def is_last(self) -> bool:
        return self.index == self.count - 1


def chunk_windows(
    num_tokens: int, seq_len: int, stride: int, chunk_tokens: int, rank: int = 0, world_size: int = 1
) -> list[tuple[Chunk, list[Window]]]:
    """Sliding windows grouped by the chunk of their first scored target (positions 1..num_tokens-1)."""
    assert chunk_tokens >= 1, chunk_tokens
    num_targets = num_tokens - 1
    count = math.ceil(num_targets / chunk_tokens)
    groups: list[list[Window]] = [[] for _ in range(count)]
    for w in sliding_windows(num_tokens, seq_len, stride):
        groups[(w.score_from - 1) // chunk_tokens].append(w)
    out = []
    for c, windows in enumerate(groups):
        first = 1 + c * chunk_tokens
        # A window may score past its chunk's end: its targets are scored (and revealed) with this chunk.
        end = max([min(first + chunk_tokens, num_tokens)] + [w.end for w in windows])
        out.append((Chunk(c, count, first, end, rank, world_size), windows))
    return out


@dataclass
class StreamScores:
    """What a stream measured: the result, and per position (when recorded) nll, times scored, distributions."""

    result: EvalResult
    nll: Tensor | None = None  # float64 [num_tokens]: nll of target position p (0 unscored)
    counts: Tensor | None = None  # int64 [num_tokens]: how often position p was scored
    distributions: dict[int, Tensor] | None = None  # position -> float64 log-probs [V] at the sampled positions
    max_norm_error: float = 0.0  # max |logsumexp - 0| over every scored position


def run_stream(
    model: nn.Module,
    tokens: Tensor,
    byte_table: ByteCounter,
    *,
    ttt: Any,
    eval_cache: Any,
    seq_len: int,
    stride: int,
    chunk_tokens: int,
    batch_seqs: int,
    device: torch.device | str,
    rank: int = 0,
    world_size: int = 1,
    autocast_dtype: torch.dtype | None = None,
    record: bool = False,
    sample_positions: tuple[int, ...] = (),
    method: str = "stream",
    local: bool = False,
) -> StreamScores:
    """Score `tokens` chunk by chunk through `ttt` and `eval_cache`; every rank holds the same adaptive state.

    Each chunk's windows are split contiguously over the ranks; the methods' own updates average across
    ranks. `record`: keep per-position scores and counts (the legality check); `sample_positions`:
    keep the full distribution there; `local`: this process alone, even inside a process group (the
    check runs on every rank by itself: no collective, in the stream or in the methods).
    """
    if local:
        rank, world_size = 0, 1
    started = time.perf_counter()
    device = torch.device(device)
    tokens = as_token_tensor(tokens)
    if not local:
        check_ranks(rank, world_size)
    n = tokens.numel()
    byte_table = byte_table.to(device)
    sums = torch.zeros(3, dtype=torch.float64, device=device)
    nll_at = torch.zeros(n, dtype=torch.float64) if record else None
    counts = torch.zeros(n, dtype=torch.int64) if record else None
    dists: dict[int, Tensor] = {}
    wanted = set(sample_positions)
    norm_error = torch.zeros((), dtype=torch.float64, device=device)
    ttt.begin(model)
    eval_cache.begin(getattr(model, "vocab_size", None))
    for chunk, windows in chunk_windows(n, seq_len, stride, chunk_tokens, rank, world_size):
        mine = windows[len(windows) * rank // world_size : len(windows) * (rank + 1) // world_size]
        model.eval()
        for b in range(0, len(mine), batch_seqs):
            batch = mine[b : b + batch_seqs]
            span = batch[0].end - batch[0].start  # every window of a split has the same length
            idx = torch.tensor([w.start for w in batch])[:, None] + torch.arange(span)
            window_tokens = tokens[idx].to(device)
            x, y = window_tokens[:, :-1], window_tokens[:, 1:]
            with torch.no_grad():
                with autocast(device, autocast_dtype):
                    logits = model(x)
                log_probs = eval_cache.mix(x, F.log_softmax(logits.double(), dim=-1))
            first = torch.tensor([w.score_from - w.start - 1 for w in batch], device=device)
            mask = torch.arange(span - 1, device=device)[None, :] >= first[:, None]
            nll = -log_probs.gather(-1, y[..., None]).squeeze(-1)
            lse = torch.logsumexp(log_probs, dim=-1)
            norm_error = torch.maximum(norm_error, (lse.abs() * mask).max())
            nb = byte_table.count(x, y).double() * mask
            sums += torch.stack([(nll * mask).sum(), mask.sum().double(), nb.sum()])  # on the device: no sync
            if record:
                pos = idx[:, 1:][mask.cpu()]
                nll_at.index_add_(0, pos, nll[mask].cpu())
                counts.index_add_(0, pos, torch.ones_like(pos))
                for p in wanted & set(pos.tolist()):
                    r, j = (idx[:, 1:] == p).nonzero()[0].tolist()
                    if mask[r, j]:
                        dists[p] = log_probs[r, j].cpu()
        seen = TokenView(tokens, chunk.end)
        if not chunk.is_last:
            ttt.adapt(model, seen, chunk)
            eval_cache.update(seen, chunk)
    result = finish(sums, method=method, seq_len=seq_len, stride=stride, started=started, reduce=not local)
    return StreamScores(result, nll_at, counts, dists, float(norm_error))


def autocast(device: torch.device, dtype: torch.dtype | None):
    """torch.autocast to `dtype` on `device`, or nothing when None."""
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()
