"""Evaluate a saved run again, from its artifact alone or after re-quantizing its kept weights.

The run's own saved config (`.hydra/config.yaml`) is the base, so later changes to the conf
tree do not leak in; overrides may change how the model is evaluated and exported (`eval`,
`quant`, `ttt`, `eval_cache`, `data`, `budget_bytes`, `train.device`, `train.autocast`), never
what was trained — the artifact defines the model.
"""
from __future__ import annotations

import datetime
import sys
from pathlib import Path
from typing import Any, Sequence

import torch
import yaml
from hydra.utils import instantiate
from omegaconf import OmegaConf

from paramgolf.config.compose import compose, to_container
from paramgolf.quant.artifact import load_weights
from paramgolf.runner import distributed as D
from paramgolf.runner.build import build_model, resolve_autocast
from paramgolf.runner.pipeline import (ARTIFACT_FILE, WEIGHTS_FILE, calibrate, export_artifact, finish_from_artifact,
                                       load_validation, record_dataset)
from paramgolf.runner.results import ResultsRecorder, git_commit, read_results
from paramgolf.runner.validate import validate_config
from paramgolf.tracking.progress import format_summary

EVAL_GROUPS = ("eval", "quant", "ttt", "eval_cache", "data", "budget_bytes", "logger")
EVAL_TRAIN_KEYS = ("train.device", "train.autocast")
CARRIED_OVER = ("params", "params_by_group", "steps", "train_time_s", "stopped_by", "pre_quant_val_bpb",
                "pre_quant_val_loss", "world_size")


def _key(override: str) -> str:
    return override.lstrip("+~").split("=", 1)[0].replace("/", ".")


def _check_overrides(overrides: Sequence[str]) -> None:
    for o in overrides:
        key = _key(o)
        if key.split(".")[0] in EVAL_GROUPS or key in EVAL_TRAIN_KEYS:
            continue
        raise ValueError(f"override {o!r} would change what was trained; paramgolf-eval only changes how the "
                         f"artifact is evaluated or exported ({', '.join(EVAL_GROUPS + EVAL_TRAIN_KEYS)}). "
                         f"Train a new run for it.")


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
    artifact = run_dir / ARTIFACT_FILE
    if not artifact.is_file():
        raise FileNotFoundError(f"{artifact} not found: the run did not get as far as exporting its artifact")
    overrides = list(overrides)
    c = eval_config(run_dir, overrides)
    validate_config(c, world_size=1)
    stamp = datetime.datetime.now().strftime("%Y-%m-%d_%H-%M-%S-%f")
    out_dir = Path(out_dir) if out_dir else run_dir / "evals" / stamp
    out_dir.mkdir(parents=True, exist_ok=True)
    source = read_results(run_dir) if (run_dir / "results.json").is_file() else {}
    env = D.init_distributed(0, 1, c["train"]["device"], c["train"]["collective_timeout_s"])
    rec = ResultsRecorder(out_dir)
    rec.update(name=c["name"], seed=c["seed"], budget_bytes=c["budget_bytes"], source_run=str(run_dir),
               overrides=overrides, git_commit=git_commit(), source_git_commit=source.get("git_commit"),
               device=str(env.device), torch_version=torch.__version__, config=c,
               **{k: source[k] for k in CARRIED_OVER if k in source})
    say = lambda m: print(m, file=sys.stderr, flush=True)  # noqa: E731
    try:
        data = instantiate(c["data"]).resolve()
        val = load_validation(c, data, env.device)
        record_dataset(rec, data, val)
        if requantizes(overrides):
            weights = run_dir / WEIGHTS_FILE
            state, _ = load_weights(weights)
            artifact = out_dir / ARTIFACT_FILE
            quantizer = instantiate(c["quant"]["quantizer"])
            autocast = resolve_autocast(c["train"]["autocast"], env.device)
            model = build_model(c["arch"])
            model.load_state_dict(state, strict=True)
            model = model.to(env.device)
            hessians, calib_s = calibrate(c, quantizer, data, model, state, env.device, autocast, say)
            if hessians is not None:
                rec.update(calibration_time_s=calib_s)
            report = export_artifact(c, state, artifact, meta={"requantized_from": str(weights)},
                                     hessians=hessians, quantizer=quantizer)
            rec.update(quant=report)
            say(f"re-quantized {weights} → {artifact} ({report['quantizer']} + {report['codec']}, "
                f"{report['packing']} packing)")
        rec.update(requantized=requantizes(overrides))
        measured = finish_from_artifact(c, artifact, val, env, resolve_autocast(c["train"]["autocast"], env.device),
                                        rec, lambda *a, **k: None, say, step=0)
        rec.write("ok" if measured["fits"] else "over_budget")
        print(format_summary(rec.data), file=sys.stderr)
        say(f"results: {rec.path}")
        return 0 if measured["fits"] else 3
    except BaseException as exc:
        rec.update(error=f"{type(exc).__name__}: {exc}")
        rec.write("failed")
        raise
    finally:
        D.shutdown_distributed()
