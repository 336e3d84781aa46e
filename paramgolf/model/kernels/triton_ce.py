"""Triton kernels of the fused softcapped cross-entropy (paramgolf.model.kernels.fused_ce): one program per row.

Imported only when the fused op runs on CUDA. Rows must be contiguous (stride 1 along the vocabulary).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

BLOCK = 1024  # vocabulary columns per step, as in #1787
NUM_WARPS = 4


@triton.jit
def _rows_forward(x_ptr, t_ptr, loss_ptr, lse_ptr, n_cols, row_stride, softcap, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    x_row = x_ptr + row * row_stride
    scale = 2.0 / softcap
    # Online log-sum-exp, one running (max, sum) per lane. z = 2c·σ(·) is never negative, so a
    # running max that starts at 0 is finite from the first step (no −inf − −inf).
    run_max = tl.zeros([BLOCK], dtype=tl.float32)
    run_sum = tl.zeros([BLOCK], dtype=tl.float32)
    for start in range(0, n_cols, BLOCK):
        cols = start + tl.arange(0, BLOCK)
        valid = cols < n_cols
        x = tl.load(x_row + cols, mask=valid, other=0.0).to(tl.float32)
        z = tl.where(valid, 2.0 * softcap * tl.sigmoid(x * scale), 0.0)
        new_max = tl.maximum(run_max, z)
        run_sum = run_sum * tl.exp(run_max - new_max) + tl.where(valid, tl.exp(z - new_max), 0.0)
        run_max = new_max
    row_max = tl.max(run_max, axis=0)
    lse = row_max + tl.log(tl.sum(run_sum * tl.exp(run_max - row_max), axis=0))
    target = tl.load(t_ptr + row)
    z_target = 2.0 * softcap * tl.sigmoid(tl.load(x_row + target).to(tl.float32) * scale)
    tl.store(lse_ptr + row, lse)
    tl.store(loss_ptr + row, lse - z_target)


@triton.jit
def _rows_backward(
    x_ptr, t_ptr, lse_ptr, g_ptr, dx_ptr, n_cols, row_stride, dx_row_stride, softcap, BLOCK: tl.constexpr
):
    row = tl.program_id(0).to(tl.int64)
    x_row = x_ptr + row * row_stride
    dx_row = dx_ptr + row * dx_row_stride
    scale = 2.0 / softcap
    lse = tl.load(lse_ptr + row)
    g = tl.load(g_ptr + row)
    target = tl.load(t_ptr + row)
    for start in range(0, n_cols, BLOCK):
        cols = start + tl.arange(0, BLOCK)
        valid = cols < n_cols
        s = tl.sigmoid(tl.load(x_row + cols, mask=valid, other=0.0).to(tl.float32) * scale)
        p = tl.exp(2.0 * softcap * s - lse)
        p = tl.where(cols == target, p - 1.0, p)
        dx = g * p * (4.0 * s * (1.0 - s))
        tl.store(dx_row + cols, dx.to(dx_ptr.dtype.element_ty), mask=valid)


def forward(logits: torch.Tensor, targets: torch.Tensor, softcap: float) -> tuple[torch.Tensor, torch.Tensor]:
    rows, cols = logits.shape
    losses = torch.empty(rows, device=logits.device, dtype=torch.float32)
    lse = torch.empty_like(losses)
    _rows_forward[(rows,)](
        logits, targets, losses, lse, cols, logits.stride(0), softcap, BLOCK=BLOCK, num_warps=NUM_WARPS
    )
    return losses, lse


def backward(
    logits: torch.Tensor, targets: torch.Tensor, lse: torch.Tensor, grad_losses: torch.Tensor, softcap: float
) -> torch.Tensor:
    rows, cols = logits.shape
    grad = torch.empty_like(logits)
    _rows_backward[(rows,)](
        logits,
        targets,
        lse.contiguous(),
        grad_losses.contiguous(),
        grad,
        cols,
        logits.stride(0),
        grad.stride(0),
        softcap,
        BLOCK=BLOCK,
        num_warps=NUM_WARPS,
    )
    return grad
