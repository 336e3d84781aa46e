"""The legality verdict written into results.json."""
from __future__ import annotations

from paramgolf.evaluation import compliance
from paramgolf.evaluation.eval_cache import NoEvalCache
from paramgolf.evaluation.ttt import NoTTT


class PeekingTTT:
    """A stand-in for a method that trains on tokens before scoring them."""
    name = "peek"

    def rules_kept(self):
        return {**dict.fromkeys(compliance.RULES, True), "score_before_update": False}


def test_baseline_evaluation_is_compliant():
    v = compliance.assess("sliding", NoTTT(), NoEvalCache(), num_scored=99, num_expected=99)
    assert v["compliant"] and not v["violations"] and all(v[r] for r in compliance.RULES)


def test_a_declared_violation_is_labelled():
    v = compliance.assess("non_overlapping", PeekingTTT(), NoEvalCache(), num_scored=10, num_expected=10)
    assert not v["compliant"] and v["score_before_update"] is False and v["causality"] is True
    assert v["violations"] == ["ttt=peek breaks score_before_update"]
    assert compliance.summarize(v).startswith("NON-COMPLIANT")


def test_tokens_scored_twice_or_skipped_break_single_pass():
    v = compliance.assess("sliding", NoTTT(), NoEvalCache(), num_scored=101, num_expected=100)
    assert not v["compliant"] and v["single_pass"] is False


def test_a_component_without_declaration_is_never_assumed_legal():
    v = compliance.assess("sliding", object(), NoEvalCache(), num_scored=5, num_expected=5)
    assert not v["compliant"] and "no compliance declaration" in v["violations"][0]


def test_expected_counts_follow_each_method():
    assert compliance.expected_scored_tokens("sliding", 1001, 128) == 1000
    assert compliance.expected_scored_tokens("non_overlapping", 1001, 128) == 896
