"""The document-packing loader: contiguous rank spans inside one shard, boundaries at BOS and cuts, resume."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from paramgolf.data.loader import DistributedTokenLoader, shard_order
from paramgolf.data.packing import DocumentPackingLoader
from paramgolf.data.shards import write_shard
from paramgolf.errors import UserError

BOS = 1
SIZES = [300, 410, 260]  # shard lengths
MICRO, SEQ = 32, 16  # tokens per micro-batch per rank, max_doc_len by default


@pytest.fixture
def corpus(tmp_path):
    """Documents of 1..40 tokens across three shards; a non-BOS token is 2 + its position in the corpus.

    The first shard opens mid-document, and documents run across shard ends.
    """
    rng = np.random.default_rng(0)
    stream = np.arange(sum(SIZES)) + 2
    pos = 5
    while pos < len(stream):
        stream[pos] = BOS
        pos += int(rng.choice([1, 1, 2, 5, 9, 20, 40]))
    files, start = [], 0
    for i, n in enumerate(SIZES):
        files.append(tmp_path / f"fineweb_train_{i:06d}.bin")
        write_shard(files[-1], stream[start : start + n])
        start += n
    return files, stream


def shard_bounds():
    ends = np.cumsum(SIZES)
    return list(zip(ends - SIZES, ends))


def locate(x, stream):
    """Where row x starts in the corpus (from its first non-BOS token), checked token by token."""
    x = x.tolist()
    i = next(i for i, t in enumerate(x) if t != BOS)
    at = x[i] - 2 - i
    assert x == stream[at : at + len(x)].tolist()
    return at


def first_bos(stream, lo):
    return lo + int(np.flatnonzero(stream[lo:] == BOS)[0])


def test_rank_spans_are_contiguous_disjoint_and_inside_one_shard(corpus):
    files, stream = corpus
    ws, span = 2, MICRO + 1
    loaders = [DocumentPackingLoader(files, r, ws) for r in range(ws)]
    bounds = shard_bounds()
    expected = first_bos(stream, 0)  # the first shard's leading document piece is skipped
    shard, wraps = 0, 0
    for _ in range(30):  # more than one pass over the shards
        starts = []
        for loader in loaders:
            x, y, kw = loader.next_batch(MICRO, SEQ)
            assert x.shape == y.shape == (1, MICRO) and x.dtype == y.dtype == torch.int64
            at = locate(x[0], stream)
            assert y[0].tolist() == stream[at + 1 : at + span].tolist()
            assert kw["max_seqlen"] == SEQ and kw["cu_seqlens"].dtype == torch.int32
            starts.append(at)
        assert starts == [starts[0] + r * span for r in range(ws)]  # rank r's span follows rank r-1's
        if expected + ws * span > bounds[shard][1]:  # the rest of the shard is too short: the next, at its BOS
            shard = (shard + 1) % len(SIZES)
            wraps += shard == 0
            expected = first_bos(stream, bounds[shard][0])
        assert starts[0] == expected and starts[0] + ws * span <= bounds[shard][1]
        expected += ws * span
    assert wraps >= 1


def check_boundaries(x, cu, max_doc_len, bucket=64):
    """cu marks 0, every BOS and every forced cut, nothing else, then pads with len(x)."""
    x, cu, n = x.tolist(), cu.tolist(), len(x)
    assert len(cu) % bucket == 0 and cu[0] == 0
    k = cu.index(n)
    b, pad = cu[:k], cu[k:]
    assert pad == [n] * len(pad) and b == sorted(set(b))
    assert {i for i, t in enumerate(x) if t == BOS} <= set(b)
    for s, e in zip(b, b[1:] + [n]):
        assert 0 < e - s <= max_doc_len and BOS not in x[s + 1 : e]
        if e < n and x[e] != BOS:
            assert e - s == max_doc_len  # a cut only where the document reached max_doc_len


@pytest.mark.parametrize("max_doc_len", [None, 7])
def test_cu_seqlens_marks_every_bos_and_every_cut(corpus, max_doc_len):
    files, _ = corpus
    loader = DocumentPackingLoader(files, 0, 1, max_doc_len=max_doc_len)
    cuts = 0
    for _ in range(12):
        x, _, kw = loader.next_batch(MICRO, SEQ)
        check_boundaries(x[0], kw["cu_seqlens"], max_doc_len or SEQ)
        assert kw["max_seqlen"] == (max_doc_len or SEQ)
        cuts += sum(1 for c in kw["cu_seqlens"].tolist() if 0 < c < MICRO and x[0, c] != BOS)
    assert cuts > 0  # long documents were cut


def test_the_check_above_can_fail():
    x = torch.tensor([BOS, 5, 5, BOS, 5])
    with pytest.raises(AssertionError):  # misses the BOS at 3
        check_boundaries(x, torch.tensor([0, 5, 5, 5]), 8, bucket=4)
    with pytest.raises(AssertionError):  # a cut where the document had not reached max_doc_len
        check_boundaries(x, torch.tensor([0, 2, 3, 5]), 8, bucket=4)


def test_resume_from_state_dict_continues_identically(corpus):
    files, _ = corpus
    a = DocumentPackingLoader(files, 1, 2, max_doc_len=8)
    for _ in range(5):
        a.next_batch(MICRO, SEQ)
    b = DocumentPackingLoader(files, 1, 2, max_doc_len=8)
    b.load_state_dict(a.state_dict())
    for _ in range(12):  # across shard ends and the wrap
        (xa, ya, ka), (xb, yb, kb) = a.next_batch(MICRO, SEQ), b.next_batch(MICRO, SEQ)
        assert torch.equal(xa, xb) and torch.equal(ya, yb) and torch.equal(ka["cu_seqlens"], kb["cu_seqlens"])
    with pytest.raises(UserError, match="same number of processes"):
        DocumentPackingLoader(files, 0, 1).load_state_dict(a.state_dict())
    with pytest.raises(UserError, match="same loader"):
        b.load_state_dict(DistributedTokenLoader(files, 1, 2).state_dict())
    with pytest.raises(UserError, match="same loader"):
        DistributedTokenLoader(files, 1, 2).load_state_dict(a.state_dict())
    with pytest.raises(UserError, match="another order"):
        DocumentPackingLoader(files, 1, 2, seed=3).load_state_dict(a.state_dict())


def test_seeded_order_starts_at_a_bos_of_the_first_shuffled_shard(corpus):
    files, stream = corpus
    order, start = shard_order(files, 5)
    x, _, _ = DocumentPackingLoader(files, 0, 1, seed=5).next_batch(MICRO, SEQ)
    first = int(order[0].stem[-6:])
    lo = shard_bounds()[first][0]
    assert locate(x[0], stream) == first_bos(stream, lo + start)


def test_a_batch_no_shard_holds_is_refused(corpus):
    files, _ = corpus
    with pytest.raises(UserError, match="no training shard holds"):
        DocumentPackingLoader(files, 0, 2).next_batch(256, 16)
    with pytest.raises(UserError, match="max_doc_len"):
        DocumentPackingLoader(files, 0, 1, max_doc_len=0)


def test_the_trainer_hands_the_boundaries_to_the_model(corpus):
    """The loop's loss is the varlen loss of the packed row, not the loss with attention across documents."""
    from paramgolf.config.compose import compose, to_container
    from paramgolf.model.training import training_loss
    from paramgolf.runner.build import build_model, build_optimizer_for
    from paramgolf.runner.distributed import DistEnv
    from paramgolf.runner.train_loop import LoopSettings, Trainer

    files, _ = corpus
    overrides = ["arch.num_layers=2", "arch.model_dim=32", "arch.vocab_size=1024", "arch.attention.num_heads=2"]
    c = to_container(compose([*overrides, "arch.attention.num_kv_heads=1"]))
    torch.manual_seed(0)
    model = build_model(c["arch"])
    with torch.no_grad():  # zero-initialised projections would hide attention altogether
        for p in model.parameters():
            p.normal_(0, 0.3)
    x, y, kw = DocumentPackingLoader(files, 0, 1).next_batch(MICRO, SEQ)
    with torch.no_grad():
        want = training_loss(model, model, x, y, **kw)
        across = training_loss(model, model, x, y)
    assert not torch.allclose(want, across)
    s = LoopSettings(
        iterations=1, batch_tokens=MICRO, seq_len=SEQ, micro_batches=1, warmup_steps=0,
        max_wallclock_seconds=None, val_every=0, log_every=1,
    )  # fmt: skip
    opt = build_optimizer_for(model, c["optimizer"])
    env = DistEnv(0, 1, 0, torch.device("cpu"))
    trainer = Trainer(model, model, opt, lambda: DocumentPackingLoader(files, 0, 1), s, env)
    got = trainer._step(trainer.make_loader(), 1.0, opt.momentum_at(0))
    torch.testing.assert_close(got.float(), want.float())
