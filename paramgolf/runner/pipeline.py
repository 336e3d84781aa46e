"""One run: data → model → train → average → export → score → report (DESIGN.md's pipeline).

`run(cfg, run_dir, rank, world_size)` is the single, launcher-agnostic entry: torchrun, the
in-process elastic launcher and a plain single process all call it on every rank.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from paramgolf.quant.recipe import CalibrationData
from paramgolf.runner import distributed as D
from paramgolf.runner import stages as S
from paramgolf.runner.plan import RunPlan, build_plan


def run(cfg: Mapping[str, Any], run_dir: Path, rank: int, world_size: int, plan: RunPlan | None = None) -> int:
    """Run the whole pipeline on this rank; returns the exit code (0, or 3 over budget).

    `plan`: the components already built from `cfg` in this process (the CLI builds them to check the config).
    """
    p = plan or build_plan(cfg, world_size)
    rt, run_dir, artifact = p.runtime, Path(run_dir), Path(run_dir) / S.ARTIFACT_FILE
    env = D.init_distributed(rank, world_size, rt.device, rt.collective_timeout_s)
    out = S.RunOutput(run_dir, S.run_info(p.name, p.seed, p.budget_bytes, p.config, env, run_dir=str(run_dir)),
                      env, p.logger)
    res = out.results
    try:
        out.logger.start(run_dir=run_dir, config=p.config, run_name=f"{p.name}-s{p.seed}", group=p.name,
                         job_type="train", tags=[])
        with out.stage("data"):
            data, res.data = S.load_data(p.data, p.evaluator, p.vocab_size, env.device)
        with out.stage("model"):
            placed, res.model = S.place_model(p.model, rt, env)
            out.say(f"model_params:{res.model.params} world_size:{world_size} device:{env.device}")
        score = S.Scorer(p.evaluator, data.val, env, placed.autocast_dtype)
        with out.stage("train"):
            summary, res.train = S.train(placed, p.optimizer, p.loop, p.averaging, p.qat, p.export.quantizer,
                                         data.dataset.train_files, rt, env, out, full_cap_s=p.wallclock_cap_s,
                                         validate=lambda step: S.periodic_validation(score, placed.model, out, step))
        with out.stage("average"):
            state, res.averaging = S.average(p.averaging, placed.model, score, p.evaluator.pre_quant, out)
            if env.is_main:
                S.save_weights(run_dir / S.WEIGHTS_FILE, state, {"steps": str(summary.steps)})
        with out.stage("export"):
            if env.is_main:
                cal = CalibrationData(data.dataset.train_files, p.loop.seq_len, rt.loader_seed, p.vocab_size, p.seed,
                                      env.device, placed.autocast_dtype)
                res.export = S.export(p.export, state, p.config["arch"], artifact, {"steps": summary.steps,
                                      "seed": p.seed}, out, model=placed.model, calibration=cal,
                                      train_time_s=summary.train_time_s, cap_s=p.wallclock_cap_s)
            D.barrier()
        with out.stage("score"):
            res.score = S.score_stage(artifact, score, p.ttt, p.eval_cache, p.code_roots, p.budget_bytes, out,
                                      selected_on_validation=p.averaging.selects_on_validation, step=summary.steps)
        with out.stage("report"):
            return S.report(out, artifact)
    finally:
        out.close()
        D.shutdown_distributed()
