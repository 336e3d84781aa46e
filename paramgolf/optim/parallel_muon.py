"""Parallel Muon: Muon over parameter banks, sharded across ranks (records #549/#754/#1185).

Same math as `Muon`, organised for 8 GPUs:

* **Banking.** Within each parameter group, matrices of one shape (and dtype/device) form a
  bank, e.g. the 11 layers' c_q and attn.proj (22 × 512 × 512) or their MLP up matrices
  (11 × 1536 × 512). The records store such banks as 3-D parameters; here the model keeps its
  per-layer matrices and the optimizer stacks their gradients, so every other part of paramgolf
  (names, quantization, budget) is untouched. Newton–Schulz runs batched over a bank.
* **Sharding.** A bank is zero-padded along its first dim to a multiple of the world size. Its
  gradient is reduce-scattered (summed, then divided by the world size), so each rank receives
  the averaged gradient of its own slices only; it keeps the momentum of those slices, runs
  Newton–Schulz on them, and all-gathers the updates. Padded slots hold zeros and give zero
  updates. This replaces the runner's gradient all-reduce for banked parameters
  (`syncs_own_grads`).
* **Overlap.** `launch_grad_sync()` starts every bank's reduce-scatter asynchronously (biggest
  first) right after backward; the runner all-reduces the other gradients and Adam steps while
  they are in flight. In `step()` bank k's update all-gather is in flight while bank k+1's
  Newton–Schulz runs.

One process takes the same path (a world of one: no padding, no communication), which is why
banked Muon equals the per-matrix `Muon` loop exactly on CPU.

If the process group's backend lacks reduce-scatter or all-gather into a tensor, `comm="auto"`
falls back to all-reduce (same sums, more traffic) and says so once in the log.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.distributed as dist
from torch import Tensor

from paramgolf.errors import UserError
from paramgolf.optim.muon import Muon, muon_shape_scale

log = logging.getLogger("paramgolf")

COMM_MODES = ("auto", "reduce_scatter", "all_reduce")


@dataclass
class Bank:
    """Same-shaped matrices of one param group, updated as one 3-D stack."""

    group: dict[str, Any]
    params: list[Tensor]
    padded: int = 0  # bank size rounded up to a multiple of the world size
    per_rank: int = 0
    shard: Tensor | None = None  # this rank's averaged gradient slices [per_rank, rows, cols]
    _full: Tensor | None = None  # stacked local gradients (reduce-scatter input)
    _gathered: Tensor | None = None  # every rank's updates [padded, rows, cols]
    _rs: Any = None  # pending reduce-scatter work handle
    _ag: Any = None  # pending all-gather work handle
    _rs_all_reduce: bool = False  # the reduce-scatter ran as an all-reduce: slice after waiting

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.params[0].shape)

    @property
    def numel(self) -> int:
        return len(self.params) * self.params[0].numel()


class ParallelMuon(Muon):
    """Muon whose matrices are banked by shape and whose Newton–Schulz work is sharded by rank.

    Takes the same arguments as `Muon` (MuonEq-R normalises the rows of each matrix of a bank), plus
    `comm`: "auto" (reduce-scatter/all-gather, falling back to all-reduce where the backend lacks
    them), "reduce_scatter" (never fall back) or "all_reduce" (always the fallback). Each rank's
    state holds the momentum of its own slices only, under the bank's first parameter ("bank_momentum").
    """

    syncs_own_grads = True

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
        comm: str = "auto",
    ) -> None:
        super().__init__(
            params, lr, momentum, backend_steps, nesterov, weight_decay, ns_dtype, row_normalize, ns_coefficients
        )
        if comm not in COMM_MODES:
            raise UserError(f"optimizer.muon.comm={comm!r} is not one of {', '.join(COMM_MODES)}")
        self.comm = comm
        self.banks: list[Bank] = []
        for group in self.param_groups:
            by_key: dict[tuple, Bank] = {}
            for p in group["params"]:
                key = (tuple(p.shape), p.dtype, p.device)
                if key not in by_key:
                    by_key[key] = Bank(group, [])
                    self.banks.append(by_key[key])
                by_key[key].params.append(p)
        # Biggest bank first: its communication starts earliest and overlaps the most.
        self.banks.sort(key=lambda b: -b.numel)
        self._launched = False
        self._fallback_said: set[str] = set()

    # ------------------------------------------------------------------ topology
    @staticmethod
    def _world() -> tuple[int, int]:
        if dist.is_available() and dist.is_initialized():
            return dist.get_world_size(), dist.get_rank()
        return 1, 0

    def bank_summary(self) -> list[dict[str, Any]]:
        """One row per bank: shape, matrices, padded size for the current world, slices per rank."""
        ws, _ = self._world()
        rows = []
        for b in self.banks:
            padded = -(-len(b.params) // ws) * ws
            rows.append(
                {
                    "group": b.group.get("name", ""),
                    "shape": b.shape,
                    "matrices": len(b.params),
                    "padded": padded,
                    "per_rank": padded // ws,
                }
            )
        return rows

    def _use_fallback(self, what: str) -> bool:
        if self.comm == "all_reduce":
            return True
        if self.comm == "reduce_scatter":
            return False
        return what in self._fallback_said

    def _note_fallback(self, what: str, exc: Exception) -> None:
        if self.comm == "reduce_scatter":
            raise RuntimeError(
                f"Parallel Muon: the {dist.get_backend()} backend cannot run {what} ({exc}); "
                f"set optimizer.muon.comm=auto to fall back to all_reduce"
            ) from exc
        if what not in self._fallback_said:
            self._fallback_said.add(what)
            log.warning(
                "Parallel Muon: the %s backend lacks %s (%s: %s); using all_reduce instead (same sums, more traffic)",
                dist.get_backend(),
                what,
                type(exc).__name__,
                exc,
            )

    # ------------------------------------------------------------------ gradients
    @torch.no_grad()
    def launch_grad_sync(self) -> None:
        """Stack each bank's local gradients and start its (async) reduce-scatter."""
        if self._launched:
            return
        ws, rank = self._world()
        for b in self.banks:
            missing = [i for i, p in enumerate(b.params) if p.grad is None]
            if missing:
                raise UserError(
                    f"Parallel Muon: a banked parameter of shape {b.shape} has no gradient (slot {missing[0]}); "
                    f"every parameter under a Muon rule must take part in the loss, or route it to another rule"
                )
            b.padded = -(-len(b.params) // ws) * ws
            b.per_rank = b.padded // ws
            grads = [p.grad for p in b.params]
            full = torch.zeros((b.padded, *b.shape), dtype=grads[0].dtype, device=grads[0].device)
            torch.stack(grads, out=full[: len(grads)])
            b._full = full
            b._rs_all_reduce = False
            if ws == 1:
                b.shard, b._rs = full, None
                continue
            b.shard = torch.empty((b.per_rank, *b.shape), dtype=full.dtype, device=full.device)
            if not self._use_fallback("reduce_scatter_tensor"):
                try:
                    b._rs = dist.reduce_scatter_tensor(b.shard, full, op=dist.ReduceOp.SUM, async_op=True)
                    continue
                except (RuntimeError, NotImplementedError, ValueError) as exc:
                    self._note_fallback("reduce_scatter_tensor", exc)
            b._rs = dist.all_reduce(full, op=dist.ReduceOp.SUM, async_op=True)
            b._rs_all_reduce = True
        self._launched = True

    def _wait_grad(self, b: Bank) -> Tensor:
        """This rank's averaged gradient slices of bank b (waits for its reduce-scatter)."""
        if b._rs is not None:
            b._rs.wait()
            b._rs = None
            ws, rank = self._world()
            if b._rs_all_reduce:
                b.shard = b._full[rank * b.per_rank : (rank + 1) * b.per_rank]
            b.shard.div_(ws)
        return b.shard

    @torch.no_grad()
    def shard_grad_norms(self) -> list[Tensor]:
        """Norms of the averaged gradient of every matrix this rank owns (padding adds zeros)."""
        self.launch_grad_sync()
        return [torch.linalg.vector_norm(self._wait_grad(b).float(), dim=(-2, -1)) for b in self.banks]

    @torch.no_grad()
    def scale_shard_grads(self, coef: Tensor | float) -> None:
        """Multiply the averaged gradient slices this rank owns (global grad-norm clipping)."""
        for b in self.banks:
            self._wait_grad(b).mul_(coef)

    def owned_params(self) -> list[Tensor]:
        return [p for b in self.banks for p in b.params]

    # ------------------------------------------------------------------ update
    def _bank_update(self, b: Bank) -> Tensor:
        """Momentum + Newton–Schulz on this rank's slices; returns them scaled, in ns_dtype."""
        g = self._wait_grad(b)
        group = b.group
        state = self.state[b.params[0]]
        buf = state.get("bank_momentum")
        if buf is None or buf.shape != g.shape:
            buf = state["bank_momentum"] = torch.zeros_like(g)
        m = group["momentum"]
        buf.mul_(m).add_(g)
        u = g.add(buf, alpha=m) if group["nesterov"] else buf
        return self._orthogonal_update(u, group) * muon_shape_scale(b.params[0])

    def _start_gather(self, b: Bank, upd: Tensor) -> None:
        ws, rank = self._world()
        if ws == 1:
            b._gathered, b._ag = upd, None
            return
        gathered = torch.empty((b.padded, *b.shape), dtype=upd.dtype, device=upd.device)
        upd = upd.contiguous()
        if not self._use_fallback("all_gather_into_tensor"):
            try:
                b._ag = dist.all_gather_into_tensor(gathered, upd, async_op=True)
                b._gathered = gathered
                return
            except (RuntimeError, NotImplementedError, ValueError) as exc:
                self._note_fallback("all_gather_into_tensor", exc)
        gathered.zero_()
        gathered[rank * b.per_rank : (rank + 1) * b.per_rank] = upd
        b._ag = dist.all_reduce(gathered, op=dist.ReduceOp.SUM, async_op=True)  # x + 0 + … + 0 = x exactly
        b._gathered = gathered

    def _apply(self, b: Bank) -> None:
        if b._ag is not None:
            b._ag.wait()
            b._ag = None
        lr, wd = b.group["lr"], b.group["weight_decay"]
        for i, p in enumerate(b.params):
            if wd != 0.0:
                p.mul_(1.0 - lr * wd)  # decoupled weight decay, before the update
            p.add_(b._gathered[i].to(p.dtype), alpha=-lr)
        b._gathered = b._full = b.shard = None

    @torch.no_grad()
    def step(self, closure: Callable[[], Tensor] | None = None) -> Tensor | None:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        self.launch_grad_sync()
        previous: Bank | None = None
        for b in self.banks:
            self._start_gather(b, self._bank_update(b))
            if previous is not None:
                self._apply(previous)  # bank k's gather ran during bank k+1's Newton–Schulz
            previous = b
        if previous is not None:
            self._apply(previous)
        self._launched = False
        return loss

    def zero_grad(self, set_to_none: bool = True) -> None:
        super().zero_grad(set_to_none=set_to_none)
        self._launched = False
        for b in self.banks:
            b._full = b.shard = b._gathered = b._rs = b._ag = None
