"""Learning-rate and momentum schedules as plain functions of (step, elapsed time).

Semantics follow the official naive baseline (`lr_mul` and the Muon momentum warm-up).
"""
from __future__ import annotations


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
            raise ValueError(f"warmdown_lr_scale: iterations must be > 0 without a wallclock cap, got {iterations}")
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
