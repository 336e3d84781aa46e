"""The scoring stream (score a chunk, then reveal it), score-first TTT and the mechanical legality check."""

from __future__ import annotations

import copy

import pytest
import torch
from evalkit import make_byte_table  # tests/evaluation/evalkit.py

from paramgolf.config.compose import compose, to_container
from paramgolf.evaluation.eval_cache import NoEvalCache
from paramgolf.evaluation.identity import Identity
from paramgolf.evaluation.legality import check_legality
from paramgolf.evaluation.score_first import ScoreFirstTTT
from paramgolf.evaluation.sliding import evaluate_sliding
from paramgolf.evaluation.stream import ReadAheadError, TokenView, chunk_windows, run_stream
from paramgolf.evaluation.ttt import NoTTT
from paramgolf.runner.build import build_model

VOCAB, SEQ, STRIDE, CHUNK = 512, 32, 8, 48


@pytest.fixture(scope="module")
def model():
    """The smoke model with random matrices (at init its output projections are zero: no context would matter)."""
    c = to_container(compose(["experiment=smoke", "arch.num_layers=2", "arch.model_dim=64"]))
    torch.manual_seed(0)
    m = build_model(c["arch"]).eval()
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for p in m.parameters():
            if p.dim() == 2:
                p.copy_(torch.randn(p.shape, generator=g) / p.shape[1] ** 0.5)
    return m


@pytest.fixture(scope="module")
def tokens():
    g = torch.Generator().manual_seed(1)
    return torch.randint(0, VOCAB, (200,), generator=g)


def _stream(model, tokens, ttt=None, cache=None, **kw):
    return run_stream(
        model,
        tokens,
        make_byte_table(VOCAB),
        ttt=ttt or NoTTT(),
        eval_cache=cache or NoEvalCache(),
        seq_len=SEQ,
        stride=STRIDE,
        chunk_tokens=CHUNK,
        batch_seqs=4,
        device="cpu",
        **kw,
    )


def test_windows_belong_to_the_chunk_of_their_first_scored_target_and_score_each_target_once():
    n = 200
    chunks = chunk_windows(n, SEQ, STRIDE, CHUNK)
    scored = []
    for chunk, windows in chunks:
        for w in windows:
            assert chunk.first <= w.score_from < chunk.first + CHUNK
            scored += range(w.score_from, w.end)
            assert w.end <= chunk.end
    assert sorted(scored) == list(range(1, n))
    assert [c.index for c, _ in chunks] == list(range(len(chunks))) and chunks[-1][0].is_last


def test_token_view_refuses_to_read_past_the_scored_tokens():
    view = TokenView(torch.arange(10), 6)
    assert view[2:6].tolist() == [2, 3, 4, 5]
    with pytest.raises(ReadAheadError, match="position 6 is not scored yet"):
        view[0:7]


def test_a_lenient_view_serves_the_read_and_logs_where_it_read_ahead():
    scored = torch.zeros(10, dtype=torch.bool)
    scored[:4] = True
    scored[6] = True
    log = []
    view = TokenView(torch.arange(10), scored, strict=False, log=log)
    assert len(view) == 4 and view.take(torch.tensor([1, 6])).tolist() == [1, 6] and log == []
    assert view[2:8].tolist() == [2, 3, 4, 5, 6, 7]
    assert log == ["read tokens [2:8] but position 4 is not scored yet"]


class _ScoresTwice(Identity):
    """A method with its own plan that scores one span twice: the stream counts it in every run."""

    name = "twice"

    def run(self, model, tokens, recorder, **kw):
        n = tokens.numel()
        for lo in (0, 0):
            idx = torch.arange(lo, n)[None]
            log_probs = torch.log_softmax(model(tokens[idx[:, :-1]]).double(), -1)
            logp = log_probs.gather(-1, tokens[idx[:, 1:]][..., None]).squeeze(-1)
            recorder.add(idx, logp, torch.ones_like(logp, dtype=torch.bool), [(1, n)])


