"""The n-gram backoff eval cache (`paramgolf.evaluation.ngram`) against a pure-Python dict reference.

`DictReference` is the seed's algorithm (#1185) written plainly: nested dicts, every n-gram
inside an update slice counted, backoff to the highest order whose context has a total.
"""

from __future__ import annotations

import math
from collections import defaultdict

import numpy as np
import pytest
import torch

from paramgolf.errors import UserError
from paramgolf.evaluation.ngram import NGramCache, NGramTargetHashed
from paramgolf.evaluation.stream import Chunk, ReadAheadError, TokenView


class DictReference:
    """Seed semantics: counts[n][ctx][v] and totals[n][ctx] over the n-grams of each update slice."""

    def __init__(self, vocab_size: int, min_order: int = 2, max_order: int = 9):
        self.V, self.min_order, self.max_order = vocab_size, min_order, max_order
        self.counts = {n: defaultdict(lambda: defaultdict(int)) for n in range(2, max_order + 1)}
        self.totals = {n: defaultdict(int) for n in range(2, max_order + 1)}

    def update(self, tokens: list[int], history: list[int] = ()) -> None:
        """Count the n-grams of `tokens` (with `history`: also those whose context starts in it)."""
        h = list(history)[-(self.max_order - 1) :] if history else []
        seq, fresh = h + list(tokens), len(h)
        for i in range(fresh, len(seq)):
            for n in range(2, self.max_order + 1):
                if i - n + 1 < 0:
                    continue
                ctx = tuple(seq[i - n + 1 : i])
                self.counts[n][ctx][seq[i]] += 1
                self.totals[n][ctx] += 1

    def query(self, context: list[int], v: int) -> tuple[int, float] | None:
        for n in range(self.max_order, self.min_order - 1, -1):
            if len(context) < n - 1:
                continue
            ctx = tuple(context[len(context) - n + 1 :])
            if self.totals[n].get(ctx, 0) > 0:
                return n, (self.counts[n][ctx].get(v, 0) + 1) / (self.totals[n][ctx] + self.V)
        return None


def reference_alpha(lp: torch.Tensor, cache: NGramCache) -> list[float]:
    """α of each row of model log-probs [..., V], written out from the seed's formula."""
    entropy = (-(lp.exp() * lp).sum(-1)).flatten().tolist()
    s, c = cache.alpha_slope, cache.alpha_center
    return [cache.alpha_base + cache.alpha_scale / (1 + math.exp(-s * (h - c))) for h in entropy]


def mixed_reference(ref: DictReference, context, v, model_lp: float, alpha: float) -> float:
    """log p_mixed(v) from the reference's n-gram probability and the model's log-prob of v."""
    hit = ref.query(context, v)
    if hit is None:
        return model_lp
    return math.log((1 - alpha) * math.exp(model_lp) + alpha * hit[1])


def chunk_batch(tokens: torch.Tensor, first: int, end: int, context: int = 8):
    """One window scoring targets [first, end) with `context` tokens before the first: x, y, mask [1, T]."""
    lo = max(0, first - 1 - context)
    x, y = tokens[lo : end - 1][None], tokens[lo + 1 : end][None]
    mask = torch.zeros_like(x, dtype=torch.bool)
    mask[0, first - 1 - lo :] = True
    return x, y, mask


def random_log_probs(shape, V, seed, sharp=3.0):
    g = torch.Generator().manual_seed(seed)
    return torch.log_softmax(sharp * torch.randn(*shape, V, generator=g, dtype=torch.float64), -1)


def stream_tokens(kind: str, n: int, V: int, seed: int = 0) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    if kind == "random":
        t = rng.integers(0, V, n)
    elif kind == "repetitive":  # a few phrases repeated with noise: long contexts recur, deep orders match
        phrases = [rng.integers(0, V, rng.integers(3, 12)) for _ in range(6)]
        out = []
        while len(out) < n:
            out.extend(phrases[rng.integers(0, len(phrases))].tolist())
            if rng.random() < 0.3:
                out.append(int(rng.integers(0, V)))
        t = np.array(out[:n])
    else:  # tiny alphabet: every order is dense
        t = rng.integers(0, 3, n)
    return torch.from_numpy(t.astype(np.int64))


