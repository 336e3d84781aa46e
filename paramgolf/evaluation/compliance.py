"""The legality verdict of an evaluation (DESIGN.md's four rules, the challenge's issue #1017).

Each evaluation component (the window method, TTT, the eval cache) declares which rules it keeps
(`rules_kept()`, keyed by `RULES`); the mechanical check (`paramgolf.evaluation.legality`, on by
default) overrides a declaration it disproves; the single-pass rule is also counted on the real
run; the time budgets are judged when the run is on the challenge's hardware. The verdict that
results.json, W&B and the printed summary carry:

    {causal, normalized, score_first, single_pass, within_budget, verdict, reasons, compliant, checked, budget}

`within_budget` is None (unknown) off the challenge's hardware; it never makes a run compliant on its own.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

RULES = ("causality", "normalization", "score_before_update", "single_pass")
CHECKED = {  # a rule's name in declarations → its key in the verdict (and in the check's output)
    "causality": "causal",
    "normalization": "normalized",
    "score_before_update": "score_first",
    "single_pass": "single_pass",
}
EVAL_CAP_S = 600.0  # the challenge caps evaluation at 10 minutes on 8×H100
TRAIN_CAP_S = 600.0  # and training (anything computed from training data after it, like GPTQ calibration, counts)
CHALLENGE_HARDWARE = "8×H100"


def time_budget(
    eval_time_s: float | None, train_time_s: float | None, hardware: str | None
) -> tuple[bool | None, dict[str, Any], list[str]]:
    """(within_budget, the figures it was judged on, reasons it failed). `hardware`: e.g. "8×H100", "1×cpu";
    times are comparable with the caps only on the challenge's hardware, elsewhere within_budget is None."""
    budget = {
        "hardware": hardware,
        "eval_time_s": eval_time_s,
        "eval_cap_s": EVAL_CAP_S,
        "train_time_s": train_time_s,
        "train_cap_s": TRAIN_CAP_S,
    }
    if hardware != CHALLENGE_HARDWARE:
        budget["note"] = f"unknown: measured on {hardware or 'unknown hardware'}, the caps hold on {CHALLENGE_HARDWARE}"
        return None, budget, []
    reasons = []
    if eval_time_s is not None and eval_time_s > EVAL_CAP_S:
        reasons.append(f"within_budget: evaluation took {eval_time_s:.0f} s, the cap is {EVAL_CAP_S:.0f} s")
    if train_time_s is not None and train_time_s > TRAIN_CAP_S:
        reasons.append(
            f"within_budget: training (with calibration on training data) took {train_time_s:.0f} s, "
            f"the cap is {TRAIN_CAP_S:.0f} s"
        )
    return not reasons, budget, reasons


def assess(
    evaluator: Any,
    ttt: Any,
    eval_cache: Any,
    *,
    num_scored: int,
    num_expected: int,
    weights_selected_on_validation: bool = False,
    checked: Mapping[str, Any] | None = None,
    within_budget: tuple[bool | None, dict[str, Any], list[str]] | None = None,
    read_ahead: Sequence[str] = (),
    rescored: int = 0,
) -> dict[str, Any]:
    """The verdict from the components' declarations, the mechanical check (`checked`), the count of
    scored tokens, the time budget (`time_budget(...)`'s triple) and the real run's own reads of
    unscored tokens (`read_ahead`) and re-scored targets (`rescored`), both logged by the scoring stream.

    `evaluator` (the `eval` group), `ttt` and `eval_cache` are the instantiated components; each
    declares `name` and `rules_kept()`. A component without a declaration is treated as breaking every rule.
    `weights_selected_on_validation`: the artifact's weights were chosen among candidates by
    their validation score (PR #754's raw/EMA/SWA pick). The scored tokens then influenced the
    artifact, which breaks causality ("depends only on the artifact and earlier tokens").
    """
    rules = dict.fromkeys(RULES, True)
    reasons: list[str] = []
    for group, comp in (("eval", evaluator), ("ttt", ttt), ("eval_cache", eval_cache)):
        kept = comp.rules_kept() if hasattr(comp, "rules_kept") else None
        method = getattr(comp, "name", type(comp).__name__)
        if kept is None:
            rules = dict.fromkeys(RULES, False)
            reasons.append(f"{group}={method}: no compliance declaration, treated as non-compliant")
            continue
        for rule, ok in kept.items():
            if not ok:
                rules[rule] = False
                reasons.append(f"{group}={method} declares it breaks {rule}")
    if weights_selected_on_validation:
        rules["causality"] = False
        reasons.append(
            "train.averaging.select=best_on_validation chose the weights by their validation "
            "score (selection on the test set)"
        )
    if checked is not None:  # the mechanical check overrides the declarations it disproves
        for rule, key in CHECKED.items():
            if checked.get(key) is False:
                rules[rule] = False
        reasons += [f"checked: {r}" for r in checked.get("reasons", [])]
    if read_ahead:
        rules["score_before_update"] = False
        reasons.append(f"score_first: the scored run {read_ahead[0]} ({len(read_ahead)} reads ahead in all)")
    if rescored:
        rules["single_pass"] = False
        reasons.append(f"single_pass: the scored run scored {rescored} targets more than once")
    if num_scored != num_expected:
        rules["single_pass"] = False
        reasons.append(f"single_pass: scored {num_scored} tokens, a single pass scores {num_expected}")
    ok_budget, budget, budget_reasons = within_budget or (None, {}, [])
    reasons += budget_reasons
    compliant = all(rules.values()) and ok_budget is not False
    return {
        **{CHECKED[r]: v for r, v in rules.items()},
        "within_budget": ok_budget,
        "verdict": "compliant" if compliant else "non-compliant",
        "reasons": reasons,
        "compliant": compliant,
        "checked": dict(checked) if checked is not None else None,  # None: declarations only (eval.compliance)
        "budget": budget or None,
    }


def summarize(verdict: Mapping[str, Any]) -> str:
    """One line: compliant, or NON-COMPLIANT with the reasons."""
    if verdict.get("compliant"):
        rules = "causal, normalized, score-first, single pass"
        how = "checked" if verdict.get("checked") is not None else "declared"
        budget = verdict.get("within_budget")
        time = "within the time caps" if budget else "time budget unknown" if budget is None else ""
        return f"compliant ({rules}: {how}; {time})"
    return "NON-COMPLIANT: " + "; ".join(verdict.get("reasons", []))
