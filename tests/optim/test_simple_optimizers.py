"""TTT optimizers (paramgolf.optim.simple): SGD / AdamW against hand formulas, input checks."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from paramgolf.optim.simple import build_simple_optimizer, set_lr

P0 = torch.tensor([[0.5, -1.0, 2.0], [1.5, 0.25, -0.75]])
GRADS = [
    torch.tensor([[1.0, -2.0, 0.5], [0.0, 3.0, -1.0]]),
    torch.tensor([[-0.5, 1.0, 2.0], [1.0, -1.0, 0.25]]),
    torch.tensor([[2.0, 0.5, -1.5], [-2.0, 0.0, 1.0]]),
]


def run(opt: torch.optim.Optimizer, p: nn.Parameter, grads=GRADS) -> torch.Tensor:
    for g in grads:
        p.grad = g.clone()
        opt.step()
    return p.detach().clone()


@pytest.mark.parametrize("nesterov", [False, True], ids=["plain", "nesterov"])
def test_sgd_momentum_three_steps(nesterov):
    lr, m = 0.1, 0.9
    p = nn.Parameter(P0.clone())
    got = run(build_simple_optimizer([p], "sgd", lr=lr, momentum=m, nesterov=nesterov), p)

    expected, buf = P0.clone(), torch.zeros_like(P0)
    for g in GRADS:
        buf = m * buf + g
        expected = expected - lr * ((g + m * buf) if nesterov else buf)
    assert torch.allclose(got, expected, rtol=0, atol=1e-6)
    # The two variants really differ on these gradients.
    other = build_simple_optimizer([q := nn.Parameter(P0.clone())], "sgd", lr=lr, momentum=m, nesterov=not nesterov)
    assert not torch.allclose(run(other, q), got, rtol=0, atol=1e-3)


def test_sgd_weight_decay_is_added_to_the_gradient():
    # torch's SGD weight decay is L2: g <- g + wd * p, before momentum.
    lr, m, wd = 0.05, 0.5, 0.1
    p = nn.Parameter(P0.clone())
    got = run(build_simple_optimizer([p], "sgd", lr=lr, momentum=m, weight_decay=wd), p)
    expected, buf = P0.clone(), torch.zeros_like(P0)
    for g in GRADS:
        buf = m * buf + (g + wd * expected)
        expected = expected - lr * buf
    assert torch.allclose(got, expected, rtol=0, atol=1e-6)


def test_sgd_without_momentum_is_plain_gradient_descent():
    p = nn.Parameter(P0.clone())
    got = run(build_simple_optimizer([p], "sgd", lr=0.2), p)
    assert torch.allclose(got, P0 - 0.2 * sum(GRADS), rtol=0, atol=1e-6)


@pytest.mark.parametrize("wd", [0.0, 0.5])
def test_adamw_three_steps(wd):
    lr, (b1, b2), eps = 0.01, (0.8, 0.95), 1e-8
    p = nn.Parameter(P0.clone())
    got = run(build_simple_optimizer([p], "adamw", lr=lr, betas=(b1, b2), eps=eps, weight_decay=wd), p)

    expected, m, v = P0.clone(), torch.zeros_like(P0), torch.zeros_like(P0)
    for t, g in enumerate(GRADS, start=1):
        expected = expected * (1 - lr * wd)
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        mhat, vhat = m / (1 - b1**t), v / (1 - b2**t)
        expected = expected - lr * mhat / (vhat.sqrt() + eps)
    assert torch.allclose(got, expected, rtol=0, atol=1e-6)
    if wd:
        no_decay = nn.Parameter(P0.clone())
        plain = run(build_simple_optimizer([no_decay], "adamw", lr=lr, betas=(b1, b2), eps=eps), no_decay)
        assert not torch.allclose(got, plain, rtol=0, atol=1e-4)


def test_param_groups_frozen_tensors_and_set_lr():
    a, b = nn.Parameter(P0.clone()), nn.Parameter(P0.clone())
    frozen = nn.Parameter(P0.clone(), requires_grad=False)
    opt = build_simple_optimizer(
        [{"params": [a, frozen], "lr": 0.5}, {"params": [b]}, {"params": [frozen]}], "sgd", lr=0.1
    )
    assert len(opt.param_groups) == 2  # the all-frozen group is dropped
    assert [len(g["params"]) for g in opt.param_groups] == [1, 1]
    assert opt.param_groups[0]["params"][0] is a
    assert [g["lr"] for g in opt.param_groups] == [0.5, 0.1]
    # A generator of tensors works too; frozen ones are left out.
    opt2 = build_simple_optimizer((t for t in (a, frozen, b)), "adamw", lr=1e-3)
    assert sum(len(g["params"]) for g in opt2.param_groups) == 2

    set_lr(opt, 0.02)
    assert [g["lr"] for g in opt.param_groups] == [0.02, 0.02]
    # And the new lr is the one used: one momentum-free step moves each by 0.02 * g.
    for t in (a, b):
        t.grad = GRADS[0].clone()
    opt.step()
    assert torch.allclose(a.detach(), P0 - 0.02 * GRADS[0], rtol=0, atol=1e-7)
    assert torch.allclose(b.detach(), P0 - 0.02 * GRADS[0], rtol=0, atol=1e-7)
    assert torch.equal(frozen.detach(), P0)


def test_set_lr_cosine_over_chunks():
    """The score-first TTT shape: lr 0.002 cosine-decayed over chunks, SGD momentum 0.9."""
    p = nn.Parameter(P0.clone())
    opt = build_simple_optimizer([p], "sgd", lr=0.002, momentum=0.9)
    chunks = 4
    seen = []
    for c in range(chunks):
        set_lr(opt, 0.002 * 0.5 * (1 + math.cos(math.pi * c / chunks)))
        seen.append(opt.param_groups[0]["lr"])
    assert seen == pytest.approx([0.002, 0.002 * (1 + math.sqrt(0.5)) / 2, 0.001, 0.002 * (1 - math.sqrt(0.5)) / 2])


def test_kind_is_case_insensitive():
    p = nn.Parameter(P0.clone())
    assert isinstance(build_simple_optimizer([p], "SGD", lr=0.1), torch.optim.SGD)
    assert isinstance(build_simple_optimizer([p], "AdamW", lr=0.1), torch.optim.AdamW)


def param():
    return [nn.Parameter(P0.clone())]


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(kind="adam", lr=0.1), r"kind='adam' is not one of sgd, adamw"),
        (dict(kind="sgd", lr=-0.1), r"lr must be a finite number >= 0, got -0.1"),
        (dict(kind="adamw", lr=float("nan")), r"lr must be"),
        (dict(kind="sgd", lr=0.1, momentum=1.0), r"momentum must be in \[0, 1\)"),
        (dict(kind="sgd", lr=0.1, momentum=-0.1), r"momentum must be in \[0, 1\)"),
        (dict(kind="sgd", lr=0.1, nesterov=True), r"nesterov=True needs momentum > 0"),
        (dict(kind="sgd", lr=0.1, weight_decay=-1.0), r"weight_decay must be a number >= 0"),
        (dict(kind="adamw", lr=0.1, betas=(0.9,)), r"betas must be two numbers"),
        (dict(kind="adamw", lr=0.1, betas=(0.9, 1.0)), r"betas must be two numbers .* in \[0, 1\)"),
        (dict(kind="adamw", lr=0.1, betas=(-0.1, 0.9)), r"betas must be two numbers"),
        (dict(kind="adamw", lr=0.1, betas="ab"), r"betas must be two numbers"),
        (dict(kind="adamw", lr=0.1, eps=-1e-8), r"eps must be a number >= 0"),
    ],
)
def test_bad_options_raise_clear_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        build_simple_optimizer(param(), **kwargs)


def test_bad_params_raise_clear_errors():
    frozen = nn.Parameter(P0.clone(), requires_grad=False)
    with pytest.raises(ValueError, match="no trainable parameters"):
        build_simple_optimizer([frozen], "sgd", lr=0.1)
    with pytest.raises(ValueError, match="no trainable parameters"):
        build_simple_optimizer([{"params": [frozen]}], "adamw", lr=0.1)
    with pytest.raises(ValueError, match="params is empty"):
        build_simple_optimizer([], "sgd", lr=0.1)
    with pytest.raises(ValueError, match="single tensor"):
        build_simple_optimizer(nn.Parameter(P0.clone()), "sgd", lr=0.1)
    with pytest.raises(ValueError, match="mixes tensors and param-group dicts"):
        build_simple_optimizer([nn.Parameter(P0.clone()), {"params": param()}], "sgd", lr=0.1)
    with pytest.raises(ValueError, match="no 'params' key"):
        build_simple_optimizer([{"lr": 0.1}], "sgd", lr=0.1)
    with pytest.raises(ValueError, match=r"param group 0: lr must be"):
        build_simple_optimizer([{"params": param(), "lr": -1.0}], "sgd", lr=0.1)
    with pytest.raises(ValueError, match=r"param group 0: betas must be"):
        build_simple_optimizer([{"params": param(), "betas": (0.9, 1.5)}], "adamw", lr=0.1)
    with pytest.raises(ValueError, match=r"set_lr: lr must be"):
        set_lr(build_simple_optimizer(param(), "sgd", lr=0.1), -0.5)
