"""Muon maths at the record shapes: NS5 singular values, weight decay, momentum, warm-up."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from paramgolf.optim.builder import build_optimizer
from paramgolf.optim.muon import Muon, zeropower_via_newtonschulz5
from paramgolf.optim.schedules import momentum_warmup

# Muon matrix shapes of the record presets (dim 512, MLP 3x) and of the official baseline
# (dim 512, MLP 2x, 4 KV heads of 64 -> 256-row K/V; the 128/64-row matrices cover small heads).
RECORD_SHAPES = [(512, 512), (256, 512), (1536, 512), (512, 1536)]
BASELINE_SHAPES = [(1024, 512), (512, 1024), (128, 512), (512, 128), (64, 512)]
SV_LOW, SV_HIGH, MIN_FRACTION = 0.6, 1.25, 0.95


def fraction_in_band(X: torch.Tensor) -> float:
    """Fraction of X's singular values (float64) inside [SV_LOW, SV_HIGH]."""
    sv = torch.linalg.svdvals(X.to(torch.float64))
    return ((sv >= SV_LOW) & (sv <= SV_HIGH)).double().mean().item()


@pytest.mark.slow
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("shape", RECORD_SHAPES + BASELINE_SHAPES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_ns5_singular_values_at_model_shapes(shape, dtype):
    torch.manual_seed(0)
    G = torch.randn(shape)
    X = zeropower_via_newtonschulz5(G, steps=5, dtype=dtype)
    assert X.shape == G.shape and X.dtype == dtype
    assert torch.isfinite(X).all()
    frac = fraction_in_band(X)
    assert frac >= MIN_FRACTION, f"{shape} {dtype}: only {frac:.4f} of singular values in [{SV_LOW}, {SV_HIGH}]"


@pytest.mark.slow
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_ns5_singular_values_batched(dtype):
    torch.manual_seed(1)
    G = torch.randn(4, 256, 512)
    # Scale slices very differently: each must be normalised on its own, not by the batch norm.
    G = G * torch.tensor([1e-3, 1.0, 10.0, 1e3]).view(4, 1, 1)
    X = zeropower_via_newtonschulz5(G, steps=5, dtype=dtype)
    assert X.shape == G.shape and X.dtype == dtype
    for i in range(G.size(0)):
        frac = fraction_in_band(X[i])
        assert frac >= MIN_FRACTION, f"slice {i} {dtype}: only {frac:.4f} of singular values in band"


def test_ns5_of_zero_is_zero():
    for shape in [(3, 2), (2, 3), (4, 4)]:
        X = zeropower_via_newtonschulz5(torch.zeros(shape), dtype=torch.float32)
        assert torch.equal(X, torch.zeros(shape))


def hand_muon(p0, grads, *, lr, momentum, wd, nesterov, steps=5):
    """Muon by the explicit formulas; `momentum` is a number or one value per step."""
    moms = momentum if isinstance(momentum, list) else [momentum] * len(grads)
    rows, cols = p0.shape
    scale = math.sqrt(max(1.0, rows / cols))
    p, buf = p0.clone(), torch.zeros_like(p0)
    for g, m in zip(grads, moms, strict=True):
        buf = m * buf + g
        u = g + m * buf if nesterov else buf
        u = zeropower_via_newtonschulz5(u, steps, dtype=torch.float32) * scale
        p = p * (1 - lr * wd)
        p = p - lr * u
    return p


def make_grads(shape, n, seed):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=gen) for _ in range(n)]


@pytest.mark.parametrize("nesterov", [True, False], ids=["nesterov", "plain"])
@pytest.mark.parametrize("shape", [(3, 2), (2, 3)], ids=["tall", "wide"])
def test_muon_three_steps_match_hand_formulas(shape, nesterov):
    lr, m, wd = 0.05, 0.9, 0.3
    gen = torch.Generator().manual_seed(7)
    p0 = torch.randn(shape, generator=gen)
    grads = make_grads(shape, 3, seed=11)
    p = nn.Parameter(p0.clone())
    opt = Muon([p], lr=lr, momentum=m, nesterov=nesterov, weight_decay=wd, ns_dtype=torch.float32)
    for g in grads:
        p.grad = g.clone()
        opt.step()
    expected = hand_muon(p0, grads, lr=lr, momentum=m, wd=wd, nesterov=nesterov)
    assert torch.allclose(p.detach(), expected, rtol=0, atol=1e-6)
    # Guard against a vacuous check: the other momentum flavour and no decay both differ.
    other = hand_muon(p0, grads, lr=lr, momentum=m, wd=wd, nesterov=not nesterov)
    no_wd = hand_muon(p0, grads, lr=lr, momentum=m, wd=0.0, nesterov=nesterov)
    assert not torch.allclose(p.detach(), other, rtol=0, atol=1e-4)
    assert not torch.allclose(p.detach(), no_wd, rtol=0, atol=1e-4)


