"""Weight averaging between training and export: the weights that get quantized and scored.

The runner calls `update(model, 0)` once before the first optimizer step (after the compile
warm-up rollback) and `update(model, step, lr_scale)` after every optimizer step, `step`
counting the steps done so far and `lr_scale` the LR multiplier that step used. At the end it
exports `averaged_state_dict(model)`: the weights chosen by a rule fixed before evaluation.

Only `EMASWA(select="best_on_validation")` chooses by scoring candidates on the validation
set (`candidates()`, PR #754 does this); that is selection on the test set, and the runner
labels such a result non-compliant.
"""

from __future__ import annotations

import warnings
from typing import Any, Literal

import torch
from torch import Tensor, nn

from paramgolf.errors import UserError


def _float_weights(model: nn.Module) -> dict[str, Tensor]:
    return {n: t for n, t in model.state_dict().items() if t.is_floating_point()}


def _export(current: dict[str, Tensor], averaged: dict[str, Tensor]) -> dict[str, Tensor]:
    """`current`'s keys and dtypes, with the averaged values where there are any."""
    return {name: averaged[name].to(t.dtype) if name in averaged else t.detach() for name, t in current.items()}


class WeightAveraging:
    """Base stage: receives the weights after every step, returns the weights to export."""

    name = "base"
    selects_on_validation = False  # True: the runner must score candidates() and keep the best

    def update(self, model: nn.Module, step: int, lr_scale: float = 1.0) -> None:
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        """What results.json records about the averaging (method, settings, counts)."""
        return {"method": self.name}

    def candidates(self, model: nn.Module) -> dict[str, dict[str, Tensor]]:
        """Named weight sets a validation-selecting averaging chooses between."""
        return {self.name: self.averaged_state_dict(model)}

    def averaged_state_dict(self, model: nn.Module) -> dict[str, Tensor]:
        """A state dict for `model` (same keys and dtypes) holding the averaged weights."""
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


class NoAveraging(WeightAveraging):
    """Exports the model's own final weights (the official baseline)."""

    name = "none"

    def update(self, model: nn.Module, step: int, lr_scale: float = 1.0) -> None:
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

    name = "ema"

    def __init__(self, decay: float = 0.997, every: int = 1, start_step: int = 0) -> None:
        if not 0.0 <= decay < 1.0:
            raise UserError(f"train.averaging.decay must be in [0, 1), got {decay}")
        if every < 1:
            raise UserError(f"train.averaging.every must be >= 1, got {every}")
        if start_step < 0:
            raise UserError(f"train.averaging.start_step must be >= 0, got {start_step}")
        self.decay = decay
        self.every = every
        self.start_step = start_step
        self.shadow: dict[str, Tensor] = {}
        self.num_updates = 0  # blends done since the copy

    @torch.no_grad()
    def update(self, model: nn.Module, step: int, lr_scale: float = 1.0) -> None:
        if step < self.start_step:
            return
        weights = _float_weights(model)
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
        return _export(current, self.shadow)

    def describe(self) -> dict[str, Any]:
        return {
            "method": "ema",
            "decay": self.decay,
            "every": self.every,
            "start_step": self.start_step,
            "num_updates": self.num_updates,
        }

    def state_dict(self) -> dict[str, Any]:
        return {"shadow": dict(self.shadow), "num_updates": self.num_updates}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.shadow = {n: t.detach().float().clone() for n, t in state["shadow"].items()}
        self.num_updates = int(state["num_updates"])


class SWA(WeightAveraging):
    """Uniform average of snapshots taken every `every` steps once the run is in its tail.

    A snapshot is taken after step s (s steps done) when s % every == 0 and either the LR scale
    of that step is below `start_lr_scale` (e.g. 0.2: #537, #620) or, without a threshold,
    s >= start_step. Snapshots are summed in fp32 (the records sum in each tensor's own dtype,
    bf16 for their embedding tables). With no snapshot the model's own weights are exported,
    with a warning.
    """

    name = "swa"

    def __init__(self, every: int = 50, start_lr_scale: float | None = 0.2, start_step: int = 0) -> None:
        if every < 1:
            raise UserError(f"train.averaging.every must be >= 1, got {every}")
        if start_lr_scale is not None and not 0.0 < start_lr_scale <= 1.0:
            raise UserError(f"train.averaging.start_lr_scale must be in (0, 1] or null, got {start_lr_scale}")
        if start_step < 0:
            raise UserError(f"train.averaging.start_step must be >= 0, got {start_step}")
        self.every = every
        self.start_lr_scale = start_lr_scale
        self.start_step = start_step
        self.total: dict[str, Tensor] = {}
        self.count = 0
        self.first_step: int | None = None

    def due(self, step: int, lr_scale: float) -> bool:
        if step <= 0 or step % self.every != 0:
            return False
        if self.start_lr_scale is not None:
            return lr_scale < self.start_lr_scale
        return step >= self.start_step

    @torch.no_grad()
    def add(self, weights: dict[str, Tensor], step: int) -> None:
        if not self.total:
            self.total = {n: t.detach().float().clone() for n, t in weights.items()}
            self.first_step = step
        else:
            for n, t in weights.items():
                self.total[n].add_(t.detach().float())
        self.count += 1

    def update(self, model: nn.Module, step: int, lr_scale: float = 1.0) -> None:
        if self.due(step, lr_scale):
            self.add(_float_weights(model), step)

    def average(self) -> dict[str, Tensor]:
        return {n: t / self.count for n, t in self.total.items()}

    def averaged_state_dict(self, model: nn.Module) -> dict[str, Tensor]:
        current = model.state_dict()
        if not self.count:
            warnings.warn(
                "SWA took no snapshot (its start condition was never met); exporting the model's own weights",
                stacklevel=2,
            )
            return {name: t.detach() for name, t in current.items()}
        return _export(current, self.average())

    def describe(self) -> dict[str, Any]:
        return {
            "method": "swa",
            "every": self.every,
            "start_lr_scale": self.start_lr_scale,
            "start_step": self.start_step,
            "snapshots": self.count,
            "first_snapshot_step": self.first_step,
        }

    def state_dict(self) -> dict[str, Any]:
        return {"total": dict(self.total), "count": self.count, "first_step": self.first_step}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.total = {n: t.detach().float().clone() for n, t in state["total"].items()}
        self.count, self.first_step = int(state["count"]), state["first_step"]


