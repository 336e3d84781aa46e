"""The optional kernels (paramgolf.model.kernels) compute the eager paths' math.

On the CPU: the ops' PyTorch paths (what each kernel computes) against the eager modules, gradients
included, and that nothing imports Triton. With CUDA and Triton: the kernels against the eager paths.
With Triton but no GPU: the kernels in Triton's interpreter (slow).
"""

from __future__ import annotations

import importlib.util
import inspect
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from paramgolf.model.kernels.fused_ce import (
    eager_softcapped_ce,
    reference_grad,
    reference_rows,
    softcapped_ce_rows,
    softcapped_cross_entropy,
)
from paramgolf.model.kernels.fused_mlp import (
    FusedLeakyReluSquaredMLP,
    activation,
    activation_grad,
    leaky_relu_squared_mlp,
)
from paramgolf.model.mlp import LeakyReluSquaredMLP
from paramgolf.model.training import lm_loss, training_loss

HAS_TRITON = importlib.util.find_spec("triton") is not None
needs_gpu = pytest.mark.skipif(not (torch.cuda.is_available() and HAS_TRITON), reason="needs CUDA and Triton")
C = 30.0


# ---------------------------------------------------------------------------------------------- cross-entropy


def test_fused_ce_formula_equals_the_eager_softcapped_ce_with_gradients():
    """z = 2c·σ(2x/c) is c·tanh(x/c) + c: same loss, and the fused backward is the eager gradient."""
    torch.manual_seed(0)
    x = (torch.randn(37, 50) * 40).requires_grad_()  # well into the cap's saturation
    y = torch.randint(0, 50, (37,))
    eager = eager_softcapped_ce(x, y, C)
    (g_eager,) = torch.autograd.grad(eager, x)
    losses, lse = softcapped_ce_rows(x, y, C)
    fused = losses.mean()
    (g_fused,) = torch.autograd.grad(fused, x)
    assert torch.allclose(fused, eager, rtol=1e-6, atol=1e-5)
    assert torch.allclose(g_fused, g_eager, rtol=1e-4, atol=1e-7)
    assert torch.allclose(lse, torch.logsumexp(C * torch.tanh(x.detach() / C), -1) + C, atol=1e-4)
    assert g_eager.abs().max() > 1e-3  # a gradient that could differ


def test_fused_ce_backward_is_the_derivative_of_its_forward():
    x = (torch.randn(4, 9, dtype=torch.float64) * 20).requires_grad_()
    y = torch.tensor([0, 8, 3, 3])
    assert torch.autograd.gradcheck(lambda t: softcapped_ce_rows(t, y, C)[0], (x,))


def test_reference_backward_matches_autograd_of_the_reference_forward():
    torch.manual_seed(1)
    x = (torch.randn(6, 13) * 10).requires_grad_()
    y = torch.randint(0, 13, (6,))
    g = torch.randn(6)
    losses, lse = reference_rows(x, y, C)
    (want,) = torch.autograd.grad(losses, x, g)
    assert torch.allclose(reference_grad(x.detach(), y, lse.detach(), g, C), want, atol=1e-6)


def test_fused_ce_off_cuda_is_the_eager_path_bit_for_bit():
    torch.manual_seed(2)
    x = torch.randn(2, 5, 31) * 8
    y = torch.randint(0, 31, (2, 5))
    assert torch.equal(softcapped_cross_entropy(x, y, C), lm_loss(C * torch.tanh(x / C), y))


class TinyLM(nn.Module):
    """GPT's interface for training_loss: forward(idx, return_hidden=, softcap=, **kwargs), logit_softcap."""

    logit_softcap = C

    def __init__(self, vocab: int = 23, dim: int = 8, with_part: bool = False):
        super().__init__()
        self.emb = nn.Embedding(vocab, dim)
        self.head = nn.Linear(dim, vocab)
        self.mtp = _Part() if with_part else None

    def forward(self, idx, return_hidden=False, softcap=True, scale=1.0):
        h = self.emb(idx) * scale
        logits = self.head(h)
        if softcap:
            logits = self.logit_softcap * torch.tanh(logits / self.logit_softcap)
        return (logits, h) if return_hidden else logits


class _Part(nn.Module):
    def loss(self, hidden, y):
        return hidden.square().mean()


