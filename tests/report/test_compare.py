"""paramgolf-compare: candidates from results.json files, and the challenge's acceptance test."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import pytest
from scipy import stats

from paramgolf.report.compare import find_results, format_table, load_candidates, summarize
from paramgolf.report.stats import improvement_test, verdict


def _welch_by_hand(ref, cand, margin=0.005):
    """Welch's one-sided test written out: t on (mean_ref - margin) - mean_cand, Welch–Satterthwaite df."""
    ref, cand = np.asarray(ref), np.asarray(cand)
    vr, vc = ref.var(ddof=1) / ref.size, cand.var(ddof=1) / cand.size
    t = (ref.mean() - margin - cand.mean()) / math.sqrt(vr + vc)
    df = (vr + vc) ** 2 / (vr**2 / (ref.size - 1) + vc**2 / (cand.size - 1))
    return t, df, stats.t.sf(t, df)


def test_the_acceptance_test_is_welchs_one_sided_t_test_with_the_margin():
    ref, cand = [1.000, 1.001, 0.999, 1.0005], [0.990, 0.989, 0.991, 0.9905, 0.9895]
    t, df, p = _welch_by_hand(ref, cand)
    got = improvement_test(ref, cand)
    assert got.t == pytest.approx(t, rel=1e-12) and got.df == pytest.approx(df, rel=1e-12)
    assert got.p_value == pytest.approx(p, rel=1e-10) and got.p_value < 0.01
    assert got.improvement_nats == pytest.approx(np.mean(ref) - np.mean(cand), abs=1e-15)
    assert verdict(got, compliant=True, fits=True) == "record"


def test_a_better_mean_is_not_significant_when_the_seeds_disagree():
    ref, cand = [1.000, 1.020, 0.980], [0.985, 1.005, 0.975]  # 0.0117 nats better on average, noisy
    got = improvement_test(ref, cand)
    assert got.improvement_nats > 0.005 and got.p_value > 0.01
    assert got.p_value == pytest.approx(_welch_by_hand(ref, cand)[2], rel=1e-10)
    assert verdict(got, compliant=True, fits=True) == "not significant"
    small = improvement_test([1.0, 1.0001, 0.9999], [0.997, 0.9971, 0.9969])  # significant, but under 0.005 nats
    assert verdict(small, compliant=True, fits=True) == "not significant"


def test_worse_non_compliant_over_budget_and_single_seed_are_never_records():
    good = improvement_test([1.000, 1.001, 0.999], [0.990, 0.991, 0.989])
    assert verdict(good, compliant=False, fits=True) == "not a record (non-compliant)"
    assert verdict(good, compliant=True, fits=False) == "not a record (over budget)"
    assert verdict(improvement_test([0.99, 0.991], [1.0, 1.001]), compliant=True, fits=True) == "worse"
    one = improvement_test([1.0, 1.001], [0.98])
    assert one.p_value is None and verdict(one, compliant=True, fits=True).startswith("not significant")


def _write(root, name, seed, loss, *, status="ok", fits=True, compliant=True, sub="runs"):
    d = root / sub / f"{name}-{seed}"
    d.mkdir(parents=True)
    r = {
        "status": status,
        "name": name,
        "seed": seed,
        "val_loss": loss,
        "val_bpb": loss / 1.5,
        "artifact_bytes": 15_000_000 + seed,
        "fits": fits,
        "train_time_s": 600.0,
        "eval_time_s": 100.0,
        "compliance": {"compliant": compliant, "verdict": "compliant" if compliant else "non-compliant"},
    }
    (d / "results.json").write_text(json.dumps(r))
    return d


def test_runs_group_into_candidates_with_the_test_against_the_reference(tmp_path):
    for seed, loss in ((1, 1.000), (2, 1.001), (3, 0.999)):
        _write(tmp_path, "base", seed, loss)
        _write(tmp_path, "xsa", seed, loss - 0.010)
        _write(tmp_path, "slot", seed, loss - 0.2, compliant=False)
    _write(tmp_path, "base", 4, 2.0, status="failed")
    (tmp_path / "runs" / "base-1" / "evals" / "e").mkdir(parents=True)
    (tmp_path / "runs" / "base-1" / "evals" / "e" / "results.json").write_text("{}")  # a re-evaluation: not a run
    files = find_results([tmp_path])
    assert len(files) == 10
    candidates, skipped = load_candidates(files)
    assert sorted(candidates) == ["base", "slot", "xsa"] and len(skipped) == 1 and "failed" in skipped[0]
    rows = {r["candidate"]: r for r in summarize(candidates, reference="base")}
    assert rows["base"]["seeds"] == [1, 2, 3] and rows["base"]["val_loss"] == pytest.approx(1.0)
    assert rows["base"]["val_loss_std"] == pytest.approx(0.001) and "verdict" not in rows["base"]
    assert rows["xsa"]["verdict"] == "record" and rows["xsa"]["improvement_nats"] == pytest.approx(0.010)
    assert rows["slot"]["verdict"] == "not a record (non-compliant)" and rows["slot"]["compliant"] is False
    table = format_table(list(rows.values()), "base")
    assert "| xsa | 1,2,3 |" in table and "record" in table and "(reference)" in table


def test_the_cli_prints_the_table_and_refuses_an_unknown_reference(tmp_path):
    for seed, loss in ((1, 1.0), (2, 1.01)):
        _write(tmp_path, "a", seed, loss)
        _write(tmp_path, "b", seed, loss + 0.1)
    cmd = [sys.executable, "-m", "paramgolf.cli.compare", str(tmp_path)]
    ok = subprocess.run(cmd + ["--reference", "a"], capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0 and "| b | 1,2 |" in ok.stdout and "worse" in ok.stdout
    _write(tmp_path, "a", 2, 1.0, sub="again")
    twice = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert twice.returncode == 0 and "| a | 1,2,2 |" in twice.stdout and "ran seed 2 more than once" in twice.stderr
    bad = subprocess.run(cmd + ["--reference", "c"], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "'c' is not a candidate here" in bad.stderr and "Traceback" not in bad.stderr
    missing = subprocess.run(cmd[:-1] + [str(tmp_path / "nope")], capture_output=True, text=True, timeout=120)
    assert missing.returncode == 2 and "no such file or directory" in missing.stderr
