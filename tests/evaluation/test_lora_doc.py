"""Per-document LoRA TTT (seed #620): documents, fresh adapters, score-first, the legality check, ranks."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from evalkit import make_byte_table  # tests/evaluation/evalkit.py

from paramgolf.config.compose import compose, to_container
from paramgolf.errors import UserError
from paramgolf.evaluation.eval_cache import NoEvalCache
from paramgolf.evaluation.legality import check_legality
from paramgolf.evaluation.lora_doc import LoRADocPublished, LoRADocTTT, find_documents
from paramgolf.evaluation.stream import run_stream
from paramgolf.runner.build import build_model

VOCAB, BOS, L, C, SLOTS = 512, 1, 16, 48, 3
DOC_LENGTHS = [5, 40, 13, 70, 25, 100, 8, 33, 17, 60]  # tokens after each BOS


pytestmark = pytest.mark.usefixtures("one_thread")


def _model():
    """The smoke model with random matrices: at init its output projections are zero, so attention (and
    with it every context and every q/v adapter) would not matter at all."""
    c = to_container(compose(["experiment=smoke", "arch.num_layers=2", "arch.model_dim=64"]))
    torch.manual_seed(0)
    m = build_model(c["arch"]).double().eval()
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for p in m.parameters():
            if p.dim() == 2:
                p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) / p.shape[1] ** 0.5)
    return m


@pytest.fixture(scope="module")
def model():
    return _model()


def _docs(lengths, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [torch.cat([torch.tensor([BOS]), torch.randint(2, VOCAB, (n,), generator=g)]) for n in lengths]


def _lora(**kw):
    return LoRADocTTT(chunk_len=L, context_len=C, batch_docs=SLOTS, **kw)


def _published(**kw):
    return LoRADocPublished(chunk_len=L, context_len=C, batch_docs=SLOTS, min_doc_len=20, **kw)


def _stream(model, tokens, ttt, **kw):
    return run_stream(
        model,
        tokens,
        make_byte_table(VOCAB),
        ttt=ttt,
        eval_cache=NoEvalCache(),
        seq_len=32,
        stride=8,
        chunk_tokens=48,
        batch_seqs=4,
        device="cpu",
        record=True,
        **kw,
    )


def test_documents_split_at_bos_and_cover_every_target_once():
    toks = torch.tensor([7, 7, BOS, 5, 5, 5, BOS, BOS, 9, BOS])
    docs = find_documents(toks, BOS)
    assert docs == [(0, 2), (2, 6), (6, 7), (7, 9)]  # a doc's last target is the next BOS; the final BOS has none
    covered = [p for s, e in docs for p in range(s + 1, e + 1)]
    assert covered == list(range(1, toks.numel()))


@pytest.mark.parametrize("make", [_lora, _published])
def test_every_position_is_scored_exactly_once(model, make):
    toks = torch.cat(_docs(DOC_LENGTHS))
    got = _stream(model, toks, make())
    assert bool((got.counts[1:] == 1).all()) and int(got.counts[0]) == 0
    assert got.result.num_tokens == toks.numel() - 1


def test_a_documents_scores_do_not_depend_on_the_documents_before_it(model):
    """Fresh adapters per document: permute and change earlier documents (so the slots change too)."""
    docs = _docs(DOC_LENGTHS)
    ref = _stream(model, torch.cat(docs), _lora()).nll
    others = _docs([31, 9, 50, 12, 77], seed=5)
    order = [docs[i] for i in (6, 2, 0, 4)]
    for before in (order, others, others[:2] + docs[3:4]):
        last = docs[5]  # 100 tokens: 7 chunks, trained across several steps
        got = _stream(model, torch.cat([*before, last, docs[8]]), _lora()).nll
        at = sum(d.numel() for d in docs[:5])
        new_at = sum(d.numel() for d in before)
        n = last.numel()
        assert torch.equal(got[new_at + 1 : new_at + n + 1], ref[at + 1 : at + n + 1])  # bit for bit (float64)


def _base_nll(model, tokens, s, e):
    """nll of each target of document (s, e) under the base model with LoRADocTTT's windows."""
    out = torch.zeros(e - s, dtype=torch.float64)
    for cs in range(0, e - s, L):
        ce, ws = min(cs + L, e - s), max(0, cs + L - C)
        with torch.no_grad():
            lp = F.log_softmax(model(tokens[s + ws : s + ce][None]).double(), -1)[0]
        y = tokens[s + ws + 1 : s + ce + 1]
        out[cs:ce] = -lp.gather(-1, y[:, None]).squeeze(-1)[cs - ws :]
    return out


