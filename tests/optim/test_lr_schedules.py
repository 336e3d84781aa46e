"""LR schedules (warm-up, warm-down by iterations / wallclock / fraction, cosine) and momentum warm-up."""

from __future__ import annotations

import math

import pytest

from paramgolf.optim.schedules import (
    CosineSchedule,
    WarmdownSchedule,
    linear_warmup,
    momentum_warmup,
    schedule_table,
    warmdown_lr_scale,
)


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


# ---------------------------------------------------------------- schedule objects (train.schedule)
def test_warmdown_schedule_with_warmup_and_floor():
    s = WarmdownSchedule(iterations=100, max_wallclock_s=None, warmup_iters=4, warmdown_iters=20, min_scale=0.1)
    assert [s(i, 0.0) for i in range(4)] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    assert s(50, 0.0) == 1.0
    assert s(90, 0.0) == pytest.approx(0.1 + 0.9 * 0.5)  # halfway down the ramp, floor 0.1
    assert s(100, 0.0) == pytest.approx(0.1)
    assert linear_warmup(10, 0) == 1.0


def test_warmdown_frac_of_the_wallclock_and_of_the_iterations():
    s = WarmdownSchedule(iterations=10_000, max_wallclock_s=600.0, warmdown_frac=0.25)
    assert s(10, 400.0) == 1.0  # 200 s left ≥ 150 s
    assert s(10, 525.0) == pytest.approx(0.5)  # 75 of the last 150 s left
    assert s(10, 700.0) == 0.0
    t = WarmdownSchedule(iterations=200, max_wallclock_s=None, warmdown_frac=0.25)
    assert t(150, 0.0) == 1.0 and t(175, 0.0) == pytest.approx(0.5)


def test_wallclock_warmdown_uses_the_running_step_average():
    s = WarmdownSchedule(iterations=20_000, max_wallclock_s=600.0, warmdown_iters=3500)
    # 0.1 s/step so far: warm-down spans the last 350 s; at 425 s, 175 s remain
    assert s(4250, 425.0) == pytest.approx(0.5)
    assert s(2000, 200.0) == 1.0


def test_cosine_decay_with_floor_over_iterations_and_wallclock():
    s = CosineSchedule(iterations=100, max_wallclock_s=None, warmup_iters=10, warmdown_frac=1.0, min_scale=0.2)
    assert s(0, 0.0) == pytest.approx(0.1 * (0.2 + 0.8 * 1.0))  # warm-up 1/10 of the (still full) decay
    assert s(50, 0.0) == pytest.approx(0.2 + 0.8 * 0.5)  # halfway through the run
    assert s(25, 0.0) == pytest.approx(0.2 + 0.8 * 0.5 * (1 + math.cos(math.pi * 0.25)))
    assert s(100, 0.0) == pytest.approx(0.2)
    capped = CosineSchedule(iterations=10**6, max_wallclock_s=100.0, warmdown_frac=1.0)
    assert capped(5, 25.0) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.25)))  # time is the progress
    tail = CosineSchedule(iterations=100, max_wallclock_s=None, warmdown_iters=20, warmdown_frac=None)
    assert tail(70, 0.0) == 1.0 and tail(90, 0.0) == pytest.approx(0.5) and tail(95, 0.0) < 0.25
    rows = schedule_table(s, [10, 50, 100])
    assert [r[0] for r in rows] == [10, 50, 100] and rows[-1][1] == pytest.approx(0.2)


@pytest.mark.parametrize(
    "cls, kwargs, key",
    [
        (WarmdownSchedule, dict(warmdown_frac=1.5), "warmdown_frac"),
        (WarmdownSchedule, dict(warmdown_iters=-1), "warmdown_iters"),
        (CosineSchedule, dict(min_scale=2.0), "min_scale"),
        (CosineSchedule, dict(warmdown_frac=0.0), "warmdown_frac"),
        (CosineSchedule, dict(warmup_iters=-3), "warmup_iters"),
    ],
)
def test_bad_schedule_settings_name_the_key(cls, kwargs, key):
    with pytest.raises(ValueError, match=f"train.schedule.{key}"):
        cls(iterations=10, max_wallclock_s=None, **kwargs)


def test_schedule_group_builds_through_hydra():
    from paramgolf.config.compose import compose, to_container
    from paramgolf.runner.plan import lr_schedule_for

    c = to_container(
        compose(
            [
                "experiment=smoke",
                "train/schedule=cosine",
                "train.schedule.min_scale=0.05",
                "train.iterations=100",
                "train.max_wallclock_seconds=null",
            ]
        )
    )  # smoke sets warmdown_iters
    s = lr_schedule_for(c["train"])
    assert isinstance(s, CosineSchedule) and s(100, 0.0) == pytest.approx(0.05)
    d = lr_schedule_for(to_container(compose([]))["train"])
    assert isinstance(d, WarmdownSchedule) and d.warmdown_iters == 1200 and d.max_wallclock_s == 600.0
