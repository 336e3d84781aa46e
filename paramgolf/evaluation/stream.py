"""One scoring stream for every evaluation-time method: score, record, and only then reveal.

The validation targets are cut into chunks of `chunk_tokens`; each sliding window belongs to
the chunk of its first scored target. For chunk c the stream (1) scores all of c's windows with
the current adaptive state (TTT weights, cache counts) and records every score, then (2) hands
the methods a `TokenView` of the tokens scored so far, and only those, to adapt on. A read of a
token that has not been scored yet is recorded (`read_ahead`; a strict view raises
`ReadAheadError`): score before update is measured, not declared. Every target is scored exactly
once (`counts` proves it in the legality check).

A method is two objects (`paramgolf.evaluation.identity.Identity` is the no-op of each):
- a `ttt` adapts the model: `begin(model)`, `end(model)` (puts back what begin changed), `score_logits(model, x, seen=, positions=, first=)` (the
  logits a batch of windows is scored with; SLOT optimizes per batch here), `adapt(model, seen, chunk)`;
  a ttt with its own plan of windows (per-document LoRA) defines `run(model, tokens, recorder, ...)`;
- an `eval_cache` mixes another distribution into the model's: `begin(vocab_size)`,
  `score(x, y, log_probs, mask)` (log-probability of each target), `distribution(x_row, j, log_probs_row)`
  (the full distribution at one position: the check tests that it sums to 1 and holds the scored entry),
  `update(seen, chunk)`.
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from paramgolf.errors import UserError
from paramgolf.evaluation.bpb import ByteCounter, EvalResult, as_token_tensor, check_ranks, finish
from paramgolf.evaluation.sliding import Window, sliding_windows


class ReadAheadError(RuntimeError):
    """A method read validation tokens it had not yet been scored on."""


class TokenView:
    """The validation tokens a method may read: those already scored (and token 0, the first context).

    `scored` is a prefix length or a boolean mask over positions (shared with the stream, so the view
    grows as scoring goes on). Reading an unscored position raises `ReadAheadError` when `strict`,
    otherwise the read is logged in `log` (the stream's `read_ahead`) and served: a non-compliant
    method still runs, and its verdict says where it read ahead.
    """

    def __init__(self, tokens: Tensor, scored: int | Tensor, strict: bool = True, log: list[str] | None = None):
        if isinstance(scored, int):
            scored = torch.arange(tokens.numel()) < max(scored, 1)
        self._tokens, self._scored, self.strict = tokens, scored, strict
        self.log = log if log is not None else []

    @property
    def revealed(self) -> int:
        """Length of the scored prefix: positions [0, revealed) may all be read."""
        unscored = (~self._scored).nonzero()
        return int(unscored[0]) if len(unscored) else self._tokens.numel()

    def __len__(self) -> int:
        return self.revealed

    def _check(self, what: str, positions: Tensor) -> None:
        unscored = positions[~self._scored[positions]]
        if len(unscored):
            msg = f"read tokens {what} but position {int(unscored.min())} is not scored yet"
            if self.strict:
                raise ReadAheadError(msg)
            self.log.append(msg)

    def __getitem__(self, index: slice) -> Tensor:
        if not isinstance(index, slice) or index.step not in (None, 1):
            raise TypeError("TokenView supports contiguous slices only (and take() for positions)")
        start, stop = index.start or 0, self.revealed if index.stop is None else index.stop
        if start < 0 or stop < start:
            raise IndexError(f"TokenView slice [{start}:{stop}] is not a forward range")
        self._check(f"[{start}:{stop}]", torch.arange(start, min(stop, self._tokens.numel())))
        return self._tokens[start:stop]

    def take(self, positions: Tensor) -> Tensor:
        """tokens[positions] for any integer tensor of positions."""
        positions = positions.cpu()
        self._check(f"at {positions.numel()} positions", positions.reshape(-1))
        return self._tokens[positions]


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
    """What a stream measured: the result, and (when recorded) per-position scores and the checks' evidence."""

    result: EvalResult
    nll: Tensor | None = None  # float64 [num_tokens]: nll of target position p (0 unscored)
    counts: Tensor | None = None  # int64 [num_tokens]: how often position p was scored
    distributions: dict[int, Tensor] | None = None  # position -> float64 log-probs [V] at the sampled positions
    max_norm_error: float = 0.0  # max |logsumexp| of the sampled distributions
    norm_error_at: int | None = None  # the position of that maximum
    entry_mismatch: tuple[int, float] | None = None  # (position, |scored - distribution[target]|) when > 1e-9
    read_ahead: list[str] = field(default_factory=list)  # reads of unscored tokens, in order
    rescored: int = 0  # targets scored more than once


class Recorder:
    """The stream's ledger: sums for the score, which positions are scored, and (recorded) the evidence.

    `add` takes one batch of windows; `view` is what the methods may read. Sums stay on the device.
    """

    def __init__(
        self,
        tokens: Tensor,
        byte_table: ByteCounter,
        device: torch.device,
        *,
        record: bool = False,
        sample_positions: tuple[int, ...] = (),
    ):
        n = tokens.numel()
        self.tokens, self.device, self.byte_table, self.record = tokens, device, byte_table.to(device), record
        self.scored = torch.zeros(n, dtype=torch.bool)
        self.scored[0] = True  # the first token is context, never a target
        self.sums = torch.zeros(3, dtype=torch.float64, device=device)
        self.nll_at = torch.zeros(n, dtype=torch.float64) if record else None
        self.counts = torch.zeros(n, dtype=torch.int64) if record else None
        self.wanted = set(sample_positions)
        self.dists: dict[int, Tensor] = {}
        self.norm = (0.0, None)
        self.mismatch: tuple[int, float] | None = None
        self.read_ahead: list[str] = []
        self.rescored = 0  # targets scored again (a span overlapping what was scored before)

    def view(self) -> TokenView:
        return TokenView(self.tokens, self.scored, strict=False, log=self.read_ahead)

    def reveal(self, end: int) -> None:
        """Positions [0, end) are scored (on every rank: a chunk is done)."""
        self.scored[:end] = True

    def add(
        self,
        idx: Tensor,
        target_logp: Tensor,
        mask: Tensor,
        spans: list[tuple[int, int]],
        cache: Any = None,
        log_probs: Tensor | None = None,
    ) -> None:
        """Record one batch: `idx` [B, T+1] token positions of the windows (CPU), `target_logp` [B, T] the
        log-probability of each target tokens[idx[:, 1:]], `mask` [B, T] the targets scored here, `spans`
        the scored [lo, hi) ranges; `cache` and `log_probs` give the full distribution at sampled positions."""
        window = self.tokens[idx].to(self.device)
        x, y = window[:, :-1], window[:, 1:]
        nb = self.byte_table.count(x, y, idx[:, 1:].to(self.device)).double() * mask
        nll = -target_logp.double()
        self.sums += torch.stack([(nll * mask).sum(), mask.sum().double(), nb.sum()])  # no host sync
        for lo, hi in spans:
            self.rescored += int(self.scored[lo:hi].sum())  # single pass, counted in every run
            self.scored[lo:hi] = True
        if not self.record:
            return
        cpu_mask = mask.cpu()
        pos = idx[:, 1:][cpu_mask]
        self.nll_at.index_add_(0, pos, nll[mask].cpu())
        self.counts.index_add_(0, pos, torch.ones_like(pos))
        for (r, j), p in zip(cpu_mask.nonzero().tolist(), pos.tolist()):  # the scored (row, column) of each p
            if p not in self.wanted:
                continue
            d = cache.distribution(x[r], j, log_probs[r, j]).double().cpu()
            self.dists[p] = d
            err = abs(float(torch.logsumexp(d, 0)))
            if self.norm[1] is None or err > self.norm[0]:
                self.norm = (err, p)
            gap = abs(float(d[int(y[r, j])]) - float(target_logp[r, j]))
            if gap > 1e-9 and (self.mismatch is None or gap > self.mismatch[1]):
                self.mismatch = (p, gap)

    def finish(self, *, method: str, seq_len: int, stride: int | None, started: float, reduce: bool) -> StreamScores:
        result = finish(self.sums, method=method, seq_len=seq_len, stride=stride, started=started, reduce=reduce)
        return StreamScores(
            result,
            self.nll_at,
            self.counts,
            self.dists,
            self.norm[0],
            self.norm[1],
            self.mismatch,
            self.read_ahead,
            self.rescored,
        )


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
    rec = Recorder(tokens, byte_table, device, record=record, sample_positions=sample_positions)
    ttt.begin(model)
    eval_cache.begin(getattr(model, "vocab_size", None))
    check_methods(ttt, eval_cache)
    if hasattr(ttt, "run"):  # a method with its own plan of windows (per-document LoRA)
        ttt.run(
            model,
            tokens,
            rec,
            seq_len=seq_len,
            batch_seqs=batch_seqs,
            device=device,
            rank=rank,
            world_size=world_size,
            autocast_dtype=autocast_dtype,
        )
        ttt.end(model)
        return rec.finish(method=method, seq_len=seq_len, stride=stride, started=started, reduce=not local)
    for chunk, windows in chunk_windows(n, seq_len, stride, chunk_tokens, rank, world_size):
        mine = windows[len(windows) * rank // world_size : len(windows) * (rank + 1) // world_size]
        model.eval()
        for b in range(0, len(mine), batch_seqs):
            batch = mine[b : b + batch_seqs]
            span = batch[0].end - batch[0].start  # every window of a split has the same length
            idx = torch.tensor([w.start for w in batch])[:, None] + torch.arange(span)
            window_tokens = tokens[idx].to(device)
            x, y = window_tokens[:, :-1], window_tokens[:, 1:]
            first = torch.tensor([w.score_from - w.start - 1 for w in batch], device=device)
            mask = torch.arange(span - 1, device=device)[None, :] >= first[:, None]
            with torch.no_grad():
                with autocast(device, autocast_dtype):
                    logits = ttt.score_logits(model, x, seen=rec.view(), positions=idx, first=first)
                log_probs = F.log_softmax(logits.double(), dim=-1)
                target_logp = eval_cache.score(x, y, log_probs, mask)
            rec.add(idx, target_logp, mask, [(w.score_from, w.end) for w in batch], eval_cache, log_probs)
        rec.reveal(chunk.end)  # every rank has scored its share of the chunk
        if not chunk.is_last:
            ttt.adapt(model, rec.view(), chunk)
            eval_cache.update(rec.view(), chunk)
    ttt.end(model)
    return rec.finish(method=method, seq_len=seq_len, stride=stride, started=started, reduce=not local)


def check_methods(ttt: Any, eval_cache: Any) -> None:
    """Refuse combinations the stream cannot run, before anything is trained."""
    if hasattr(ttt, "run") and getattr(eval_cache, "name", "none") != "none":
        raise UserError(f"ttt={ttt.name} scores documents in its own order: use it with eval_cache=none")
    stream_chunk_tokens(ttt, eval_cache, 2)


def stream_chunk_tokens(ttt: Any, eval_cache: Any, num_tokens: int) -> int:
    """The stream's chunk size: the methods' `chunk_tokens` (they must agree), else one chunk (SLOT adapts per batch)."""
    sizes = {
        f"{g}.chunk_tokens": m.chunk_tokens
        for g, m in (("ttt", ttt), ("eval_cache", eval_cache))
        if hasattr(m, "chunk_tokens")
    }
    if len(set(sizes.values())) > 1:
        raise UserError(
            " and ".join(f"{k}={v}" for k, v in sizes.items()) + " must agree: the stream has one chunk size"
        )
    return next(iter(sizes.values()), max(num_tokens - 1, 1))


def autocast(device: torch.device, dtype: torch.dtype | None):
    """torch.autocast to `dtype` on `device`, or nothing when None."""
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()
