"""Varlen attention equals per-document causal attention; document boundaries from BOS tokens."""

from __future__ import annotations

import math

import pytest
import torch

from paramgolf.model import varlen
from paramgolf.model.varlen import (
    cu_seqlens_from_bos,
    masked_varlen_attention,
    per_segment_attention,
    varlen_causal_attention,
)

DOCS = [5, 1, 7, 1, 1, 9, 3]  # lengths, with single-token documents
H, HKV, D = 4, 2, 8


def reference(q, k, v, lengths):
    """Each document on its own: explicit softmax(q kᵀ/√D + causal mask) v, KV heads repeated."""
    outs, s = [], 0
    for n in lengths:
        qd, kd, vd = (t[0, s : s + n].transpose(0, 1) for t in (q, k, v))  # (heads, n, D)
        kd, vd = (t.repeat_interleave(q.size(2) // k.size(2), dim=0) for t in (kd, vd))
        scores = qd @ kd.transpose(1, 2) / math.sqrt(q.size(-1))
        scores = scores.masked_fill(~torch.ones(n, n, dtype=torch.bool).tril(), float("-inf"))
        outs.append((scores.softmax(-1) @ vd).transpose(0, 1))
        s += n
    return torch.cat(outs)[None]


def packed(lengths, seed=0, requires_grad=False):
    g = torch.Generator().manual_seed(seed)
    T = sum(lengths)
    q, k, v = (torch.randn(1, T, h, D, generator=g) for h in (H, HKV, HKV))
    for t in (q, k, v):
        t.requires_grad_(requires_grad)
    return q, k, v


def cu_for(lengths, pad_to=None):
    bounds = [0]
    for n in lengths:
        bounds.append(bounds[-1] + n)
    if pad_to is not None:
        bounds += [bounds[-1]] * (pad_to - len(bounds))
    return torch.tensor(bounds, dtype=torch.int32)


@pytest.mark.parametrize("attend", [per_segment_attention, masked_varlen_attention, varlen_causal_attention])
def test_varlen_equals_each_document_alone_with_gqa(attend):
    q, k, v = packed(DOCS)
    args = (cu_for(DOCS),) if attend is masked_varlen_attention else (cu_for(DOCS), max(DOCS))
    got = attend(q, k, v, *args)
    assert got.shape == q.shape
    torch.testing.assert_close(got, reference(q, k, v, DOCS), rtol=1e-5, atol=1e-6)


def test_padded_boundaries_change_nothing():
    q, k, v = packed(DOCS, seed=1)
    exact, padded = cu_for(DOCS), cu_for(DOCS, pad_to=64)
    assert padded.numel() == 64 and (padded[len(DOCS) + 1 :] == sum(DOCS)).all()
    assert torch.equal(per_segment_attention(q, k, v, exact, 9), per_segment_attention(q, k, v, padded, 9))
    assert torch.equal(masked_varlen_attention(q, k, v, exact), masked_varlen_attention(q, k, v, padded))


def test_gradients_match_the_per_document_reference():
    q, k, v = packed(DOCS, seed=2, requires_grad=True)
    w = torch.randn(q.shape, generator=torch.Generator().manual_seed(3))
    got = torch.autograd.grad((varlen_causal_attention(q, k, v, cu_for(DOCS, 64), 9) * w).sum(), (q, k, v))
    want = torch.autograd.grad((reference(q, k, v, DOCS) * w).sum(), (q, k, v))
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_a_document_never_sees_another():
    q, k, v = packed(DOCS, seed=4)
    cu = cu_for(DOCS, 64)
    base = varlen_causal_attention(q, k, v, cu, 9)
    k2, v2 = k.clone(), v.clone()
    k2[:, 6:13] += 1.0  # the third document's keys and values
    v2[:, 6:13] -= 2.0
    moved = varlen_causal_attention(q, k2, v2, cu, 9)
    assert torch.equal(base[:, :6], moved[:, :6]) and torch.equal(base[:, 13:], moved[:, 13:])
    assert not torch.equal(base[:, 6:13], moved[:, 6:13])


def test_compiles_as_one_graph_and_agrees():
    """Under torch.compile (fullgraph, as the runner compiles) the masked form runs, without host reads."""
    q, k, v = packed(DOCS, seed=7)
    cu = cu_for(DOCS, 64)
    compiled = torch.compile(varlen_causal_attention, backend="eager", fullgraph=True, dynamic=False)
    torch.testing.assert_close(compiled(q, k, v, cu, 9), reference(q, k, v, DOCS), rtol=1e-5, atol=1e-6)


def test_bad_boundaries_are_refused():
    q, k, v = packed(DOCS)
    with pytest.raises(AssertionError, match="from 0 to T"):
        per_segment_attention(q, k, v, cu_for(DOCS)[:-1], 9)
    with pytest.raises(AssertionError, match="at most max_seqlen=8"):
        per_segment_attention(q, k, v, cu_for(DOCS), 8)  # the 9-token document
    with pytest.raises(AssertionError, match="one packed row"):
        varlen_causal_attention(q.expand(2, -1, -1, -1), k, v, cu_for(DOCS), 9)


def test_gpt_on_a_packed_row_equals_gpt_on_each_document():
    """The model plumbs cu_seqlens to every layer: packed logits are each document's own logits."""
    from paramgolf.config.compose import compose, to_container
    from paramgolf.runner.build import build_model

    arch = ["arch.num_layers=2", "arch.model_dim=32", "arch.vocab_size=64", "arch.attention.num_heads=4"]
    torch.manual_seed(0)
    model = build_model(to_container(compose([*arch, "arch.attention.num_kv_heads=2"]))["arch"])
    with torch.no_grad():  # zero-initialised projections would hide attention altogether
        for p in model.parameters():
            p.normal_(0, 0.3)
    lengths = [6, 1, 9, 4]
    idx = torch.randint(2, 64, (1, sum(lengths)), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        got = model(idx, cu_seqlens=cu_for(lengths, 64), max_seqlen=9)
        want = torch.cat([model(d) for d in idx.split(lengths, dim=1)], dim=1)
        across = model(idx)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    assert not torch.allclose(across, want, rtol=1e-4, atol=1e-4)


# --------------------------------------------------------------------------- boundaries from BOS


def boundaries_by_hand(ids, bos, max_doc_len):
    """The record's rule written as loops: documents at BOS (and at 0), each cut every max_doc_len."""
    starts = sorted({0} | {i for i, t in enumerate(ids) if t == bos})
    ends = starts[1:] + [len(ids)]
    out = []
    for s, e in zip(starts, ends):
        step = max_doc_len or (e - s)
        out += list(range(s, e, step))
    return out + [len(ids)]


@pytest.mark.parametrize("max_doc_len", [None, 1, 3, 8])
@pytest.mark.parametrize("seed", range(4))
def test_cu_seqlens_from_bos_marks_every_bos_and_every_cut(seed, max_doc_len):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 6, (200,), generator=g)  # BOS = 1 about every 6 tokens, in runs too
    if seed == 0:
        ids[0] = 1
    elif seed == 1:
        ids[:40] = 3  # a long first segment without BOS
    cu = cu_seqlens_from_bos(ids, bos_id=1, max_doc_len=max_doc_len, bucket=16)
    want = boundaries_by_hand(ids.tolist(), 1, max_doc_len)
    assert cu.dtype == torch.int32 and cu.numel() % 16 == 0 and cu.numel() - len(want) < 16
    assert cu[: len(want)].tolist() == want and (cu[len(want) :] == 200).all()


def test_cu_seqlens_exact_multiple_of_the_bucket_is_not_padded():
    ids = torch.tensor([1, 5, 1, 5, 5, 1, 5])  # boundaries 0, 2, 5, 7: four entries
    assert cu_seqlens_from_bos(ids, bucket=4).tolist() == [0, 2, 5, 7]
    assert cu_seqlens_from_bos(ids, bucket=3).tolist() == [0, 2, 5, 7, 7, 7]
    assert cu_seqlens_from_bos(ids, bos_id=9, bucket=1).tolist() == [0, 7]  # no BOS: one segment


def test_boundaries_from_bos_drive_attention():
    """Documents found from their BOS tokens and cut to max_doc_len give per-document attention."""
    ids = torch.tensor([1, 4, 4, 4, 4, 4, 1, 1, 4, 4])  # docs of 6, 1, 3 tokens; the first cut at 4
    q, k, v = packed([10], seed=5)
    got = varlen_causal_attention(q, k, v, cu_seqlens_from_bos(ids, max_doc_len=4), 4)
    torch.testing.assert_close(got, reference(q, k, v, [4, 2, 1, 3]), rtol=1e-5, atol=1e-6)


@pytest.mark.skipif(
    varlen._fa3_varlen_func is None or not torch.cuda.is_available(), reason="needs CUDA and FlashAttention-3"
)
def test_fa3_varlen_matches_the_plain_path():
    q, k, v = (t.cuda() for t in packed([300, 1, 700, 24, 1000], seed=6))
    cu = cu_for([300, 1, 700, 24, 1000], pad_to=64).cuda()
    want = per_segment_attention(q, k, v, cu, 1000)
    got = varlen_causal_attention(q.bfloat16(), k.bfloat16(), v.bfloat16(), cu, 1000)
    assert got.dtype == torch.bfloat16
    torch.testing.assert_close(got.float(), want, rtol=2e-2, atol=2e-2)
