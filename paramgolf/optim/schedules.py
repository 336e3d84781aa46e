"""Learning-rate, momentum and weight-decay schedules as plain functions of (step, elapsed time).

Semantics follow the official naive baseline (`lr_mul` and the Muon momentum warm-up) and the
records (warm-down by a fraction of the wallclock to a MIN_LR floor, #1787; weight-decay taper, #1729).
"""

from __future__ import annotations

import math
from typing import Literal

from paramgolf.errors import UserError


def warmdown_lr_scale(
    step: int,
    elapsed_s: float,
    *,
    iterations: int,
    warmdown_iters: int,
    max_wallclock_s: float | None,
) -> float:
    """LR multiplier in [0, 1]: 1 until the warm-down, then a linear ramp to 0.

    Without a wallclock cap (None or <= 0) the ramp covers the last `warmdown_iters` of
    `iterations`. With a cap it covers the last `warmdown_iters * (elapsed_s / step)` seconds of
    the cap, i.e. the time the final `warmdown_iters` steps are expected to take at the mean step
    time so far. `warmdown_iters <= 0` disables the warm-down. Past the end the multiplier is 0
    (the official code returns 1 there, but never trains at those steps).
    """
    if warmdown_iters <= 0:
        return 1.0
    if max_wallclock_s is None or max_wallclock_s <= 0:
        if iterations <= 0:
            raise UserError(f"warmdown_lr_scale: iterations must be > 0 without a wallclock cap, got {iterations}")
        if step < iterations - warmdown_iters:
            return 1.0
        return max((iterations - step) / warmdown_iters, 0.0)
    mean_step_s = elapsed_s / max(step, 1)
    warmdown_s = warmdown_iters * mean_step_s
    remaining_s = max(max_wallclock_s - elapsed_s, 0.0)
    if remaining_s > warmdown_s:
        return 1.0
    return remaining_s / max(warmdown_s, 1e-12)


def momentum_warmup(step: int, start: float, end: float, warmup_steps: int) -> float:
    """Momentum rising linearly from `start` at step 0 to `end` at `warmup_steps`, then flat."""
    if warmup_steps <= 0:
        return end
    frac = min(step / warmup_steps, 1.0)
    return (1.0 - frac) * start + frac * end


def linear_warmup(step: int, warmup_iters: int) -> float:
    """LR warm-up multiplier: (step + 1) / warmup_iters for the first warmup_iters steps, then 1."""
    if warmup_iters <= 0 or step >= warmup_iters:
        return 1.0
    return (step + 1) / warmup_iters


def training_fraction(step: int, elapsed_s: float, *, iterations: int, max_wallclock_s: float | None) -> float:
    """How far training is, in [0, 1]: elapsed / cap under a wallclock cap (the cap the loop stops at,
    GPTQ's reserve already taken out), else step / iterations. Drives time-based switches (loop layers)."""
    cap = _cap(max_wallclock_s)
    if cap is not None:
        return min(max(elapsed_s / cap, 0.0), 1.0)
    if iterations <= 0:
        raise UserError(f"training_fraction: iterations must be > 0 without a wallclock cap, got {iterations}")
    return min(max(step / iterations, 0.0), 1.0)


def wd_taper_scale(frac: float, start: float | None, final_mul: float) -> float:
    """Weight-decay multiplier at training fraction `frac` (#1729): 1 up to `start`, then linear to
    `final_mul` at frac 1. `start` None: no taper (always 1)."""
    if start is None or frac <= start:
        return 1.0
    progress = min((frac - start) / (1.0 - start), 1.0)
    return 1.0 + (final_mul - 1.0) * progress


def _cap(max_wallclock_s: float | None) -> float | None:
    return max_wallclock_s if max_wallclock_s is not None and max_wallclock_s > 0 else None


