"""Warm-down and momentum warm-up values at hand-picked points."""
from __future__ import annotations

import pytest

from paramgolf.optim.schedules import momentum_warmup, warmdown_lr_scale


@pytest.mark.parametrize(
    "step, expected",
    [(0, 1.0), (79, 1.0), (80, 1.0), (90, 0.5), (99, 0.05), (100, 0.0), (150, 0.0)],
)
def test_warmdown_by_iterations(step, expected):
    # 100 iterations, the last 20 ramp linearly to 0; elapsed time is ignored without a cap.
    got = warmdown_lr_scale(step, 1e9, iterations=100, warmdown_iters=20, max_wallclock_s=None)
    assert got == pytest.approx(expected)


@pytest.mark.parametrize(
    "step, elapsed_s, expected",
    [
        (0, 0.0, 1.0),  # no step time measured yet
        (100, 10.0, 1.0),  # 0.1 s/step: warm-down 120 s < 590 s left
        (100, 60.0, 0.75),  # 0.6 s/step: warm-down 720 s > 540 s left -> 540 / 720
        (900, 540.0, 60.0 / 720.0),  # still 0.6 s/step, 60 s left
        (1000, 600.0, 0.0),  # at the cap
        (1100, 660.0, 0.0),  # past the cap
    ],
)
def test_warmdown_by_wallclock(step, elapsed_s, expected):
    got = warmdown_lr_scale(step, elapsed_s, iterations=20_000, warmdown_iters=1200, max_wallclock_s=600.0)
    assert got == pytest.approx(expected)


def test_warmdown_off_and_cap_off():
    assert warmdown_lr_scale(99, 599.0, iterations=100, warmdown_iters=0, max_wallclock_s=600.0) == 1.0
    # A cap <= 0 means no cap (the official MAX_WALLCLOCK_SECONDS=0): back to iterations.
    assert warmdown_lr_scale(90, 599.0, iterations=100, warmdown_iters=20, max_wallclock_s=0.0) == pytest.approx(0.5)
    # Warm-down longer than the run: the ramp starts at step 0 below 1.
    assert warmdown_lr_scale(0, 0.0, iterations=50, warmdown_iters=100, max_wallclock_s=None) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="iterations"):
        warmdown_lr_scale(0, 0.0, iterations=0, warmdown_iters=10, max_wallclock_s=None)


@pytest.mark.parametrize("step, expected", [(0, 0.85), (100, 0.87), (250, 0.90), (500, 0.95), (5000, 0.95)])
def test_momentum_warmup(step, expected):
    assert momentum_warmup(step, 0.85, 0.95, 500) == pytest.approx(expected)


def test_momentum_warmup_disabled():
    assert momentum_warmup(0, 0.85, 0.95, 0) == 0.95
