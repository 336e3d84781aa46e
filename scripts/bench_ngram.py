"""Throughput and memory of the n-gram backoff eval cache (`paramgolf.evaluation.ngram.NGramCache`) on CPU.

    python scripts/bench_ngram.py [--tokens 2100000] [--chunk 32768] [--reference-tokens 100000]
                                  [--baseline OLD_NGRAM_PY] [--repeats 2]

Data: the English Wikipedia sample in ../shared/data/corpus tokenized with the FineWeb sp1024
SentencePiece model (about 1.4M tokens). Beyond that, the same articles tokenized with the
sp2048 model, its ids folded into [0, 1024) (t mod 1024), are appended: a different token
sequence with real-text statistics, not a repeat of the first one (which would shrink the tables
and flatter the bytes per token). Without ../shared the script says so and exits 0.

What is timed (single process, `torch.set_num_threads(1)`): for every chunk of `--chunk` tokens,
in stream order, (1) scoring every token of the chunk against the tables built from earlier
chunks: `NGramCache.score_with_alpha` on windows of 1,024 targets (each preceded by 8 context
tokens), i.e. the backoff choice, the counts, p_ng and the log-space mixture with the model;
then (2) `update` with the chunk (its `TokenView` is made before the clock starts: the stream's
view exists already, and building a fresh boolean mask over the whole stream is the harness's cost). The model side of `score` is given, not timed: a fixed
log-probability of each target and a fixed α per position (what `NGramCache.alpha` computes from
the model's log-softmax, O(V) per position and a GPU's job in real runs). That part's CPU
throughput is printed separately (`alpha_tokens_per_s`, on one chunk of float64 [32768, 1024]).
bytes_per_cached_token = (sum of nbytes of every array the cache holds) / (tokens added).
The pure-Python dict reference (tests/evaluation/test_ngram.py) runs on a prefix for comparison.
`--baseline FILE`: also time the `NGramCache` of another ngram.py (e.g. a previous version kept
outside the repo), alternating with the current one `--repeats` times in this process, so that
both see the same load on a shared machine; every run is printed, then the usual summary.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import resource
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from paramgolf.evaluation.ngram import NGramCache
from paramgolf.evaluation.stream import Chunk, TokenView

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
V = 1024
CONTEXT = 8  # tokens before each window's first target: the longest context of order 9


def load_tokens(n: int) -> tuple[np.ndarray, str]:
    """≥ n tokens of real text in [0, V): enwiki via sp1024, then enwiki via sp2048 folded mod V."""
    import sentencepiece as spm

    texts = [json.loads(line)["text"] for line in (SHARED / "corpus" / "enwiki_sample.jsonl").open()]
    parts, notes = [], []
    for vocab in (1024, 2048):
        sp = spm.SentencePieceProcessor(model_file=str(SHARED / "tokenizers" / f"fineweb_{vocab}_bpe.model"))
        ids = np.concatenate([np.asarray(t, np.int64) for t in sp.encode(texts)]) % V
        parts.append(ids)
        notes.append(f"enwiki sp{vocab}{' mod 1024' if vocab != V else ''}: {ids.size} tokens")
        if sum(p.size for p in parts) >= n:
            break
    tokens = np.concatenate(parts)
    if tokens.size < n:
        raise SystemExit(f"only {tokens.size} tokens of text available, fewer than --tokens {n}")
    return tokens[:n], "; ".join(notes) + f"; first {n} used"


def windows(tokens: Tensor, first: int, end: int, width: int = 1024):
    """One batch covering targets [first, end): row r scores `width` targets after 8 context tokens.

    x [R, width + 8] (rows end-padded with token 0), y the next tokens, mask True on the targets.
    """
    starts = list(range(first, end, width))
    x = torch.zeros(len(starts), width + CONTEXT, dtype=torch.int64)
    y = torch.zeros_like(x)
    mask = torch.zeros_like(x, dtype=torch.bool)
    for r, s in enumerate(starts):
        e = min(s + width, end)
        lo = max(0, s - 1 - CONTEXT)
        x[r, : e - 1 - lo], y[r, : e - 1 - lo] = tokens[lo : e - 1], tokens[lo + 1 : e]
        mask[r, s - 1 - lo : e - 1 - lo] = True
    return x, y, mask


def run_cache(tokens: Tensor, chunk: int, cache_cls=NGramCache) -> dict:
    cache = cache_cls(chunk_tokens=chunk)
    cache.begin(V)
    n = tokens.numel()
    count = -(-(n - 1) // chunk)
    score_s = update_s = 0.0
    scored = 0
    for c in range(count):
        first, end = 1 + c * chunk, min(1 + (c + 1) * chunk, n)
        x, y, mask = windows(tokens, first, end)
        model_lp = torch.full(x.shape, -np.log(V), dtype=torch.float64)
        alpha = torch.full((int(mask.sum()),), 0.5, dtype=torch.float64)
        seen = TokenView(tokens, end)  # the stream's view exists already: its set-up is not the cache's time
        t0 = time.perf_counter()
        out = cache.score_with_alpha(x, y, model_lp, alpha, mask)
        scored += int(mask.sum())
        t1 = time.perf_counter()
        if c < count - 1:  # the stream never updates on the last chunk
            cache.update(seen, Chunk(c, count, first, end))
        update_s += time.perf_counter() - t1
        score_s += t1 - t0
    assert torch.isfinite(out).all()
    return {
        "tokens": n,
        "scored": scored,
        "added": cache.tokens_added,
        "seconds": score_s + update_s,
        "score_s": score_s,
        "update_s": update_s,
        "tokens_per_s": scored / (score_s + update_s),
        "bytes_per_cached_token": cache.nbytes / cache.tokens_added,
        "cache_bytes": cache.nbytes,
    }


def run_alpha(chunk: int) -> float:
    cache = NGramCache()
    g = torch.Generator().manual_seed(0)
    lp = torch.log_softmax(torch.randn(chunk, V, generator=g, dtype=torch.float64), -1)
    t0 = time.perf_counter()
    cache.alpha(lp)
    return chunk / (time.perf_counter() - t0)


def run_reference(tokens: Tensor, chunk: int, n_ref: int) -> float:
    """tokens/s of the pure-Python dict reference (update + query of every token) on the first n_ref tokens."""
    spec = importlib.util.spec_from_file_location("test_ngram", ROOT / "tests" / "evaluation" / "test_ngram.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    ref = mod.DictReference(V)
    toks = tokens[:n_ref].tolist()
    t0 = time.perf_counter()
    for c in range(0, n_ref, chunk):
        for p in range(max(c, 1), min(c + chunk, n_ref)):
            ref.query(toks[max(0, p - CONTEXT) : p], toks[p])
        ref.update(toks[c : c + chunk])
    return n_ref / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tokens", type=int, default=2_100_000)
    ap.add_argument("--chunk", type=int, default=32_768)
    ap.add_argument("--reference-tokens", type=int, default=100_000)
    ap.add_argument("--baseline", type=Path, default=None, help="an ngram.py whose NGramCache to time alongside")
    ap.add_argument("--repeats", type=int, default=2, help="alternating runs of baseline and current (--baseline)")
    args = ap.parse_args()
    if not (SHARED / "corpus" / "enwiki_sample.jsonl").is_file():
        print(f"bench_ngram: {SHARED} not found (the enwiki sample and tokenizers); nothing measured")
        return
    torch.set_num_threads(1)
    tokens, source = load_tokens(args.tokens)
    tokens_t = torch.from_numpy(tokens)
    if args.baseline is not None:
        spec = importlib.util.spec_from_file_location("ngram_baseline", args.baseline)
        baseline = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(baseline)
        for rep in range(args.repeats):
            for name, cls in (("baseline", baseline.NGramCache), ("current", NGramCache)):
                r = run_cache(tokens_t, args.chunk, cls)
                keys = ("tokens_per_s", "score_s", "update_s", "bytes_per_cached_token")
                print(json.dumps({"run": f"{name} {rep + 1}"} | {k: round(r[k], 3) for k in keys}), flush=True)
    res = run_cache(tokens_t, args.chunk)
    res["alpha_tokens_per_s"] = run_alpha(args.chunk)
    res["reference_tokens_per_s"] = run_reference(tokens_t, args.chunk, args.reference_tokens)
    res["reference_tokens"] = args.reference_tokens
    res["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    res["data"] = source
    res["chunk"] = args.chunk
    print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in res.items()}))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