@pytest.mark.parametrize("with_part", [False, True])
def test_training_loss_with_the_fused_ce_equals_the_plain_loss_on_the_cpu(with_part):
    torch.manual_seed(3)
    model = TinyLM(with_part=with_part)
    nn.init.normal_(model.head.weight, std=5.0)
    x, y = torch.randint(0, 23, (2, 7)), torch.randint(0, 23, (2, 7))
    plain = training_loss(model, model, x, y, scale=3.0)
    grads = torch.autograd.grad(plain, list(model.parameters()))
    fused = training_loss(model, model, x, y, softcapped_ce=softcapped_cross_entropy, scale=3.0)
    assert torch.equal(plain, fused)
    assert all(torch.equal(a, b) for a, b in zip(grads, torch.autograd.grad(fused, list(model.parameters()))))
    assert not torch.equal(plain, training_loss(model, model, x, y))  # `scale` did reach the model
    assert torch.equal(plain, lm_loss(model(x, scale=3.0), y) + (model.emb(x) * 3.0).square().mean() * with_part)


def test_gpt_gives_pre_softcap_logits_for_the_fused_ce():
    from paramgolf.model.gpt import GPT

    if "softcap" not in inspect.signature(GPT.forward).parameters:
        pytest.skip("GPT.forward(..., softcap=False) is not there yet (gpt.py)")
    from test_gpt import tiny_model

    model = tiny_model()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    x, y = torch.randint(0, 97, (2, 9)), torch.randint(0, 97, (2, 9))
    raw = model(x, softcap=False)
    assert torch.equal(model(x), C * torch.tanh(raw / C)) and not torch.equal(model(x), raw)
    assert torch.equal(
        training_loss(model, model, x, y), training_loss(model, model, x, y, softcapped_ce=softcapped_cross_entropy)
    )


# ---------------------------------------------------------------------------------------------- LeakyReLU² MLP


def _eager_and_fused(slope: float, dtype=torch.float32):
    torch.manual_seed(4)
    mlp = LeakyReluSquaredMLP(16, 3.0, slope)
    nn.init.normal_(mlp.proj.weight)
    x = torch.randn(2, 5, 16, dtype=dtype, requires_grad=True)
    w1, w2 = (w.detach().to(dtype).requires_grad_() for w in (mlp.fc.weight, mlp.proj.weight))
    return mlp, x, w1, w2


@pytest.mark.parametrize("slope", [0.5, 0.0, 0.3])
def test_fused_mlp_op_equals_the_eager_mlp_with_gradients_bit_for_bit(slope):
    mlp, x, w1, w2 = _eager_and_fused(slope)
    out = mlp(x)
    dy = torch.randn_like(out)
    want = torch.autograd.grad(out, [x, mlp.fc.weight, mlp.proj.weight], dy)
    fused = leaky_relu_squared_mlp(x, w1, w2, slope)
    got = torch.autograd.grad(fused, [x, w1, w2], dy)
    assert torch.equal(fused, out)
    for name, g, w in zip(("dx", "dW1", "dW2"), got, want, strict=True):
        assert torch.equal(g, w), name
    assert want[1].abs().max() > 0


def test_fused_mlp_backward_is_the_derivative_of_its_forward():
    torch.manual_seed(5)
    t = [torch.randn(*s, dtype=torch.float64, requires_grad=True) for s in ((3, 4, 6), (8, 6), (6, 8))]
    assert torch.autograd.gradcheck(lambda a, b, c: leaky_relu_squared_mlp(a, b, c, 0.5), t)


@pytest.mark.parametrize("slope", [0.5, 0.3])
def test_activation_grad_rounds_like_autograd_in_bf16(slope):
    """The kernel's backward epilogue follows activation_grad; it must be autograd's own rounding."""
    torch.manual_seed(6)
    pre = (torch.randn(64, 96) * 3).to(torch.bfloat16).requires_grad_()
    dh = torch.randn(64, 96).to(torch.bfloat16)
    (want,) = torch.autograd.grad(F.leaky_relu(pre, slope).square(), pre, dh)
    assert torch.equal(activation_grad(dh, pre.detach(), slope), want)
    assert torch.equal(activation(pre.detach(), slope), F.leaky_relu(pre.detach(), slope).square())


def test_fused_mlp_module_is_the_eager_module_off_cuda_and_shares_its_state_dict():
    torch.manual_seed(7)
    eager = LeakyReluSquaredMLP(16, 2.0, 0.5)
    nn.init.normal_(eager.proj.weight)
    fused = FusedLeakyReluSquaredMLP(16, 2.0, 0.5)
    fused.load_state_dict(eager.state_dict())
    x = torch.randn(3, 4, 16)
    assert fused.training and torch.equal(fused(x), eager(x))