def test_first_chunk_is_the_base_model_later_chunks_are_adapted_and_weights_come_back(model):
    toks = torch.cat(_docs(DOC_LENGTHS))
    m = copy.deepcopy(model)
    before = {k: v.clone() for k, v in m.state_dict().items()}
    got = _stream(m, toks, _lora(lr=0.05)).nll
    assert all(torch.equal(v, m.state_dict()[k]) for k, v in before.items())
    assert all(p.requires_grad for p in m.parameters())
    changed = 0
    for s, e in find_documents(toks, BOS):
        base = _base_nll(model, toks, s, e)
        assert torch.allclose(got[s + 1 : s + 1 + min(L, e - s)], base[:L], rtol=0, atol=1e-10)  # B = 0
        if e - s > L:
            later = got[s + 1 + L : e + 1]
            assert not torch.allclose(later, base[L:], rtol=0, atol=1e-6)
            changed += 1
    assert changed == sum(n + 1 > L for n in DOC_LENGTHS[:-1]) + 1  # the last doc has n targets, the others n+1


def test_scores_up_to_t_survive_any_later_tokens_even_moved_bos(model):
    """The trap: later BOS tokens move documents' ends; nothing at positions ≤ t may change."""
    toks = torch.cat(_docs(DOC_LENGTHS))
    ref = _stream(model, toks, _lora(lr=0.05)).nll
    g = torch.Generator().manual_seed(3)
    # inside docs, just before a BOS, in long docs, and in the last chunk of docs longer than the context
    for t in (3, 20, 47, 60, 128, 140, 200, 256, 290, 372):
        other = toks.clone()
        tail = torch.randint(2, VOCAB, (toks.numel() - t - 1,), generator=g)
        tail[torch.rand(tail.numel(), generator=g) < 0.15] = BOS  # many new boundaries
        other[t + 1 :] = tail
        got = _stream(model, other, _lora(lr=0.05)).nll
        assert torch.equal(got[: t + 1], ref[: t + 1]), t


def _check(model, tokens, make):
    return check_legality(
        model, tokens, make_byte_table(VOCAB), make, seq_len=32, stride=8, chunk_tokens=48, vocab_size=VOCAB
    )


def test_the_check_passes_lora_doc_and_flags_the_published_one(model):
    toks = torch.cat(_docs(DOC_LENGTHS))
    ok = _check(model, toks, lambda: (_lora(lr=0.05), NoEvalCache()))
    assert ok == {"causal": True, "normalized": True, "score_first": True, "single_pass": True, "reasons": []}
    bad = _check(model, toks, lambda: (_published(), NoEvalCache()))
    assert bad["score_first"] is False and bad["causal"] is False and bad["normalized"] is True
    assert any(r.startswith("score_first") and "position" in r for r in bad["reasons"])
    assert any(r.startswith("causal") and "position" in r for r in bad["reasons"])
    assert all(LoRADocTTT().rules_kept().values())
    assert LoRADocPublished().rules_kept()["score_before_update"] is False


