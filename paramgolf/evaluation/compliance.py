"""The four legality rules of evaluation (DESIGN.md, challenge issue #1017) as a verdict.

Each evaluation component declares which rules it keeps; the verdict also checks the
single-pass rule against the number of tokens actually scored.
"""
from __future__ import annotations

from typing import Any, Mapping

RULES = ("causality", "normalization", "score_before_update", "single_pass")

# What each known option guarantees. Options that break a rule list it as False.
_METHOD_RULES: dict[tuple[str, str], dict[str, bool]] = {
    ("eval", "non_overlapping"): dict.fromkeys(RULES, True),
    ("eval", "sliding"): dict.fromkeys(RULES, True),
    ("ttt", "none"): dict.fromkeys(RULES, True),
    ("eval_cache", "none"): dict.fromkeys(RULES, True),
}


def expected_scored_tokens(method: str, num_val_tokens: int, seq_len: int) -> int:
    """Targets a single pass scores: the official range drops the tail; sliding scores all."""
    if method == "sliding":
        return num_val_tokens - 1
    return ((num_val_tokens - 1) // seq_len) * seq_len


def assess(eval_method: str, ttt_method: str, cache_method: str, *, num_scored: int,
           num_expected: int) -> dict[str, Any]:
    """Verdict per rule plus `compliant` and human-readable `violations`."""
    verdict = dict.fromkeys(RULES, True)
    violations: list[str] = []
    for group, method in (("eval", eval_method), ("ttt", ttt_method), ("eval_cache", cache_method)):
        rules = _METHOD_RULES.get((group, method))
        if rules is None:
            verdict = {r: False for r in RULES}
            violations.append(f"{group}={method}: no compliance declaration, treated as non-compliant")
            continue
        for rule, ok in rules.items():
            if not ok:
                verdict[rule] = False
                violations.append(f"{group}={method} breaks {rule}")
    if num_scored != num_expected:
        verdict["single_pass"] = False
        violations.append(f"scored {num_scored} tokens, a single pass scores {num_expected}")
    return {**verdict, "compliant": all(verdict[r] for r in RULES), "violations": violations}


def summarize(verdict: Mapping[str, Any]) -> str:
    if verdict.get("compliant"):
        return "compliant (causal, normalized, score-before-update, single pass)"
    return "NON-COMPLIANT: " + "; ".join(verdict.get("violations", []))
