"""Evaluate a saved run again, from its artifact alone or after re-quantizing its kept weights.

The run's own saved config (`.hydra/config.yaml`) is the base, so later changes to the conf
tree do not leak in; overrides may change how the model is evaluated and exported (`eval`,
`quant`, `ttt`, `eval_cache`, `data`, `budget_bytes`, `train.device`, `train.autocast`), never
what was trained — the artifact defines the model.
"""

from __future__ import annotations

import datetime
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml
from omegaconf import OmegaConf

from paramgolf.config.compose import compose, to_container
from paramgolf.errors import UserError
from paramgolf.quant.artifact import load_weights
from paramgolf.runner import distributed as D
from paramgolf.runner import stages as S
from paramgolf.runner.build import resolve_autocast
from paramgolf.runner.plan import build_plan
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


def eval_config(run_dir: Path, overrides: Sequence[str]) -> dict[str, Any]:
    """The run's saved config with the groups named by `overrides` recomposed."""
    saved_cfg = run_dir / ".hydra" / "config.yaml"
    saved_ovr = run_dir / ".hydra" / "overrides.yaml"
    if not saved_cfg.is_file() or not saved_ovr.is_file():
        raise FileNotFoundError(f"{run_dir / '.hydra'} not found: {run_dir} is not a paramgolf-train run directory")
    _check_overrides(overrides)
    base = OmegaConf.to_container(OmegaConf.load(saved_cfg), resolve=True)
    if not overrides:
        return base
    fresh = to_container(compose(list(yaml.safe_load(saved_ovr.read_text()) or []) + list(overrides)))
    for o in overrides:
        key = _key(o)
        top = key.split(".")[0]
        if key in EVAL_TRAIN_KEYS:
            base["train"][key.split(".")[1]] = fresh["train"][key.split(".")[1]]
        else:
            base[top] = fresh[top]
    return base


def reevaluate(run_dir: Path, overrides: Sequence[str] = (), out_dir: Path | None = None) -> int:
    """Write `<run_dir>/evals/<time>/results.json`; returns 0, or 3 when over budget."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"run directory {run_dir} does not exist")
    artifact = run_dir / S.ARTIFACT_FILE
    if not artifact.is_file():
        raise FileNotFoundError(f"{artifact} not found: the run did not get as far as exporting its artifact")
    overrides = list(overrides)
    requantize = requantizes(overrides)
    c = eval_config(run_dir, overrides)
    plan = build_plan(c, world_size=1)
    stamp = datetime.datetime.now().strftime("%Y-%m-%d_%H-%M-%S-%f")
    out_dir = Path(out_dir) if out_dir else run_dir / "evals" / stamp
    src = read_results(run_dir) if (run_dir / "results.json").is_file() else {}
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
    out = S.RunOutput(out_dir, info, env, metrics=False, logfile=None)
    res = out.results
    if "params" in src:
        res.model = ModelInfo(params=src["params"], params_by_group=src.get("params_by_group") or {})
    res.train = TrainInfo(
        steps=src.get("steps"), train_time_s=src.get("train_time_s"), stopped_by=src.get("stopped_by")
    )
    res.averaging = AveragingInfo(
        pre_quant_val_bpb=src.get("pre_quant_val_bpb"), pre_quant_val_loss=src.get("pre_quant_val_loss")
    )
    autocast = resolve_autocast(plan.runtime.autocast, env.device)
    try:
        with out.stage("data"):
            data, res.data = S.load_data(plan.data, plan.scoring.evaluator, plan.vocab_size, env.device)
        if requantize:
            with out.stage("export"):
                weights = run_dir / S.WEIGHTS_FILE
                state, _ = load_weights(weights)
                model = plan.model
                model.load_state_dict(state, strict=True)
                cal = plan.calibration_data(data.dataset.train_files, env.device, autocast)
                artifact = out_dir / S.ARTIFACT_FILE
                meta = {"requantized_from": str(weights)}
                res.export = S.export(
                    plan.export, state, artifact, out, meta=meta, model=model.to(env.device), calibration=cal
                )
        with out.stage("score"):
            score = S.Scorer(plan.scoring.evaluator, data.val, env, autocast)
            pre = src.get("pre_quant_val_bpb")  # the source run's, before its round trip
            res.score = S.score_stage(artifact, score, plan.scoring, out, step=0, pre_quant_val_bpb=pre)
        return S.report(out)
    finally:
        out.close()
        D.shutdown_distributed()
