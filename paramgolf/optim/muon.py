"""Muon: momentum SGD whose update matrix is orthogonalised by a Newton–Schulz iteration.

The optimizer of the official naive baseline (borrowed there from modded-nanogpt; background:
https://kellerjordan.github.io/posts/muon/). Gradients must already be averaged across ranks
when `step()` runs; under torch.distributed the orthogonalisation work is shared out
(parameter i on rank i % world_size) and the updates are summed back with one all-reduce.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, Literal

import torch
import torch.distributed as dist
from torch import Tensor

from paramgolf.errors import UserError

# Quintic coefficients of the official baseline: chosen to push every singular value of a
# normalised matrix towards ~1 as fast as possible, not to converge exactly. Used at every step.
NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)

# Polar Express (PR #1344, in the top record #1855): one minimax-optimal (a, b, c) per step, so the
# first steps grow small singular values fast and the last ones settle them near 1.
POLAR_EXPRESS_COEFFICIENTS = (
    (8.156554524902461, -22.48329292557795, 15.878769915207462),
    (4.042929935166739, -2.808917465908714, 0.5000178451051316),
    (3.8916678022926607, -2.772484153217685, 0.5060648178503393),
    (3.285753657755655, -2.3681294933425376, 0.46449024233003106),
    (2.3465413258596377, -1.7097828382687081, 0.42323551169305323),
)

NS_KINDS = ("standard", "polar_express")


def newton_schulz_coefficients(kind: str, steps: int) -> tuple[tuple[float, float, float], ...]:
    """The (a, b, c) of each of `steps` Newton–Schulz steps: "standard" repeats one tuple,
    "polar_express" takes the first `steps` of its 5 (the record runs 5)."""
    if kind == "standard":
        return (NS_COEFFICIENTS,) * steps
    if kind == "polar_express":
        if steps > len(POLAR_EXPRESS_COEFFICIENTS):
            raise UserError(
                f"optimizer.muon_backend_steps={steps}: Polar Express has {len(POLAR_EXPRESS_COEFFICIENTS)} "
                f"per-step coefficient tuples (the record's code silently runs 5 when asked for more); "
                f"set muon_backend_steps <= {len(POLAR_EXPRESS_COEFFICIENTS)}"
            )
        return POLAR_EXPRESS_COEFFICIENTS[:steps]
    raise UserError(f"optimizer.muon.ns_coefficients={kind!r} is not one of {', '.join(NS_KINDS)}")


def zeropower_via_newtonschulz5(
    G: Tensor,
    steps: int = 5,
    eps: float = 1e-7,
    dtype: torch.dtype = torch.bfloat16,
    coefficients: str = "standard",
) -> Tensor:
    """Approximate U V^T of G = U S V^T (the nearest semi-orthogonal matrix) in `dtype`.

    G is one matrix [rows, cols] or a batch [..., rows, cols] (each matrix treated alone, as
    parameter banks need). `coefficients`: "standard" (singular values of the result land roughly
    in [0.7, 1.2], not at 1) or "polar_express" (per-step tuples, closer to 1); see
    `newton_schulz_coefficients`.
    """
    assert G.ndim >= 2, f"Newton–Schulz needs a matrix or a batch of matrices, got shape {tuple(G.shape)}"
    X = G.to(dtype)
    # Iterate on the wide orientation so X @ X^T is the smaller Gram matrix.
    transposed = G.size(-2) > G.size(-1)
    if transposed:
        X = X.mT
    # Frobenius normalisation puts every singular value in [0, 1], inside NS's basin.
    X = X / (X.norm(dim=(-2, -1), keepdim=True) + eps)
    for a, b, c in newton_schulz_coefficients(coefficients, steps):
        A = X @ X.mT
        B = b * A + (c * A) @ A
        X = a * X + B @ X
    return X.mT if transposed else X


def row_normalize(u: Tensor, eps: float = 1e-7) -> Tensor:
    """MuonEq-R (#1217/#1260): each row of u divided by max(‖row‖₂, eps), the norm taken over the last
    dim (`in` of [out, in], and of every matrix of a bank [B, out, in]) in fp32."""
    norms = u.float().norm(dim=-1, keepdim=True).clamp_min(eps)
    return u / norms.to(u.dtype)


def muon_shape_scale(p: Tensor) -> float:
    """sqrt(max(1, rows / cols)): keeps the update's RMS comparable for tall matrices."""
    return max(1.0, p.size(-2) / p.size(-1)) ** 0.5


class Muon(torch.optim.Optimizer):
    """Nesterov momentum whose update is orthogonalised, then scaled by sqrt(max(1, rows/cols)).

    Per step and parameter: buf = momentum * buf + g; u = g + momentum * buf (Nesterov) or buf;
    u = row_normalize(u) if `row_normalize` (MuonEq-R); u = NS5(u) * sqrt(max(1, rows/cols));
    p *= 1 - lr * weight_decay; p -= lr * u.
    Every group may set its own lr, momentum, backend_steps, nesterov, weight_decay, ns_dtype.
    `row_normalize` and `ns_coefficients` ("standard" | "polar_express") hold for every group.

    `orthogonalize` is the Newton–Schulz function used by `step()`; a runner may replace it by a
    compiled copy (`muon.orthogonalize = torch.compile(zeropower_via_newtonschulz5)`).
    """

    # The runner all-reduces gradients of this optimizer's parameters before step(). An
    # optimizer that synchronises its own gradients (Parallel Muon) sets this to True.
    syncs_own_grads: bool = False

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float,
        momentum: float = 0.95,
        backend_steps: int = 5,
        nesterov: bool = True,
        weight_decay: float = 0.0,
        ns_dtype: torch.dtype = torch.bfloat16,
        row_normalize: bool = False,
        ns_coefficients: Literal["standard", "polar_express"] = "standard",
    ) -> None:
        if lr < 0.0:
            raise UserError(f"Muon: lr must be >= 0, got {lr}")
        if not 0.0 <= momentum < 1.0:
            raise UserError(f"Muon: momentum must be in [0, 1), got {momentum}")
        if backend_steps < 1:
            raise UserError(f"Muon: backend_steps must be >= 1, got {backend_steps}")
        defaults = dict(
            lr=lr,
            momentum=momentum,
            backend_steps=backend_steps,
            nesterov=nesterov,
            weight_decay=weight_decay,
            ns_dtype=ns_dtype,
        )
        super().__init__(params, defaults)
        for group in self.param_groups:
            for p in group["params"]:
                if p.ndim < 2:
                    raise UserError(
                        f"Muon only updates matrices (ndim >= 2); got a parameter of shape "
                        f"{tuple(p.shape)}. Route it to Adam with a parameter rule."
                    )
            newton_schulz_coefficients(ns_coefficients, group["backend_steps"])  # a bad name or step count raises here
        self.row_normalize = row_normalize
        self.ns_coefficients = ns_coefficients
        self.orthogonalize: Callable[..., Tensor] = zeropower_via_newtonschulz5

    def _update_for(self, p: Tensor, group: dict[str, Any]) -> Tensor:
        """Advance p's momentum buffer and return its orthogonalised, shape-scaled update."""
        g = p.grad
        state = self.state[p]
        if "momentum_buffer" not in state:
            state["momentum_buffer"] = torch.zeros_like(g)
        buf = state["momentum_buffer"]
        momentum = group["momentum"]
        buf.mul_(momentum).add_(g)
        u = g.add(buf, alpha=momentum) if group["nesterov"] else buf
        return self._orthogonal_update(u, group) * muon_shape_scale(p)

    def _orthogonal_update(self, u: Tensor, group: dict[str, Any]) -> Tensor:
        """(Row-normalised, if set) Newton–Schulz of the momentum update u: a matrix or a bank of them."""
        if self.row_normalize:
            u = row_normalize(u)
        return self.orthogonalize(
            u, steps=group["backend_steps"], dtype=group["ns_dtype"], coefficients=self.ns_coefficients
        )

    @torch.no_grad()
    def step(self, closure: Callable[[], Tensor] | None = None) -> Tensor | None:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()

        distributed = dist.is_available() and dist.is_initialized()
        world_size = dist.get_world_size() if distributed else 1
        rank = dist.get_rank() if distributed else 0

        for group in self.param_groups:
            params: list[Tensor] = group["params"]
            if not params:
                continue
            # One flat buffer per group: each rank fills the slices it owns and zeros elsewhere,
            # so a SUM all-reduce hands every rank every update. One process takes the same
            # path (and the same rounding to ns_dtype) so results match across world sizes.
            updates = torch.zeros(sum(p.numel() for p in params), device=params[0].device, dtype=group["ns_dtype"])
            offset = 0
            for i, p in enumerate(params):
                if i % world_size == rank and p.grad is not None:
                    updates[offset : offset + p.numel()] = self._update_for(p, group).reshape(-1)
                offset += p.numel()

            if distributed:
                dist.all_reduce(updates, op=dist.ReduceOp.SUM)

            lr, wd = group["lr"], group["weight_decay"]
            offset = 0
            for p in params:
                if wd != 0.0:
                    p.mul_(1.0 - lr * wd)  # decoupled weight decay, before the update
                p.add_(updates[offset : offset + p.numel()].view_as(p).to(p.dtype), alpha=-lr)
                offset += p.numel()

        return loss
