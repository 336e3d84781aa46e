"""LQER (asymmetric): a low-rank correction of the largest GPTQ quantization errors (#1797, #1855).

After quantization, each candidate tensor (rule with GPTQ) has the residual E = W − Q·s. The
`top_k` tensors with the largest ‖E‖_F (over the whole model) get a rank-`rank` correction from
the truncated SVD E ≈ U S Vh: A = U[:, :r]·diag(S[:r]) [rows, r] and B = Vh[:r] [r, cols], both
stored as small integers without zero-point (#1855 T:2197-2217, T:2264-2295):

* A: INT2, one fp16 scale for the matrix, s_A = max|A| / 1.5, q_A = clamp(round(A / s_A), −2, 1);
* B: INT4, one fp16 scale per `group` consecutive elements of the flattened B,
  s_g = max|g| / 7.5, q_B = clamp(round(B / s_g), −8, 7).

The reader restores W ≈ Q·s + (q_A·s_A)(q_B·s_B) (T:2330-2344). The factors ride on the tensor's
`intn_row` record as the parts below, declared by its `lqer_rank` / `lqer_group` metadata.
(Where group does not divide r·cols, the last group is shorter; #1855 falls back to a symmetric
per-row pack there, which is not reproduced.)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from paramgolf.errors import UserError

A_RANGE = (-2, 1)  # INT2 codes of A
B_RANGE = (-8, 7)  # INT4 codes of B
A_DIVISOR, B_DIVISOR = 1.5, 7.5  # max|x| / divisor: the scale
PARTS = ("lqer_a", "lqer_a_scale", "lqer_b", "lqer_b_scale")
_EPS = 1e-10


@dataclass
class LQER:
    """Which tensors get a correction (`top_k` largest ‖E‖_F) and its shape (`rank`, B's `group`)."""

    rank: int = 4
    top_k: int = 3
    group: int = 64

    def __post_init__(self) -> None:
        for key in ("rank", "top_k", "group"):
            if int(getattr(self, key)) < 1:
                raise UserError(f"quant.quantizer.lqer.{key}={getattr(self, key)} must be ≥ 1")


def lqer_factors(E: Tensor, rank: int, group: int) -> dict[str, Tensor]:
    """The stored parts of the rank-`rank` correction of the residual E [rows, cols]."""
    U, S, Vh = torch.linalg.svd(E.float(), full_matrices=False)
    r = min(rank, S.numel())
    A = (U[:, :r] * S[:r]).contiguous()
    B = Vh[:r].contiguous()
    a_scale = (A.abs().amax().clamp_min(_EPS) / A_DIVISOR).to(torch.float16).reshape(1)
    qa = torch.clamp(torch.round(A / a_scale.float()), *A_RANGE).to(torch.int8)
    flat = B.reshape(-1)
    groups = -(-flat.numel() // group)
    padded = torch.cat([flat, flat.new_zeros(groups * group - flat.numel())]).view(groups, group)
    b_scale = (padded.abs().amax(dim=1).clamp_min(_EPS) / B_DIVISOR).to(torch.float16)
    qb = torch.clamp(torch.round(flat / _per_element(b_scale, group, flat.numel())), *B_RANGE)
    return {"lqer_a": qa, "lqer_a_scale": a_scale, "lqer_b": qb.to(torch.int8).view(B.shape), "lqer_b_scale": b_scale}


def _per_element(scale: Tensor, group: int, n: int) -> Tensor:
    return scale.float().repeat_interleave(group)[:n]


def lqer_correction(parts: dict[str, Tensor], rows: int, cols: int, group: int) -> Tensor:
    """(q_A·s_A)(q_B·s_B) [rows, cols] from stored parts, after checking their shapes and code ranges."""
    missing = [p for p in PARTS if p not in parts]
    if missing:
        raise UserError(f"lqer: record declares a correction but lacks its parts {missing}")
    qa, sa, qb, sb = (parts[p] for p in PARTS)
    r = qa.shape[1] if qa.dim() == 2 else -1
    if qa.dim() != 2 or qa.shape[0] != rows or tuple(qb.shape) != (r, cols) or sa.numel() != 1 or group < 1:
        raise UserError(f"lqer: factor shapes A {tuple(qa.shape)}, B {tuple(qb.shape)} do not fit [{rows}, {cols}]")
    if sb.numel() != -(-qb.numel() // group):
        raise UserError(f"lqer: {sb.numel()} B scales for {qb.numel()} codes in groups of {group}")
    for name, q, (lo, hi) in (("A", qa, A_RANGE), ("B", qb, B_RANGE)):
        if q.numel() and (int(q.min()) < lo or int(q.max()) > hi):
            raise UserError(f"lqer: a code of {name} is outside [{lo}, {hi}]")
    A = qa.float() * sa.float().reshape(())
    B = (qb.float().reshape(-1) * _per_element(sb, group, qb.numel())).view(qb.shape)
    return A @ B
