"""MuonEq-R (D1): rows of the Nesterov update normalised before Newton–Schulz, in Muon and Parallel Muon."""

from __future__ import annotations

import math

import pytest
import torch

from paramgolf.optim.muon import Muon, row_normalize, zeropower_via_newtonschulz5
from paramgolf.optim.parallel_muon import ParallelMuon


def test_rows_have_unit_norm_and_zero_rows_stay_zero():
    u = torch.randn(6, 10, generator=torch.Generator().manual_seed(0)) * torch.logspace(-3, 3, 6).view(6, 1)
    u[2] = 0.0
    r = row_normalize(u)
    norms = r.norm(dim=-1)
    torch.testing.assert_close(norms[[0, 1, 3, 4, 5]], torch.ones(5))
    assert torch.equal(r[2], torch.zeros(10))  # ‖0‖ is clamped to 1e-7: no NaN
    torch.testing.assert_close(r * u.norm(dim=-1, keepdim=True), u)  # only the row scale changes


def test_a_bank_is_normalised_over_in_per_matrix():
    bank = torch.randn(3, 5, 7, generator=torch.Generator().manual_seed(1))  # [B, out, in]
    r = row_normalize(bank)
    torch.testing.assert_close(r.norm(dim=-1), torch.ones(3, 5))
    for i in range(3):
        assert torch.equal(r[i], row_normalize(bank[i]))


def hand_muon_eq_r(p0, grads, *, lr, momentum, wd):
    """Muon with MuonEq-R by the formulas: buf = m·buf + g; u = g + m·buf; u /= max(‖u_row‖, 1e-7); NS5."""
    rows, cols = p0.shape
    p, buf = p0.clone(), torch.zeros_like(p0)
    for g in grads:
        buf = momentum * buf + g
        u = g + momentum * buf
        u = u / u.norm(dim=-1, keepdim=True).clamp_min(1e-7)
        p = p * (1 - lr * wd) - lr * zeropower_via_newtonschulz5(u, 5, dtype=torch.float32) * math.sqrt(
            max(1.0, rows / cols)
        )
    return p


@pytest.mark.parametrize("shape", [(32, 16), (16, 32)], ids=str)
def test_muon_with_row_normalize_matches_the_formulas(shape):
    gen = torch.Generator().manual_seed(2)
    p0 = torch.randn(shape, generator=gen)
    # Rows of very different scale: row normalisation changes the update.
    grads = [torch.randn(shape, generator=gen) * torch.logspace(-2, 2, shape[0]).view(-1, 1) for _ in range(3)]
    p = torch.nn.Parameter(p0.clone())
    opt = Muon([p], lr=0.05, momentum=0.9, weight_decay=0.1, ns_dtype=torch.float32, row_normalize=True)
    for g in grads:
        p.grad = g.clone()
        opt.step()
    expected = hand_muon_eq_r(p0, grads, lr=0.05, momentum=0.9, wd=0.1)
    torch.testing.assert_close(p.detach(), expected, rtol=1e-5, atol=1e-6)

    plain = torch.nn.Parameter(p0.clone())
    off = Muon([plain], lr=0.05, momentum=0.9, weight_decay=0.1, ns_dtype=torch.float32)
    for g in grads:
        plain.grad = g.clone()
        off.step()
    assert (plain.detach() - p.detach()).abs().max() > 1e-3  # the switch does something


SHAPES = [(64, 32), (64, 32), (32, 64), (48, 48), (64, 32), (48, 48)]  # repeats form banks


def _run(cls, ns_dtype, **kw) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(s, generator=gen)) for s in SHAPES]
    groups = [{"params": params[:4], "lr": 0.02}, {"params": params[4:], "lr": 0.05, "weight_decay": 0.1}]
    opt = cls(groups, lr=0.02, momentum=0.9, ns_dtype=ns_dtype, **kw)
    for _ in range(2):
        for p in params:
            p.grad = torch.randn(p.shape, generator=gen) * torch.logspace(-2, 2, p.shape[0]).view(-1, 1)
        opt.step()
        opt.zero_grad()
    return [p.detach().clone() for p in params]


@pytest.mark.parametrize("ns_dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("coefficients", ["standard", "polar_express"])
def test_parallel_muon_equals_muon_with_row_normalize(ns_dtype, coefficients):
    kw = dict(row_normalize=True, ns_coefficients=coefficients)
    banked, plain = _run(ParallelMuon, ns_dtype, **kw), _run(Muon, ns_dtype, **kw)
    for b, p in zip(banked, plain, strict=True):
        assert torch.equal(b, p)
    off = _run(Muon, ns_dtype)
    assert any(not torch.equal(a, b) for a, b in zip(off, plain, strict=True))