def test_muon_tall_update_is_scaled_by_sqrt_rows_over_cols():
    # One step, no momentum history, no decay: p0 - p1 = lr * NS5(g + m g) * sqrt(3 / 2).
    lr, m = 0.1, 0.5
    g = make_grads((3, 2), 1, seed=5)[0]
    p = nn.Parameter(torch.zeros(3, 2))
    opt = Muon([p], lr=lr, momentum=m, ns_dtype=torch.float32)
    p.grad = g.clone()
    opt.step()
    unscaled = zeropower_via_newtonschulz5((1 + m) * g, 5, dtype=torch.float32)
    assert torch.allclose(-p.detach() / lr, unscaled * math.sqrt(1.5), rtol=0, atol=1e-6)


@pytest.mark.parametrize("shape", [(3, 2), (2, 3)], ids=["tall", "wide"])
def test_muon_weight_decay_alone_with_zero_gradient(shape):
    lr, wd, k = 0.1, 0.5, 4
    p0 = torch.arange(1.0, 7.0).reshape(shape)
    p = nn.Parameter(p0.clone())
    opt = Muon([p], lr=lr, momentum=0.95, weight_decay=wd, ns_dtype=torch.float32)
    for _ in range(k):
        p.grad = torch.zeros(shape)
        opt.step()
    expected = p0 * (1 - lr * wd) ** k
    assert torch.allclose(p.detach(), expected, rtol=1e-6, atol=1e-7)
    assert torch.equal(opt.state[p]["momentum_buffer"], torch.zeros(shape))


@pytest.mark.parametrize("step, expected", [(0, 0.92), (375, 0.9375), (750, 0.955), (1500, 0.99), (3000, 0.99)])
def test_momentum_warmup_record_values(step, expected):
    assert momentum_warmup(step, 0.92, 0.99, 1500) == pytest.approx(expected, abs=1e-12)


def small_model() -> nn.Module:
    torch.manual_seed(0)
    m = nn.Module()
    m.w1 = nn.Parameter(torch.randn(3, 2))
    m.w2 = nn.Parameter(torch.randn(2, 4))
    m.gain = nn.Parameter(torch.ones(2))
    return m


RULES = [
    {"name": "matrices", "optimizer": "muon", "lr": 0.05, "ndim": 2, "weight_decay": 0.04},
    {"name": "rest", "optimizer": "adam", "lr": 0.01},
]


def build(model: nn.Module):
    return build_optimizer(
        model.named_parameters(),
        rules=RULES,
        muon_momentum=0.99,
        muon_momentum_warmup_start=0.92,
        muon_momentum_warmup_steps=1500,
        muon_ns_dtype="float32",
    )


def test_optimizer_set_momentum_schedule_reaches_the_muon_groups():
    opt = build(small_model())
    for step in (0, 375, 750, 1500, 3000):
        assert opt.momentum_at(step) == pytest.approx(momentum_warmup(step, 0.92, 0.99, 1500), abs=1e-12)
    assert opt.momentum_at(750) == pytest.approx(0.955, abs=1e-12)
    betas_before = [g["betas"] for g in opt.adam.param_groups]
    opt.set_muon_momentum(opt.momentum_at(750))
    assert opt.muon is not None and len(opt.muon.param_groups) == 1
    assert all(g["momentum"] == pytest.approx(0.955) for g in opt.muon.param_groups)
    assert [g["betas"] for g in opt.adam.param_groups] == betas_before  # Adam untouched


def test_optimizer_set_steps_with_scheduled_momentum_match_hand_formulas():
    """Three runner-style steps with the warm-up feeding Muon; matrices checked by hand."""
    model = small_model()
    p0 = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = build(model)
    steps = [0, 750, 1500]
    grads = {n: make_grads(p.shape, len(steps), seed=i) for i, (n, p) in enumerate(model.named_parameters())}
    for k, step in enumerate(steps):
        for n, p in model.named_parameters():
            p.grad = grads[n][k].clone()
        opt.set_muon_momentum(opt.momentum_at(step))
        opt.step()
        opt.zero_grad()
    moms = [0.92, 0.955, 0.99]
    params = dict(model.named_parameters())
    for name in ("w1", "w2"):
        expected = hand_muon(p0[name], grads[name], lr=0.05, momentum=moms, wd=0.04, nesterov=True)
        assert torch.allclose(params[name].detach(), expected, rtol=0, atol=1e-6), name
        constant = hand_muon(p0[name], grads[name], lr=0.05, momentum=0.99, wd=0.04, nesterov=True)
        assert not torch.allclose(params[name].detach(), constant, rtol=0, atol=1e-4), name