SELECT_RULES = ("ema", "swa", "swa_if_snapshots", "best_on_validation")


class EMASWA(WeightAveraging):
    """EMA and SWA kept side by side, and a choice between them.

    `swa_source`: "raw" snapshots the model's weights (#620), "ema" snapshots the EMA (#754).
    `select` — fixed before evaluation unless stated:
    * "ema" / "swa": always that one (SWA with no snapshot falls back to EMA, with a warning);
    * "swa_if_snapshots": SWA when it holds at least `min_snapshots` snapshots, else EMA (#620
      exports SWA whenever it has more than one);
    * "best_on_validation": the runner scores the raw weights, EMA and SWA on the validation
      set and keeps the best (#754). That is selection on the test set: the result is labelled
      non-compliant. Use it only to reproduce such a number.
    """

    name = "ema_swa"

    def __init__(
        self,
        ema: EMA,
        swa: SWA,
        select: Literal["ema", "swa", "swa_if_snapshots", "best_on_validation"] = "ema",
        swa_source: Literal["raw", "ema"] = "raw",
        min_snapshots: int = 2,
    ) -> None:
        if select not in SELECT_RULES:
            raise UserError(f"train.averaging.select={select!r} is not one of {', '.join(SELECT_RULES)}")
        if swa_source not in ("raw", "ema"):
            raise UserError(f"train.averaging.swa_source={swa_source!r} must be raw or ema")
        if min_snapshots < 1:
            raise UserError(f"train.averaging.min_snapshots must be >= 1, got {min_snapshots}")
        self.ema, self.swa = ema, swa
        self.select, self.swa_source, self.min_snapshots = select, swa_source, min_snapshots
        self.selects_on_validation = select == "best_on_validation"
        self.chosen: str | None = None

    def update(self, model: nn.Module, step: int, lr_scale: float = 1.0) -> None:
        self.ema.update(model, step, lr_scale)
        if self.swa.due(step, lr_scale):
            source = self.ema.shadow if self.swa_source == "ema" and self.ema.shadow else _float_weights(model)
            self.swa.add(source, step)

    def _rule_choice(self) -> str:
        if self.select == "swa_if_snapshots":
            return "swa" if self.swa.count >= self.min_snapshots else "ema"
        if self.select == "swa" and not self.swa.count:
            warnings.warn("SWA took no snapshot; exporting the EMA instead", stacklevel=3)
            return "ema"
        return "swa" if self.select == "swa" else "ema"

    def averaged_state_dict(self, model: nn.Module) -> dict[str, Tensor]:
        if self.selects_on_validation:
            raise RuntimeError("select=best_on_validation: the runner must score candidates() and choose")
        self.chosen = self._rule_choice()
        part = self.swa if self.chosen == "swa" else self.ema
        return part.averaged_state_dict(model)

    def candidates(self, model: nn.Module) -> dict[str, dict[str, Tensor]]:
        out = {
            "raw": {n: t.detach() for n, t in model.state_dict().items()},
            "ema": self.ema.averaged_state_dict(model),
        }
        if self.swa.count:
            out["swa"] = self.swa.averaged_state_dict(model)
        return out

    def describe(self) -> dict[str, Any]:
        return {
            "method": "ema_swa",
            "select": self.select,
            "swa_source": self.swa_source,
            "min_snapshots": self.min_snapshots,
            "chosen": self.chosen,
            "ema": self.ema.describe(),
            "swa": self.swa.describe(),
        }

    def state_dict(self) -> dict[str, Any]:
        return {"ema": self.ema.state_dict(), "swa": self.swa.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.ema.load_state_dict(state["ema"])
        self.swa.load_state_dict(state["swa"])
