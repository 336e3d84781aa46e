"""The mechanical legality check: run a `ttt` × `eval_cache` combination and test the four rules.

Declarations are not trusted. On a short prefix of the validation tokens, with small chunks so
that adaptive state changes inside the probe, in float64 on the CPU (bit-for-bit repeatable):

- causality: streams that agree up to position t and differ after it must give identical scores
  at every position ≤ t, and the same distribution at t+1 (only its target changed); several t,
  inside a window and just before a chunk boundary;
- normalization: at every scored position of the probe the method's full distribution sums to 1
  within 1e-6 and the scored probability is its entry at the target (`distribution` against `score`);
- score before update: the stream reveals only scored tokens; every read of an unscored one is logged;
- single pass: every target position scored exactly once.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from paramgolf.evaluation.stream import ReadAheadError, run_stream

NORM_TOLERANCE = 1e-6


def probe_positions(
    num_tokens: int, seq_len: int, chunk_tokens: int, boundaries: tuple[int, ...] = (), doc_chunk: int | None = None
) -> list[int]:
    """Positions t after which the probe streams differ: inside the first window, just before a chunk
    boundary, in the middle of a later chunk, and just before the first few document `boundaries` (BOS
    positions: a method that sizes a document's last chunk by where the next BOS is fails there), and
    around the end of a document's first chunk of `doc_chunk` tokens (per-document methods' chunks)."""
    candidates = [seq_len // 2, chunk_tokens - 1, chunk_tokens, 2 * chunk_tokens - 2, num_tokens // 2 + 3]
    candidates += [p - 2 for p in boundaries[:3]]
    if doc_chunk:
        candidates += [p + doc_chunk + d for p in boundaries[:2] for d in (-1, 0)]
    return sorted({t for t in candidates if 1 <= t < num_tokens - 2})


def check_legality(
    model: nn.Module,
    tokens: Tensor,
    byte_table: Any,
    make_methods: Callable[[], tuple[Any, Any]],
    *,
    seq_len: int,
    stride: int,
    chunk_tokens: int,
    batch_seqs: int = 8,
    vocab_size: int,
    seed: int = 0,
    boundary_token: int | None = None,
    doc_chunk: int | None = None,
) -> dict[str, Any]:
    """The verdict {causal, normalized, score_first, single_pass, reasons} for the methods `make_methods()` builds.

    `boundary_token`: the documents' BOS id when a method splits documents (probes also just before them);
    `doc_chunk`: that method's chunk length inside a document (probes around its first chunk's end).

    `model` is copied (float64, CPU) for every probe run, so TTT starts from the same weights each time.
    """
    base = copy.deepcopy(model).double().cpu()
    byte_table = byte_table.to(torch.device("cpu"))
    reasons: list[str] = []
    n = tokens.numel()
    bounds = tuple((tokens == boundary_token).nonzero().flatten().tolist()) if boundary_token is not None else ()
    positions = probe_positions(n, seq_len, chunk_tokens, tuple(p for p in bounds if p > 2), doc_chunk)

    def stream(toks: Tensor, samples: tuple[int, ...]):
        ttt, cache = make_methods()
        if getattr(ttt, "autocast_dtype", None) is not None:
            ttt.autocast_dtype = None  # the probe runs in float64: bit-for-bit repeatable
        return run_stream(
            copy.deepcopy(base),
            toks,
            byte_table,
            ttt=ttt,
            eval_cache=cache,
            seq_len=seq_len,
            stride=stride,
            chunk_tokens=chunk_tokens,
            batch_seqs=batch_seqs,
            device="cpu",
            record=True,
            local=True,
            sample_positions=samples,
        )

    samples = set(range(1, n))  # every scored position: the probe is small, a cache may break only sometimes
    verdict = {"causal": True, "normalized": True, "score_first": True, "single_pass": True}
    try:
        ref = stream(tokens, tuple(sorted(samples)))
    except ReadAheadError as exc:  # a method with a strict view of its own
        verdict["score_first"] = False
        return {**verdict, "causal": None, "normalized": None, "single_pass": None, "reasons": [f"score_first: {exc}"]}
    if ref.read_ahead:
        verdict["score_first"] = False
        reasons.append(f"score_first: {ref.read_ahead[0]} ({len(ref.read_ahead)} reads ahead in all)")
    if ref.max_norm_error > NORM_TOLERANCE:
        verdict["normalized"] = False
        reasons.append(
            f"normalized: the distribution at position {ref.norm_error_at} sums to 1 only within {ref.max_norm_error:.3g}"
        )
    if ref.entry_mismatch is not None:
        verdict["normalized"] = False
        p, gap = ref.entry_mismatch
        reasons.append(
            f"normalized: the scored log-probability at position {p} is {gap:.3g} off its distribution's entry"
        )
    counts = ref.counts[1:]
    if not bool((counts == 1).all()):
        bad = int((counts != 1).nonzero()[0]) + 1
        verdict["single_pass"] = False
        reasons.append(f"single_pass: position {bad} scored {int(ref.counts[bad])} times")
    gen = torch.Generator().manual_seed(seed)
    for t in positions:
        other = tokens.clone()
        other[t + 1 :] = torch.randint(0, vocab_size, (n - t - 1,), generator=gen)
        alt = stream(other, (t + 1,))
        diff = (ref.nll[: t + 1] != alt.nll[: t + 1]).nonzero()
        if len(diff):
            verdict["causal"] = False
            reasons.append(f"causal: the score at position {int(diff[0])} changed when only tokens after {t} changed")
            break
        if t + 1 in ref.distributions and t + 1 not in alt.distributions:
            verdict["single_pass"] = False
            reasons.append(f"single_pass: position {t + 1} was not scored when only tokens after {t} changed")
            break
        if t + 1 in ref.distributions and not torch.equal(ref.distributions[t + 1], alt.distributions[t + 1]):
            verdict["causal"] = False
            reasons.append(f"causal: the distribution at position {t + 1} changed when only its target changed")
            break
    return {**verdict, "reasons": reasons}
