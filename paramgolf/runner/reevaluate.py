"""Evaluate a saved run again, from its artifact alone or after re-quantizing its kept weights.

The run's own saved config (`.hydra/config.yaml`) is the base, so later changes to the conf
tree do not leak in; overrides may change how the model is evaluated and exported (`eval`,
`quant`, `ttt`, `eval_cache`, `data`, `budget_bytes`, `train.device`, `train.autocast`), never
what was trained — the artifact defines the model (a saved config describing another one is refused).
The run directory is untrusted input: its config is read by paramgolf.config.untrusted, so nothing
outside paramgolf's components is ever instantiated. Without the artifact, a `quant` override
re-quantizes the kept weights. `round_trip_gap_bpb` compares scores of one method only: when this
evaluation is scored differently from the source run's pre-quant score, the kept weights are scored
again this way (or the gap is left out, and the console says why).
"""

from __future__ import annotations

import datetime
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from paramgolf.config.candidate import saved_groups, with_overridden_groups
from paramgolf.config.compose import compose, to_container
from paramgolf.config.untrusted import check_components, load_saved_config, load_saved_overrides
from paramgolf.errors import UserError
from paramgolf.model.training import artifact_view
from paramgolf.quant.artifact import load_weights, read_artifact
from paramgolf.runner import distributed as D
from paramgolf.runner import stages as S
from paramgolf.runner.build import prepare_for_device, resolve_autocast
from paramgolf.runner.plan import RunPlan, build_plan
from paramgolf.runner.results import AveragingInfo, ModelInfo, TrainInfo, read_results

EVAL_GROUPS = ("eval", "quant", "ttt", "eval_cache", "data", "budget_bytes", "logger")
EVAL_TRAIN_KEYS = ("train.device", "train.autocast")


def _key(override: str) -> str:
    return override.lstrip("+~").split("=", 1)[0].replace("/", ".")


def _check_overrides(overrides: Sequence[str]) -> None:
    for o in overrides:
        key = _key(o)
        if key.split(".")[0] in EVAL_GROUPS or key in EVAL_TRAIN_KEYS:
            continue
        raise UserError(
            f"override {o!r} would change what was trained; paramgolf-eval only changes how the "
            f"artifact is evaluated or exported ({', '.join(EVAL_GROUPS + EVAL_TRAIN_KEYS)}). "
            f"Train a new run for it."
        )


def requantizes(overrides: Sequence[str]) -> bool:
    return any(_key(o).split(".")[0] == "quant" for o in overrides)


def offline_unless_asked(c: dict[str, Any], overrides: Sequence[str]) -> None:
    """The saved logger runs offline unless the command line names the logger: a run directory from
    elsewhere never makes paramgolf-eval send anything (`logger.mode=online` does)."""
    if "mode" in c["logger"] and not any(o.lstrip("+~").startswith("logger") for o in overrides):
        c["logger"]["mode"] = "offline"


def eval_config(run_dir: Path, overrides: Sequence[str]) -> dict[str, Any]:
    """The run's saved config with the groups named by `overrides` recomposed; checked before anything is built.

    The saved files are untrusted (paramgolf.config.untrusted): a `_target_` outside paramgolf's
    components, a resolver such as `${oc.env:...}` or an override reaching outside the config tree
    is refused here.
    """
    hydra_dir = Path(run_dir) / ".hydra"
    saved_cfg, saved_ovr = hydra_dir / "config.yaml", hydra_dir / "overrides.yaml"
    if not saved_cfg.is_file() or not saved_ovr.is_file():
        raise UserError(f"{hydra_dir} not found: {run_dir} is not a paramgolf-train run directory")
    _check_overrides(overrides)
    base = load_saved_config(saved_cfg)
    saved_overrides = load_saved_overrides(saved_ovr)
    if not overrides:
        return base
    fresh = to_container(compose(saved_overrides + list(overrides)))
    for o in overrides:
        key = _key(o)
        top = key.split(".")[0]
        if key in EVAL_TRAIN_KEYS:
            base["train"][key.split(".")[1]] = fresh["train"][key.split(".")[1]]
        else:
            base[top] = fresh[top]
    check_components(base, f"{saved_cfg} with {' '.join(overrides)}")
    return base


