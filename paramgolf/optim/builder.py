"""OptimizerSet: one Muon and one AdamW fed by parameter rules, stepped as one optimizer.

Hydra config (conf/optimizer): `_target_: paramgolf.optim.builder.build_optimizer`,
`_partial_: true`; the runner calls `partial(model.named_parameters())`.

Per training step the runner: `begin_step()` right after backward (shared-core gradient
scaling; Parallel Muon starts its reduce-scatters), all-reduces the gradients of every
trainable parameter not in `self_synced_params()` (multi-process), `set_lr_scale(schedule(...))`,
`set_muon_momentum(momentum_at(step))`, `set_muon_wd_scale(muon_wd_scale_at(training fraction))`,
`clip_grad_norm()`, `step()`, `zero_grad()`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from paramgolf.errors import UserError
from paramgolf.optim.groups import ParamRule, as_rule, assign_params, assignment_summary
from paramgolf.optim.muon import Muon
from paramgolf.optim.schedules import momentum_warmup, wd_taper_scale


class OptimizerSet:
    """Muon for the `muon` rules and AdamW for the `adam` rules, one param group per rule.

    Every group keeps its rule's lr as `base_lr`; `set_lr_scale` sets lr = base_lr * scale.
    AdamW with weight_decay 0 is exactly Adam (the official baseline); a rule's weight_decay
    is decoupled (p *= 1 - lr * wd) on both optimizers. Parameters with requires_grad=False are
    left out. Rules that take nothing appear in `param_groups_summary()` with num_tensors 0.

    `grad_scale` maps parameter names to a gradient multiplier applied in `begin_step()` before
    any sync or clipping: depth recurrence's shared cores get 1/uses there when a preset asks for
    it (#537 halves core 0, which runs twice), which also lowers their share of the clip norm.

    `muon_wd_taper_start` (a training fraction, or None for no taper): the Muon groups' weight decay
    is the rule's times `wd_taper_scale` (#1729): 1 up to that fraction, then linear down to
    `muon_wd_taper_final_mul` at the end of training. The AdamW groups keep theirs.
    """

    def __init__(
        self,
        named_params: Iterable[tuple[str, Tensor]],
        rules: Sequence[ParamRule | Mapping],
        *,
        muon_momentum: float = 0.95,
        muon_backend_steps: int = 5,
        muon_nesterov: bool = True,
        muon_momentum_warmup_start: float = 0.85,
        muon_momentum_warmup_steps: int = 500,
        muon_ns_dtype: torch.dtype = torch.bfloat16,
        muon_wd_taper_start: float | None = None,
        muon_wd_taper_final_mul: float = 0.5,
        adam_betas: Sequence[float] = (0.9, 0.95),
        adam_eps: float = 1e-8,
        grad_clip_norm: float = 0.0,
        muon_class: Callable[..., Muon] = Muon,
        grad_scale: Mapping[str, float] | None = None,
        roles: Mapping[str, str] | None = None,
    ) -> None:
        if len(adam_betas) != 2:
            raise UserError(f"optimizer.adam_betas must hold two numbers (beta1, beta2), got {list(adam_betas)}")
        if grad_clip_norm < 0:
            raise UserError(f"optimizer.grad_clip_norm must be >= 0 (0 disables clipping), got {grad_clip_norm}")
        if muon_wd_taper_start is not None and not 0.0 <= muon_wd_taper_start < 1.0:
            raise UserError(
                f"optimizer.muon_wd_taper_start={muon_wd_taper_start} must be a training fraction in [0, 1), "
                f"or null for no taper"
            )
        if muon_wd_taper_final_mul < 0.0:
            raise UserError(f"optimizer.muon_wd_taper_final_mul={muon_wd_taper_final_mul} must be >= 0")
        self.rules = [as_rule(r) for r in rules]
        trainable = [(n, p) for n, p in named_params if p.requires_grad]
        names = {n for n, _ in trainable}
        unknown = sorted(set(grad_scale or {}) - names)
        if unknown:
            raise RuntimeError(f"grad_scale names parameters the model does not train: {unknown[:5]}")
        by_name = dict(trainable)
        self.grad_scale: list[tuple[Tensor, float]] = [
            (by_name[n], float(f)) for n, f in (grad_scale or {}).items() if float(f) != 1.0
        ]
        assigned = assign_params(trainable, self.rules, roles)
        self._summary = assignment_summary(self.rules, assigned)
        self.muon_momentum = muon_momentum
        self.muon_momentum_warmup_start = muon_momentum_warmup_start
        self.muon_momentum_warmup_steps = muon_momentum_warmup_steps
        self.muon_wd_taper_start = muon_wd_taper_start
        self.muon_wd_taper_final_mul = muon_wd_taper_final_mul
        self.grad_clip_norm = grad_clip_norm
        self.params: list[Tensor] = [p for members in assigned.values() for _, p in members]

        def groups_for(optimizer: str) -> list[dict[str, Any]]:
            return [
                dict(
                    params=[p for _, p in assigned[r.name]],
                    lr=r.lr,
                    base_lr=r.lr,
                    weight_decay=r.weight_decay,
                    name=r.name,
                )
                for r in self.rules
                if r.optimizer == optimizer and assigned[r.name]
            ]

        muon_groups, adam_groups = groups_for("muon"), groups_for("adam")
        self.muon: Muon | None = None
        if muon_groups:
            self.muon = muon_class(
                muon_groups,
                lr=muon_groups[0]["lr"],  # every group overrides it
                momentum=muon_momentum,
                backend_steps=muon_backend_steps,
                nesterov=muon_nesterov,
                ns_dtype=muon_ns_dtype,
            )
        # The rules' Muon weight decays, which the taper scales (group["weight_decay"] is the current one).
        self._muon_base_wd = [g["weight_decay"] for g in self.muon.param_groups] if self.muon is not None else []
        self.adam: torch.optim.AdamW | None = None
        if adam_groups:
            on_cuda = all(p.is_cuda for g in adam_groups for p in g["params"])
            self.adam = torch.optim.AdamW(
                adam_groups,
                lr=adam_groups[0]["lr"],
                betas=(float(adam_betas[0]), float(adam_betas[1])),
                eps=adam_eps,
                weight_decay=0.0,
                fused=True if on_cuda else None,
            )

    @property
    def optimizers(self) -> list[torch.optim.Optimizer]:
        """The torch optimizers in stepping order (AdamW first, so Parallel Muon can overlap it)."""
        return [opt for opt in (self.adam, self.muon) if opt is not None]

    @property
    def parallel(self) -> bool:
        """True when Muon synchronises its own gradients (Parallel Muon)."""
        return self.muon is not None and self.muon.syncs_own_grads

    @torch.no_grad()
    def begin_step(self) -> None:
        """Right after backward: scale shared-core gradients; Parallel Muon starts its reduce-scatters."""
        for p, factor in self.grad_scale:
            if p.grad is not None:
                p.grad.mul_(factor)
        if self.parallel:
            self.muon.launch_grad_sync()

    def self_synced_params(self) -> list[Tensor]:
        """Parameters whose gradients the optimizer averages across ranks itself (banked Muon)."""
        return self.muon.owned_params() if self.parallel else []

    def step(self) -> None:
        for opt in self.optimizers:
            opt.step()

    def zero_grad(self, set_to_none: bool = True) -> None:
        for opt in self.optimizers:
            opt.zero_grad(set_to_none=set_to_none)

    def set_lr_scale(self, scale: float) -> None:
        """lr = base_lr * scale for every group (the warm-down multiplier)."""
        for opt in self.optimizers:
            for group in opt.param_groups:
                group["lr"] = group["base_lr"] * scale

    def set_muon_momentum(self, momentum: float) -> None:
        if self.muon is not None:
            for group in self.muon.param_groups:
                group["momentum"] = momentum

    def momentum_at(self, step: int) -> float:
        """Muon momentum at `step` under the configured linear warm-up."""
        return momentum_warmup(
            step, self.muon_momentum_warmup_start, self.muon_momentum, self.muon_momentum_warmup_steps
        )

    def muon_wd_scale_at(self, frac: float) -> float:
        """Muon weight-decay multiplier at training fraction `frac` under the configured taper (1 without)."""
        return wd_taper_scale(frac, self.muon_wd_taper_start, self.muon_wd_taper_final_mul)

    def set_muon_wd_scale(self, scale: float) -> None:
        """weight_decay = the rule's weight_decay * scale for every Muon group (AdamW groups untouched)."""
        if self.muon is not None:
            for group, base in zip(self.muon.param_groups, self._muon_base_wd, strict=True):
                group["weight_decay"] = base * scale

    def clip_grad_norm(self, max_norm: float | None = None) -> Tensor | None:
        """Clip the global grad norm of all parameters to max_norm (default: grad_clip_norm).

        Returns the norm before clipping, or None when clipping is off (max_norm 0).
        """
        max_norm = self.grad_clip_norm if max_norm is None else max_norm
        if max_norm <= 0:
            return None
        if not self.parallel:
            return torch.nn.utils.clip_grad_norm_(self.params, max_norm)
        return self._clip_with_shards(max_norm)

    @torch.no_grad()
    def _clip_with_shards(self, max_norm: float) -> Tensor:
        """Global-norm clipping when banked gradients exist only as per-rank averaged shards.

        The replicated gradients (already averaged) count once; each rank adds the squared norms
        of the slices it owns and one all-reduce sums them: the same norm as clipping the fully
        averaged gradient, as the plain path does.
        """
        owned = {id(p) for p in self.muon.owned_params()}
        others = [p.grad for p in self.params if p.grad is not None and id(p) not in owned]
        shard_norms = self.muon.shard_grad_norms()
        device = shard_norms[0].device if shard_norms else others[0].device
        sq = torch.zeros((), device=device, dtype=torch.float32)
        for n in shard_norms:
            sq += n.pow(2).sum()
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(sq)
        for g in others:
            sq += torch.linalg.vector_norm(g.float()).pow(2)
        total = sq.sqrt()
        coef = torch.clamp(max_norm / (total + 1e-6), max=1.0)
        for g in others:
            g.mul_(coef.to(g.dtype))
        self.muon.scale_shard_grads(coef)
        return total

    def grad_sync_params(self) -> list[Tensor]:
        """Parameters whose gradients the runner must average across ranks before step()."""
        own = {id(p) for p in self.self_synced_params()}
        return [p for p in self.params if id(p) not in own]

    def state_dict(self) -> dict[str, Any]:
        """Both optimizers' state dicts. Like torch's, they hold live tensors: deepcopy to snapshot."""
        return {
            "muon": None if self.muon is None else self.muon.state_dict(),
            "adam": None if self.adam is None else self.adam.state_dict(),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        for key, opt in (("muon", self.muon), ("adam", self.adam)):
            if key not in state:
                raise RuntimeError(f"optimizer state dict has no {key!r} entry; keys: {sorted(state)}")
            if (state[key] is None) != (opt is None):
                raise RuntimeError(
                    f"optimizer state dict {key!r} does not fit this OptimizerSet "
                    f"({'no' if opt is None else 'a'} {key} optimizer here); was it saved with other rules?"
                )
            if opt is not None:
                opt.load_state_dict(state[key])

    def param_groups_summary(self) -> list[dict]:
        """One row per rule: name, optimizer, lr (current), base_lr, weight_decay, num_params, num_tensors."""
        current_lr = {group["name"]: group["lr"] for opt in self.optimizers for group in opt.param_groups}
        return [{**row, "base_lr": row["lr"], "lr": current_lr.get(row["name"], row["lr"])} for row in self._summary]


def build_optimizer(
    model_named_params: Iterable[tuple[str, Tensor]],
    *,
    rules: list[dict],
    muon_momentum: float = 0.95,
    muon_backend_steps: int = 5,
    muon_nesterov: bool = True,
    muon_momentum_warmup_start: float = 0.85,
    muon_momentum_warmup_steps: int = 500,
    muon_ns_dtype: str = "auto",
    muon_wd_taper_start: float | None = None,
    muon_wd_taper_final_mul: float = 0.5,
    muon: Callable[..., Muon] = Muon,
    scale_shared_grads: bool = False,
    adam_betas: tuple[float, float] = (0.9, 0.95),
    adam_eps: float = 1e-8,
    grad_clip_norm: float = 0.0,
    param_uses: Mapping[str, int] | None = None,
    param_roles: Mapping[str, str] | None = None,
) -> OptimizerSet:
    """Hydra factory for OptimizerSet; defaults are the official baseline's hyperparameters.

    `muon_ns_dtype`: "auto" runs Newton–Schulz in bf16 on CUDA (official) and in fp32 on CPU,
    where bf16 matmuls are emulated and several times slower; or "bfloat16" / "float32".
    `muon`: the Muon class (or a partial of it, config group `optimizer/muon`): per-matrix Muon (work shared
    round-robin, one all-reduce of the updates) or Parallel Muon (banks, reduce-scatter, batched
    Newton–Schulz, all-gather).
    `scale_shared_grads`: multiply the gradient of each parameter that runs `uses` times per
    forward (depth recurrence; `param_uses` comes from the model) by 1/uses (#537).
    `param_roles`: the model's declared parameter roles, for rules that match by `role`.
    `muon_wd_taper_start`, `muon_wd_taper_final_mul`: the Muon weight-decay taper (#1729), see OptimizerSet.
    `adam_betas`, `adam_eps`: of the one AdamW, i.e. of every `adam` rule (embeddings, head, scalars).
    """
    named = list(model_named_params)
    grad_scale = None
    if scale_shared_grads:
        grad_scale = {n: 1.0 / u for n, u in (param_uses or {}).items() if u > 1}
    return OptimizerSet(
        named,
        list(rules),
        muon_ns_dtype=_ns_dtype(muon_ns_dtype, named),
        muon_momentum=muon_momentum,
        muon_backend_steps=muon_backend_steps,
        muon_nesterov=muon_nesterov,
        muon_momentum_warmup_start=muon_momentum_warmup_start,
        muon_momentum_warmup_steps=muon_momentum_warmup_steps,
        muon_wd_taper_start=muon_wd_taper_start,
        muon_wd_taper_final_mul=muon_wd_taper_final_mul,
        adam_betas=tuple(adam_betas),
        adam_eps=adam_eps,
        grad_clip_norm=grad_clip_norm,
        muon_class=muon,
        grad_scale=grad_scale,
        roles=param_roles,
    )


def _ns_dtype(spec: str, named: list[tuple[str, Tensor]]) -> torch.dtype:
    if spec == "auto":
        on_cuda = any(p.is_cuda for _, p in named)
        return torch.bfloat16 if on_cuda else torch.float32
    dtypes = {"bfloat16": torch.bfloat16, "bf16": torch.bfloat16, "float32": torch.float32, "fp32": torch.float32}
    if spec not in dtypes:
        raise UserError(f"optimizer.muon_ns_dtype={spec!r} is not one of auto, bfloat16, float32")
    return dtypes[spec]