def test_the_stream_counts_targets_scored_twice_even_without_recording(model):
    got = run_stream(
        model,
        torch.arange(20),
        make_byte_table(VOCAB),
        ttt=_ScoresTwice(),
        eval_cache=NoEvalCache(),
        seq_len=SEQ,
        stride=STRIDE,
        chunk_tokens=CHUNK,
        batch_seqs=4,
        device="cpu",
    )
    assert got.rescored == 19 and got.result.num_tokens == 38


def test_the_identity_stream_equals_sliding_evaluation(model, tokens):
    ref = evaluate_sliding(
        model, tokens, make_byte_table(VOCAB), seq_len=SEQ, stride=STRIDE, batch_seqs=4, device="cpu"
    )
    got = _stream(model, tokens, record=True)
    assert got.result.num_tokens == ref.num_tokens == 199 and got.result.num_bytes == ref.num_bytes
    assert got.result.val_loss == pytest.approx(ref.val_loss, rel=1e-6)
    assert bool((got.counts[1:] == 1).all()) and got.max_norm_error < 1e-9


class _Spy(ScoreFirstTTT):
    def __init__(self, **kw):
        super().__init__(**kw)
        self.calls = []

    def adapt(self, model, seen, chunk):
        self.calls.append((chunk.index, len(seen), chunk.end))
        super().adapt(model, seen, chunk)


def test_score_first_ttt_adapts_after_each_chunk_but_the_last_and_changes_later_scores(model, tokens):
    spy = _Spy(lr=0.05, epochs=2, seq_len=16, batch_seqs=2)
    adapted = _stream(copy.deepcopy(model), tokens, ttt=spy, record=True)
    plain = _stream(model, tokens, record=True)
    count = len(chunk_windows(200, SEQ, STRIDE, CHUNK))
    assert [c[0] for c in spy.calls] == list(range(count - 1))  # never after the last chunk
    assert all(seen == end for _, seen, end in spy.calls)  # it saw exactly what was scored
    first_end = spy.calls[0][2]
    assert torch.equal(adapted.nll[:first_end], plain.nll[:first_end])  # chunk 0: the artifact's weights
    assert not torch.equal(adapted.nll[first_end:], plain.nll[first_end:])  # later chunks: adapted weights
    assert spy.steps == 2 * (count - 1) * 2  # 3 sequences of 16 per chunk → 2 batches of 2, 2 epochs


def _check(model, tokens, make):
    return check_legality(
        model,
        tokens,
        make_byte_table(VOCAB),
        make,
        seq_len=SEQ,
        stride=STRIDE,
        chunk_tokens=CHUNK,
        vocab_size=VOCAB,
    )


def test_the_check_passes_no_method_and_score_first_ttt(model, tokens):
    for make in (lambda: (NoTTT(), NoEvalCache()), lambda: (ScoreFirstTTT(lr=0.05, seq_len=16), NoEvalCache())):
        v = _check(model, tokens, make)
        assert v == {"causal": True, "normalized": True, "score_first": True, "single_pass": True, "reasons": []}


class _ReadsAhead(Identity):
    def adapt(self, model, seen, chunk):
        seen[0 : len(seen) + 1]


class _PeeksAtTheTarget(Identity):
    """Moves probability to the next input token, which is the target: normalized but not causal."""

    def _peek(self, x, log_probs):
        nxt = torch.roll(x, -1, dims=-1)
        boost = torch.zeros_like(log_probs).scatter_(-1, nxt[..., None], 2.0)
        return torch.log_softmax(log_probs + boost, dim=-1)

    def score(self, x, y, log_probs, mask):
        return self._peek(x, log_probs).gather(-1, y[..., None]).squeeze(-1)

    def distribution(self, x_row, j, log_probs_row):
        return self._peek(x_row[None], log_probs_row.expand(x_row.numel(), -1)[None])[0, j]


