"""Triton kernel of the fused LeakyReLU² MLP (paramgolf.model.kernels.fused_mlp): a tiled GEMM with two epilogues.

C = A·B with A (M, K) and B (K, N) of any strides, fp32 accumulation, C rounded to the output dtype as
a matmul returns it; then, in the same program,
  forward:  C is pre, and post = leaky_relu(pre, a)² goes to `aux`;
  backward: C is dh = dy·W2, and `aux` holds pre; C becomes dpre = φ'(pre) applied to dh, rounded step by
            step as PyTorch's autograd rounds leaky_relu(·)²'s backward (fused_mlp.activation_grad).
Imported only when the op runs on CUDA.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

BLOCK_M, BLOCK_N, BLOCK_K, GROUP_M = 128, 128, 64, 8
NUM_WARPS = 8
NUM_STAGES = {True: 4, False: 3}  # forward / backward pipeline depth, as in #1530


@triton.jit
def _gemm_leaky_relu_squared(
    a_ptr, b_ptr, c_ptr, aux_ptr,
    M, N, K,
    stride_am, stride_ak, stride_bk, stride_bn, stride_cm, stride_cn,
    negative_slope,
    FORWARD: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
):  # fmt: skip
    # Tiles in groups of GROUP_M rows, so neighbouring programs share B tiles in L2.
    pid = tl.program_id(0)
    tiles_m = tl.cdiv(M, BLOCK_M)
    tiles_n = tl.cdiv(N, BLOCK_N)
    per_group = GROUP_M * tiles_n
    first_m = (pid // per_group) * GROUP_M
    group_m = min(tiles_m - first_m, GROUP_M)
    pid_m = first_m + (pid % per_group) % group_m
    pid_n = (pid % per_group) // group_m

    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    ks = tl.arange(0, BLOCK_K)
    a_ptrs = a_ptr + rows[:, None].to(tl.int64) * stride_am + ks[None, :] * stride_ak
    b_ptrs = b_ptr + ks[:, None] * stride_bk + cols[None, :].to(tl.int64) * stride_bn
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k in range(0, tl.cdiv(K, BLOCK_K)):
        k_left = K - k * BLOCK_K
        a = tl.load(a_ptrs, mask=(rows[:, None] < M) & (ks[None, :] < k_left), other=0.0)
        b = tl.load(b_ptrs, mask=(ks[:, None] < k_left) & (cols[None, :] < N), other=0.0)
        acc = tl.dot(a, b, acc)
        a_ptrs += BLOCK_K * stride_ak
        b_ptrs += BLOCK_K * stride_bk

    out_dtype = c_ptr.dtype.element_ty
    inside = (rows[:, None] < M) & (cols[None, :] < N)
    offsets = rows[:, None].to(tl.int64) * stride_cm + cols[None, :] * stride_cn  # aux has C's layout
    h = acc.to(out_dtype)
    if FORWARD:
        tl.store(c_ptr + offsets, h, mask=inside)
        p = h.to(tl.float32)
        leaky = tl.where(p > 0, p, p * negative_slope).to(out_dtype).to(tl.float32)
        tl.store(aux_ptr + offsets, (leaky * leaky).to(out_dtype), mask=inside)
    else:
        p = tl.load(aux_ptr + offsets, mask=inside, other=0.0).to(tl.float32)
        leaky = tl.where(p > 0, p, p * negative_slope).to(out_dtype).to(tl.float32)
        g = (h.to(tl.float32) * (2.0 * leaky).to(out_dtype).to(tl.float32)).to(out_dtype).to(tl.float32)
        tl.store(c_ptr + offsets, tl.where(p > 0, g, g * negative_slope).to(out_dtype), mask=inside)


def _launch(a: torch.Tensor, b_kn: torch.Tensor, c: torch.Tensor, aux: torch.Tensor, slope: float, forward: bool):
    M, K = a.shape
    N = b_kn.shape[1]
    assert aux.stride() == c.stride(), "aux and C share one layout"
    grid = (triton.cdiv(M, BLOCK_M) * triton.cdiv(N, BLOCK_N),)
    _gemm_leaky_relu_squared[grid](
        a, b_kn, c, aux,
        M, N, K,
        a.stride(0), a.stride(1), b_kn.stride(0), b_kn.stride(1), c.stride(0), c.stride(1),
        slope,
        FORWARD=forward,
        BLOCK_M=BLOCK_M, BLOCK_N=BLOCK_N, BLOCK_K=BLOCK_K, GROUP_M=GROUP_M,
        num_warps=NUM_WARPS, num_stages=NUM_STAGES[forward],
    )  # fmt: skip


def linear_leaky_relu_squared(x: torch.Tensor, w1: torch.Tensor, slope: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(pre, post) = (x·W1ᵀ, leaky_relu(pre, slope)²) for x (M, D) and W1 (H, D)."""
    pre = torch.empty((x.shape[0], w1.shape[0]), device=x.device, dtype=x.dtype)
    post = torch.empty_like(pre)
    _launch(x, w1.t(), pre, post, slope, forward=True)
    return pre, post


def leaky_relu_squared_grad(dy: torch.Tensor, w2: torch.Tensor, pre: torch.Tensor, slope: float) -> torch.Tensor:
    """dpre: the gradient at pre of leaky_relu(pre, slope)²·W2ᵀ given dy (M, D), W2 (D, H), pre (M, H)."""
    dpre = torch.empty((dy.shape[0], w2.shape[1]), device=dy.device, dtype=dy.dtype)
    _launch(dy, w2, dpre, pre.contiguous(), slope, forward=False)
    return dpre
