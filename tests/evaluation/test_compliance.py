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
    assert v["compliant"] and v["verdict"] == "compliant" and not v["reasons"]
    assert all(v[k] for k in ("causal", "normalized", "score_first", "single_pass")) and v["within_budget"] is None


def test_a_declared_violation_is_labelled():
    v = compliance.assess(PLAIN, PeekingTTT(), NoEvalCache(), num_scored=10, num_expected=10)
    assert not v["compliant"] and v["score_first"] is False and v["causal"] is True
    assert v["verdict"] == "non-compliant" and v["reasons"] == ["ttt=peek declares it breaks score_before_update"]
    assert compliance.summarize(v).startswith("NON-COMPLIANT")


def test_tokens_scored_twice_or_skipped_break_single_pass():
    v = compliance.assess(SLIDING, NoTTT(), NoEvalCache(), num_scored=101, num_expected=100)
    assert not v["compliant"] and v["single_pass"] is False


def test_a_component_without_declaration_is_never_assumed_legal():
    v = compliance.assess(SLIDING, object(), NoEvalCache(), num_scored=5, num_expected=5)
    assert not v["compliant"] and "no compliance declaration" in v["reasons"][0]


def test_expected_counts_follow_each_method():
    assert SLIDING.expected_scored(1001) == 1000
    assert PLAIN.expected_scored(1001) == 896


def test_an_evaluator_without_declaration_is_never_assumed_legal():
    v = compliance.assess(object(), NoTTT(), NoEvalCache(), num_scored=5, num_expected=5)
    assert not v["compliant"] and v["reasons"][0].startswith("eval=object")


def test_the_time_budget_is_judged_only_on_the_challenge_hardware():
    unknown = compliance.time_budget(900.0, 100.0, "1×cpu")
    assert unknown[0] is None and "unknown" in unknown[1]["note"] and unknown[2] == []
    v = compliance.assess(SLIDING, NoTTT(), NoEvalCache(), num_scored=5, num_expected=5, within_budget=unknown)
    assert v["compliant"] and v["within_budget"] is None and "time budget unknown" in compliance.summarize(v)
    slow = compliance.time_budget(601.0, 590.0, "8×H100")
    assert slow[0] is False and "evaluation took 601 s" in slow[2][0]
    v = compliance.assess(SLIDING, NoTTT(), NoEvalCache(), num_scored=5, num_expected=5, within_budget=slow)
    assert not v["compliant"] and v["within_budget"] is False and v["reasons"] == slow[2]
    late = compliance.time_budget(100.0, 612.0, "8×H100")  # GPTQ calibration after the cap counts as training
    assert late[0] is False and "training" in late[2][0]
    assert compliance.time_budget(599.0, 600.0, "8×H100")[0] is True


def test_the_check_and_the_real_runs_own_evidence_override_declarations():
    checked = {"causal": False, "normalized": True, "score_first": True, "single_pass": True, "reasons": ["x at 5"]}
    v = compliance.assess(SLIDING, NoTTT(), NoEvalCache(), num_scored=5, num_expected=5, checked=checked)
    assert not v["compliant"] and v["causal"] is False and v["reasons"] == ["checked: x at 5"]
    v = compliance.assess(SLIDING, NoTTT(), NoEvalCache(), num_scored=5, num_expected=5, read_ahead=["read 3"])
    assert v["score_first"] is False and "read 3" in v["reasons"][0]
    v = compliance.assess(SLIDING, NoTTT(), NoEvalCache(), num_scored=5, num_expected=5, rescored=2)
    assert v["single_pass"] is False and "2 targets more than once" in v["reasons"][0]
