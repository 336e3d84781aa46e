"""One run: data → model → train → average → quantize → compress → round trip → evaluate → results.

`run(cfg, run_dir, rank, world_size)` is the single, launcher-agnostic entry: torchrun, the
in-process elastic launcher and a plain single process all call it on every rank.
"""
from __future__ import annotations

import logging
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig

from paramgolf.config.compose import to_container
from paramgolf.data.byte_table import build_byte_table
from paramgolf.data.dataset import check_vocab
from paramgolf.data.loader import DistributedTokenLoader
from paramgolf.data.tokenizer import file_sha256, files_sha256, load_tokenizer
from paramgolf.evaluation import compliance
from paramgolf.evaluation.sliding import evaluate
from paramgolf.quant.accounting import code_bytes as measure_code_bytes
from paramgolf.quant.artifact import read_artifact, save_weights
from paramgolf.quant.artifact import _atomic_write as write_artifact_bytes
from paramgolf.quant.export import build_artifact
from paramgolf.runner import distributed as D
from paramgolf.runner.build import (build_model, build_optimizer_for, code_roots, count_params, export_view,
                                    loop_settings, prepare_for_device, resolve_autocast, resolve_compile)
from paramgolf.runner.results import ResultsRecorder, git_commit
from paramgolf.runner.train_loop import StepInfo, Trainer
from paramgolf.tracking.base import NullLogger
from paramgolf.tracking.jsonl import MetricsJSONL
from paramgolf.tracking.progress import TrainProgress, format_summary

log = logging.getLogger("paramgolf")

ARTIFACT_FILE = "model.pgart"
WEIGHTS_FILE = "weights.safetensors"
EXIT_OVER_BUDGET = 3


class OverBudget(Exception):
    pass


class _AveragingHook:
    def __init__(self, averaging, model):
        self.averaging, self.model = averaging, model

    def on_step_start(self, step, elapsed_s, lr_scale):
        pass

    def on_step_end(self, info: StepInfo):
        self.averaging.update(self.model, info.step, info.lr_scale)


def _say(env: D.DistEnv, msg: str, logfile: Path | None) -> None:
    if not env.is_main:
        return
    print(msg, file=sys.stderr, flush=True)
    if logfile is not None:
        with open(logfile, "a") as f:
            f.write(msg + "\n")


def eval_settings(cfg: Mapping[str, Any]) -> dict[str, Any]:
    e = cfg["eval"]
    seq_len = e["seq_len"] or cfg["train"]["seq_len"]
    return {"method": e["method"], "seq_len": seq_len, "stride": e["stride"], "batch_tokens": e["batch_tokens"]}


