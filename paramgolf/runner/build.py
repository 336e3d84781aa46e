"""Building the configured model and the pieces around it, in one place for train/eval/budget."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import torch
from hydra.utils import instantiate
from torch import nn

from paramgolf.errors import UserError

# Parameter families for reporting (first match wins).
PARAM_FAMILIES = (
    ("embeddings", re.compile(r"(^|\.)(tok_emb|lm_head|bigram|ve)\.")),
    ("attention", re.compile(r"\.attn\.")),
    ("mlp", re.compile(r"\.mlp\.")),
)


def build_model(arch: Mapping[str, Any]) -> nn.Module:
    """Instantiate the model described by a resolved `arch` config (a plain dict or DictConfig)."""
    from omegaconf import DictConfig, OmegaConf

    from paramgolf.config.untrusted import check_components

    if isinstance(arch, DictConfig):
        arch = OmegaConf.to_container(arch, resolve=True)
    check_components(arch, "the architecture config", at="arch")  # an artifact's arch is untrusted input
    return instantiate_unwrapped(arch)


def instantiate_unwrapped(node: Any, *args: Any) -> Any:
    """hydra.utils.instantiate, re-raising a component's own error rather than Hydra's wrapper of it.

    A UserError (its message names the key) stays a user error; any other exception the component
    raised (an assert, a RuntimeError: a bug) keeps its own type and traceback. Hydra's own errors
    (a `_target_` that cannot be imported) stay InstantiationException.
    """
    from hydra.errors import HydraException, InstantiationException
    from omegaconf.errors import OmegaConfBaseException

    try:
        return instantiate(node, *args, _convert_="all")
    except InstantiationException as exc:
        cause = exc.__cause__
        while isinstance(cause, InstantiationException) and cause.__cause__ is not None:
            cause = cause.__cause__
        if isinstance(cause, UserError):
            raise cause from exc
        if cause is not None and not isinstance(cause, (HydraException, OmegaConfBaseException, ImportError)):
            raise cause from exc  # a bug in the component, not a config mistake
        raise


def count_params(model: nn.Module) -> dict[str, int]:
    counts = {"params": 0, "embeddings": 0, "attention": 0, "mlp": 0, "other": 0}
    for name, p in model.named_parameters():
        counts["params"] += p.numel()
        family = next((fam for fam, rx in PARAM_FAMILIES if rx.search(name)), "other")
        counts[family] += p.numel()
    return counts


def resolve_autocast(spec: str, device: torch.device) -> torch.dtype | None:
    if spec == "auto":
        return torch.bfloat16 if device.type == "cuda" else None
    if spec == "bf16":
        return torch.bfloat16
    if spec == "none":
        return None
    raise UserError(f"train.autocast={spec!r} is not one of auto, bf16, none")


def resolve_compile(spec: str, device: torch.device) -> bool:
    spec = str(spec).lower()
    if spec == "auto":
        return device.type == "cuda"
    if spec in ("true", "1", "yes"):
        return True
    if spec in ("false", "0", "no"):
        return False
    raise UserError(f"train.compile={spec!r} is not one of auto, true, false")


def prepare_for_device(model: nn.Module, device: torch.device, bf16_embeddings: bool) -> nn.Module:
    """Move to the device; under bf16 training the embedding table is bf16 like the official."""
    model = model.to(device)
    if bf16_embeddings and device.type == "cuda":
        for m in model.modules():
            if isinstance(m, nn.Embedding):
                m.to(torch.bfloat16)
    return model


def build_optimizer_for(model: nn.Module, optimizer_cfg: Mapping[str, Any]):
    """The configured OptimizerSet over the model's parameters (with per-parameter use counts)."""
    return instantiate(optimizer_cfg)(
        list(model.named_parameters()), param_uses=model.parameter_uses(), param_roles=model.parameter_roles()
    )