def _source_status(src: dict[str, Any]) -> str:
    """What the run's results.json says about how far it got."""
    if not src:
        return "no results.json"
    status = src.get("status")
    if status == "failed":
        return f"results.json: status failed at stage {src.get('failed_stage')}: {src.get('error')}"
    if status == "running":
        return "results.json: status running: the run is still going, or it was killed"
    return f"results.json: status {status}, so the artifact was written and has since been moved or deleted"


def _check_inputs(run_dir: Path, src: dict[str, Any], requantize: bool) -> None:
    """The artifact to score, or the kept weights to re-quantize, must be there."""
    artifact, weights = run_dir / S.ARTIFACT_FILE, run_dir / S.WEIGHTS_FILE
    if requantize and not weights.is_file():
        raise UserError(f"{weights} not found ({_source_status(src)}): there are no kept weights to re-quantize")
    if not requantize and not artifact.is_file():
        hint = (
            f"re-quantize from {weights} with a quant override, e.g. `paramgolf-eval {run_dir} quant=int8_zlib`"
            if weights.is_file()
            else f"{weights} is missing too: there is nothing to evaluate"
        )
        raise UserError(f"{artifact} not found ({_source_status(src)}); {hint}")


def _first_difference(a: Any, b: Any, path: str) -> str | None:
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b), key=str):
            found = _first_difference(a.get(k), b.get(k), f"{path}.{k}")
            if found:
                return found
        return None
    return None if a == b else f"{path} is {a!r} in the artifact, {b!r} in the config"


def _check_artifact_matches_config(artifact: Path, cfg: dict[str, Any], saved_cfg: Path) -> None:
    """The artifact defines the model: a saved config describing another one means two runs were mixed."""
    config_arch, _ = artifact_view(cfg["arch"], {})
    difference = _first_difference(read_artifact(artifact).arch_config, config_arch, "arch")
    if difference:
        raise UserError(
            f"{artifact} was not made with {saved_cfg}: {difference}; the run directory mixes two runs "
            f"(evaluate an artifact with its own run's .hydra/config.yaml)"
        )


def _load_kept_weights(model: torch.nn.Module, weights: Path, saved_cfg: Path) -> dict[str, torch.Tensor]:
    state, _ = load_weights(weights)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()
        raise UserError(
            f"{weights} does not fit the arch of {saved_cfg} ({first[1].strip() if len(first) > 1 else first[0]}); "
            f"the run directory mixes two runs"
        ) from None
    return state


def _scoring(e: dict[str, Any] | None) -> str:
    """`pre_quant_eval` / `eval` of results.json in words."""
    if not e:
        return "an unrecorded method"
    stride = f", stride {e.get('stride')}" if e.get("stride") else ""
    return f"{e.get('method')} (seq_len {e.get('seq_len')}{stride}, {e.get('num_tokens')} tokens)"


