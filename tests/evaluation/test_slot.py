"""SLOT (seed #1263): per-batch delta and logit bias; the published form fits on the scored targets."""

from __future__ import annotations

import copy

import pytest
import torch
from evalkit import make_byte_table  # tests/evaluation/evalkit.py

from paramgolf.config.compose import compose, to_container
from paramgolf.evaluation.eval_cache import NoEvalCache
from paramgolf.evaluation.legality import check_legality
from paramgolf.evaluation.slot import SlotCausal, SlotPublished
from paramgolf.evaluation.stream import run_stream
from paramgolf.evaluation.ttt import NoTTT
from paramgolf.runner.build import build_model

VOCAB, SEQ, STRIDE, CHUNK = 512, 32, 8, 48


@pytest.fixture(scope="module")
def model():
    c = to_container(compose(["experiment=smoke", "arch.num_layers=2", "arch.model_dim=64"]))
    torch.manual_seed(0)
    m = build_model(c["arch"]).double().eval()
    with torch.no_grad():  # a model whose head is not ~uniform, so SLOT's fit moves something
        for p in m.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return m


@pytest.fixture(scope="module")
def tokens():
    return torch.randint(0, VOCAB, (200,), generator=torch.Generator().manual_seed(1))


def _stream(model, tokens, ttt, batch_seqs=4):
    return run_stream(
        model,
        tokens,
        make_byte_table(VOCAB),
        ttt=ttt,
        eval_cache=NoEvalCache(),
        seq_len=SEQ,
        stride=STRIDE,
        chunk_tokens=CHUNK,
        batch_seqs=batch_seqs,
        device="cpu",
        record=True,
    )


def test_slot_resets_every_batch_and_leaves_the_model_alone(model, tokens):
    before = copy.deepcopy(model.state_dict())
    batched = _stream(model, tokens, SlotCausal(steps=4))
    single = _stream(model, tokens, SlotCausal(steps=4), batch_seqs=1)
    # each window has its own delta and bias, started from zero: its scores never depend on its batch-mates
    assert torch.allclose(batched.nll, single.nll, rtol=0, atol=1e-9)
    again = _stream(model, tokens, SlotCausal(steps=4))
    assert torch.equal(batched.nll, again.nll)  # nothing carried from one stream (or batch) to the next
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters())


def test_slot_causal_fits_only_on_context_and_changes_later_scores(model, tokens):
    plain = _stream(model, tokens, NoTTT())
    slot = _stream(model, tokens, SlotCausal(steps=8))
    assert slot.read_ahead == []
    assert torch.equal(slot.nll[: SEQ + 1], plain.nll[: SEQ + 1])  # the first window has no context to fit on
    assert not torch.allclose(slot.nll[SEQ + 1 :], plain.nll[SEQ + 1 :])
    assert bool((slot.counts[1:] == 1).all())


def test_slot_published_reads_the_targets_it_scores(model, tokens):
    slot = _stream(model, tokens, SlotPublished(steps=4))
    assert slot.read_ahead and "is not scored yet" in slot.read_ahead[0]
    plain = _stream(model, tokens, NoTTT())
    assert slot.result.val_loss < plain.result.val_loss  # fitting on the answers lowers the loss


def _check(model, tokens, ttt):
    return check_legality(
        model,
        tokens,
        make_byte_table(VOCAB),
        lambda: (copy.deepcopy(ttt), NoEvalCache()),
        seq_len=SEQ,
        stride=STRIDE,
        chunk_tokens=CHUNK,
        vocab_size=VOCAB,
    )


def test_the_check_passes_slot_causal_and_flags_slot_published(model, tokens):
    ok = _check(model, tokens, SlotCausal(steps=4))
    assert ok == {"causal": True, "normalized": True, "score_first": True, "single_pass": True, "reasons": []}
    bad = _check(model, tokens, SlotPublished(steps=4))
    assert bad["causal"] is False and bad["score_first"] is False and bad["normalized"] is True
    assert any(r.startswith("causal: the score at position") for r in bad["reasons"])
    assert any(r.startswith("score_first: read tokens") and "position" in r for r in bad["reasons"])


def test_slot_refuses_bad_settings():
    from paramgolf.errors import UserError

    with pytest.raises(UserError, match="ttt.steps=0"):
        SlotCausal(steps=0)
    with pytest.raises(UserError, match="lr_min"):
        SlotCausal(lr=0.001, lr_min=0.01)