@pytest.mark.slow
def test_the_cpu_paths_never_import_the_triton_kernel_modules():
    """Without Triton installed, a CPU path that reached for it would fail; with it, the kernel modules show.

    (torch itself imports an installed Triton the first time a custom op runs; our modules must not.)"""
    code = (
        "import sys, torch\n"
        "from paramgolf.model.kernels import fused_ce, fused_mlp\n"
        "fused_ce.softcapped_cross_entropy(torch.randn(3, 7), torch.tensor([0, 1, 6]), 30.0)\n"
        "fused_ce.softcapped_ce_rows(torch.randn(3, 7), torch.tensor([0, 1, 6]), 30.0)\n"
        "fused_mlp.FusedLeakyReluSquaredMLP(8)(torch.randn(2, 8))\n"
        "fused_mlp.leaky_relu_squared_mlp(torch.randn(2, 8), torch.randn(16, 8), torch.randn(8, 16), 0.5)\n"
        "kernels = {m for m in sys.modules if m.startswith('paramgolf.model.kernels.triton')}\n"
        "assert not kernels, kernels\n"
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    assert r.returncode == 0, r.stderr


# ---------------------------------------------------------------------------------------------- on the GPU


def _small_integers(*shape, scale=1.0, device="cuda"):
    """Entries in {-1, 0, 1}·scale: every fp32 sum below is exact, so any summation order agrees."""
    return (torch.randint(-1, 2, shape, device=device).float() * scale).requires_grad_()


@needs_gpu
@pytest.mark.parametrize("slope", [0.5, 0.0])
def test_gpu_fused_mlp_equals_the_eager_mlp_bit_for_bit_under_bf16_autocast(slope):
    """With exact sums only the rounding is left, and the kernel's epilogues round as the eager ops do.

    300 rows, 32 → 64 → 32: every tile of the kernel is partial (masks), and K < BLOCK_K.
    """
    torch.manual_seed(8)
    eager = LeakyReluSquaredMLP(32, 2.0, slope).cuda()
    fused = FusedLeakyReluSquaredMLP(32, 2.0, slope).cuda()
    with torch.no_grad():
        for m in (eager, fused):
            m.fc.weight.copy_(_small_integers(64, 32))
            m.proj.weight.copy_(_small_integers(32, 64))
        fused.load_state_dict(eager.state_dict())
    x = _small_integers(3, 100, 32)
    dy = _small_integers(3, 100, 32).detach().to(torch.bfloat16)
    results = []
    for m in (eager, fused):
        xi = x.detach().clone().requires_grad_()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            out = m(xi)
        out.backward(dy)
        results.append((out, xi.grad, m.fc.weight.grad, m.proj.weight.grad))
    for name, a, b in zip(("out", "dx", "dW1", "dW2"), *results, strict=True):
        assert a.dtype == b.dtype and torch.equal(a, b), name
    assert results[0][2].abs().max() > 0


@needs_gpu
@pytest.mark.parametrize("slope", [0.5, 0.3])
def test_gpu_fused_mlp_is_as_close_to_fp64_as_the_eager_mlp(slope):
    torch.manual_seed(9)
    eager = LeakyReluSquaredMLP(512, 3.0, slope).cuda()
    torch.nn.init.normal_(eager.proj.weight, std=0.02)
    fused = FusedLeakyReluSquaredMLP(512, 3.0, slope).cuda()
    fused.load_state_dict(eager.state_dict())
    exact = LeakyReluSquaredMLP(512, 3.0, slope).cuda().double()
    exact.load_state_dict(eager.state_dict())
    x = torch.randn(4, 257, 512, device="cuda")
    dy = torch.randn(4, 257, 512, device="cuda")
    got = {}
    for name, m, dtype in (("eager", eager, torch.bfloat16), ("fused", fused, torch.bfloat16), ("exact", exact, None)):
        xi = (x.double() if dtype is None else x).clone().requires_grad_()
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=dtype is not None):
            out = m(xi)
        out.backward(dy.to(out.dtype))
        got[name] = [t.double() for t in (out, xi.grad, m.fc.weight.grad, m.proj.weight.grad)]
    for i, name in enumerate(("out", "dx", "dW1", "dW2")):
        err_eager = (got["eager"][i] - got["exact"][i]).abs().max()
        err_fused = (got["fused"][i] - got["exact"][i]).abs().max()
        assert err_fused <= 2 * err_eager + 1e-6 * got["exact"][i].abs().max(), (name, err_fused, err_eager)