def run_evaluation(model, val_tokens, byte_table, cfg: Mapping[str, Any], env: D.DistEnv,
                   autocast_dtype, progress: bool):
    es = eval_settings(cfg)
    batch_seqs = max(1, es["batch_tokens"] // (env.world_size * es["seq_len"]))
    return evaluate(model, val_tokens, byte_table, method=es["method"], seq_len=es["seq_len"],
                    stride=es["stride"], batch_seqs=batch_seqs, device=env.device, rank=env.rank,
                    world_size=env.world_size, autocast_dtype=autocast_dtype,
                    progress=progress and env.is_main)


@dataclass
class ValidationSet:
    tokens: torch.Tensor  # what the configured method reads (the official range, or the whole split)
    num_split_tokens: int  # the whole validation split (after data.val_max_tokens)
    num_split_bytes: int  # its scored bytes: positions 1.. of the split
    byte_table: Any


def load_validation(c: Mapping[str, Any], data, device: torch.device) -> ValidationSet:
    """The validation split and the tokens the evaluation method scores from it.

    Non-overlapping evaluation reads the official range (a multiple of seq_len plus one; the
    tail is dropped); sliding evaluation reads the whole split.
    """
    sp = load_tokenizer(data.tokenizer_path)
    byte_table = build_byte_table(sp, table_size=c["arch"]["vocab_size"])
    split = data.validation_tokens(1)
    es = eval_settings(c)
    if es["method"] == "sliding":
        tokens = split
    else:
        usable = ((split.numel() - 1) // es["seq_len"]) * es["seq_len"]
        if usable <= 0:
            raise ValueError(f"the validation split ({split.numel()} tokens) is shorter than one sequence of "
                             f"eval.seq_len={es['seq_len']}")
        tokens = split[:usable + 1]
    return ValidationSet(tokens, int(split.numel()), byte_table.count_stream(split), byte_table.to(device))


def record_dataset(rec: ResultsRecorder, data, val: ValidationSet) -> None:
    """What results.json says about the data: hashes, split counts and the entropy floor."""
    rec.update(dataset=data.name, dataset_dir=str(data.data_dir), tokenizer_sha256=file_sha256(data.tokenizer_path),
               val_shards_sha256=files_sha256(data.val_files), num_val_tokens=val.num_split_tokens,
               num_val_bytes=val.num_split_bytes, entropy_floor_bpb=data.entropy_bits_per_byte)


def rebuild_from_artifact(path: Path, device: torch.device) -> torch.nn.Module:
    """The scored model: built from the artifact file alone (architecture + weights)."""
    art = read_artifact(path)
    model = build_model(art.arch_config)
    model.load_state_dict(art.state_dict, strict=True)
    return model.to(device)


def run(cfg: DictConfig | Mapping[str, Any], run_dir: Path, rank: int, world_size: int) -> int:
    """Run the whole pipeline on this rank; returns the process exit code (0, or 3 over budget)."""
    c = to_container(cfg) if isinstance(cfg, DictConfig) else dict(cfg)
    run_dir = Path(run_dir)
    env = D.init_distributed(rank, world_size, c["train"]["device"], c["train"]["collective_timeout_s"])
    main = env.is_main
    if main:
        run_dir.mkdir(parents=True, exist_ok=True)
    logfile = run_dir / "train.log" if main else None
    say = lambda m: _say(env, m, logfile)  # noqa: E731
    rec = ResultsRecorder(run_dir, enabled=main)
    rec.update(name=c["name"], seed=c["seed"], budget_bytes=c["budget_bytes"], run_dir=str(run_dir),
               git_commit=git_commit(), world_size=world_size, device=str(env.device),
               torch_version=torch.__version__, python=platform.python_version(), config=c)
    logger = NullLogger()
    stage = "setup"
    try:
        if main:
            logger = instantiate(c["logger"])
            logger.start(run_dir=run_dir, config=c, run_name=f"{c['name']}-s{c['seed']}", group=c["name"],
                         job_type="train", tags=[])
        metrics = MetricsJSONL(run_dir / "metrics.jsonl") if main else None

        def log_metrics(values: dict[str, float], step: int) -> None:
            if main:
                metrics.log(values, step)
                logger.log(values, step)

        # ---------------------------------------------------------------- data
        stage = "data"
        data = instantiate(c["data"]).resolve()
        check_vocab(data, c["arch"]["vocab_size"])
        val = load_validation(c, data, env.device)
        val_tokens, byte_table = val.tokens, val.byte_table
        record_dataset(rec, data, val)
        say(f"data: {data.name} train_shards:{len(data.train_files)} val_tokens:{val.num_split_tokens} "
            f"val_bytes:{val.num_split_bytes}" + (f" entropy_floor_bpb:{data.entropy_bits_per_byte:.4f}"
                                                 if data.entropy_bits_per_byte else ""))

        # ---------------------------------------------------------------- model
        stage = "model"
        torch.manual_seed(c["seed"])
        model = build_model(c["arch"])
        counts = count_params(model)
        rec.update(params=counts["params"], params_by_group={k: v for k, v in counts.items() if k != "params"})
        say(f"model_params:{counts['params']} world_size:{world_size} device:{env.device}")
        model = prepare_for_device(model, env.device, c["train"]["bf16_embeddings"])
        D.broadcast_parameters(model)
        autocast_dtype = resolve_autocast(c["train"]["autocast"], env.device)
        if resolve_compile(c["train"]["compile"], env.device):
            torch._dynamo.reset()  # sweep jobs share a process: don't hit dynamo's per-function recompile limit
            train_model = torch.compile(model, dynamic=False, fullgraph=True)
        else:
            train_model = model

        # ---------------------------------------------------------------- train
        stage = "train"
        t = c["train"]
        settings = loop_settings(t)
        quantizer = instantiate(c["quant"]["quantizer"])
        cap = settings.max_wallclock_seconds
        if getattr(quantizer, "needs_hessians", False) and cap:
            # GPTQ calibration counts as training time: stop the loop early enough to fit it in the cap
            reserve = c["quant"]["calibration"]["reserve_s"]
            settings.max_wallclock_seconds = max(cap - reserve, 1.0)
            rec.update(calibration_reserved_s=reserve)
            say(f"wallclock: training stops at {settings.max_wallclock_seconds:.0f}s, {reserve:.0f}s kept for GPTQ "
                f"calibration")
        optimizers = build_optimizer_for(model, c["optimizer"])
        for g in optimizers.param_groups_summary():
            if g["num_tensors"]:
                say(f"optimizer_group {g['name']}: {g['optimizer']} lr={g['base_lr']} wd={g['weight_decay']} "
                    f"tensors={g['num_tensors']} params={g['num_params']:,}")
        averaging = instantiate(t["averaging"])
        make_loader = lambda: DistributedTokenLoader(data.train_files, rank, world_size,  # noqa: E731
                                                     seed=t["loader_seed"])
        hooks = [_AveragingHook(averaging, model)]
        qat = None
        if c["quant"]["qat"]["enabled"]:
            from paramgolf.quant.qat import QAT
            qat = QAT(model, quantizer, c["quant"]["qat"]["start_lr_scale"], say,
                      after_step=t["schedule"].get("warmup_iters", 0))
            hooks.insert(0, qat)
        trainer = Trainer(model, train_model, optimizers, make_loader, settings, env, autocast_dtype, hooks=hooks)
        if settings.warmup_steps:
            say(f"warm-up: {settings.warmup_steps} steps (rolled back)")
        trainer.warm_up()
        averaging.update(model, 0)  # averaging starts from the (rolled-back) initial weights
        progress = TrainProgress(settings.iterations, enabled=main and t["progress"],
                                 max_seconds=settings.max_wallclock_seconds)

        last_loss = [float("nan")]

        def on_log(info: StepInfo) -> None:
            tps = info.tokens / max(info.elapsed_s, 1e-9)
            if info.loss is not None:
                last_loss[0] = info.loss
                log_metrics({"train/loss": info.loss, "train/lr_scale": info.lr_scale,
                             "train/tokens_per_s": tps, "train/time_s": info.elapsed_s}, info.step)
            progress.update(info.step, last_loss[0], tps, info.elapsed_s)

        def validate(step: int) -> None:
            r = run_evaluation(model, val_tokens, byte_table, c, env, autocast_dtype, progress=False)
            log_metrics({"val/loss": r.val_loss, "val/bpb": r.val_bpb}, step)
            say(f"step:{step} val_loss:{r.val_loss:.4f} val_bpb:{r.val_bpb:.4f}")

        summary = trainer.train(validate=validate, on_log=on_log)
        progress.close()
        if qat is not None:
            qat.disable()  # evaluation and export see the fp32 weights; the artifact holds their rounding
            rec.update(qat={"enabled_at_step": qat.enabled_at, "layers": len(qat.layers),
                            "start_lr_scale": qat.start_lr_scale})
        rec.update(steps=summary.steps, train_time_s=summary.train_time_s, stopped_by=summary.stopped_by,
                   tokens_seen=summary.tokens_seen, train_tokens_per_s=summary.tokens_per_s,
                   final_train_loss=summary.last_loss)
        say(f"trained {summary.steps} steps in {summary.train_time_s:.1f}s ({summary.stopped_by}), "
            f"{summary.tokens_per_s:,.0f} tok/s, last loss {summary.last_loss:.4f}")

        # ---------------------------------------------------------------- average + keep weights
        stage = "average"
        averaged, pre_quant = choose_weights(averaging, model, lambda: run_evaluation(
            model, val_tokens, byte_table, c, env, autocast_dtype, c["eval"]["progress"]), c, rec, say)
        export_state = {k: v.detach().float().cpu() if v.is_floating_point() else v.detach().cpu()
                        for k, v in averaged.items()}
        model.load_state_dict(export_state, strict=True)
        if main:
            save_weights(run_dir / WEIGHTS_FILE, export_state, {"steps": str(summary.steps)})
        if c["eval"]["pre_quant"]:
            stage = "pre_quant_eval"
            pre = pre_quant or run_evaluation(model, val_tokens, byte_table, c, env, autocast_dtype,
                                              c["eval"]["progress"])
            rec.update(pre_quant_val_loss=pre.val_loss, pre_quant_val_bpb=pre.val_bpb)
            log_metrics({"val/pre_quant_bpb": pre.val_bpb, "val/pre_quant_loss": pre.val_loss}, summary.steps)
            say(f"pre-quant val_loss:{pre.val_loss:.4f} val_bpb:{pre.val_bpb:.4f}")

        # ---------------------------------------------------------------- quantize + compress
        stage = "export"
        artifact_path = run_dir / ARTIFACT_FILE
        if main:
            hessians, calib_s = calibrate(c, quantizer, data, model, export_state, env.device, autocast_dtype, say)
            if hessians is not None:  # the challenge counts calibration as training time
                total = summary.train_time_s + calib_s
                rec.update(calibration_time_s=calib_s, train_plus_calibration_s=total)
                if cap:
                    rec.update(train_plus_calibration_within_cap=total <= cap)
                    if total > cap:
                        say(f"WARNING: training {summary.train_time_s:.1f}s + calibration {calib_s:.1f}s = {total:.1f}s "
                            f"exceeds train.max_wallclock_seconds={cap}; raise quant.calibration.reserve_s")
            report = export_artifact(c, export_state, artifact_path, hessians=hessians, quantizer=quantizer,
                                     meta={"steps": summary.steps, "seed": c["seed"]})
            rec.update(quant=report)
            say(f"export: {report['quantizer']} + {report['codec']} ({report['packing']} packing) "
                f"{report['model_bytes']:,} model bytes")
        D.barrier()

        # ---------------------------------------------------------------- round trip + evaluate
        stage = "eval"
        measured = finish_from_artifact(c, artifact_path, val, env, autocast_dtype, rec,
                                        log_metrics, say, step=summary.steps)
        stage = "report"
        logger.summary({k: rec.data.get(k) for k in ("val_bpb", "val_loss", "pre_quant_val_bpb", "artifact_bytes",
                                                     "model_bytes", "code_bytes", "params", "steps")})
        if main and c["logger"].get("log_artifact", False):
            logger.log_artifact(artifact_path, name=f"{c['name']}-s{c['seed']}", type="model",
                                metadata={"val_bpb": measured["val_bpb"], "artifact_bytes": measured["artifact_bytes"]})
        status = "ok" if measured["fits"] else "over_budget"
        rec.write(status)
        logger.finish(exit_code=0 if measured["fits"] else 1)  # W&B prints its own lines; ours come last
        logger = NullLogger()
        if main:
            print(format_summary(rec.data), file=sys.stderr, flush=True)
            say(f"results: {rec.path}")
        if not measured["fits"]:
            say(f"OVER BUDGET by {measured['artifact_bytes'] - c['budget_bytes']:,} bytes "
                f"(model {measured['model_bytes']:,} + code {measured['code_bytes']:,} > {c['budget_bytes']:,})")
            return EXIT_OVER_BUDGET
        return 0
    except BaseException as exc:
        rec.update(error=f"{type(exc).__name__}: {exc}", failed_stage=stage)
        rec.write("failed")
        raise
    finally:
        logger.finish(exit_code=0 if rec.data.get("status") in ("ok",) else 1)
        D.shutdown_distributed()


def selected_on_validation(c: Mapping[str, Any]) -> bool:
    """The exported weights were picked by their validation score (test-set selection)."""
    return c["train"]["averaging"].get("select") == "best_on_validation"


def choose_weights(averaging, model, evaluate_model, c: Mapping[str, Any], rec: ResultsRecorder, say):
    """The weights to export, and their pre-quant evaluation when it was already run.

    Records in results.json which averaging produced them (`averaging`) and, with
    `eval.pre_quant`, the val_bpb of the raw final weights (`pre_averaging_val_bpb`); the
    averaged weights' val_bpb is `pre_quant_val_bpb`. `evaluate_model()` scores the model as it
    currently is. An averaging that selects on validation scores every candidate and keeps the best.
    """
    pre_avg = None
    if averaging.name != "none" and (c["eval"]["pre_quant"] or averaging.selects_on_validation):
        pre_avg = evaluate_model()  # the model still holds the raw final weights
        rec.update(pre_averaging_val_bpb=pre_avg.val_bpb, pre_averaging_val_loss=pre_avg.val_loss)
        say(f"before averaging val_loss:{pre_avg.val_loss:.4f} val_bpb:{pre_avg.val_bpb:.4f}")
    chosen_eval = None
    if averaging.selects_on_validation:
        candidates = averaging.candidates(model)
        candidates["raw"] = {k: v.detach().clone() for k, v in candidates["raw"].items()}
        results = {"raw": pre_avg}
        for name, state in candidates.items():
            if name != "raw":
                model.load_state_dict(state, strict=True)
                results[name] = evaluate_model()
        chosen = min(results, key=lambda n: results[n].val_bpb)
        averaging.chosen = chosen
        averaged, chosen_eval = candidates[chosen], results[chosen]
        scores = {n: r.val_bpb for n, r in results.items()}
        say(f"averaging: chose {chosen} by validation score {scores} (selection on the test set: non-compliant)")
        info = {**averaging.describe(), "selected_on_validation": True, "candidates_val_bpb": scores}
    else:
        averaged = averaging.averaged_state_dict(model)
        info = {**averaging.describe(), "selected_on_validation": False}
    rec.update(averaging=info)
    if averaging.name != "none":
        say(f"averaging: {info['method']}" + (f" → {info['chosen']}" if info.get("chosen") else ""))
    return averaged, chosen_eval


def export_artifact(c: Mapping[str, Any], state: dict[str, torch.Tensor], path: Path, meta: dict,
                    hessians: Mapping[str, torch.Tensor] | None = None, quantizer=None) -> dict[str, Any]:
    """Quantize (prune, GPTQ with `hessians`), pick the packing, compress, write the file.

    Returns the export report (packing, per-group bits and bytes, timings) for results.json.
    """
    quantizer = quantizer or instantiate(c["quant"]["quantizer"])
    codec = instantiate(c["quant"]["codec"])
    arch, state = export_view(c["arch"], state)
    data, report = build_artifact(quantizer, codec, state, arch, meta, packing=c["quant"]["packing"],
                                  hessians=hessians)
    write_artifact_bytes(path, data)
    report["model_bytes"] = len(data)
    return report


def calibration_batches(c: Mapping[str, Any], data, model: torch.nn.Module, device: torch.device):
    """Token batches for GPTQ's Hessians: training data or the model's own samples, never validation."""
    cal, t = c["quant"]["calibration"], c["train"]
    seq_len = cal["seq_len"] or t["seq_len"]
    if cal["source"] == "train":
        loader = DistributedTokenLoader(data.train_files, 0, 1, seed=t["loader_seed"])
        for _ in range(cal["batches"]):
            x, _ = loader.next_batch(cal["batch_seqs"] * seq_len, seq_len)
            yield x.to(device)
    elif cal["source"] == "self_generated":
        from paramgolf.quant.calibration import self_generated_batches
        yield from self_generated_batches(model, cal["batches"] * cal["batch_seqs"], seq_len,
                                          vocab_size=c["arch"]["vocab_size"], temperature=cal["temperature"],
                                          seed=c["seed"], batch_size=cal["batch_seqs"], device=device)
    else:  # validate_config refuses it earlier; this guards direct callers
        raise ValueError(calibration_source_error(cal["source"]))


def calibration_source_error(source: str) -> str:
    if source == "validation":
        return ("quant.calibration.source=validation is refused: GPTQ calibrated on validation tokens lets the "
                "scored data shape the artifact. Use train (training batches) or self_generated (the model's "
                "own samples)")
    return f"quant.calibration.source={source!r} is not one of train, self_generated"


def calibrate(c: Mapping[str, Any], quantizer, data, model: torch.nn.Module, state: Mapping[str, torch.Tensor],
              device: torch.device, autocast_dtype, say) -> tuple[dict[str, torch.Tensor] | None, float]:
    """(Hessians for the quantizer's full-GPTQ tensors, seconds) — (None, 0) when none needs one."""
    names = quantizer.gptq_names(state) if getattr(quantizer, "needs_hessians", False) else set()
    if not names:
        return None, 0.0
    from paramgolf.quant.calibration import collect_hessians
    t0 = time.perf_counter()
    cal = c["quant"]["calibration"]
    hessians = collect_hessians(model, calibration_batches(c, data, model, device), param_names=names,
                                device=device, autocast_dtype=autocast_dtype)
    seconds = time.perf_counter() - t0
    say(f"gptq calibration: {len(hessians)} matrices from {cal['batches']} {cal['source']} batches in {seconds:.1f}s")
    return {k: v.cpu() for k, v in hessians.items()}, seconds


def finish_from_artifact(c: Mapping[str, Any], artifact_path: Path, val: ValidationSet, env: D.DistEnv,
                         autocast_dtype, rec: ResultsRecorder, log_metrics, say, step: int) -> dict[str, Any]:
    """Rebuild the model from the artifact alone, evaluate it and record the headline numbers."""
    val_tokens, byte_table = val.tokens, val.byte_table
    ttt, cache = instantiate(c["ttt"]), instantiate(c["eval_cache"])
    model = rebuild_from_artifact(artifact_path, env.device)
    model_bytes = artifact_path.stat().st_size
    code = measure_code_bytes(code_roots(c))
    artifact_bytes = model_bytes + code
    fits = artifact_bytes <= c["budget_bytes"]
    rec.update(model_bytes=model_bytes, code_bytes=code, artifact_bytes=artifact_bytes, fits=fits,
               artifact_file=str(artifact_path))
    rec.write()  # the bytes are known even if evaluation fails
    r = run_evaluation(model, val_tokens, byte_table, c, env, autocast_dtype, c["eval"]["progress"])
    es = eval_settings(c)
    verdict = compliance.assess(es["method"], ttt, cache, num_scored=r.num_tokens,
                                num_expected=compliance.expected_scored_tokens(es["method"], val.num_split_tokens,
                                                                               es["seq_len"]),
                                weights_selected_on_validation=selected_on_validation(c))
    floor = rec.data.get("entropy_floor_bpb")
    rec.update(val_bpb=r.val_bpb, val_loss=r.val_loss, eval_time_s=r.eval_time_s,
               eval={"method": r.method, "seq_len": r.seq_len, "stride": r.stride, "ttt": ttt.name,
                     "eval_cache": cache.name, "num_tokens": r.num_tokens, "num_bytes": r.num_bytes,
                     "on": "artifact_round_trip"},
               compliance=verdict, gap_to_floor_bpb=(r.val_bpb - floor) if floor else None)
    if rec.data.get("pre_quant_val_bpb") is not None:  # what quantization + compression cost
        rec.update(round_trip_gap_bpb=r.val_bpb - rec.data["pre_quant_val_bpb"])
    log_metrics({"val/bpb": r.val_bpb, "val/loss": r.val_loss, "artifact/bytes": artifact_bytes,
                 "artifact/model_bytes": model_bytes, "artifact/code_bytes": code}, step)
    say(f"round-trip val_loss:{r.val_loss:.4f} val_bpb:{r.val_bpb:.4f} artifact_bytes:{artifact_bytes} "
        f"(model {model_bytes} + code {code}) {compliance.summarize(verdict)}")
    return {"val_bpb": r.val_bpb, "artifact_bytes": artifact_bytes, "model_bytes": model_bytes,
            "code_bytes": code, "fits": fits}
