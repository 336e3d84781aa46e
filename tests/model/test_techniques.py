"""Each architecture technique's defining property, and causality of random combinations."""

from __future__ import annotations

import random

import pytest
import torch
import torch.nn.functional as F

from paramgolf.config.compose import compose
from paramgolf.model.bigram_hash import BigramHash, bigram_buckets
from paramgolf.model.block import Block
from paramgolf.model.mlp import LeakyReluSquaredMLP
from paramgolf.model.rotary import Rotary
from paramgolf.model.smear_gate import SmearGate
from paramgolf.model.xsa import exclusive_self_attention
from paramgolf.runner.build import build_model


def test_leaky_relu_squared_mlp():
    torch.manual_seed(0)
    mlp = LeakyReluSquaredMLP(8, mult=2.0, negative_slope=0.5)
    torch.nn.init.normal_(mlp.proj.weight)
    x = torch.randn(3, 8)
    h = x @ mlp.fc.weight.t()
    expected = torch.where(h > 0, h * h, 0.25 * h * h) @ mlp.proj.weight.t()
    assert torch.allclose(mlp(x), expected, atol=1e-6)
    relu2 = LeakyReluSquaredMLP(8, mult=2.0, negative_slope=0.0)
    relu2.load_state_dict(mlp.state_dict())
    assert torch.allclose(relu2(x), torch.relu(h).square() @ mlp.proj.weight.t(), atol=1e-6)
    assert LeakyReluSquaredMLP(512, mult=3.0).fc.weight.shape == (1536, 512)


def test_xsa_output_is_orthogonal_to_the_tokens_own_value():
    torch.manual_seed(0)
    y, v = torch.randn(2, 5, 8, 16), torch.randn(2, 5, 2, 16)
    out = exclusive_self_attention(y, v)
    vhat = F.normalize(v, dim=-1).repeat_interleave(4, dim=2)  # query head h uses KV head h // 4
    assert (out * vhat).sum(-1).abs().max() < 1e-5
    # and only that component is removed
    assert torch.allclose(out, y - (y * vhat).sum(-1, keepdim=True) * vhat, atol=1e-6)


def test_smear_gate_limits():
    x = torch.randn(2, 6, 4)
    smear = SmearGate(4)
    with torch.no_grad():
        smear.gate.fill_(-1e4)
    assert torch.allclose(smear(x), x)  # gate → −∞: identity
    with torch.no_grad():
        smear.gate.fill_(1e4)
    shifted = smear(x)
    assert torch.allclose(shifted[:, 1:], x[:, :-1]) and torch.all(shifted[:, 0] == 0)  # position 0 mixes with zeros
    with torch.no_grad():
        smear.gate.zero_()
    assert torch.allclose(smear(x)[:, 1:], 0.5 * (x[:, 1:] + x[:, :-1]))


def test_bigram_hash_buckets_and_output():
    idx = torch.tensor([[5, 7, 7, 1023], [0, 1, 2, 3]])
    b = bigram_buckets(idx, 2048)
    assert torch.all(b[:, 0] == 2047) and torch.all(b[:, 1:] < 2047)
    assert b[0, 1] == (36313 * 7 ^ 27191 * 5) % 2047
    bh = BigramHash(1024, 32, buckets=2048, dim=8)
    assert torch.count_nonzero(bh(idx)) == 0  # the table starts at zero
    torch.nn.init.normal_(bh.embed.weight)
    out = bh(idx)
    # the same (previous, current) pair gives the same vector wherever it occurs
    pair = torch.tensor([[9, 5, 7, 3, 5, 7]])
    o = bh(pair)
    assert torch.allclose(o[0, 2], o[0, 5]) and not torch.allclose(o[0, 1], o[0, 4])
    assert out.shape == (2, 4, 32)


def test_partial_rope_leaves_the_other_dims_and_keeps_relative_positions():
    torch.manual_seed(0)
    rot = Rotary(16, base=10000.0, rope_dims=4)
    x = torch.randn(1, 9, 2, 16)
    y = rot(x)
    assert torch.equal(y[..., 4:], x[..., 4:]) and not torch.allclose(y[..., :4], x[..., :4])
    # rotated dot products depend only on the distance between positions
    q, k = torch.randn(16), torch.randn(16)
    seq = torch.stack([q, k]).expand(9, 2, 16).reshape(1, 9, 2, 16)
    r = rot(seq)
    d1 = (r[0, 5, 0] * r[0, 3, 1]).sum()
    d2 = (r[0, 7, 0] * r[0, 5, 1]).sum()
    assert torch.allclose(d1, d2, atol=1e-5)


