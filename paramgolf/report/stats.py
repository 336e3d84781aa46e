"""The challenge's acceptance rule for a new record, as a test.

A record must lower the validation loss by at least 0.005 nats with p < 0.01 over its seeds.
We test that one-sided with Welch's t-test (unequal variances): H0 mean_ref − mean_cand ≤ margin,
H1 mean_ref − mean_cand > margin, on the per-seed val_loss of each candidate.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats

MARGIN_NATS = 0.005
ALPHA = 0.01


@dataclass(frozen=True)
class Improvement:
    improvement_nats: float  # mean_ref − mean_cand: positive is better
    p_value: float | None  # None: fewer than two seeds on a side (no variance to test with)
    t: float | None
    df: float | None


def improvement_test(
    reference: Sequence[float], candidate: Sequence[float], margin: float = MARGIN_NATS
) -> Improvement:
    """One-sided Welch t-test that `candidate`'s mean val_loss is below `reference`'s by more than `margin` nats."""
    ref, cand = np.asarray(reference, dtype=np.float64), np.asarray(candidate, dtype=np.float64)
    gain = float(ref.mean() - cand.mean())
    if ref.size < 2 or cand.size < 2:
        return Improvement(gain, None, None, None)
    res = stats.ttest_ind(ref - margin, cand, equal_var=False, alternative="greater")
    return Improvement(gain, float(res.pvalue), float(res.statistic), float(res.df))


def verdict(
    test: Improvement, *, compliant: bool, fits: bool, alpha: float = ALPHA, margin: float = MARGIN_NATS
) -> str:
    """'record', 'not significant' or 'worse'; a candidate that breaks a rule or the budget is never a record."""
    if test.improvement_nats <= 0:
        return "worse"
    if not fits:
        return "not a record (over budget)"
    if not compliant:
        return "not a record (non-compliant)"
    if test.p_value is None:
        return "not significant (needs 2+ seeds on each side)"
    if test.p_value < alpha and test.improvement_nats > margin:
        return "record"
    return "not significant"
