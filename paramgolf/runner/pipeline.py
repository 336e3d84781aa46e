"""One run: data → model → train → average → export → score → report (DESIGN.md's pipeline).

`run(cfg, run_dir, rank, world_size)` is the single, launcher-agnostic entry: torchrun, the
in-process elastic launcher and a plain single process all call it on every rank.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from paramgolf.quant.artifact import save_weights
from paramgolf.runner import distributed as D
from paramgolf.runner import stages as S
from paramgolf.runner.plan import RunPlan, build_plan


def run(
    cfg: Mapping[str, Any],
    run_dir: Path,
    rank: int,
    world_size: int,
    plan: RunPlan | None = None,
    estimated_artifact_bytes: int | None = None,
) -> int:
    """Run the whole pipeline on this rank; returns the exit code (0, or 3 over budget).

    `plan`: the components already built from `cfg` in this process (the CLI builds them to check the config);
    `estimated_artifact_bytes`: the CLI's budget check before training, recorded in results.json.
    """
    p = plan or build_plan(cfg, world_size)
    rt, run_dir, artifact = p.runtime, Path(run_dir), Path(run_dir) / S.ARTIFACT_FILE
    env = D.init_distributed(rank, world_size, rt.device, rt.collective_timeout_s)
    info = S.run_info(p, env, run_dir=str(run_dir), estimated_artifact_bytes=estimated_artifact_bytes)
    out = S.RunOutput(run_dir, info, env, p.logger)
    res = out.results
    try:
        out.start_logger(run_dir)
        with out.stage("data"):
            data, res.data = S.load_data(p.data, p.scoring.evaluator, p.vocab_size, env.device)
        with out.stage("model"):
            placed, res.model = S.place_model(p.model, rt, env)
            out.say(f"model_params:{res.model.params} world_size:{world_size} device:{env.device}")
        score = S.Scorer(p.scoring.evaluator, data.val, env, placed.autocast_dtype)
        with out.stage("train"):
            validate = lambda step: S.periodic_validation(score, placed.model, out, step)  # noqa: E731
            summary, res.train = S.train(placed, p.training, data.dataset.train_files, rt, env, out, validate, run_dir)
        with out.stage("average"):
            state, res.averaging = S.average(p.training.averaging, placed.model, score, out)
            if env.is_main:
                save_weights(run_dir / S.WEIGHTS_FILE, state, {"steps": str(summary.steps)})
        with out.stage("export"):
            if env.is_main:
                cal = p.calibration_data(data.dataset.train_files, env.device, placed.autocast_dtype)
                meta = {"steps": summary.steps, "seed": p.seed}
                res.export = S.export(
                    p.export, state, artifact, out, meta=meta, model=placed.model, calibration=cal, trained=res.train
                )
            D.barrier()
        with out.stage("score"):
            pre = res.averaging
            res.score = S.score_stage(
                artifact,
                score,
                p.scoring,
                out,
                step=summary.steps,
                pre_quant_val_bpb=pre.pre_quant_val_bpb,
                pre_quant_eval=pre.pre_quant_eval,
            )
        with out.stage("report"):
            return S.report(out, artifact)
    finally:
        out.close()
        D.shutdown_distributed()