def test_full_rope_matches_the_baseline_formula():
    torch.manual_seed(0)
    x = torch.randn(1, 7, 2, 8)
    inv = 1.0 / (10000 ** (torch.arange(0, 8, 2).float() / 8))
    f = torch.outer(torch.arange(7).float(), inv)[None, :, None, :]
    x1, x2 = x[..., :4], x[..., 4:]
    ref = torch.cat((x1 * f.cos() + x2 * f.sin(), -x1 * f.sin() + x2 * f.cos()), -1)
    assert torch.allclose(Rotary(8)(x), ref, atol=1e-6)


def test_ntk_scaling_only_beyond_the_training_length():
    rot = Rotary(64, base=10000.0, rope_dims=16, train_seq_len=1024)
    assert rot.effective_base(1024) == 10000.0
    assert rot.effective_base(2048) == pytest.approx(10000 * 2 ** (16 / 14))  # ≈ 22,082 (PR #537 spec)


@pytest.mark.parametrize("where", ["input", "output"])
def test_depth_scale_on_branch_inputs_or_outputs(where):
    torch.manual_seed(0)

    class Lin(torch.nn.Module):  # a linear branch makes input and output scaling identical…
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Linear(4, 4, bias=False)

        def forward(self, x, *_):
            return self.w(x)

    class Sq(torch.nn.Module):  # …a quadratic one tells them apart
        def forward(self, x):
            return x * x

    x, x0 = torch.randn(2, 3, 4), torch.randn(2, 3, 4)
    blk = Block(4, Lin(), Sq(), depth_scale=0.5, scale_where=where)
    plain = Block(4, blk.attn, Sq())
    with torch.no_grad():
        h = x + 0.5 * blk.attn(F.rms_norm(x, (4,)))
        m = F.rms_norm(h, (4,))
        expected = h + (0.25 * m * m if where == "input" else 0.5 * m * m)
    assert torch.allclose(blk(x, x0), expected, atol=1e-5)
    assert not torch.allclose(plain(x, x0), expected)


def test_orthogonal_init_gives_orthonormal_rows():
    cfg = compose(
        [
            "arch.orthogonal_init=true",
            "arch.num_layers=2",
            "arch.model_dim=64",
            "arch.vocab_size=97",
            "arch.attention.num_heads=4",
            "arch.attention.num_kv_heads=2",
        ]
    )
    model = build_model(cfg.arch)
    w = model.blocks[0].attn.c_q.weight
    assert torch.allclose(w @ w.t(), torch.eye(64), atol=1e-5)
    assert torch.count_nonzero(model.blocks[0].attn.proj.weight) == 0  # zero-init layers stay zero


OPTIONS = {
    "bigram": [[], ["arch/bigram=hash", "arch.bigram.buckets=64", "arch.bigram.dim=8"]],
    "smear": [[], ["arch/smear=gate"]],
    "mlp": [["arch/mlp=relu2"], ["arch/mlp=leaky_relu2"]],
    "xsa": [[], ["arch.attention.xsa_last_n=2"], ["arch.attention.xsa_layers=[0,1]"]],
    "rope": [[], ["arch.attention.rope_dims=4", "arch.attention.rope_train_seq_len=8"]],
    "depth": [["arch.depth_scale=none"], ["arch.depth_scale=input"], ["arch.depth_scale=output"]],
    "ortho": [[], ["arch.orthogonal_init=true"]],
    "skips": [[], ["arch.unet_skips=false"]],
    "gate": [[], ["arch.attention.gated=true"]],
    "vr": [[], ["arch.attention.value_residual=true"]],
    "ve": [[], ["arch/value_embedding=ve128", "arch.value_embedding.dim=8", "arch.value_embedding.layers=[1,2]"]],
    "recurrence": [[], ["arch.recurrence=[0,1,0]"]],
    "mtp": [[], ["arch/mtp=two"]],
}


