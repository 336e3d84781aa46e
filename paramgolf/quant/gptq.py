"""GPTQ-lite (a clip search) and full GPTQ (Hessian-based error compensation) for per-row ints.

Both produce int8 codes in [-qmax, qmax] and one fp16 scale per row that the plain per-row
dequantizer (`intn.dequantize_rows`) turns back into the weight the model will use.

* `clip_search` (#549, #754, #1185): for each candidate quantile p of |w| per row (1.0 = the row
  max), scale_r = fp16(max(clip_r / qmax, floor)) and q = clamp(round(w / scale_r)); keep the
  candidate with the lowest reconstruction MSE over the whole tensor (or per row).
* `gptq_quantize` (#1263, after Frantar et al. 2022): with H = mean over calibration batches of
  XᵀX of the layer's inputs, quantize column by column and push each column's rounding error
  onto the columns not yet quantized, weighted by the inverse Hessian, so the layer's *output*
  error ‖XWᵀ − XŴᵀ‖ is what gets minimised. Dead inputs (diag H = 0) are zeroed, H is damped
  by `damp` · mean(diag H), columns are visited in descending diag(H) order (act-order), in
  blocks of `block_size` with a lazy update of the later columns after each block. The scales
  are fixed per row before the sweep, once per clip candidate; like #1263, the candidate with the
  lowest plain weight MSE ‖W − Q·s‖² is kept. With a fixed `scale` (SDClip, #1394/#1855: the
  step from the row's std, T:2163-2165) there is no search: one sweep on that grid.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from paramgolf.errors import UserError
from paramgolf.quant.intn import abs_quantile_rows, qmax, quantize_rows, row_abs_max, row_scales

CANDIDATES = (0.999, 0.9995, 0.9999, 0.99999, 1.0)


def _clip(w: Tensor, p: float) -> Tensor:
    return row_abs_max(w) if p >= 1.0 else abs_quantile_rows(w, p)


def clip_search(
    w: Tensor,
    bits: int,
    quantiles: Sequence[float] = CANDIDATES,
    scale_floor: float | None = None,
    per_row: bool = False,
) -> tuple[Tensor, Tensor, dict[str, Any]]:
    """GPTQ-lite: the clip quantile with the lowest reconstruction MSE; (codes, fp16 scales, info)."""
    w = w.float()
    best_q = best_s = best_err = None
    choice = None
    for p in quantiles:
        scale = row_scales(_clip(w, p), bits, scale_floor)
        q = quantize_rows(w, scale, bits)
        err = (w - q.float() * scale.float()[:, None]).pow(2).sum(dim=1)  # per row
        if best_err is None:
            best_q, best_s, best_err = q, scale, err
            choice = torch.full((w.shape[0],), p) if per_row else p
            continue
        if per_row:
            better = err < best_err
            best_q = torch.where(better[:, None], q, best_q)
            best_s = torch.where(better, scale, best_s)
            best_err = torch.where(better, err, best_err)
            choice = torch.where(better, torch.full_like(choice, p), choice)
        elif float(err.sum()) < float(best_err.sum()):
            best_q, best_s, best_err, choice = q, scale, err, p
    mse = float(best_err.sum()) / max(w.numel(), 1)
    info: dict[str, Any] = {"mse": mse}
    if per_row:
        info["quantiles_used"] = sorted({float(x) for x in choice.tolist()})
    else:
        info["quantile"] = float(choice)
    return best_q, best_s, info


def _inverse_hessian_factor(H: Tensor, damp: float) -> tuple[Tensor, float]:
    """Upper Cholesky factor of (H + λI)⁻¹ in float64; λ grows ×10 until H is positive definite."""
    H = H.double()
    mean_diag = float(torch.diagonal(H).mean()) or 1.0
    lam = damp * mean_diag
    eye = torch.eye(H.shape[0], dtype=H.dtype)
    for _ in range(6):
        L, bad = torch.linalg.cholesky_ex(H + max(lam, 1e-6 * mean_diag) * eye)
        if not int(bad):
            Hinv = torch.cholesky_inverse(L)
            U, bad = torch.linalg.cholesky_ex(Hinv, upper=True)
            if not int(bad):
                return U, lam
        lam = max(lam, 1e-6 * mean_diag) * 10
    raise UserError(
        "GPTQ: the Hessian is not positive definite even with 10^5 × the damping; "
        "check the calibration activations (NaN or all-zero inputs?)"
    )


def _gptq_sweep(W: Tensor, U: Tensor, scale: Tensor, m: int, block_size: int) -> Tensor:
    """Codes of W (columns already in processing order) with error feedback through U."""
    W = W.clone()
    rows, cols = W.shape
    Q = torch.zeros_like(W)
    s = scale.double()
    for i1 in range(0, cols, block_size):
        i2 = min(i1 + block_size, cols)
        W1 = W[:, i1:i2].clone()
        E1 = torch.zeros_like(W1)
        U1 = U[i1:i2, i1:i2]
        for j in range(i2 - i1):
            w = W1[:, j]
            q = torch.clamp(torch.round(w / s), -m, m)
            Q[:, i1 + j] = q
            e = (w - q * s) / U1[j, j]
            W1[:, j:] -= e[:, None] * U1[j, j:][None, :]
            E1[:, j] = e
        W[:, i2:] -= E1 @ U[i1:i2, i2:]
    return Q


def gptq_quantize(
    w: Tensor,
    H: Tensor,
    bits: int,
    *,
    block_size: int = 128,
    damp: float = 0.01,
    act_order: bool = True,
    quantiles: Sequence[float] = CANDIDATES,
    scale_floor: float | None = None,
    scale: Tensor | None = None,
) -> tuple[Tensor, Tensor, dict[str, Any]]:
    """Full GPTQ of W [rows, cols] with input Hessian H [cols, cols]; (codes, fp16 scales, info).

    `scale`: fixed stored per-row scales (e.g. `intn.sdclip_scales`) instead of the clip search."""
    assert w.dim() == 2 and H.shape == (w.shape[1], w.shape[1]), (
        f"GPTQ: weight {tuple(w.shape)} needs a Hessian of shape ({w.shape[1]}, {w.shape[1]}), got {tuple(H.shape)}"
    )
    if not bool(torch.isfinite(H).all()):
        raise UserError("GPTQ: the Hessian has NaN or inf entries")
    m = qmax(bits)
    W0 = w.float()
    W = W0.double().clone()
    H = H.double().clone()
    dead = torch.diagonal(H) == 0
    H[dead, dead] = 1.0
    W[:, dead] = 0.0
    perm = torch.argsort(torch.diagonal(H), descending=True) if act_order else torch.arange(H.shape[0])
    inv = torch.argsort(perm)
    U, lam = _inverse_hessian_factor(H[perm][:, perm], damp)
    best = None
    grids = [(None, scale)] if scale is not None else [(p, None) for p in quantiles]
    for p, s in grids:
        s = row_scales(_clip(W0, p), bits, scale_floor) if s is None else s  # from the unpermuted weights
        Q = _gptq_sweep(W[:, perm], U, s.double(), m, block_size)[:, inv]
        err = float((W0.double() - Q * s.double()[:, None]).pow(2).sum())
        if best is None or err < best[0]:
            best = (err, p, Q, s)
    err, p, Q, scale = best
    info = {
        **({"quantile": float(p)} if p is not None else {"clip": "fixed scale"}),
        "mse": err / max(w.numel(), 1),
        "damp": lam,
        "dead_columns": int(dead.sum()),
        "act_order": act_order,
    }
    return Q.to(torch.int8), scale, info
