"""SLOT (seed #1263): per-batch optimization of a hidden-state delta and a logit bias at evaluation.

For every batch of sliding windows the model's final normed hidden states H are computed once
(frozen, no grad); each window gets its own delta [1, width] added to H at every position and its
own logit bias [1, vocab], both starting at zero, optimized by AdamW for `steps` steps with a
cosine lr from `lr` to `lr_min` on a next-token loss, then the window is scored with them and
both are thrown away (reset every batch: no state crosses windows).

- `ttt=slot_published` fits them on the very targets the window then scores (the seed): the
  prediction of a target depends on that target and on later ones. The targets are read through
  the stream's view, so the legality check records every read of an unscored token, and the
  causality probe sees the scores move with later tokens.
- `ttt=slot_causal` fits them only on the window's context positions (targets before the first
  scored one: tokens the window already holds as inputs, all scored earlier) and scores the new
  positions: causal and score-first.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from paramgolf.errors import UserError
from paramgolf.evaluation.compliance import RULES
from paramgolf.evaluation.identity import Identity
from paramgolf.evaluation.stream import TokenView


class SlotCausal(Identity):
    """SLOT fitted on each window's already-scored context positions, then scoring its new positions.

    `steps`: AdamW steps per batch; `lr` → `lr_min`: cosine schedule over the steps; `weight_decay`,
    `beta1`, `beta2`, `eps`: AdamW's (PyTorch's defaults, as the seed).
    """

    name = "slot_causal"
    fits_scored_targets = False

    def __init__(
        self,
        steps: int = 16,
        lr: float = 0.008,
        lr_min: float = 0.0008,
        weight_decay: float = 0.01,
        beta1: float = 0.9,
        beta2: float = 0.999,
        eps: float = 1e-8,
    ) -> None:
        if steps < 1:
            raise UserError(f"ttt.steps={steps} must be ≥ 1")
        if not 0 <= lr_min <= lr or lr <= 0:
            raise UserError(f"ttt: need 0 ≤ lr_min ({lr_min}) ≤ lr ({lr}) and lr > 0")
        self.steps, self.lr, self.lr_min = steps, lr, lr_min
        self.weight_decay, self.betas, self.eps = weight_decay, (beta1, beta2), eps

    def rules_kept(self) -> dict[str, bool]:
        return dict.fromkeys(RULES, True)

    def _fit_targets(self, x: Tensor, seen: TokenView, positions: Tensor, first: Tensor) -> tuple[Tensor, Tensor]:
        """(mask of the positions the loss uses, their targets): the context positions j < first, whose
        targets x[:, j+1] are inputs of this window."""
        T = x.size(1)
        fit = torch.arange(T, device=x.device)[None, :] < first[:, None]
        targets = torch.cat([x[:, 1:], x[:, -1:]], dim=1)  # the last column is never a context position
        return fit, targets

    def score_logits(self, model: nn.Module, x: Tensor, *, seen: TokenView, positions: Tensor, first: Tensor) -> Tensor:
        if not hasattr(model, "head_logits"):
            raise UserError(f"ttt={self.name} needs a model with head_logits (paramgolf's GPT)")
        logits, hidden = model(x, return_hidden=True)
        fit, targets = self._fit_targets(x, seen, positions, first)
        if not bool(fit.any()):
            return logits  # nothing to fit on (the first window): the zero delta and bias change nothing
        dtype = torch.float64 if hidden.dtype == torch.float64 else torch.float32
        hidden = hidden.detach().to(dtype)
        B, _, C = hidden.shape
        delta = torch.zeros(B, 1, C, dtype=dtype, device=x.device, requires_grad=True)
        bias = torch.zeros(B, 1, model.vocab_size, dtype=dtype, device=x.device, requires_grad=True)
        opt = torch.optim.AdamW(
            [delta, bias], lr=self.lr, betas=self.betas, eps=self.eps, weight_decay=self.weight_decay
        )
        weight = fit.to(dtype)
        with torch.enable_grad(), torch.autocast(x.device.type, enabled=False):
            for k in range(self.steps):
                for g in opt.param_groups:
                    g["lr"] = self.lr_min + 0.5 * (self.lr - self.lr_min) * (1 + math.cos(math.pi * k / self.steps))
                out = model.head_logits(hidden + delta, extra=bias)
                nll = F.cross_entropy(out.reshape(-1, out.size(-1)), targets.reshape(-1), reduction="none")
                # each window's mean (the seed divides by the whole batch's count: through Adam's eps that
                # makes a window's fit depend on its batch-mates, by about 1e-7 in val_loss)
                loss = ((nll.view(B, -1) * weight).sum(1) / weight.sum(1).clamp(min=1)).sum()
                # grads of delta and bias only: the model's weights (the tied head) collect none
                opt.zero_grad(set_to_none=True)
                delta.grad, bias.grad = torch.autograd.grad(loss, [delta, bias])
                opt.step()
        with torch.no_grad(), torch.autocast(x.device.type, enabled=False):  # scored in the fit's precision
            return model.head_logits(hidden + delta, extra=bias)


class SlotPublished(SlotCausal):
    """The seed's SLOT: fitted on the targets the window scores (reads them before they are scored)."""

    name = "slot_published"
    fits_scored_targets = True

    def rules_kept(self) -> dict[str, bool]:
        return {**dict.fromkeys(RULES, True), "causality": False, "score_before_update": False}

    def _fit_targets(self, x: Tensor, seen: TokenView, positions: Tensor, first: Tensor) -> tuple[Tensor, Tensor]:
        T = x.size(1)
        fit = torch.arange(T, device=x.device)[None, :] >= first[:, None]
        targets = seen.take(positions[:, 1:]).to(x.device)  # not scored yet: the view records the read
        return fit, targets