@pytest.mark.parametrize("seed", range(6))
def test_random_combinations_are_causal(seed):
    rng = random.Random(seed)
    overrides = [o for opts in OPTIONS.values() for o in rng.choice(opts)]
    cfg = compose(
        [
            "arch.num_layers=3",
            "arch.model_dim=32",
            "arch.vocab_size=61",
            "arch.attention.num_heads=4",
            "arch.attention.num_kv_heads=2",
            *overrides,
        ]
    )
    torch.manual_seed(seed)
    model = build_model(cfg.arch)
    with torch.no_grad():  # make every branch and feature non-trivial (several start at zero)
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    T, t = 16, rng.randrange(0, 15)
    idx = torch.randint(0, 61, (2, T))
    changed = idx.clone()
    changed[:, t + 1 :] = (idx[:, t + 1 :] + torch.randint(1, 61, (2, T - t - 1))) % 61
    with torch.no_grad():
        a, b = model(idx), model(changed)
    assert torch.allclose(a[:, : t + 1], b[:, : t + 1], atol=1e-5), overrides
    assert not torch.allclose(a[:, t + 1 :], b[:, t + 1 :]), overrides


def test_pr620_combination_has_its_logged_parameter_count():
    """11L d512, MLP ×3 LeakyReLU(0.5)², BigramHash(2048, 128), SmearGate: PR #620 logs 26,829,913."""
    cfg = compose(
        [
            "arch.num_layers=11",
            "arch/mlp=leaky_relu2",
            "arch/bigram=hash",
            "arch/smear=gate",
            "arch.attention.rope_base=50000",
            "arch.depth_scale=output",
        ]
    )
    assert sum(p.numel() for p in build_model(cfg.arch).parameters()) == 26_829_913


def small(*extra):
    return compose(
        [
            "arch.num_layers=3",
            "arch.model_dim=32",
            "arch.vocab_size=61",
            "arch.attention.num_heads=4",
            "arch.attention.num_kv_heads=2",
            *extra,
        ]
    )


def test_gated_attention_starts_near_open_and_scales_heads():
    from paramgolf.model.attention import HeadGate

    gate = HeadGate(32, 4)
    x = torch.randn(2, 5, 32)
    assert torch.allclose(gate(x), torch.full((2, 5, 4), torch.sigmoid(torch.tensor(4.0)).item()))
    torch.manual_seed(0)
    plain = build_model(small().arch)
    torch.manual_seed(0)
    gated = build_model(small("arch.attention.gated=true").arch)
    attn_p, attn_g = plain.blocks[0].attn, gated.blocks[0].attn
    with torch.no_grad():
        torch.nn.init.normal_(attn_p.proj.weight)
        attn_g.proj.weight.copy_(attn_p.proj.weight)
        with torch.no_grad():
            attn_g.attn_gate.proj.bias.fill_(0.0)  # gate 0.5 on every head
    x = torch.randn(2, 5, 32)
    assert torch.allclose(attn_g(x), 0.5 * attn_p(x), atol=1e-5)


def test_value_residual_blends_the_first_layers_values():
    from paramgolf.model.attention import ValueResidual

    vr = ValueResidual()
    state: dict = {}
    v0, v1 = torch.randn(2, 3, 4), torch.randn(2, 3, 4)
    assert torch.equal(vr(v0, state), v0) and state["v_first"] is v0  # the first layer keeps its values
    with torch.no_grad():
        vr.vr_lambda.copy_(torch.tensor([0.25, 0.75]))
    assert torch.allclose(vr(v1, state), 0.25 * v0 + 0.75 * v1)


def test_value_embeddings_reach_only_their_layers():
    from paramgolf.model.value_embedding import ValueEmbeddings

    ve = ValueEmbeddings(61, kv_dim=16, num_layers=5, dim=8, layers=[3, 4])
    v = ve(torch.randint(0, 61, (2, 7)))
    assert v.shape == (2, 7, 16)
    assert ve.for_layer(0, v) is None and torch.allclose(ve.for_layer(4, v), v)
    with torch.no_grad():
        ve.layer_scales[0].fill_(2.0)
    assert torch.allclose(ve.for_layer(3, v), 2 * v)
    with pytest.raises(ValueError, match="value_embedding.layers"):
        ValueEmbeddings(61, 16, num_layers=5, layers=[5])


