"""Console progress bar and the final summary block."""

from __future__ import annotations

import io

import pytest

from paramgolf.tracking.progress import TrainProgress, estimate_eta, format_summary


def test_progress_renders_step_loss_throughput_and_eta(monkeypatch):
    monkeypatch.delenv("RANK", raising=False)
    out = io.StringIO()
    bar = TrainProgress(total_steps=100, enabled=True, max_seconds=None, file=out)
    bar.update(step=10, loss=3.14159, tokens_per_s=1_234_567, elapsed_s=20.0)
    first = out.getvalue()
    # Non-TTY: the first update draws at once, later ones wait for mininterval (30 s).
    assert "10/100" in first and "loss 3.1416" in first and "1.23M tok/s" in first
    assert "ETA 0:03:00 (steps cap)" in first
    bar.update(step=11, loss=3.0, tokens_per_s=1e6, elapsed_s=22.0)
    assert out.getvalue() == first
    bar.close()
    assert "11/100" in out.getvalue() and "loss 3.0000" in out.getvalue()


def test_eta_uses_the_cap_that_ends_training_first():
    # 10 s/step, 90 steps left = 900 s, but the wallclock cap leaves 500 s.
    assert estimate_eta(10, 100, 100.0, 600.0) == (500.0, "wallclock")
    assert estimate_eta(10, 100, 100.0, 5000.0) == (900.0, "steps")
    assert estimate_eta(0, 100, 0.0, None) == (None, "steps")


def test_progress_is_silent_when_disabled_or_not_rank_zero(monkeypatch):
    out = io.StringIO()
    TrainProgress(10, enabled=False, max_seconds=None, file=out).update(1, 1.0, 1.0, 1.0)
    monkeypatch.setenv("RANK", "3")
    bar = TrainProgress(10, enabled=True, max_seconds=None, file=out)
    bar.update(1, 1.0, 1.0, 1.0)
    bar.close()
    assert out.getvalue() == ""
    with pytest.raises(AssertionError, match="total_steps"):  # train.iterations is checked up front
        TrainProgress(0, enabled=True, max_seconds=None)


RESULTS = {
    "val_bpb": 1.2244,
    "pre_quant_val_bpb": 1.2190,
    "round_trip_gap_bpb": 0.0054,
    "val_loss": 2.0673,
    "artifact_bytes": 15_863_489,
    "model_bytes": 15_815_847,
    "code_bytes": 47_642,
    "budget_bytes": 16_000_000,
    "params": 17_059_912,
    "steps": 13_780,
    "train_time_s": 600.0,
    "eval_time_s": 72.25,
}


def test_summary_shows_headline_budget_and_quant_cost():
    text = format_summary(RESULTS)
    assert "val_bpb" in text and "1.2244" in text
    assert "quantization cost +0.0054" in text
    assert "15,863,489 / 16,000,000" in text and "fits, 136,511 to spare" in text
    assert "OVER" not in text and "entropy" not in text and "compliance" not in text


def test_summary_flags_over_budget_entropy_gap_and_non_compliance():
    compliance = {"compliant": False, "checks": {"causality": True, "single_pass": False}}
    results = dict(RESULTS, artifact_bytes=16_000_100, entropy_floor_bpb=1.0, compliance=compliance)
    text = format_summary(results)
    assert "OVER BY 100 bytes" in text
    assert "gap +0.2244" in text
    assert "NON-COMPLIANT (single_pass)" in text
    assert "compliant" in format_summary({"compliance": True}) and "NON" not in format_summary({"compliance": True})


def test_summary_gives_no_quantization_cost_without_a_same_method_gap():
    text = format_summary({k: v for k, v in RESULTS.items() if k != "round_trip_gap_bpb"})
    assert "1.2190" in text and "quantization cost" not in text


def test_verdict_line_says_whether_the_artifact_fits_and_the_rules_held():
    ok = {"compliant": True, "violations": []}
    bad = {"compliant": False, "checks": {"single_pass": False}}
    assert "VALID (fits" in format_summary(dict(RESULTS, fits=True, compliance=ok))
    over = format_summary(dict(RESULTS, artifact_bytes=16_000_100, fits=False, compliance=ok))
    assert "NOT VALID: over budget by 100 bytes" in over and "evaluation" not in over.split("verdict")[1]
    both = format_summary(dict(RESULTS, artifact_bytes=16_000_100, fits=False, compliance=bad))
    assert "NOT VALID: over budget by 100 bytes; evaluation NON-COMPLIANT (single_pass)" in both
