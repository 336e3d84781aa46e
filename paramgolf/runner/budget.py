"""The budget before training: parameters, code bytes and the artifact-size estimate.

Each tensor's trained RMS is predicted from the optimizer rules and the LR schedule (a random
walk of per-step updates, see docs/budget-estimate.md), because int8 rows that stay small
compress better.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

from torch import nn

from paramgolf.errors import UserError
from paramgolf.export.bundle import script_bytes
from paramgolf.model.training import artifact_view
from paramgolf.optim.groups import as_rule, assign_params
from paramgolf.quant.estimate import codec_candidates, codec_table, estimate_model_bytes, surrogate_state_dict
from paramgolf.runner.build import count_params
from paramgolf.runner.plan import RunPlan, build_plan, lr_schedule_for

KAPPA = {"muon": 2.5, "adam": 0.65, "none": 0.0}  # frozen parameters keep their init
# The energy share of the direction a trained embedding's rows share (its top singular direction, rows
# normalised): 0.51 on the 200-step smoke run's tok_emb; its block matrices show none (docs/budget-estimate.md).
EMBEDDING_SHARED_SHARE = 0.7


def shared_shares(roles: Mapping[str, str]) -> dict[str, float]:
    """The surrogate's shared-direction share per tensor: the embeddings'."""
    return {name: EMBEDDING_SHARED_SHARE for name, role in roles.items() if role == "embedding"}


def lr_scale_square_sum(train: Mapping[str, Any]) -> float:
    """Σ_t s_t² over the steps the run is expected to take (`assumed_steps`), its warm-down included."""
    n = assumed_steps(train)
    schedule = lr_schedule_for({**train, "iterations": n, "max_wallclock_seconds": None})
    return sum(schedule(t, 0.0) ** 2 for t in range(n))


def assumed_steps(train: Mapping[str, Any]) -> int:
    """`train.expected_steps` when set (a wallclock-capped run stops long before `iterations`), else iterations."""
    return int(train.get("expected_steps") or train["iterations"])


def expected_drift_rms(
    model: nn.Module, optimizer_cfg: Mapping[str, Any], train: Mapping[str, Any]
) -> dict[str, float]:
    """Predicted RMS of every parameter's change during training (see the module docstring)."""
    walk = math.sqrt(lr_scale_square_sum(train))
    rules = [as_rule(r) for r in optimizer_cfg["rules"]]
    assigned = assign_params(list(model.named_parameters()), rules, model.parameter_roles())
    out: dict[str, float] = {}
    for rule in rules:
        for name, p in assigned.get(rule.name, []):
            if rule.optimizer == "muon" and p.ndim >= 2:
                r, c = p.shape[-2], p.shape[-1]
                u = math.sqrt(max(1.0, r / c)) / math.sqrt(max(r, c))
            else:
                u = 1.0
            out[name] = KAPPA[rule.optimizer] * rule.lr * u * walk
    return out


def budget_report(c: Mapping[str, Any], all_codecs: bool = False) -> dict[str, Any]:
    """The JSON object `paramgolf-budget` prints, for a resolved config (deterministic: seeded init).

    `all_codecs`: also compress the same quantized surrogate state with every codec setting of
    `quant.estimate.codec_candidates` (full compression, no row sampling) and list them, smallest first.
    """
    return estimate_budget(build_plan(c, world_size=int(c["train"]["nproc_per_node"])), all_codecs)


def estimate_budget(plan: RunPlan, all_codecs: bool = False) -> dict[str, Any]:
    """`budget_report` for a built plan (its model's initial weights are not changed)."""
    c = plan.config
    model, quantizer, codec = plan.model, plan.export.quantizer, plan.export.codec
    counts = count_params(model)
    code = script_bytes(plan.scoring.code_config)
    drift = expected_drift_rms(model, c["optimizer"], c["train"])
    arch, state = artifact_view(c["arch"], model.state_dict())  # training-only parts never reach the artifact
    roles = model.parameter_roles()
    shares = shared_shares(roles)
    est = estimate_model_bytes(
        state, quantizer, codec, arch, seed=0, matrix_rms=drift, init_weights=state, roles=roles, shared_share=shares
    )
    total = code + est.model_bytes
    out = {
        "name": c["name"],
        "params": counts["params"],
        "params_by_group": {k: v for k, v in counts.items() if k != "params"},
        "code_bytes": code,
        "estimated_model_bytes": est.model_bytes,
        "estimated_artifact_bytes": total,
        "budget_bytes": c["budget_bytes"],
        "fits": total <= c["budget_bytes"],
        "quantizer": c["quant"]["quantizer"]["_target_"].rsplit(".", 1)[-1],
        "codec": c["quant"]["codec"]["_target_"].rsplit(".", 1)[-1],
        "assumed_train_steps": assumed_steps(c["train"]),
    }
    if not out["fits"]:
        out["overshoot_bytes"] = total - c["budget_bytes"]
    if all_codecs:
        weights = surrogate_state_dict(state, seed=0, matrix_rms=drift, init_weights=state, shared_share=shares)
        qstate = quantizer.quantize(weights, roles=roles)
        rows = codec_table(qstate, arch, codec_candidates())
        for r in rows:
            r["artifact_bytes"] = None if r["model_bytes"] is None else r["model_bytes"] + code
            r["fits"] = r["artifact_bytes"] is not None and r["artifact_bytes"] <= c["budget_bytes"]
        out["codecs"] = rows
    return out


def check_budget(plan: RunPlan, mode: str, say: Callable[[str], None]) -> int | None:
    """The pre-training budget check (`budget_check`): the estimated artifact bytes, or None when off.

    `refuse` raises a UserError when the estimate does not fit; `warn` says so and lets the run go on.
    """
    if mode == "off":
        return None
    r = estimate_budget(plan)
    est, budget = r["estimated_artifact_bytes"], r["budget_bytes"]
    parts = f"model ~{r['estimated_model_bytes']:,} + code {r['code_bytes']:,}"
    if r["fits"]:
        say(f"budget: estimated artifact {est:,} bytes ({parts}) fits {budget:,}")
        return est
    msg = (
        f"the estimated artifact is {est:,} bytes ({parts}), over budget_bytes={budget:,} by {est - budget:,} "
        f"(`paramgolf-budget` shows the estimate)"
    )
    if mode == "refuse":
        raise UserError(f"{msg}: shrink the model or the quantizer's bits, or train anyway with budget_check=warn")
    say(f"WARNING: {msg}; training anyway (budget_check=warn)")
    return est
