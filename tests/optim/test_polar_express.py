"""Polar Express Newton–Schulz (D2): per-step coefficients, a hand loop, singular values nearer 1."""

from __future__ import annotations

import pytest
import torch

from paramgolf.optim.muon import (
    NS_COEFFICIENTS,
    POLAR_EXPRESS_COEFFICIENTS,
    Muon,
    newton_schulz_coefficients,
    zeropower_via_newtonschulz5,
)

# FRONTIER D2, as printed in the record (T:1720-1726).
RECORD_TUPLES = [
    (8.156554524902461, -22.48329292557795, 15.878769915207462),
    (4.042929935166739, -2.808917465908714, 0.5000178451051316),
    (3.8916678022926607, -2.772484153217685, 0.5060648178503393),
    (3.285753657755655, -2.3681294933425376, 0.46449024233003106),
    (2.3465413258596377, -1.7097828382687081, 0.42323551169305323),
]


def hand_ns(G: torch.Tensor, tuples, dtype=torch.float32, eps=1e-7) -> torch.Tensor:
    """Newton–Schulz by the formulas of D2: normalise, wide orientation, X ← aX + (bA + cA²)X per tuple."""
    X = G.to(dtype)
    tall = X.size(-2) > X.size(-1)
    if tall:
        X = X.mT
    X = X / (X.norm(dim=(-2, -1), keepdim=True) + eps)
    for a, b, c in tuples:
        A = X @ X.mT
        X = a * X + (b * A + (c * A) @ A) @ X
    return X.mT if tall else X


def test_coefficient_lists():
    assert [tuple(t) for t in POLAR_EXPRESS_COEFFICIENTS] == RECORD_TUPLES
    assert newton_schulz_coefficients("polar_express", 5) == tuple(RECORD_TUPLES)
    assert newton_schulz_coefficients("polar_express", 3) == tuple(RECORD_TUPLES[:3])
    assert newton_schulz_coefficients("standard", 4) == (NS_COEFFICIENTS,) * 4


def test_more_steps_than_tuples_and_unknown_names_are_refused():
    # The record runs only its 5 tuples when asked for more (T:1739); here that is an error.
    with pytest.raises(ValueError, match="muon_backend_steps=6"):
        newton_schulz_coefficients("polar_express", 6)
    with pytest.raises(ValueError, match="ns_coefficients"):
        newton_schulz_coefficients("bogus", 5)
    p = torch.nn.Parameter(torch.randn(4, 4))
    with pytest.raises(ValueError, match="muon_backend_steps=7"):
        Muon([p], lr=0.1, backend_steps=7, ns_coefficients="polar_express")
    with pytest.raises(ValueError, match="ns_coefficients"):
        Muon([p], lr=0.1, ns_coefficients="polar")


@pytest.mark.parametrize("shape", [(48, 24), (24, 48), (2, 32, 16)], ids=str)
@pytest.mark.parametrize("kind, tuples", [("polar_express", RECORD_TUPLES), ("standard", [NS_COEFFICIENTS] * 5)])
def test_equals_the_hand_written_loop(shape, kind, tuples):
    G = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    got = zeropower_via_newtonschulz5(G, steps=5, dtype=torch.float32, coefficients=kind)
    assert torch.equal(got, hand_ns(G, tuples))
    three = zeropower_via_newtonschulz5(G, steps=3, dtype=torch.float32, coefficients=kind)
    assert torch.equal(three, hand_ns(G, tuples[:3]))


def test_standard_is_the_default():
    G = torch.randn(20, 12, generator=torch.Generator().manual_seed(1))
    assert torch.equal(
        zeropower_via_newtonschulz5(G, dtype=torch.float32),
        zeropower_via_newtonschulz5(G, dtype=torch.float32, coefficients="standard"),
    )


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("shape", [(64, 32), (32, 64), (256, 128)], ids=str)
def test_singular_values_closer_to_one_than_standard(shape, dtype):
    G = torch.randn(shape, generator=torch.Generator().manual_seed(2))

    def distance_to_one(kind: str) -> tuple[float, float]:
        sv = torch.linalg.svdvals(zeropower_via_newtonschulz5(G, steps=5, dtype=dtype, coefficients=kind).double())
        return (sv - 1).abs().max().item(), (sv - 1).abs().mean().item()

    std_max, std_mean = distance_to_one("standard")
    pe_max, pe_mean = distance_to_one("polar_express")
    assert pe_max < 0.7 * std_max and pe_mean < 0.7 * std_mean, (std_max, pe_max, std_mean, pe_mean)


def test_muon_step_uses_the_configured_coefficients():
    gen = torch.Generator().manual_seed(3)
    p0, g = torch.randn(16, 8, generator=gen), torch.randn(16, 8, generator=gen)
    p = torch.nn.Parameter(p0.clone())
    opt = Muon([p], lr=0.1, momentum=0.9, nesterov=True, ns_dtype=torch.float32, ns_coefficients="polar_express")
    p.grad = g.clone()
    opt.step()
    u = g + 0.9 * g  # Nesterov after one step: buf = g, u = g + m·buf
    expected = p0 - 0.1 * hand_ns(u, RECORD_TUPLES) * (16 / 8) ** 0.5
    torch.testing.assert_close(p.detach(), expected, rtol=0, atol=1e-6)
