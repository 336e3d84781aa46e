"""Small building blocks shared by the model's modules."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

# Parameter roles: what kind of parameter each is, declared by the module that creates it, so that
# optimizer and quantizer rules can select by role instead of repeating name regexes.
#   embedding: a lookup table (tok_emb, bigram.embed, ve.shared.embed; tied, tok_emb is also the head)
#   head:      an output projection onto the vocabulary (untied lm_head, MTP heads)
#   matrix:    a 2-D weight applied as a linear map (attention/MLP/feature projections; Muon's kind)
#   control:   a small gain, scale, mix or gate (q_gain, attn_scale, resid_mix, gates, …; Adam's kind)
#   other:     undeclared and not 2-D; no built-in module creates one (tests forbid it in the presets)
ROLES = ("embedding", "head", "matrix", "control", "other")
ROLE_ATTR = "_paramgolf_role"


def set_role(param: nn.Parameter, role: str) -> nn.Parameter:
    """Tag `param` (in place) with one of ROLES and return it."""
    assert role in ROLES, f"parameter role {role!r} is not one of {ROLES}"
    setattr(param, ROLE_ATTR, role)
    return param


def get_role(param: Tensor) -> str | None:
    """The role `param` was tagged with, or None."""
    return getattr(param, ROLE_ATTR, None)


def control_parameter(tensor: Tensor) -> nn.Parameter:
    """An nn.Parameter tagged as a control parameter (gain, scale, mix or gate; Adam-trained, kept precise).

    An existing Parameter is tagged in place and returned as is.
    """
    param = tensor if isinstance(tensor, nn.Parameter) else nn.Parameter(tensor)
    return set_role(param, "control")


def rms_norm(x: Tensor, eps: float | None = None) -> Tensor:
    """RMS normalisation over the last dimension, without a learned gain."""
    return F.rms_norm(x, (x.size(-1),), eps=eps)


class RMSNorm(nn.Module):
    """Parameter-free RMSNorm, as in the official baseline."""

    def __init__(self, eps: float | None = None):
        super().__init__()
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        return rms_norm(x, self.eps)


class CastedLinear(nn.Linear):
    """Linear layer whose fp32 weight is cast to the activation dtype at matmul time.

    Keeps master weights in fp32 for the optimizer while bf16 autocast runs the matmul.
    `zero_init=True` marks output projections that start at zero (official baseline).
    """

    def __init__(self, in_features: int, out_features: int, zero_init: bool = False):
        super().__init__(in_features, out_features, bias=False)
        set_role(self.weight, "matrix")
        self.zero_init = zero_init
        if zero_init:
            nn.init.zeros_(self.weight)

    # A training-time weight transform (QAT's fake quantization sets it; paramgolf.quant.qat).
    # None: the layer uses its weight as is. Not part of the state dict.
    weight_fn = None

    def forward(self, x: Tensor) -> Tensor:
        w = self.weight if self.weight_fn is None else self.weight_fn(self.weight)
        return F.linear(x, w.to(x.dtype))
