"""Plain torch optimizers for test-time training (TTT), built with clear input checks.

Training uses the Muon + AdamW `OptimizerSet` (paramgolf.optim.builder); test-time training
adapts a model on already-scored evaluation text with a single ordinary optimizer:

* "sgd": torch.optim.SGD. Score-first TTT (records #549, #754, #1185) uses SGD with
  momentum 0.9 and lr 0.002 on a cosine schedule over the evaluation chunks.
* "adamw": torch.optim.AdamW (decoupled weight decay). Per-document LoRA TTT (record #620)
  trains its LoRA adapters with AdamW.

`set_lr` sets every param group's lr, as a per-chunk TTT schedule does before each step.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from paramgolf.errors import UserError

KINDS = ("sgd", "adamw")


def _check_lr(lr: Any, where: str) -> None:
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not lr >= 0.0 or math.isinf(lr):
        raise UserError(f"{where}: lr must be a finite number >= 0, got {lr!r}")


def _check_momentum(momentum: Any, where: str) -> None:
    if isinstance(momentum, bool) or not isinstance(momentum, (int, float)) or not 0.0 <= momentum < 1.0:
        raise UserError(f"{where}: momentum must be in [0, 1) (0 turns momentum off), got {momentum!r}")


def _check_betas(betas: Any, where: str) -> tuple[float, float]:
    ok = isinstance(betas, Sequence) and not isinstance(betas, str) and len(betas) == 2
    if ok:
        ok = all(isinstance(b, (int, float)) and not isinstance(b, bool) and 0.0 <= b < 1.0 for b in betas)
    if not ok:
        raise UserError(f"{where}: betas must be two numbers (beta1, beta2), each in [0, 1), got {betas!r}")
    return float(betas[0]), float(betas[1])


def _check_nonnegative(value: Any, key: str, where: str) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0.0:
        raise UserError(f"{where}: {key} must be a number >= 0, got {value!r}")


def _trainable_groups(params: Iterable[Tensor] | Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Param groups holding only tensors with requires_grad=True; empty groups are dropped."""
    if isinstance(params, Tensor):
        raise UserError(
            "build_simple_optimizer: params must be an iterable of tensors or of param-group dicts, "
            "got a single tensor; wrap it in a list ([tensor])"
        )
    items = list(params)
    if not items:
        raise UserError("build_simple_optimizer: params is empty; pass the tensors the optimizer should train")
    is_dict = [isinstance(item, Mapping) for item in items]
    if any(is_dict) and not all(is_dict):
        raise UserError(
            "build_simple_optimizer: params mixes tensors and param-group dicts; pass either tensors "
            "only or dicts only (put loose tensors into a {'params': [...]} group)"
        )
    raw_groups = [dict(item) for item in items] if all(is_dict) else [{"params": items}]

    groups = []
    for i, group in enumerate(raw_groups):
        if "params" not in group:
            raise UserError(f"build_simple_optimizer: param group {i} has no 'params' key; keys: {sorted(group)}")
        members = group["params"]
        members = [members] if isinstance(members, Tensor) else list(members)
        for t in members:
            if not isinstance(t, Tensor):
                raise UserError(f"build_simple_optimizer: param group {i} holds a {type(t).__name__}, not a tensor")
        trainable = [t for t in members if t.requires_grad]
        if trainable:
            groups.append({**group, "params": trainable})
    if not groups:
        raise UserError(
            "build_simple_optimizer: no trainable parameters (every tensor has requires_grad=False); "
            "unfreeze the tensors to adapt (p.requires_grad_(True)) before building the optimizer"
        )
    return groups


def build_simple_optimizer(
    params: Iterable[Tensor] | Iterable[Mapping[str, Any]],
    kind: str,
    lr: float,
    momentum: float = 0.0,
    nesterov: bool = False,
    betas: Sequence[float] = (0.9, 0.999),
    eps: float = 1e-8,
    weight_decay: float = 0.0,
) -> torch.optim.Optimizer:
    """torch.optim.SGD (kind "sgd") or torch.optim.AdamW (kind "adamw") over the trainable params.

    `params`: tensors, or param-group dicts (torch's format; a group may override lr etc.).
    Tensors with requires_grad=False are left out. SGD uses momentum, nesterov and weight_decay
    as torch defines them (weight decay added to the gradient; nesterov needs momentum > 0);
    `betas` and `eps` are ignored there. AdamW uses betas, eps and decoupled weight decay
    (p *= 1 - lr * weight_decay); `momentum` and `nesterov` are ignored there.
    """
    kind_key = kind.strip().lower() if isinstance(kind, str) else kind
    if kind_key not in KINDS:
        raise UserError(f"build_simple_optimizer: kind={kind!r} is not one of {', '.join(KINDS)}")
    where = f"build_simple_optimizer(kind={kind_key!r})"
    _check_lr(lr, where)
    _check_nonnegative(weight_decay, "weight_decay", where)
    groups = _trainable_groups(params)
    for i, group in enumerate(groups):
        if "lr" in group:
            _check_lr(group["lr"], f"{where}, param group {i}")

    if kind_key == "sgd":
        _check_momentum(momentum, where)
        if nesterov and momentum <= 0.0:
            raise UserError(
                f"{where}: nesterov=True needs momentum > 0, got momentum={momentum!r}; "
                "set momentum (e.g. 0.9) or nesterov=False"
            )
        for i, group in enumerate(groups):
            if "momentum" in group:
                _check_momentum(group["momentum"], f"{where}, param group {i}")
        return torch.optim.SGD(groups, lr=lr, momentum=momentum, nesterov=bool(nesterov), weight_decay=weight_decay)

    b1, b2 = _check_betas(betas, where)
    _check_nonnegative(eps, "eps", where)
    for i, group in enumerate(groups):
        if "betas" in group:
            group["betas"] = _check_betas(group["betas"], f"{where}, param group {i}")
    return torch.optim.AdamW(groups, lr=lr, betas=(b1, b2), eps=eps, weight_decay=weight_decay)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Set the lr of every param group of `optimizer` (e.g. a per-chunk cosine TTT schedule)."""
    _check_lr(lr, "set_lr")
    for group in optimizer.param_groups:
        if isinstance(group["lr"], Tensor):
            group["lr"].fill_(lr)
        else:
            group["lr"] = lr
