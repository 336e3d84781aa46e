"""The four legality rules of evaluation (DESIGN.md, challenge issue #1017) as a verdict.

Each evaluation component (the window method, TTT, the eval cache) declares which rules it
keeps; the verdict also checks the single-pass rule against the number of tokens scored.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

RULES = ("causality", "normalization", "score_before_update", "single_pass")
CHECKED = {
    "causality": "causal",
    "normalization": "normalized",
    "score_before_update": "score_first",
    "single_pass": "single_pass",
}


def assess(
    evaluator: Any,
    ttt: Any,
    eval_cache: Any,
    *,
    num_scored: int,
    num_expected: int,
    weights_selected_on_validation: bool = False,
    checked: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Verdict per rule plus `compliant` and human-readable `violations`.

    `evaluator` (the `eval` group), `ttt` and `eval_cache` are the instantiated components; each
    declares `name` and `rules_kept()`. A component without a declaration is treated as breaking every rule.
    `weights_selected_on_validation`: the artifact's weights were chosen among candidates by
    their validation score (PR #754's raw/EMA/SWA pick). The scored tokens then influenced the
    artifact, which breaks causality ("depends only on the artifact and earlier tokens").
    """
    verdict = dict.fromkeys(RULES, True)
    violations: list[str] = []
    declarations = []
    for group, comp in (("eval", evaluator), ("ttt", ttt), ("eval_cache", eval_cache)):
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
        violations.append(
            "train.averaging.select=best_on_validation chose the weights by their validation "
            "score (selection on the test set)"
        )
    if checked is not None:  # the mechanical check (paramgolf.evaluation.legality) overrides the declarations
        for rule, key in CHECKED.items():
            if checked.get(key) is False:
                verdict[rule] = False
        violations += [f"checked: {r}" for r in checked.get("reasons", [])]
    if num_scored != num_expected:
        verdict["single_pass"] = False
        violations.append(f"scored {num_scored} tokens, a single pass scores {num_expected}")
    out = {**verdict, "compliant": all(verdict[r] for r in RULES), "violations": violations}
    out["checked"] = dict(checked) if checked is not None else None  # None: declarations only (eval.compliance)
    return out


def summarize(verdict: Mapping[str, Any]) -> str:
    if verdict.get("compliant"):
        return "compliant (causal, normalized, score-before-update, single pass)"
    return "NON-COMPLIANT: " + "; ".join(verdict.get("violations", []))
