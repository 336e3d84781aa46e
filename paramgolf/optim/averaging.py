"""Weight averaging between training and export: the weights that get quantized and scored.

The runner calls `update(model, 0)` once before the first optimizer step (after the compile
warm-up rollback) and `update(model, step)` after every optimizer step, `step` counting the
steps done so far; at the end it exports `averaged_state_dict(model)`.
"""
from __future__ import annotations

import warnings
from typing import Any

import torch
from torch import Tensor, nn


class WeightAveraging:
    """Base stage: receives the weights after every step, returns the weights to export."""

    def update(self, model: nn.Module, step: int) -> None:
        raise NotImplementedError

    def averaged_state_dict(self, model: nn.Module) -> dict[str, Tensor]:
        """A state dict for `model` (same keys and dtypes) holding the averaged weights."""
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


class NoAveraging(WeightAveraging):
    """Exports the model's own final weights (the official baseline)."""

    def update(self, model: nn.Module, step: int) -> None:
        pass

    def averaged_state_dict(self, model: nn.Module) -> dict[str, Tensor]:
        return {name: t.detach() for name, t in model.state_dict().items()}


class EMA(WeightAveraging):
    """Exponential moving average of the weights, kept in fp32: ema = d * ema + (1 - d) * w.

    Starts as a copy of the weights at the first `update` with step >= start_step, then blends
    at steps that are multiples of `every`. Blending every k steps uses d**k, so one update
    forgets as much as k per-step updates would: the time constant stays 1 / (1 - decay) steps.
    Non-floating entries of the state dict (integer buffers) are exported as the model holds them.
    From the records that average with EMA, e.g. 2026-03-20_11L_XSA4_EMA (decay 0.997, every step).
    """

    def __init__(self, decay: float = 0.997, every: int = 1, start_step: int = 0) -> None:
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"train.averaging.decay must be in [0, 1), got {decay}")
        if every < 1:
            raise ValueError(f"train.averaging.every must be >= 1, got {every}")
        if start_step < 0:
            raise ValueError(f"train.averaging.start_step must be >= 0, got {start_step}")
        self.decay = decay
        self.every = every
        self.start_step = start_step
        self.shadow: dict[str, Tensor] = {}
        self.num_updates = 0  # blends done since the copy

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        if step < self.start_step:
            return
        weights = {n: t for n, t in model.state_dict().items() if t.is_floating_point()}
        if not self.shadow:
            self.shadow = {n: t.detach().float().clone() for n, t in weights.items()}
            return
        if step % self.every != 0:
            return
        d = self.decay**self.every
        for name, t in weights.items():
            self.shadow[name].mul_(d).add_(t.detach().float(), alpha=1.0 - d)
        self.num_updates += 1

    def averaged_state_dict(self, model: nn.Module) -> dict[str, Tensor]:
        current = model.state_dict()
        if not self.shadow:
            warnings.warn(
                f"EMA never started (start_step={self.start_step} was not reached); exporting the model's own weights",
                stacklevel=2,
            )
            return {name: t.detach() for name, t in current.items()}
        return {
            name: self.shadow[name].to(t.dtype) if name in self.shadow else t.detach()
            for name, t in current.items()
        }

    def state_dict(self) -> dict[str, Any]:
        return {"shadow": dict(self.shadow), "num_updates": self.num_updates}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.shadow = {n: t.detach().float().clone() for n, t in state["shadow"].items()}
        self.num_updates = int(state["num_updates"])