class _Unnormalized(Identity):
    def score(self, x, y, log_probs, mask):
        return super().score(x, y, log_probs + 0.01, mask)

    def distribution(self, x_row, j, log_probs_row):
        return log_probs_row + 0.01


def test_the_check_flags_each_broken_rule_with_a_reason(model, tokens):
    ahead = _check(model, tokens, lambda: (_ReadsAhead(), NoEvalCache()))
    assert ahead["score_first"] is False and "is not scored yet" in ahead["reasons"][0]
    peek = _check(model, tokens, lambda: (NoTTT(), _PeeksAtTheTarget()))
    assert peek["causal"] is False and peek["normalized"] is True
    assert "changed when only" in peek["reasons"][0] and "position" in peek["reasons"][0]
    unnorm = _check(model, tokens, lambda: (NoTTT(), _Unnormalized()))
    assert unnorm["normalized"] is False and unnorm["causal"] is True and "sums to 1" in unnorm["reasons"][0]


class _ScoresOffItsDistribution(Identity):
    """Normalized distribution, but the scored entry is not the distribution's: caught at sampled positions."""

    def score(self, x, y, log_probs, mask):
        return super().score(x, y, log_probs, mask) + 0.5


def test_the_check_flags_a_score_that_is_not_its_distributions_entry(model, tokens):
    v = _check(model, tokens, lambda: (NoTTT(), _ScoresOffItsDistribution()))
    assert v["normalized"] is False and "off its distribution's entry" in v["reasons"][0]


def test_freezing_blocks_also_freezes_the_cores_they_run():
    """#537 freezes blocks 0-1; with 10 shared cores, cores 0-1 (and so layer 10's core) stay fixed too."""
    c = to_container(compose(["experiment=pr537"]))
    m = build_model(c["arch"])
    ttt = ScoreFirstTTT(freeze_blocks=2)
    ttt.begin(m)
    frozen = {n for n, p in m.named_parameters() if not p.requires_grad}
    assert sum(p.numel() for p in m.parameters() if not p.requires_grad) == 4_722_704  # the record's log
    assert any(n.startswith("cores.0.") for n in frozen) and not any(n.startswith("cores.2.") for n in frozen)
    assert "blocks.10.attn_scale" not in frozen
    ttt.end(m)
    assert all(p.requires_grad for p in m.parameters())  # the stream's end gives them back


def test_score_first_ttt_refuses_bad_settings():
    from paramgolf.errors import UserError

    with pytest.raises(UserError, match="ttt.epochs=0"):
        ScoreFirstTTT(epochs=0)
    with pytest.raises(UserError, match="momentum"):
        ScoreFirstTTT(momentum=1.0)
    with pytest.raises(ReadAheadError):
        ScoreFirstTTT().adapt(None, TokenView(torch.arange(10), 5), type("C", (), {"first": 1, "end": 9})())


def _ttt_result(rank: int, world_size: int) -> dict:
    c = to_container(compose(["experiment=smoke", "arch.num_layers=2", "arch.model_dim=64"]))
    torch.manual_seed(0)
    m = build_model(c["arch"]).double().eval()
    g = torch.Generator().manual_seed(1)
    toks = torch.randint(0, VOCAB, (200,), generator=g)
    r = run_stream(
        m,
        toks,
        make_byte_table(VOCAB),
        ttt=ScoreFirstTTT(lr=0.05, epochs=2, seq_len=16, batch_seqs=3),
        eval_cache=NoEvalCache(),
        seq_len=SEQ,
        stride=STRIDE,
        chunk_tokens=CHUNK,
        batch_seqs=2,
        device="cpu",
        rank=rank,
        world_size=world_size,
    ).result
    return {"val_loss": r.val_loss, "num_tokens": r.num_tokens, "weight": float(m.tok_emb.weight.detach().sum())}