@needs_gpu
def test_gpu_fused_mlp_uses_the_qat_weight_transform_and_stays_eager_in_eval():
    torch.manual_seed(10)
    eager = LeakyReluSquaredMLP(32, 2.0, 0.5).cuda()
    with torch.no_grad():
        eager.fc.weight.copy_(_small_integers(64, 32))
        eager.proj.weight.copy_(_small_integers(32, 64))
    fused = FusedLeakyReluSquaredMLP(32, 2.0, 0.5).cuda()
    fused.load_state_dict(eager.state_dict())
    for m in (eager, fused):
        m.fc.weight_fn = lambda w: 2 * w
    x = _small_integers(2, 50, 32).detach()
    with torch.autocast("cuda", dtype=torch.bfloat16):
        assert torch.equal(fused(x), eager(x))
        fused.eval()
        x = torch.randn(2, 50, 32, device="cuda")
        assert torch.equal(fused(x), eager(x))


@needs_gpu
def test_gpu_fused_mlp_compiles_with_fullgraph():
    torch.manual_seed(11)
    fused = FusedLeakyReluSquaredMLP(64, 3.0, 0.5).cuda()
    with torch.no_grad():
        fused.fc.weight.copy_(_small_integers(192, 64))
        fused.proj.weight.copy_(_small_integers(64, 192))
    compiled = torch.compile(fused, fullgraph=True)
    x = _small_integers(2, 64, 64).detach()
    with torch.autocast("cuda", dtype=torch.bfloat16):
        want = fused(x)
        got = compiled(x)
    assert torch.equal(got, want)
    got.float().sum().backward()


@needs_gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("vocab", [8192, 1000])
def test_gpu_fused_ce_matches_its_reference_and_the_eager_path(dtype, vocab):
    torch.manual_seed(12)
    x = (torch.randn(2, 512, vocab, device="cuda") * 15).to(dtype).requires_grad_()
    y = torch.randint(0, vocab, (2, 512), device="cuda")
    fused = softcapped_cross_entropy(x, y, C)
    (g_fused,) = torch.autograd.grad(fused, x)
    rows, cols = x.detach().reshape(-1, vocab), y.reshape(-1)
    ref_losses, ref_lse = reference_rows(rows, cols, C)
    g_ref = reference_grad(rows, cols, ref_lse, torch.full_like(ref_lse, 1 / rows.size(0)), C)
    assert torch.allclose(fused, ref_losses.mean(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(g_fused.reshape(-1, vocab).float(), g_ref.float(), rtol=1.6e-2, atol=1e-8)
    eager = eager_softcapped_ce(x, y, C)  # softcaps in the logits' dtype: bf16 rounds z
    (g_eager,) = torch.autograd.grad(eager, x)
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    assert torch.allclose(fused, eager, rtol=tol, atol=tol)
    assert (g_fused.float() - g_eager.float()).abs().max() <= 0.05 * g_eager.float().abs().max()


# ---------------------------------------------------------------------------------------------- Triton's interpreter

_INTERPRETED = r"""
import torch, torch.nn.functional as F
from paramgolf.model.kernels import fused_ce, fused_mlp, triton_ce, triton_mlp
torch.manual_seed(0)
# fp32 only: the interpreter's bf16 tl.dot is wrong and its fp32 -> bf16 casts truncate.
x = torch.randint(-1, 2, (150, 70)).float(); w1 = torch.randint(-1, 2, (200, 70)).float()
w2 = torch.randint(-1, 2, (70, 200)).float(); dy = torch.randint(-1, 2, (150, 70)).float() * 0.25
for slope in (0.5, 0.3):
    pre, post = triton_mlp.linear_leaky_relu_squared(x, w1, slope)
    assert torch.equal(pre, F.linear(x, w1)) and torch.equal(post, fused_mlp.activation(pre, slope))
    dpre = triton_mlp.leaky_relu_squared_grad(dy, w2, pre, slope)
    assert torch.equal(dpre, fused_mlp.activation_grad(dy @ w2, pre, slope))
z = torch.randn(5, 2500) * 20; t = torch.randint(0, 2500, (5,)); g = torch.randn(5)
losses, lse = triton_ce.forward(z, t, 30.0)
ref_losses, ref_lse = fused_ce.reference_rows(z, t, 30.0)
assert torch.allclose(losses, ref_losses, atol=1e-4) and torch.allclose(lse, ref_lse, atol=1e-4)
assert torch.allclose(triton_ce.backward(z, t, lse, g, 30.0), fused_ce.reference_grad(z, t, ref_lse, g, 30.0), atol=1e-6)
"""


@pytest.mark.slow
@pytest.mark.skipif(not HAS_TRITON, reason="needs Triton (its interpreter runs the kernels on the CPU)")
def test_kernels_in_tritons_interpreter_compute_their_references():
    env = {**os.environ, "TRITON_INTERPRET": "1", "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-c", _INTERPRETED], capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
