"""Fused LeakyReLU² MLP, training only (#1530; the top record #1855 trains with it).

Forward: pre = x·W1ᵀ and post = φ(pre) = leaky_relu(pre, a)² come out of one Triton GEMM epilogue, then
out = post·W2ᵀ. Backward: dW2 = dyᵀ·post; dpre = (dy·W2) ⊙ φ'(pre) in the same kernel's other epilogue
(φ'(p) = 2p for p > 0, 2a²·p otherwise: 0.5p at a = 0.5); dW1 = dpreᵀ·x; dx = dpre·W1. Same math as
LeakyReluSquaredMLP, rounded like it; only the first matmul's (and dy·W2's) summation order differs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from paramgolf.model.kernels import need_triton
from paramgolf.model.layers import CastedLinear
from paramgolf.model.mlp import LeakyReluSquaredMLP

LIBRARY = "paramgolf_kernels"
KERNEL_DTYPES = (torch.bfloat16, torch.float16)  # fp32 stays eager (a Triton dot would round it to TF32)


class FusedLeakyReluSquaredMLP(LeakyReluSquaredMLP):
    """LeakyReluSquaredMLP whose training forward and backward run the Triton kernel on CUDA under bf16/fp16
    autocast; evaluation, GPTQ calibration (eval mode, hooks on fc/proj), the CPU and fp32 run the eager
    module. Select it with `arch/mlp=leaky_relu2_fused`."""

    def forward(self, x: Tensor) -> Tensor:
        dtype = torch.get_autocast_dtype("cuda") if torch.is_autocast_enabled("cuda") else x.dtype
        if not (self.training and x.is_cuda and dtype in KERNEL_DTYPES):
            return super().forward(x)
        w1, w2 = _weight(self.fc), _weight(self.proj)
        # The casts the eager path makes (CastedLinear, then autocast), done here: the op is not autocast-aware.
        x, w1, w2 = x.to(dtype), w1.to(x.dtype).to(dtype), w2.to(x.dtype).to(dtype)
        with torch.autocast("cuda", enabled=False):
            return leaky_relu_squared_mlp(x, w1, w2, self.negative_slope)


def _weight(linear: CastedLinear) -> Tensor:
    """The weight CastedLinear.forward multiplies by: its own, or QAT's transform of it (`weight_fn`)."""
    return linear.weight if linear.weight_fn is None else linear.weight_fn(linear.weight)


def leaky_relu_squared_mlp(x: Tensor, w1: Tensor, w2: Tensor, negative_slope: float) -> Tensor:
    """leaky_relu(x·W1ᵀ, a)²·W2ᵀ for x (…, D), W1 (H, D), W2 (D, H) of one dtype, differentiable:
    the Triton kernel on CUDA for KERNEL_DTYPES, `activation` / `activation_grad` in PyTorch elsewhere."""
    out, _, _ = torch.ops.paramgolf_kernels.leaky_relu_squared_mlp(x.reshape(-1, x.size(-1)), w1, w2, negative_slope)
    return out.view(*x.shape[:-1], out.size(-1))


# -------------------------------------------------------------------------- the math, in PyTorch


def activation(pre: Tensor, negative_slope: float) -> Tensor:
    """φ(pre) = leaky_relu(pre, a)², the eager module's ops."""
    return F.leaky_relu(pre, negative_slope).square()


def activation_grad(dh: Tensor, pre: Tensor, negative_slope: float) -> Tensor:
    """dh ⊙ φ'(pre), rounded as autograd rounds φ's backward: g = dh·(2·leaky(pre)), then ·a where pre ≤ 0."""
    g = dh * (2 * F.leaky_relu(pre, negative_slope))
    return torch.where(pre > 0, g, g * negative_slope)


# -------------------------------------------------------------------------- the op and its autograd


@torch.library.custom_op(f"{LIBRARY}::leaky_relu_squared_mlp", mutates_args=())
def _mlp(x: Tensor, w1: Tensor, w2: Tensor, negative_slope: float) -> tuple[Tensor, Tensor, Tensor]:
    """(out, pre, post); pre and post are what the backward needs."""
    if not x.dtype == w1.dtype == w2.dtype:
        raise ValueError(f"leaky_relu_squared_mlp wants one dtype, got {x.dtype}, {w1.dtype}, {w2.dtype}")
    if x.is_cuda and x.dtype in KERNEL_DTYPES:
        need_triton("the fused MLP (arch/mlp=leaky_relu2_fused)")
        from paramgolf.model.kernels import triton_mlp

        pre, post = triton_mlp.linear_leaky_relu_squared(x, w1, negative_slope)
    else:
        pre = F.linear(x, w1)
        post = activation(pre, negative_slope)
    return F.linear(post, w2), pre, post


@_mlp.register_fake
def _(x: Tensor, w1: Tensor, w2: Tensor, negative_slope: float) -> tuple[Tensor, Tensor, Tensor]:
    hidden = x.new_empty((x.shape[0], w1.shape[0]))
    return x.new_empty((x.shape[0], w2.shape[0])), hidden, torch.empty_like(hidden)


@torch.library.custom_op(f"{LIBRARY}::leaky_relu_squared_mlp_grad_pre", mutates_args=())
def _grad_pre(dy: Tensor, w2: Tensor, pre: Tensor, negative_slope: float) -> Tensor:
    """dpre = (dy·W2) ⊙ φ'(pre)."""
    if dy.is_cuda and dy.dtype in KERNEL_DTYPES:
        from paramgolf.model.kernels import triton_mlp

        return triton_mlp.leaky_relu_squared_grad(dy, w2, pre, negative_slope)
    return activation_grad(dy @ w2, pre, negative_slope)


@_grad_pre.register_fake
def _(dy: Tensor, w2: Tensor, pre: Tensor, negative_slope: float) -> Tensor:
    return torch.empty_like(pre)


def _setup_context(ctx, inputs, output) -> None:
    x, w1, w2, negative_slope = inputs
    _, pre, post = output
    ctx.save_for_backward(x, w1, w2, pre, post)
    ctx.negative_slope = negative_slope


def _backward(ctx, d_out: Tensor, d_pre: Tensor | None, d_post: Tensor | None):
    x, w1, w2, pre, post = ctx.saved_tensors  # pre and post are internal: their gradients are never asked for
    dpre = torch.ops.paramgolf_kernels.leaky_relu_squared_mlp_grad_pre(d_out, w2, pre, ctx.negative_slope)
    return dpre @ w1, dpre.t() @ x, d_out.t() @ post, None


_mlp.register_autograd(_backward, setup_context=_setup_context)