def run_against_reference(tokens, V, C, cross_chunk=False, min_order=2, max_order=9, cache_cls=NGramCache):
    """Score every chunk, compare every position's mixed log-prob with the reference, then update both."""
    cache = cache_cls(min_order=min_order, max_order=max_order, chunk_tokens=C, cross_chunk=cross_chunk)
    cache.begin(V)
    ref = DictReference(V, min_order, max_order)
    n = tokens.numel()
    count = -(-(n - 1) // C)
    worst, matched = 0.0, 0
    toks = tokens.tolist()
    for c in range(count):
        first, end = 1 + c * C, min(1 + (c + 1) * C, n)
        x, y, mask = chunk_batch(tokens, first, end)
        lp = random_log_probs(x.shape, V, seed=c)
        out = cache.score(x, y, lp, mask)
        offset = first - 1 - max(0, first - 1 - 8)
        alpha = reference_alpha(lp[0], cache)
        model_lp = lp[0].gather(-1, y[0, :, None]).squeeze(-1).tolist()
        got = out[0].tolist()
        for j in range(offset, x.shape[1]):
            p = first + j - offset  # stream position of the target
            want = mixed_reference(ref, toks[max(0, p - 8) : p], toks[p], model_lp[j], alpha[j])
            worst = max(worst, abs(got[j] - want))
            matched += ref.query(toks[max(0, p - 8) : p], toks[p]) is not None
        if c < count - 1:
            cache.update(TokenView(tokens, end), Chunk(c, count, first, end))
            ref.update(toks[c * C : (c + 1) * C], toks[: c * C] if cross_chunk else ())
    return cache, ref, worst, matched


@pytest.mark.parametrize("kind,V", [("random", 37), ("repetitive", 50), ("tiny", 3)])
def test_every_position_matches_the_dict_reference(kind, V):
    tokens = stream_tokens(kind, 2_500, V)
    _, _, worst, matched = run_against_reference(tokens, V, C=300)
    assert worst < 1e-12
    assert matched > 1_000  # the cache was actually used, not just the model passed through


def test_counts_match_the_reference_exactly():
    tokens = stream_tokens("repetitive", 3_000, 40, seed=3)
    cache, ref, _, _ = run_against_reference(tokens, 40, C=256)
    toks = tokens.tolist()
    qj = np.arange(8, len(toks) - 1)  # every position of the stream as one window: target toks[j + 1]
    order, total, ctx = cache._contexts(tokens[None, :-1].numpy(), np.zeros_like(qj), qj)
    for shift in (0, 1):  # the target, and another token
        v = (tokens[qj + 1].numpy() + shift) % 40
        pair = cache._pair_counts(order, ctx, v)
        for i, j in enumerate(qj.tolist()):
            want = ref.query(toks[j - 7 : j + 1], int(v[i]))
            got = None if order[i] == 0 else (int(order[i]), (int(pair[i]) + 1) / (int(total[i]) + 40))
            assert got == want, (j, got, want)
    # the tables hold exactly the reference's distinct grams (orders 2..9) and no more
    for k in range(2, 10):
        grams = {ctx + (v,) for ctx, d in ref.counts[k].items() for v in d}
        assert cache._tables[k].size == len(grams)
        assert int(cache._tables[k].counts[: cache._tables[k].size].sum()) == sum(ref.totals[k].values())


def test_table_growth_keeps_ids_and_counts():
    from paramgolf.evaluation.ngram import _GramTable

    rng = np.random.default_rng(1)
    table, want = _GramTable(vocab_size=1_000), defaultdict(int)
    for _ in range(30):  # many repeats within and across batches; the index doubles several times
        prefix, last = rng.integers(0, 3_000, 2_000), rng.integers(0, 1_000, 2_000) % 7
        ids = table.add(prefix, last)
        assert (table.lookup(prefix, last) == ids).all()
        for key in zip(prefix.tolist(), last.tolist()):
            want[key] += 1
    keys = sorted(want)
    prefix, last = np.array([k[0] for k in keys] + [5_000]), np.array([k[1] for k in keys] + [0])
    assert table.count_of(prefix, last).tolist() == [want[k] for k in keys] + [0]
    assert table.buckets > 64
    assert table.size == len(want)


def test_index_growth_split_spills_and_wide_keys():
    """×4 growth moves each bucket's keys to its successors; spilled keys, int64 keys and presizing stay exact."""
    from paramgolf.evaluation.ngram import _GramTable

    rng = np.random.default_rng(2)
    table, want, grown = _GramTable(vocab_size=50_000), {}, set()
    for step in range(40):  # the index grows ×4 by splitting buckets several times
        prefix = rng.integers(0, 200_000 if step < 30 else 200_000_000, 3_000)  # later keys exceed 2^32
        last = rng.integers(0, 50_000, 3_000)
        ids = table.add(prefix, last)
        for key, i in zip((prefix * 50_000 + last).tolist(), ids.tolist()):
            assert want.setdefault(key, i) == i  # an id never changes
        grown.add(table.buckets)
        keys = np.array(list(want))
        assert (table.find(keys) == np.array(list(want.values()))).all()
    assert len(grown) >= 3 and table.keys.dtype == np.int64 and table.size == len(want)
    absent = np.array([k + 1 for k in want if k + 1 not in want][:500])
    assert (table.find(absent) == -1).all()
    # a crowded index: every key shares few buckets with many others, so buckets fill and spill on
    crowded = _GramTable(vocab_size=10)
    crowded.presize(400)
    key = rng.integers(0, 10_000, 400)
    ids = crowded.add_keys(key)
    assert crowded.buckets == 67 and crowded.size == len(set(key.tolist()))  # ≈ 6 keys per 8-slot bucket
    assert int(((crowded.fps >> np.uint64(56)) != 0).sum()) > 10  # many full buckets: keys spilled on
    assert (crowded.find(key) == ids).all() and (crowded.find(np.arange(10_000, 10_200)) == -1).all()


@pytest.mark.parametrize("dense", [True, False])
def test_bigram_map_and_hashed_bigrams_agree(dense, monkeypatch):
    """Small vocabularies keep bigrams in a dense V² map; the hashed table gives the same scores."""
    import paramgolf.evaluation.ngram as ngram

    monkeypatch.setattr(ngram, "_DENSE_BIGRAMS", 1 << 20 if dense else 0)
    tokens = stream_tokens("repetitive", 2_000, 45, seed=8)
    cache, _, worst, matched = run_against_reference(tokens, 45, C=250)
    assert isinstance(cache._tables[2], ngram._DenseGramTable) == dense
    assert worst < 1e-12 and matched > 1_000


def test_distribution_is_normalized_and_matches_score():
    V, C = 30, 200
    tokens = stream_tokens("repetitive", 1_400, V, seed=5)
    cache = NGramCache(chunk_tokens=C)
    cache.begin(V)
    count = -(-(tokens.numel() - 1) // C)
    for c in range(count - 1):
        first, end = 1 + c * C, 1 + (c + 1) * C
        cache.update(TokenView(tokens, end), Chunk(c, count, first, end))
    first, end = 1 + (count - 1) * C, tokens.numel()
    x, y, mask = chunk_batch(tokens, first, end)
    lp = random_log_probs(x.shape, V, seed=9)
    out = cache.score(x, y, lp, mask)
    js = torch.nonzero(mask[0]).squeeze(1).tolist()[::7]
    mixed = 0
    for j in js:
        d = cache.distribution(x[0], j, lp[0, j])
        assert abs(float(torch.logsumexp(d, 0))) < 1e-12
        assert abs(float(d[y[0, j]]) - float(out[0, j])) < 1e-12
        mixed += not torch.equal(d, lp[0, j])
    assert mixed > len(js) // 2


def test_alpha_ignores_the_target():
    V, C = 25, 150
    tokens = stream_tokens("repetitive", 800, V, seed=2)
    cache = NGramCache(chunk_tokens=C)
    cache.begin(V)
    for c in range(3):
        first = 1 + c * C
        cache.update(TokenView(tokens, first + C), Chunk(c, 6, first, first + C))
    x, y, mask = chunk_batch(tokens, 1 + 3 * C, 1 + 4 * C)
    lp = random_log_probs(x.shape, V, seed=4)
    y2 = (y + 1 + torch.randint(0, V - 1, y.shape, generator=torch.Generator().manual_seed(0))) % V
    out1, out2 = cache.score(x, y, lp, mask), cache.score(x, y2, lp, mask)
    assert not torch.equal(out1[mask], out2[mask])
    for j in torch.nonzero(mask[0]).squeeze(1).tolist()[::5]:
        d = cache.distribution(x[0], j, lp[0, j])  # no target involved
        assert abs(float(d[y[0, j]] - out1[0, j])) < 1e-12
        assert abs(float(d[y2[0, j]] - out2[0, j])) < 1e-12


def test_update_refuses_to_read_ahead():
    tokens = stream_tokens("random", 1_000, 20)
    cache = NGramCache(chunk_tokens=100)
    cache.begin(20)
    chunk = Chunk(0, 10, 1, 101)
    with pytest.raises(ReadAheadError):
        cache.update(TokenView(tokens, 60), chunk)  # the slice [0:100) reaches past what was scored
    cache.update(TokenView(tokens, 101), chunk)
    assert cache.tokens_added == 100


def test_cross_chunk_counts_the_grams_spanning_slices():
    V, C = 6, 120
    tokens = stream_tokens("random", 1_000, V, seed=7)
    cache, ref, worst, _ = run_against_reference(tokens, V, C, cross_chunk=True)
    assert worst < 1e-12
    inside, _, _, _ = run_against_reference(tokens, V, C, cross_chunk=False)
    # 8 slices counted (the last of 9 chunks never is): each of the 7 boundaries adds n-1 n-grams of order n
    spanning = 7 * sum(n - 1 for n in range(2, 10))
    total = lambda c: sum(int(t.counts[: t.size].sum()) for t in c._tables.values())  # noqa: E731
    assert total(cache) - total(inside) == spanning
    assert sum(sum(d.values()) for d in ref.totals.values()) == total(cache)


def test_backoff_takes_the_highest_seen_order():
    V = 20
    cache = NGramCache(chunk_tokens=12)
    cache.begin(V)
    seq = torch.tensor([1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 0], dtype=torch.int64)
    cache.update(TokenView(seq, 13), Chunk(0, 2, 1, 13))  # counts [1..12]
    assert cache.probability([1, 2, 3, 4, 5, 6, 7, 8], 9) == (9, 2 / 21)
    assert cache.probability([0, 0, 0, 5, 6, 7, 8], 9) == (5, 2 / 21)  # longest seen suffix: 5 6 7 8
    assert cache.probability([13, 8], 3) == (2, 1 / 21)  # bigram context 8 seen, target unseen
    assert cache.probability([13], 3) is None  # never seen
    assert cache.probability([12], 1) is None  # seen only at the slice's end: no follower, no total
    assert cache.probability([10, 11, 12], 1) is None
    high = NGramCache(min_order=4, chunk_tokens=12)
    high.begin(V)
    high.update(TokenView(seq, 13), Chunk(0, 2, 1, 13))
    assert high.probability([0, 0, 7, 8], 9) is None  # order 3 would match but min_order is 4
    assert high.probability([0, 6, 7, 8], 9) == (4, 2 / 21)


def test_begin_resets():
    V, C = 10, 50
    tokens = stream_tokens("random", 200, V)
    cache = NGramCache(chunk_tokens=C)
    cache.begin(V)
    cache.update(TokenView(tokens, 51), Chunk(0, 4, 1, 51))
    assert cache.probability(tokens[:5].tolist(), 0) is not None
    empty_bytes = NGramCache(chunk_tokens=C)
    empty_bytes.begin(V)
    cache.begin(V)
    assert cache.probability(tokens[:5].tolist(), 0) is None
    assert cache.tokens_added == 0 and cache.nbytes == empty_bytes.nbytes


def test_user_errors():
    with pytest.raises(UserError, match="min_order"):
        NGramCache(min_order=1)
    with pytest.raises(UserError, match="alpha_base"):
        NGramCache(alpha_base=0.5, alpha_scale=0.6)
    cache = NGramCache(chunk_tokens=100)
    with pytest.raises(UserError, match="vocab_size"):
        cache.begin(None)
    cache.begin(10)
    tokens = torch.arange(300) % 10
    with pytest.raises(UserError, match="chunk_tokens=100"):
        cache.update(TokenView(tokens, 300), Chunk(1, 3, 51, 101))  # the stream cut 50-token chunks
    with pytest.raises(UserError, match=r"\[0, 10\)"):
        cache.update(TokenView(torch.arange(300), 101), Chunk(0, 3, 1, 101))


def test_rules_declared():
    assert all(NGramCache().rules_kept().values())
    kept = NGramTargetHashed().rules_kept()
    assert kept["normalization"] is False and kept["causality"] and kept["score_before_update"]


def test_target_hashed_is_not_normalized_and_score_is_its_entry():
    V, C = 40, 200
    tokens = stream_tokens("repetitive", 1_200, V, seed=11)
    cache = NGramTargetHashed(chunk_tokens=C, buckets=64)  # few buckets: collisions everywhere
    cache.begin(V)
    count = -(-(tokens.numel() - 1) // C)
    for c in range(count - 1):
        first, end = 1 + c * C, 1 + (c + 1) * C
        cache.update(TokenView(tokens, end), Chunk(c, count, first, end))
    first = 1 + (count - 1) * C
    x, y, mask = chunk_batch(tokens, first, tokens.numel())
    lp = random_log_probs(x.shape, V, seed=1)
    out = cache.score(x, y, lp, mask)
    off = 0.0
    for j in torch.nonzero(mask[0]).squeeze(1).tolist()[::9]:
        d = cache.distribution(x[0], j, lp[0, j])
        assert abs(float(d[y[0, j]] - out[0, j])) < 1e-12
        off = max(off, abs(float(torch.logsumexp(d, 0))))
    assert off > 0.01


def test_target_hashed_with_many_buckets_counts_like_the_exact_cache():
    """With far more buckets than grams, collisions are unlikely: totals and pair counts agree with the exact cache."""
    V, C = 30, 200
    tokens = stream_tokens("repetitive", 1_000, V, seed=4)
    exact, hashed = NGramCache(chunk_tokens=C), NGramTargetHashed(chunk_tokens=C, buckets=2**20)
    for cache in (exact, hashed):
        cache.begin(V)
        for c in range(4):
            first = 1 + c * C
            cache.update(TokenView(tokens, first + C), Chunk(c, 5, first, first + C))
    x, y, mask = chunk_batch(tokens, 801, 1_000)
    lp = random_log_probs(x.shape, V, seed=2)
    diff = (exact.score(x, y, lp, mask) - hashed.score(x, y, lp, mask))[mask].abs()
    assert float(diff.max()) < 1e-12
