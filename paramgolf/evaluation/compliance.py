"""The four legality rules of evaluation (DESIGN.md, challenge issue #1017) as a verdict.

Each evaluation component declares which rules it keeps; the verdict also checks the
single-pass rule against the number of tokens actually scored.
"""
from __future__ import annotations

from typing import Any, Mapping

RULES = ("causality", "normalization", "score_before_update", "single_pass")

# Both window schemes are causal softmax scoring; single pass is checked from the counts.
EVAL_METHOD_RULES: dict[str, dict[str, bool]] = {
    "non_overlapping": dict.fromkeys(RULES, True),
    "sliding": dict.fromkeys(RULES, True),
}


def expected_scored_tokens(method: str, num_val_tokens: int, seq_len: int) -> int:
    """Targets a single pass scores: the official range drops the tail; sliding scores all."""
    if method == "sliding":
        return num_val_tokens - 1
    return ((num_val_tokens - 1) // seq_len) * seq_len


def assess(eval_method: str, ttt: Any, eval_cache: Any, *, num_scored: int,
           num_expected: int, weights_selected_on_validation: bool = False) -> dict[str, Any]:
    """Verdict per rule plus `compliant` and human-readable `violations`.

    `ttt` and `eval_cache` are the instantiated components; each declares `name` and
    `rules_kept()`. A component without a declaration is treated as breaking every rule.
    `weights_selected_on_validation`: the artifact's weights were chosen among candidates by
    their validation score (PR #754's raw/EMA/SWA pick). The scored tokens then influenced the
    artifact, which breaks causality ("depends only on the artifact and earlier tokens").
    """
    verdict = dict.fromkeys(RULES, True)
    violations: list[str] = []
    declarations = [("eval", eval_method, EVAL_METHOD_RULES.get(eval_method))]
    for group, comp in (("ttt", ttt), ("eval_cache", eval_cache)):
        kept = comp.rules_kept() if hasattr(comp, "rules_kept") else None
        declarations.append((group, getattr(comp, "name", type(comp).__name__), kept))
    for group, method, rules in declarations:
        if rules is None:
            verdict = {r: False for r in RULES}
            violations.append(f"{group}={method}: no compliance declaration, treated as non-compliant")
            continue
        for rule, ok in rules.items():
            if not ok:
                verdict[rule] = False
                violations.append(f"{group}={method} breaks {rule}")
    if weights_selected_on_validation:
        verdict["causality"] = False
        violations.append("train.averaging.select=best_on_validation chose the weights by their validation "
                          "score (selection on the test set)")
    if num_scored != num_expected:
        verdict["single_pass"] = False
        violations.append(f"scored {num_scored} tokens, a single pass scores {num_expected}")
    return {**verdict, "compliant": all(verdict[r] for r in RULES), "violations": violations}


def summarize(verdict: Mapping[str, Any]) -> str:
    if verdict.get("compliant"):
        return "compliant (causal, normalized, score-before-update, single pass)"
    return "NON-COMPLIANT: " + "; ".join(verdict.get("violations", []))