class LRSchedule:
    """An LR multiplier as a plain function of (step, elapsed training seconds).

    Built by `train.schedule` (Hydra, `_partial_`) and completed by the runner with the run's
    `iterations` and wallclock cap; `scale(step, elapsed_s)` is what every group's lr is
    multiplied by at that step. `min_scale` is a floor, reached in one of two ways (`floor`):
    "blend" rescales the decay d ∈ [0, 1] to min_scale + (1 − min_scale)·d, so the ramp is gentler
    and ends at the floor; "clamp" is the records' MIN_LR (#1787, T:3356-3361): max(d, min_scale),
    the full ramp cut off where it meets the floor.
    """

    def __init__(
        self,
        *,
        iterations: int,
        max_wallclock_s: float | None,
        warmup_iters: int = 0,
        min_scale: float = 0.0,
        floor: Literal["blend", "clamp"] = "blend",
    ) -> None:
        if iterations < 1:
            raise UserError(f"train.iterations={iterations} must be ≥ 1")
        if warmup_iters < 0:
            raise UserError(f"train.schedule.warmup_iters={warmup_iters} must be ≥ 0")
        if not 0.0 <= min_scale <= 1.0:
            raise UserError(f"train.schedule.min_scale={min_scale} must be in [0, 1]")
        if floor not in ("blend", "clamp"):
            raise UserError(f"train.schedule.floor={floor!r} is not one of blend, clamp")
        self.floor = floor
        self.iterations = iterations
        self.max_wallclock_s = _cap(max_wallclock_s)
        self.warmup_iters = warmup_iters
        self.min_scale = min_scale

    def decay(self, step: int, elapsed_s: float) -> float:
        """The decaying part in [0, 1] (1 = full LR), before warm-up and floor."""
        raise NotImplementedError

    def __call__(self, step: int, elapsed_s: float) -> float:
        d = self.decay(step, elapsed_s)
        floored = max(d, self.min_scale) if self.floor == "clamp" else self.min_scale + (1.0 - self.min_scale) * d
        return linear_warmup(step, self.warmup_iters) * floored


class WarmdownSchedule(LRSchedule):
    """Flat, then a linear ramp to the floor: the official baseline's and the records' schedule.

    The ramp covers, in this order of precedence:
    * `warmdown_frac` (0 < f ≤ 1): the last f of the wallclock cap, or of the iterations without one;
    * `warmdown_iters`: the last N iterations, or with a wallclock cap the last N × (mean step
      time so far) seconds, as the official scripts estimate it (`warmdown_lr_scale`).
    """

    def __init__(
        self,
        *,
        iterations: int,
        max_wallclock_s: float | None,
        warmup_iters: int = 0,
        warmdown_iters: int = 1200,
        warmdown_frac: float | None = None,
        min_scale: float = 0.0,
        floor: Literal["blend", "clamp"] = "blend",
    ) -> None:
        super().__init__(
            iterations=iterations,
            max_wallclock_s=max_wallclock_s,
            warmup_iters=warmup_iters,
            min_scale=min_scale,
            floor=floor,
        )
        if warmdown_iters < 0:
            raise UserError(f"train.schedule.warmdown_iters={warmdown_iters} must be ≥ 0 (0: no warm-down)")
        if warmdown_frac is not None and not 0.0 < warmdown_frac <= 1.0:
            raise UserError(f"train.schedule.warmdown_frac={warmdown_frac} must be in (0, 1] or null")
        self.warmdown_iters = warmdown_iters
        self.warmdown_frac = warmdown_frac

    def decay(self, step: int, elapsed_s: float) -> float:
        f = self.warmdown_frac
        if f is None:
            return warmdown_lr_scale(
                step,
                elapsed_s,
                iterations=self.iterations,
                warmdown_iters=self.warmdown_iters,
                max_wallclock_s=self.max_wallclock_s,
            )
        if self.max_wallclock_s is not None:
            span, remaining = f * self.max_wallclock_s, max(self.max_wallclock_s - elapsed_s, 0.0)
        else:
            span, remaining = f * self.iterations, max(self.iterations - step, 0)
        return 1.0 if remaining >= span else remaining / span


class CosineSchedule(WarmdownSchedule):
    """The warm-down of `WarmdownSchedule` with a half-cosine shape instead of a straight line.

    Same keys, so a preset's warm-down settings carry over when the shape is switched. With
    `warmdown_frac: 1.0` (the `cosine` config's default) the whole run is one cosine from the
    base LR to the floor, by iterations or, under a wallclock cap, by elapsed time.
    """

    def decay(self, step: int, elapsed_s: float) -> float:
        r = super().decay(step, elapsed_s)  # the linear ramp: 1 before the warm-down, 0 at its end
        return 0.5 * (1.0 - math.cos(math.pi * r))


def schedule_table(schedule: LRSchedule, steps: list[int], step_s: float = 0.0) -> list[tuple[int, float]]:
    """(step, scale) rows at a constant step time, for plots and for checking a config by eye."""
    return [(s, schedule(s, s * step_s)) for s in steps]