def test_depth_recurrence_reuses_the_same_core_object():
    model = build_model(small("arch.recurrence=[0,1,0]").arch)
    assert len(model.cores) == 2 and model.core_of == [0, 1, 0]
    names = [n for n, _ in model.named_parameters()]
    assert sum(n.startswith("cores.0.attn.c_q") for n in names) == 1  # stored once, run twice
    assert all(not n.startswith("blocks.") or ".attn." not in n for n in names)
    assert {n for n in names if n.startswith("blocks.2.")} == {
        "blocks.2.attn_scale",
        "blocks.2.mlp_scale",
        "blocks.2.resid_mix",
    }
    # the shared core's weights get gradient from both logical layers that run it
    model.cores[0].attn.proj.weight.data.normal_()
    model.cores[0].mlp.proj.weight.data.normal_()
    out = model(torch.randint(0, 61, (1, 6))).sum()
    out.backward()
    assert model.cores[0].attn.c_q.weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="arch.recurrence"):
        build_model(small("arch.recurrence=[0,2,0]").arch)


PRESET_ARCH = {
    # (overrides, logged model_params) — docs/records/<pr>.md, §2 parameter accounts
    "pr549": (["arch.bigram.buckets=1536", "arch/value_embedding=ve128", "arch.attention.xsa_last_n=4"], 26_928_220),
    "pr754": (
        [
            "arch.bigram.buckets=1536",
            "arch.attention.gated=true",
            "arch.attention.value_residual=true",
            "arch.attention.xsa_last_n=4",
            "arch.orthogonal_init=true",
        ],
        26_809_543,
    ),
    "pr1263": (
        ["arch/value_embedding=ve128", "arch.attention.xsa_last_n=11", "arch.attention.qk_gain_init=4.0"],
        26_993_756,
    ),
    "pr537": (
        ["arch/value_embedding=ve128", "arch.attention.xsa_last_n=4", "arch.recurrence=[0,1,2,3,4,5,6,7,8,9,0]"],
        24_634_452,
    ),
}


@pytest.mark.parametrize("record", sorted(PRESET_ARCH))
def test_record_architectures_have_their_logged_parameter_counts(record):
    overrides, expected = PRESET_ARCH[record]
    common = [
        "arch.num_layers=11",
        "arch/mlp=leaky_relu2",
        "arch/bigram=hash",
        "arch/smear=gate",
        "arch.attention.rope_dims=16",
        "arch.depth_scale=input",
    ]
    with torch.device("meta"):
        model = build_model(compose(common + overrides).arch)
    assert sum(p.numel() for p in model.parameters()) == expected


def test_mtp_heads_predict_further_tokens_and_leave_logits_alone():
    from paramgolf.model.mtp import MTPHeads

    mtp = MTPHeads(16, 61, logit_softcap=30.0, count=2, weight=0.15)
    h, y = torch.randn(2, 9, 16), torch.randint(0, 61, (2, 9))
    # zero-initialised heads give uniform predictions: loss = weight · ln V
    assert mtp.loss(h, y).item() == pytest.approx(0.15 * torch.log(torch.tensor(61.0)).item(), rel=1e-5)
    torch.nn.init.normal_(mtp.heads[1].weight)
    logits1 = 30 * torch.tanh(mtp.heads[1](h[:, :7]) / 30)
    manual = 0.15 * 0.5 * (torch.log(torch.tensor(61.0)) + F.cross_entropy(logits1.flatten(0, 1), y[:, 2:].flatten()))
    assert torch.allclose(mtp.loss(h, y), manual, atol=1e-5)  # head 1 at t is scored on token t+3 (= y[t+2])
    torch.manual_seed(0)
    plain = build_model(small().arch)
    torch.manual_seed(0)
    with_mtp = build_model(small("arch/mtp=two").arch)
    x = torch.randint(0, 61, (1, 8))
    assert torch.equal(plain(x), with_mtp(x))  # the heads never touch the main logits


def test_mtp_heads_are_absent_from_the_export():
    from omegaconf import OmegaConf

    from paramgolf.model.training import artifact_view

    cfg = small("arch/mtp=two")
    model = build_model(cfg.arch)
    arch, state = artifact_view(OmegaConf.to_container(cfg.arch), model.state_dict())
    assert any(k.startswith("mtp.") for k in model.state_dict()) and not any(k.startswith("mtp.") for k in state)
    rebuilt = build_model(arch)
    rebuilt.load_state_dict(state, strict=True)  # the artifact's model has no heads
    assert rebuilt.mtp is None
