"""The LR floor (D6): the records' clamp max(ramp, MIN_LR) next to our blend, on the time-based warm-down."""

from __future__ import annotations

import pytest

from paramgolf.optim.schedules import CosineSchedule, WarmdownSchedule, training_fraction

CAP = 599.5  # 600 s less #1855's GPTQ_RESERVE_SECONDS=0.5


def record_lr_mul(frac: float, warmdown_frac: float, min_lr: float) -> float:
    """D6 (T:3356-3361) as written: 1 before 1 − w, then max((1 − frac)/w, MIN_LR)."""
    if warmdown_frac <= 0:
        return 1.0
    if frac >= 1.0 - warmdown_frac:
        return max((1.0 - frac) / warmdown_frac, min_lr)
    return 1.0


def test_clamp_is_the_records_lr_mul_over_the_whole_run():
    s = WarmdownSchedule(iterations=20_000, max_wallclock_s=CAP, warmdown_frac=0.85, min_scale=0.1, floor="clamp")
    worst = 0.0
    for i in range(0, 6001):
        elapsed = CAP * i / 5000  # past the cap too
        frac = elapsed / CAP  # the record's training_frac (T:3351-3354), not clamped
        got, want = s(i, elapsed), record_lr_mul(frac, 0.85, 0.1)
        worst = max(worst, abs(got - want))
        assert training_fraction(i, elapsed, iterations=20_000, max_wallclock_s=CAP) == pytest.approx(min(frac, 1.0))
    assert worst < 1e-12
    # The exact points of the shape: flat to frac 0.15, the floor from frac 0.915 on.
    assert s(0, 0.0) == 1.0 and s(1, 0.15 * CAP) == 1.0
    assert s(1, 0.5 * CAP) == pytest.approx(0.5 / 0.85)
    assert s(1, 0.915 * CAP) == pytest.approx(0.1) and s(1, 0.95 * CAP) == 0.1 and s(1, CAP) == 0.1


def test_clamp_and_blend_differ_as_documented():
    kw = dict(iterations=1000, max_wallclock_s=None, warmdown_frac=0.5, min_scale=0.2)
    clamp, blend = WarmdownSchedule(floor="clamp", **kw), WarmdownSchedule(**kw)
    assert blend.floor == "blend"  # the default: every existing preset keeps its numbers
    for step, ramp in [(500, 1.0), (750, 0.5), (850, 0.3), (900, 0.2), (950, 0.1), (1000, 0.0)]:
        assert clamp(step, 0.0) == pytest.approx(max(ramp, 0.2))
        assert blend(step, 0.0) == pytest.approx(0.2 + 0.8 * ramp)
    assert clamp(800, 0.0) < blend(800, 0.0)  # clamp follows the full ramp until the floor


def test_blend_is_unchanged_by_the_switch():
    kw = dict(iterations=100, max_wallclock_s=None, warmup_iters=4, warmdown_iters=20, min_scale=0.1)
    s = WarmdownSchedule(**kw)
    assert [s(i, 0.0) for i in range(100)] == [
        min((i + 1) / 4, 1.0) * (0.1 + 0.9 * (1.0 if i < 80 else (100 - i) / 20)) for i in range(100)
    ]


def test_clamp_with_warmup_and_cosine():
    s = WarmdownSchedule(
        iterations=100, max_wallclock_s=None, warmup_iters=4, warmdown_frac=0.2, min_scale=0.3, floor="clamp"
    )
    assert s(1, 0.0) == pytest.approx(0.5) and s(90, 0.0) == pytest.approx(0.5) and s(95, 0.0) == pytest.approx(0.3)
    c = CosineSchedule(iterations=100, max_wallclock_s=None, warmdown_frac=1.0, min_scale=0.25, floor="clamp")
    assert c(50, 0.0) == pytest.approx(0.5) and c(90, 0.0) == pytest.approx(0.25)


def test_bad_floor_names_the_key():
    with pytest.raises(ValueError, match="train.schedule.floor"):
        WarmdownSchedule(iterations=10, max_wallclock_s=None, floor="max")


def test_pr1855_schedule_preset():
    from paramgolf.config.compose import compose, to_container
    from paramgolf.runner.plan import lr_schedule_for

    c = to_container(compose(["train/schedule=pr1855", "train.max_wallclock_seconds=599.5"]))
    s = lr_schedule_for(c["train"])
    assert (s.warmdown_frac, s.min_scale, s.floor, s.warmup_iters) == (0.85, 0.1, "clamp", 0)
    assert s(100, 0.6 * CAP) == pytest.approx(record_lr_mul(0.6, 0.85, 0.1))
    with pytest.raises(Exception, match="floor"):
        compose(["train.schedule.floor=bogus"])