def test_two_gloo_ranks_give_score_first_ttt_the_same_val_bpb_as_one():
    from gloo_workers import run_gloo_workers

    one = _ttt_result(0, 1)
    for got in run_gloo_workers(_ttt_result, world_size=2):
        assert got["num_tokens"] == one["num_tokens"] == 199
        assert got["val_loss"] == pytest.approx(one["val_loss"], rel=1e-10)
        assert got["weight"] == pytest.approx(one["weight"], rel=1e-10)  # every rank holds the same weights


def _cache_result(rank: int, world_size: int, with_ttt: bool = False) -> dict:
    from paramgolf.evaluation.ngram import NGramCache

    c = to_container(compose(["experiment=smoke", "arch.num_layers=2", "arch.model_dim=64"]))
    torch.manual_seed(0)
    m = build_model(c["arch"]).double().eval()
    g = torch.Generator().manual_seed(1)
    toks = torch.randint(0, VOCAB, (50,), generator=g).repeat(5)[:240]  # repeats: the cache hits
    ttt = ScoreFirstTTT(lr=0.05, epochs=1, seq_len=16, batch_seqs=3, chunk_tokens=CHUNK) if with_ttt else NoTTT()
    cache = NGramCache(chunk_tokens=CHUNK)
    kw = dict(seq_len=SEQ, stride=STRIDE, chunk_tokens=CHUNK, batch_seqs=2, device="cpu")
    plain = run_stream(m, toks, make_byte_table(VOCAB), ttt=NoTTT(), eval_cache=NoEvalCache(), local=True, **kw)
    r = run_stream(m, toks, make_byte_table(VOCAB), ttt=ttt, eval_cache=cache, rank=rank, world_size=world_size, **kw)
    return {"val_loss": r.result.val_loss, "num_tokens": r.result.num_tokens, "plain": plain.result.val_loss}


def _cache_and_ttt_result(rank: int, world_size: int) -> dict:
    return _cache_result(rank, world_size, with_ttt=True)


@pytest.mark.slow
def test_two_gloo_ranks_give_the_ngram_cache_and_cache_plus_ttt_the_same_val_bpb_as_one():
    from gloo_workers import run_gloo_workers

    for fn in (_cache_result, _cache_and_ttt_result):
        one = fn(0, 1)
        assert one["val_loss"] < one["plain"] - 0.1  # the cache really moved the score on repeated text
        for got in run_gloo_workers(fn, world_size=2):
            assert got["num_tokens"] == one["num_tokens"] == 239
            assert got["val_loss"] == pytest.approx(one["val_loss"], rel=1e-10)


def test_the_check_passes_the_ngram_cache_and_flags_the_target_hashed_one_as_unnormalized(model):
    from paramgolf.evaluation.ngram import NGramCache, NGramTargetHashed

    toks = torch.randint(0, VOCAB, (40,), generator=torch.Generator().manual_seed(3)).repeat(6)[:230]
    ok = _check(model, toks, lambda: (NoTTT(), NGramCache(chunk_tokens=CHUNK)))
    assert ok == {"causal": True, "normalized": True, "score_first": True, "single_pass": True, "reasons": []}
    both = _check(
        model, toks, lambda: (ScoreFirstTTT(lr=0.05, seq_len=16, chunk_tokens=CHUNK), NGramCache(chunk_tokens=CHUNK))
    )
    assert both["reasons"] == [] and all(both[k] for k in ("causal", "normalized", "score_first", "single_pass"))
    bad = _check(model, toks, lambda: (NoTTT(), NGramTargetHashed(chunk_tokens=CHUNK, buckets=4096)))
    assert bad["normalized"] is False and bad["causal"] is True and bad["score_first"] is True
    assert (
        bad["reasons"][0].startswith("normalized: the distribution at position ")
        and "sums to 1 only within" in bad["reasons"][0]
    )