def reevaluate(run_dir: Path, overrides: Sequence[str] = (), out_dir: Path | None = None) -> int:
    """Write `<run_dir>/evals/<time>/results.json`; returns 0, or 3 when over budget."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UserError(f"run directory {run_dir} does not exist")
    overrides = list(overrides)
    requantize = requantizes(overrides)
    c = eval_config(run_dir, overrides)  # refuses a crafted run directory before anything is built
    offline_unless_asked(c, overrides)
    src = read_results(run_dir) if (run_dir / "results.json").is_file() else {}
    if not isinstance(src, dict):
        raise UserError(f"{run_dir / 'results.json'} does not hold a results object")
    _check_inputs(run_dir, src, requantize)
    saved_cfg, weights = run_dir / ".hydra" / "config.yaml", run_dir / S.WEIGHTS_FILE
    artifact = run_dir / S.ARTIFACT_FILE
    if artifact.is_file():
        _check_artifact_matches_config(artifact, c, saved_cfg)  # so the data is checked against its vocabulary
    plan = build_plan(c, world_size=1)
    stamp = datetime.datetime.now().strftime("%Y-%m-%d_%H-%M-%S-%f")
    out_dir = Path(out_dir) if out_dir else run_dir / "evals" / stamp
    env = D.init_distributed(0, 1, plan.runtime.device, plan.runtime.collective_timeout_s)
    info = S.run_info(
        plan,
        env,
        source_run=str(run_dir),
        overrides=overrides,
        source_git_commit=src.get("git_commit"),
        requantized=requantize,
    )
    info.world_size = src.get("world_size", info.world_size)  # the world the artifact was trained in
    out = S.RunOutput(out_dir, info, env, plan.logger, metrics=False, logfile=None)
    res = out.results
    if "params" in src:
        res.model = ModelInfo(params=src["params"], params_by_group=src.get("params_by_group") or {})
    res.train = TrainInfo(
        steps=src.get("steps"), train_time_s=src.get("train_time_s"), stopped_by=src.get("stopped_by")
    )
    res.averaging = AveragingInfo(
        pre_quant_val_bpb=src.get("pre_quant_val_bpb"),
        pre_quant_val_loss=src.get("pre_quant_val_loss"),
        pre_quant_eval=src.get("pre_quant_eval") if isinstance(src.get("pre_quant_eval"), dict) else None,
    )
    autocast = resolve_autocast(plan.runtime.autocast, env.device)
    model = plan.model
    try:
        out.start_logger(out_dir, job_type="eval", groups=with_overridden_groups(saved_groups(run_dir), overrides))
        with out.stage("data"):
            data, res.data = S.load_data(plan.data, plan.scoring.evaluator, plan.vocab_size, env.device)
        if requantize:
            with out.stage("export"):
                state = _load_kept_weights(model, weights, saved_cfg)
                cal = plan.calibration_data(data.dataset.train_files, env.device, autocast)
                artifact = out_dir / S.ARTIFACT_FILE
                meta = {"requantized_from": str(weights)}
                res.export = S.export(
                    plan.export, state, artifact, out, meta=meta, model=model.to(env.device), calibration=cal
                )
        score = S.Scorer(plan.scoring.evaluator, data.val, env, autocast)
        with out.stage("score"):
            pre = res.averaging  # the source run's pre-quant score, and how it was measured
            res.score = S.score_stage(
                artifact,
                score,
                plan.scoring,
                out,
                step=0,
                pre_quant_val_bpb=pre.pre_quant_val_bpb,
                pre_quant_eval=pre.pre_quant_eval,
            )
        if res.score.round_trip_gap_bpb is None and pre.pre_quant_val_bpb is not None:
            _same_method_pre_quant(run_dir, plan, model, score, out, saved_cfg)
        return S.report(out, artifact if requantize else None)  # a new artifact goes to the logger too
    finally:
        out.close()
        D.shutdown_distributed()


def _same_method_pre_quant(
    run_dir: Path, plan: RunPlan, model: torch.nn.Module, score: S.Scorer, out: S.RunOutput, saved_cfg: Path
) -> None:
    """The source's pre-quant score was measured another way: score its kept weights this way, for the gap.

    Without the weights (or with `eval.pre_quant=false`) the gap stays unreported, and the console says why.
    """
    res, weights = out.results, run_dir / S.WEIGHTS_FILE
    why = (
        f"the source run's pre_quant_val_bpb was scored with {_scoring(res.averaging.pre_quant_eval)}, "
        f"this round trip with {_scoring(res.score.eval)}"
    )
    adaptive = res.score.eval.get("ttt", "none") != "none" or res.score.eval.get("eval_cache", "none") != "none"
    if not weights.is_file() or not plan.scoring.evaluator.pre_quant or adaptive:
        reason = (
            f"{weights} is missing"
            if not weights.is_file()
            else "eval.pre_quant=false"
            if not plan.scoring.evaluator.pre_quant
            else "an evaluation-time method adapts on what it scores"
        )
        out.say(f"round_trip_gap_bpb not reported: {why}; {reason}, so the kept weights cannot be scored the same way")
        return
    with out.stage("pre_quant"):
        _load_kept_weights(model, weights, saved_cfg)
        model = prepare_for_device(model, score.env.device, plan.runtime.bf16_embeddings)  # as training scored it
        r = score(model)
        res.averaging = AveragingInfo(
            pre_quant_val_bpb=r.val_bpb, pre_quant_val_loss=r.val_loss, pre_quant_eval=S.scored_as(r)
        )
        scored = {k: res.score.eval.get(k) for k in S.SCORED_AS}
        res.score.round_trip_gap_bpb = S.round_trip_gap(res.score.val_bpb, scored, r.val_bpb, S.scored_as(r))
        out.say(
            f"{why}: scored the kept weights ({weights.name}) the same way: pre-quant val_loss:{r.val_loss:.4f} "
            f"val_bpb:{r.val_bpb:.4f}, round-trip gap {res.score.round_trip_gap_bpb or float('nan'):+.4f}"
        )
