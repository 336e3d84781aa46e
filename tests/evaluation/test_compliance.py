"""The legality verdict written into results.json."""

from __future__ import annotations

from paramgolf.evaluation import compliance
from paramgolf.evaluation.eval_cache import NoEvalCache
from paramgolf.evaluation.ttt import NoTTT
from paramgolf.evaluation.windows import NonOverlapping, Sliding

SLIDING, PLAIN = Sliding(stride=64, seq_len=128), NonOverlapping(seq_len=128)


class PeekingTTT:
    """A stand-in for a method that trains on tokens before scoring them."""

    name = "peek"

    def rules_kept(self):
        return {**dict.fromkeys(compliance.RULES, True), "score_before_update": False}


def test_baseline_evaluation_is_compliant():
    v = compliance.assess(SLIDING, NoTTT(), NoEvalCache(), num_scored=99, num_expected=99)
    assert v["compliant"] and not v["violations"] and all(v[r] for r in compliance.RULES)


def test_a_declared_violation_is_labelled():
    v = compliance.assess(PLAIN, PeekingTTT(), NoEvalCache(), num_scored=10, num_expected=10)
    assert not v["compliant"] and v["score_before_update"] is False and v["causality"] is True
    assert v["violations"] == ["ttt=peek breaks score_before_update"]
    assert compliance.summarize(v).startswith("NON-COMPLIANT")


def test_tokens_scored_twice_or_skipped_break_single_pass():
    v = compliance.assess(SLIDING, NoTTT(), NoEvalCache(), num_scored=101, num_expected=100)
    assert not v["compliant"] and v["single_pass"] is False


def test_a_component_without_declaration_is_never_assumed_legal():
    v = compliance.assess(SLIDING, object(), NoEvalCache(), num_scored=5, num_expected=5)
    assert not v["compliant"] and "no compliance declaration" in v["violations"][0]


def test_expected_counts_follow_each_method():
    assert SLIDING.expected_scored(1001) == 1000
    assert PLAIN.expected_scored(1001) == 896


def test_an_evaluator_without_declaration_is_never_assumed_legal():
    v = compliance.assess(object(), NoTTT(), NoEvalCache(), num_scored=5, num_expected=5)
    assert not v["compliant"] and v["violations"][0].startswith("eval=object")