def test_the_check_flags_the_published_default_through_its_probe_copy_on_short_documents(model):
    """Real data's prefix may hold no 512-token document: the probe copy scales min_doc_len with its chunks."""
    toks = torch.cat(_docs(DOC_LENGTHS))  # all < 512 tokens: at full size every document is 'short'
    probe = LoRADocPublished().for_probe(32)
    assert probe.min_doc_len == 2 * probe.chunk_len == 32
    bad = _check(model, toks, lambda: (copy.deepcopy(probe), NoEvalCache()))
    assert bad["score_first"] is False and bad["causal"] is False


def test_published_short_docs_are_base_scored_and_long_ones_trained_before_scoring(model):
    toks = torch.cat(_docs(DOC_LENGTHS))
    ttt = _published()
    got = _stream(model, toks, ttt)
    assert ttt.last_stats == {"docs": 10, "short_docs": 4, "long_docs": 6}
    assert got.read_ahead and "is not scored yet" in got.read_ahead[0]
    for s, e in find_documents(toks, BOS):
        if e - s + 1 < 20:  # one base forward over the whole document
            with torch.no_grad():
                lp = F.log_softmax(model(toks[s:e][None]).double(), -1)[0]
            want = -lp.gather(-1, toks[s + 1 : e + 1, None]).squeeze(-1)
            assert torch.allclose(got.nll[s + 1 : e + 1], want, rtol=0, atol=1e-10)
        else:  # even the first chunk was trained on (epochs 1-2) before it was scored
            assert not torch.allclose(got.nll[s + 1 : s + 1 + L], _base_nll(model, toks, s, e)[:L], atol=1e-6)


def test_bf16_autocast_runs_close_to_float():
    m = _model().float()
    toks = torch.cat(_docs(DOC_LENGTHS))
    full = _stream(m, toks, _lora()).result.val_loss
    half = _stream(m, toks, _lora(), autocast_dtype=torch.bfloat16).result.val_loss
    assert half == pytest.approx(full, abs=0.05) and half != full


def test_bad_settings_are_refused():
    with pytest.raises(UserError, match="ttt.context_len=8"):
        LoRADocTTT(chunk_len=16, context_len=8)
    with pytest.raises(UserError, match="ttt.rank=0"):
        LoRADocTTT(rank=0)
    with pytest.raises(UserError, match="epochs=0"):
        LoRADocPublished(epochs=0)


def test_the_probe_copy_is_small_and_the_original_untouched():
    ttt = LoRADocTTT()
    probe = ttt.for_probe(128)
    assert (probe.chunk_len, probe.chunk_tokens, probe.context_len, probe.batch_docs) == (64, 64, 128, 4)
    assert (ttt.chunk_len, ttt.context_len, ttt.batch_docs) == (256, 1024, 64)
    assert LoRADocPublished(epochs=2).for_probe(16).epochs == 2


def _rank_result(rank: int, world_size: int) -> dict:
    m = _model()
    toks = torch.cat(_docs(DOC_LENGTHS))
    r = run_stream(
        m,
        toks,
        make_byte_table(VOCAB),
        ttt=_lora(lr=0.05),
        eval_cache=NoEvalCache(),
        seq_len=32,
        stride=8,
        chunk_tokens=48,
        batch_seqs=4,
        device="cpu",
        rank=rank,
        world_size=world_size,
    ).result
    return {"val_loss": r.val_loss, "num_tokens": r.num_tokens, "num_bytes": r.num_bytes}


@pytest.mark.slow
def test_two_gloo_ranks_give_lora_doc_the_same_val_loss_as_one():
    from gloo_workers import run_gloo_workers

    one = _rank_result(0, 1)
    for got in run_gloo_workers(_rank_result, world_size=2):
        assert got["num_tokens"] == one["num_tokens"] == sum(DOC_LENGTHS) + len(DOC_LENGTHS) - 1
        assert got["num_bytes"] == one["num_bytes"]
        assert got["val_loss"] == pytest.approx(one["val_loss"], rel=1e-12)
