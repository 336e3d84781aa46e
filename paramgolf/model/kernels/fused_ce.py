"""Fused softcapped cross-entropy, training only (#1787; the top record #1855 trains with it).

With σ_j = σ(2x_j/c), z_j = 2c·σ_j equals c·tanh(x_j/c) + c, and the constant cancels in the softmax,
so loss = lse(z) − z_y is the CE of the softcapped logits, and
∂loss/∂x_j = g·(softmax(z)_j − 1[j = y])·4σ_j(1 − σ_j). The kernel reads the raw logits once per pass
and never holds the fp32 softcapped logits ([tokens × vocab]) in memory. Off CUDA, and by default,
the eager path runs: c·tanh(x/c), then the fp32 CE (`eager_softcapped_ce`).
"""

from __future__ import annotations

import torch
from torch import Tensor

from paramgolf.errors import UserError
from paramgolf.model.kernels import need_triton
from paramgolf.model.training import lm_loss

LIBRARY = "paramgolf_kernels"
KERNEL_DTYPES = (torch.float32, torch.bfloat16, torch.float16)  # other dtypes take the PyTorch path


def eager_softcapped_ce(logits: Tensor, targets: Tensor, softcap: float) -> Tensor:
    """The eager path: the model's softcap c·tanh(x/c), then the mean fp32 CE (GPT.head_logits + lm_loss)."""
    return lm_loss(softcap * torch.tanh(logits / softcap), targets)


def softcapped_cross_entropy(logits: Tensor, targets: Tensor, softcap: float) -> Tensor:
    """Mean CE of the softcapped raw `logits` (…, vocab) against `targets` (…), targets in [0, vocab).

    The Triton kernel on CUDA, the eager path elsewhere; `training_loss(..., softcapped_ce=this)`.
    """
    if not logits.is_cuda:
        return eager_softcapped_ce(logits, targets, softcap)
    losses, _ = softcapped_ce_rows(logits.reshape(-1, logits.size(-1)), targets.reshape(-1), softcap)
    return losses.mean()


def softcapped_ce_rows(logits: Tensor, targets: Tensor, softcap: float) -> tuple[Tensor, Tensor]:
    """(per-row loss, per-row lse of z) for 2-D `logits`, differentiable: the fused op on any device
    (the Triton kernel on CUDA for KERNEL_DTYPES, `reference_rows` / `reference_grad` elsewhere)."""
    if softcap <= 0:
        raise UserError(f"arch.logit_softcap must be positive for the fused cross-entropy, got {softcap}")
    return torch.ops.paramgolf_kernels.softcapped_ce(logits, targets, float(softcap))


# -------------------------------------------------------------------------- the math, in PyTorch


def reference_rows(logits: Tensor, targets: Tensor, softcap: float) -> tuple[Tensor, Tensor]:
    """What the forward kernel computes, in fp32 (or wider): (lse(z) − z_y, lse(z)) per row, z = 2c·σ(2x/c)."""
    z = 2.0 * softcap * torch.sigmoid(_wide(logits) * (2.0 / softcap))
    lse = torch.logsumexp(z, dim=-1)
    return lse - z.gather(1, targets.long()[:, None]).squeeze(1), lse


def reference_grad(logits: Tensor, targets: Tensor, lse: Tensor, grad_losses: Tensor, softcap: float) -> Tensor:
    """What the backward kernel computes: g·(softmax(z) − onehot(y))·4σ(1 − σ), in the logits' dtype."""
    s = torch.sigmoid(_wide(logits) * (2.0 / softcap))
    p = torch.exp(2.0 * softcap * s - lse[:, None])
    p[torch.arange(p.size(0), device=p.device), targets.long()] -= 1.0
    return (grad_losses.to(s.dtype)[:, None] * p * (4.0 * s * (1.0 - s))).to(logits.dtype)


def _wide(t: Tensor) -> Tensor:
    return t.to(torch.promote_types(t.dtype, torch.float32))


# -------------------------------------------------------------------------- the op and its autograd


@torch.library.custom_op(f"{LIBRARY}::softcapped_ce", mutates_args=())
def _softcapped_ce(logits: Tensor, targets: Tensor, softcap: float) -> tuple[Tensor, Tensor]:
    if logits.ndim != 2 or targets.shape != logits.shape[:1]:
        raise ValueError(
            f"softcapped_ce wants (rows, vocab) logits and (rows,) targets, got {logits.shape}, {targets.shape}"
        )
    if logits.is_cuda and logits.dtype in KERNEL_DTYPES:
        need_triton("the fused cross-entropy (train/fused_ce=triton)")
        from paramgolf.model.kernels import triton_ce

        return triton_ce.forward(logits.contiguous(), targets.contiguous(), softcap)
    return reference_rows(logits, targets, softcap)


@_softcapped_ce.register_fake
def _(logits: Tensor, targets: Tensor, softcap: float) -> tuple[Tensor, Tensor]:
    rows = logits.new_empty(logits.shape[:1], dtype=torch.promote_types(logits.dtype, torch.float32))
    return rows, torch.empty_like(rows)


@torch.library.custom_op(f"{LIBRARY}::softcapped_ce_backward", mutates_args=())
def _softcapped_ce_backward(
    logits: Tensor, targets: Tensor, lse: Tensor, grad_losses: Tensor, softcap: float
) -> Tensor:
    if logits.is_cuda and logits.dtype in KERNEL_DTYPES:
        from paramgolf.model.kernels import triton_ce

        return triton_ce.backward(logits.contiguous(), targets.contiguous(), lse, grad_losses.float(), softcap)
    return reference_grad(logits, targets, lse, grad_losses, softcap)


@_softcapped_ce_backward.register_fake
def _(logits: Tensor, targets: Tensor, lse: Tensor, grad_losses: Tensor, softcap: float) -> Tensor:
    return torch.empty_like(logits)


def _setup_context(ctx, inputs, output) -> None:
    logits, targets, softcap = inputs
    ctx.save_for_backward(logits, targets, output[1])
    ctx.softcap = softcap


def _backward(ctx, grad_losses: Tensor, grad_lse: Tensor | None):
    logits, targets, lse = ctx.saved_tensors  # lse is a by-product: its gradient is never asked for
    return (
        torch.ops.paramgolf_kernels.softcapped_ce_backward(logits, targets, lse, grad_losses, ctx.softcap),
        None,
        None,
    )


_softcapped_ce.register_autograd(_backward, setup_context=_setup_context)
