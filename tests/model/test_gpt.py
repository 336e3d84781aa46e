"""The baseline GPT: parameter count, causality, attention paths."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from paramgolf.config.compose import compose
from paramgolf.model.attention import causal_attention
from paramgolf.runner.build import build_model, count_params


def tiny_model(**arch):
    overrides = [f"arch.{k}={v}" for k, v in {"num_layers": 3, "model_dim": 64, "vocab_size": 97, **arch}.items()]
    cfg = compose(overrides + ["arch.attention.num_heads=4", "arch.attention.num_kv_heads=2"])
    torch.manual_seed(0)
    return build_model(cfg.arch)


def test_baseline_has_official_parameter_count():
    model = build_model(compose(["experiment=baseline"]).arch)
    counts = count_params(model)
    assert counts["params"] == 17_059_912  # official train_gpt.py: model_params:17059912
    assert counts["embeddings"] == 1024 * 512
    assert sum(counts[k] for k in ("embeddings", "attention", "mlp", "other")) == counts["params"]


def test_forward_returns_logits_for_every_position_within_softcap():
    model = tiny_model()
    idx = torch.randint(0, 97, (2, 11))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.5)
        logits = model(idx)
    assert logits.shape == (2, 11, 97)
    assert logits.abs().max() <= 30.0


def _perturbed_logits_equal_before(model, t: int, T: int = 16):
    torch.manual_seed(1)
    idx = torch.randint(0, 97, (2, T))
    changed = idx.clone()
    changed[:, t + 1 :] = torch.randint(0, 97, (2, T - t - 1))
    with torch.no_grad():
        a, b = model(idx), model(changed)
    return torch.allclose(a[:, : t + 1], b[:, : t + 1], atol=1e-6), torch.allclose(a[:, t + 1 :], b[:, t + 1 :])


@pytest.mark.parametrize("t", [0, 5, 14])
def test_model_is_causal(t):
    model = tiny_model()
    with torch.no_grad():  # make every branch non-trivial (proj layers start at zero)
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.2)
    same_before, same_after = _perturbed_logits_equal_before(model, t)
    assert same_before
    assert not same_after  # the perturbation is visible, so the test could fail


def _reference_attention(q, k, v):
    B, T, H, D = q.shape
    rep = H // k.size(2)
    k, v = k.repeat_interleave(rep, dim=2), v.repeat_interleave(rep, dim=2)
    att = torch.einsum("bthd,bshd->bhts", q, k) / math.sqrt(D)
    att = att.masked_fill(torch.triu(torch.ones(T, T, dtype=torch.bool), 1), float("-inf"))
    return torch.einsum("bhts,bshd->bthd", att.softmax(-1), v)


def test_sdpa_path_equals_explicit_gqa_attention():
    torch.manual_seed(0)
    q, k, v = torch.randn(2, 9, 8, 16), torch.randn(2, 9, 2, 16), torch.randn(2, 9, 2, 16)
    out = causal_attention(q, k, v, use_fa3=False)
    assert torch.allclose(out, _reference_attention(q, k, v), atol=1e-5)


def test_bf16_autocast_path_matches_fp32():
    model = tiny_model()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    idx = torch.randint(0, 97, (2, 12))
    with torch.no_grad():
        ref = model(idx)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            fast = model(idx).float()
    ref_loss = F.cross_entropy(ref.reshape(-1, 97), idx.reshape(-1))
    fast_loss = F.cross_entropy(fast.reshape(-1, 97), idx.reshape(-1))
    assert abs(ref_loss - fast_loss) / ref_loss < 2e-2


def test_untied_model_has_zero_init_head_and_more_params():
    tied, untied = tiny_model(), tiny_model(tie_embeddings=False)
    assert count_params(untied)["params"] - count_params(tied)["params"] == 97 * 64
    assert torch.count_nonzero(untied.lm_head.weight) == 0


def test_bad_head_split_is_a_clear_error():
    cfg = compose(["arch.attention.num_heads=6"])
    with pytest.raises(ValueError, match="num_kv_heads|divisible"):
        build_model(cfg.arch)


def test_arch_targets_outside_model_package_are_refused():
    cfg = compose([])
    from omegaconf import OmegaConf

    arch = OmegaConf.to_container(cfg.arch)
    arch["mlp"]["_target_"] = "os.system"
    with pytest.raises(ValueError, match="paramgolf.model"):
        build_model(arch)


def test_fa3_dispatch_uses_the_same_layout_and_math(monkeypatch):
    """FA3 needs a GPU; a stand-in with FA3's (B, T, H, D) contract checks the dispatch around it."""
    import paramgolf.model.attention as attn

    calls = []

    def fake_fa3(q, k, v, causal):
        calls.append((q.shape, k.shape, q.dtype, causal))
        return _reference_attention(q.float(), k.float(), v.float()).to(q.dtype), None  # (out, lse)

    monkeypatch.setattr(attn, "_fa3_func", fake_fa3)
    torch.manual_seed(0)
    q, k, v = torch.randn(2, 7, 4, 8), torch.randn(2, 7, 2, 8), torch.randn(2, 7, 2, 8)
    fast = attn.causal_attention(q, k, v, use_fa3=True)
    plain = attn.causal_attention(q, k, v, use_fa3=False)
    # fp32 inputs reach FA3 in half precision (it has no fp32 kernel)
    assert calls == [((2, 7, 4, 8), (2, 7, 2, 8), torch.float16, True)]
    assert torch.allclose(fast.float(), plain, atol=5e-3)
