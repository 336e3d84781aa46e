"""Newton–Schulz orthogonalisation and the Muon update, checked against hand computations."""

from __future__ import annotations

import math

import pytest
import torch

from paramgolf.optim.muon import NS_COEFFICIENTS, Muon, zeropower_via_newtonschulz5


def ns_scalar(x: float, steps: int = 5) -> float:
    """The quintic NS map on one singular value (diagonal matrices decouple into scalars)."""
    a, b, c = NS_COEFFICIENTS
    for _ in range(steps):
        x = a * x + b * x**3 + c * x**5
    return x


def diag_update(d: list[float], eps: float = 1e-7) -> list[float]:
    """Hand-computed NS5 of diag(d): each entry is ns(d_i / ||d||_F), sign kept (NS is odd)."""
    norm = math.sqrt(sum(v * v for v in d))
    return [ns_scalar(v / (norm + eps)) for v in d]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", [(64, 32), (32, 64), (48, 48)])
def test_ns_output_is_near_orthogonal(shape, dtype):
    torch.manual_seed(0)
    G = torch.randn(shape)
    X = zeropower_via_newtonschulz5(G, steps=5, dtype=dtype)
    assert X.dtype == dtype and X.shape == G.shape
    sv = torch.linalg.svdvals(X.float())
    # 5 quintic steps leave singular values spread around 1, not at 1 (by design).
    assert sv.min() > 0.6 and sv.max() < 1.25
    # And the result points along the polar factor U V^T of G.
    U, _, Vh = torch.linalg.svd(G, full_matrices=False)
    polar = U @ Vh
    cos = (X.float() * polar).sum() / (X.float().norm() * polar.norm())
    assert cos > 0.97


def test_ns_batched_equals_each_matrix_alone():
    torch.manual_seed(1)
    G = torch.randn(3, 12, 5)
    batched = zeropower_via_newtonschulz5(G, dtype=torch.float32)
    for i in range(3):
        torch.testing.assert_close(batched[i], zeropower_via_newtonschulz5(G[i], dtype=torch.float32))


def test_ns_on_diagonal_matches_scalar_iteration():
    X = zeropower_via_newtonschulz5(torch.diag(torch.tensor([3.0, -4.0])), dtype=torch.float32)
    expected = torch.diag(torch.tensor(diag_update([3.0, -4.0])))
    torch.testing.assert_close(X, expected, rtol=1e-5, atol=1e-6)


def test_muon_one_step_matches_hand_computation():
    lr, m = 0.1, 0.95
    p = torch.nn.Parameter(torch.ones(2, 2))
    opt = Muon([p], lr=lr, momentum=m, ns_dtype=torch.float32)
    p.grad = torch.diag(torch.tensor([3.0, -4.0]))
    opt.step()
    # Nesterov from a zero buffer: u = g + m * g = (1 + m) g.
    u = diag_update([(1 + m) * 3.0, (1 + m) * -4.0])
    expected = torch.ones(2, 2) - lr * torch.diag(torch.tensor(u))
    torch.testing.assert_close(p.detach(), expected, rtol=1e-5, atol=1e-6)


def test_muon_two_steps_tall_matrix_with_weight_decay():
    lr, m, wd = 0.05, 0.9, 0.5
    p0 = torch.arange(6, dtype=torch.float32).reshape(3, 2) / 10
    p = torch.nn.Parameter(p0.clone())
    opt = Muon([p], lr=lr, momentum=m, weight_decay=wd, ns_dtype=torch.float32)
    g1 = torch.tensor([[2.0, 0.0], [0.0, 1.0], [0.0, 0.0]])
    g2 = torch.tensor([[-1.0, 0.0], [0.0, 3.0], [0.0, 0.0]])
    for g in (g1, g2):
        p.grad = g.clone()
        opt.step()

    def embed(d):  # diag(d) as a 3x2 matrix
        return torch.tensor([[d[0], 0.0], [0.0, d[1]], [0.0, 0.0]])

    scale = math.sqrt(3 / 2)  # sqrt(max(1, rows/cols))
    u1 = [(1 + m) * 2.0, (1 + m) * 1.0]
    buf = [m * 2.0 + -1.0, m * 1.0 + 3.0]
    u2 = [-1.0 + m * buf[0], 3.0 + m * buf[1]]
    expected = p0 * (1 - lr * wd) - lr * scale * embed(diag_update(u1))
    expected = expected * (1 - lr * wd) - lr * scale * embed(diag_update(u2))
    torch.testing.assert_close(p.detach(), expected, rtol=1e-5, atol=1e-6)


def test_muon_groups_use_their_own_lr_and_momentum():
    a = torch.nn.Parameter(torch.zeros(2, 2))
    b = torch.nn.Parameter(torch.zeros(2, 2))
    opt = Muon(
        [{"params": [a], "lr": 0.1}, {"params": [b], "lr": 0.2, "momentum": 0.5}], lr=1.0, ns_dtype=torch.float32
    )
    g = torch.diag(torch.tensor([1.0, 2.0]))
    a.grad, b.grad = g.clone(), g.clone()
    opt.step()
    # From a zero buffer Nesterov only rescales g, which normalisation removes: same direction.
    torch.testing.assert_close(b.detach(), 2 * a.detach())
    assert opt.state[b]["momentum_buffer"].equal(g) and opt.param_groups[1]["momentum"] == 0.5


def test_muon_skips_params_without_grad_and_rejects_vectors():
    p = torch.nn.Parameter(torch.ones(3, 3))
    Muon([p], lr=0.1).step()
    assert torch.equal(p.detach(), torch.ones(3, 3))
    with pytest.raises(ValueError, match="ndim >= 2"):
        Muon([torch.nn.Parameter(torch.ones(3))], lr=0.1)
