"""What exists only while training, declared by the model: the objective and the training-only parts.

`TRAINING_ONLY` names the GPT arguments whose modules train with an auxiliary loss but never
reach the artifact (MTP heads, #1185); the runner uses `training_loss` and `artifact_view`
and never names a technique.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn

TRAINING_ONLY = ("mtp",)  # GPT(..., mtp=...) → module `model.mtp`, parameters `mtp.*`


def lm_loss(logits: Tensor, targets: Tensor) -> Tensor:
    """Mean next-token cross-entropy in fp32 (nats)."""
    return F.cross_entropy(logits.float().reshape(-1, logits.size(-1)), targets.reshape(-1))


def training_parts(model: nn.Module) -> list[nn.Module]:
    return [m for m in (getattr(model, k, None) for k in TRAINING_ONLY) if m is not None]


def training_loss(
    model: nn.Module,
    forward: Callable[..., Any],
    x: Tensor,
    y: Tensor,
    *,
    softcapped_ce: Callable[[Tensor, Tensor, float], Tensor] | None = None,
    **model_kwargs: Any,
) -> Tensor:
    """Next-token CE plus every training-only part's auxiliary loss on the final hidden state.

    `forward` is the module that runs (maybe compiled); `model` the raw module that owns the parts.
    `model_kwargs` go to every `forward` call (e.g. `cu_seqlens`). `softcapped_ce(raw_logits, y, c)`:
    a loss that applies the model's softcap `c` itself (the fused kernel,
    paramgolf.model.kernels.fused_ce.softcapped_cross_entropy); the model then returns pre-softcap
    logits (`forward(..., softcap=False)`). None: the model's softcapped logits and `lm_loss`.
    """
    parts = training_parts(model)
    if softcapped_ce is not None:
        model_kwargs = {**model_kwargs, "softcap": False}
    if not parts:
        out = forward(x, **model_kwargs)
    else:
        out, hidden = forward(x, return_hidden=True, **model_kwargs)
    loss = lm_loss(out, y) if softcapped_ce is None else softcapped_ce(out, y, model.logit_softcap)
    for part in parts:
        loss = loss + part.loss(hidden, y)
    return loss


def artifact_view(arch: Mapping[str, Any], state: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The architecture and weights an artifact holds: the training-only parts dropped."""
    arch = {k: (None if k in TRAINING_ONLY else v) for k, v in arch.items()}
    prefixes = tuple(f"{k}." for k in TRAINING_ONLY)
    return arch, {k: v for k, v in state.items() if not k.startswith(prefixes)}
