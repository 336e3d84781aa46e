"""The stages of a run, in DESIGN.md's order: data → model → train → average → export → score → report.

Each stage takes the built components it needs and what the stages before it produced, and
returns its products plus its section of results.json. `paramgolf-eval` reuses export and score.
"""

from __future__ import annotations

import copy
import platform
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from paramgolf.config.candidate import group_tags, saved_groups
from paramgolf.data.dataset import DatasetInfo, check_token_ids, check_vocab
from paramgolf.data.tokenizer import file_sha256, files_sha256
from paramgolf.evaluation import compliance
from paramgolf.evaluation.bpb import EvalResult
from paramgolf.evaluation.legality import check_legality
from paramgolf.evaluation.stream import StreamScores, run_stream, stream_chunk_tokens
from paramgolf.fsio import write_atomic
from paramgolf.model.loop import LoopSwitch, loop_switch
from paramgolf.model.training import artifact_view
from paramgolf.optim.schedules import training_fraction
from paramgolf.quant.artifact import read_artifact
from paramgolf.quant.recipe import CalibrationData, ExportRecipe
from paramgolf.runner import checkpoint as ckpt
from paramgolf.runner import distributed as D
from paramgolf.runner.build import build_model, count_params, prepare_for_device, resolve_autocast, resolve_compile
from paramgolf.runner.plan import RunPlan, Runtime, Scoring, Training
from paramgolf.runner.results import (
    ArtifactInfo,
    AveragingInfo,
    DataInfo,
    ExportInfo,
    ModelInfo,
    Results,
    ResultsFile,
    RunInfo,
    ScoreInfo,
    TrainInfo,
    git_commit,
)
from paramgolf.runner.train_loop import LoopSettings, StepInfo, Trainer, TrainSummary
from paramgolf.tracking.base import Logger, NullLogger
from paramgolf.tracking.jsonl import MetricsJSONL, read_metrics
from paramgolf.tracking.progress import TrainProgress, format_summary

ARTIFACT_FILE = "model.pgart"
WEIGHTS_FILE = "weights.safetensors"
EXIT_OVER_BUDGET = 3
# results.json keys the logger's run summary carries (W&B filters runs on them), plus status/compliant/valid.
SUMMARY_KEYS = (
    "val_bpb",
    "val_loss",
    "pre_quant_val_bpb",
    "round_trip_gap_bpb",
    "artifact_bytes",
    "model_bytes",
    "code_bytes",
    "estimated_artifact_bytes",
    "fits",
    "params",
    "steps",
    "train_time_s",
    "eval_time_s",
)


class RunOutput:
    """Everything a run writes, on rank 0 only: console and train.log lines, metrics.jsonl and the
    logger, and results.json (rewritten after every stage; `stage(name)` records a failure)."""

    def __init__(
        self,
        out_dir: Path,
        run: RunInfo,
        env: D.DistEnv,
        logger: Logger | None = None,
        metrics: bool = True,
        logfile: str | None = "train.log",
    ):
        self.main = env.is_main
        self.logger = logger if (logger is not None and self.main) else NullLogger()
        if self.main:
            Path(out_dir).mkdir(parents=True, exist_ok=True)
        self.logfile = Path(out_dir) / logfile if (self.main and logfile) else None
        self.metrics = MetricsJSONL(Path(out_dir) / "metrics.jsonl") if (self.main and metrics) else None
        self.file = ResultsFile(out_dir, Results(run=run), enabled=self.main)
        self.results = self.file.results
        self.file.write()  # status: running, from the start

    def say(self, msg: str) -> None:
        if not self.main:
            return
        print(msg, file=sys.stderr, flush=True)
        if self.logfile is not None:
            with open(self.logfile, "a") as f:
                f.write(msg + "\n")

    def log(self, values: dict[str, float], step: int) -> None:
        if self.metrics is not None:
            self.metrics.log(values, step)
        self.logger.log(values, step)

    def stage(self, name: str):
        return self.file.stage(name)

    def start_logger(self, run_dir: Path, job_type: str = "train", groups: dict[str, str] | None = None) -> None:
        """One logger run: group = the candidate, name `<candidate>-s<seed>`, tags `group:option` of the
        run's config groups (`groups`, default: those Hydra saved in `run_dir/.hydra`), which the config
        repeats under `choices` (W&B groups runs by config keys, not by tags)."""
        run = self.results.run
        groups = saved_groups(run_dir) if groups is None else groups
        self.logger.start(
            run_dir=run_dir,
            config={**(run.config or {}), "choices": groups},
            run_name=f"{run.name}-s{run.seed}",
            group=run.name,
            job_type=job_type,
            tags=group_tags(groups),
        )

    def close(self) -> None:
        self.logger.finish(exit_code=0 if self.results.status == "ok" else 1)
        self.logger = NullLogger()


def run_info(plan: RunPlan, env: D.DistEnv, **extra: Any) -> RunInfo:
    return RunInfo(
        name=plan.name,
        seed=plan.seed,
        budget_bytes=plan.scoring.budget_bytes,
        git_commit=git_commit(),
        world_size=env.world_size,
        device=str(env.device),
        torch_version=torch.__version__,
        python=platform.python_version(),
        config=plan.config,
        **extra,
    )


# ---------------------------------------------------------------------------------------------- data


@dataclass
class Validation:
    """The validation split and the tokens the evaluation method scores from it."""

    tokens: torch.Tensor  # what the method reads (the official range, or the whole split)
    num_split_tokens: int
    num_split_bytes: int  # scored bytes of the whole split: positions 1..
    byte_table: Any  # on the run's device
    entropy_floor_bpb: float | None = None  # the source's entropy rate, when known (synthetic data)


@dataclass
class RunData:
    dataset: DatasetInfo
    val: Validation


def load_data(source: Any, evaluator: Any, vocab_size: int, device: torch.device) -> tuple[RunData, DataInfo]:
    """Resolve the data source, check it against the model's vocabulary, load the validation split once."""
    ds = source.resolve()
    check_vocab(ds, vocab_size)
    byte_table = ds.byte_table(vocab_size)  # the sidecar's original-byte counts when the data has one
    split = ds.validation_tokens(1)
    check_token_ids(ds, split, vocab_size)
    val = Validation(
        evaluator.scored_tokens(split),
        int(split.numel()),
        byte_table.count_stream(split),
        byte_table.to(device),
        ds.entropy_bits_per_byte,
    )
    info = DataInfo(
        dataset=ds.name,
        dataset_dir=str(ds.data_dir),
        tokenizer_sha256=file_sha256(ds.tokenizer_path),
        val_shards_sha256=files_sha256(ds.val_files),
        num_val_tokens=val.num_split_tokens,
        num_val_bytes=val.num_split_bytes,
        entropy_floor_bpb=ds.entropy_bits_per_byte,
    )
    return RunData(ds, val), info


@dataclass
class Scorer:
    """Scores a model on the validation tokens with the configured method, over every rank."""

    evaluator: Any
    val: Validation
    env: D.DistEnv
    autocast_dtype: torch.dtype | None

    def adaptive(self, model: nn.Module, ttt: Any, eval_cache: Any) -> StreamScores:
        """Score through the stream (score a chunk, then let `ttt`/`eval_cache` see it) on the evaluator's windows."""
        ev = self.evaluator
        self._bind(ttt)
        return run_stream(
            model,
            self.val.tokens,
            self.val.byte_table,
            ttt=ttt,
            eval_cache=eval_cache,
            seq_len=ev.seq_len,
            stride=ev.stride or ev.seq_len,
            chunk_tokens=stream_chunk_tokens(ttt, eval_cache, self.val.tokens.numel()),
            batch_seqs=ev.batch_seqs(self.env.world_size),
            device=self.env.device,
            rank=self.env.rank,
            world_size=self.env.world_size,
            autocast_dtype=self.autocast_dtype,
            method=f"{ev.name}+{ttt.name}+{eval_cache.name}",
        )

    def _bind(self, ttt: Any) -> None:
        if getattr(ttt, "seq_len", 0) is None:
            ttt.seq_len = self.evaluator.seq_len  # TTT trains on sequences as long as the scored windows
        if hasattr(ttt, "autocast_dtype"):
            ttt.autocast_dtype = self.autocast_dtype

    def check_legality(self, model: nn.Module, ttt: Any, eval_cache: Any) -> dict[str, Any]:
        """The mechanical check (`eval.compliance=check`) on a prefix of the split, small windows and chunks."""
        ev = self.evaluator
        self._bind(ttt)
        n = min(ev.probe_tokens, self.val.tokens.numel() - 1)
        seq = max(8, min(ev.seq_len, n // 8))
        chunk = max(seq, n // 4)
        probe_ttt = ttt.for_probe(seq) if hasattr(ttt, "for_probe") else ttt  # a probe-sized copy (LoRA TTT)
        pristine = copy.deepcopy((probe_ttt, eval_cache))
        for method in pristine:  # the probe's small chunks, for the methods that follow the stream's chunks
            if hasattr(method, "chunk_tokens") and not hasattr(method, "run"):
                method.chunk_tokens = chunk
        started = time.perf_counter()
        verdict = check_legality(
            model,
            self.val.tokens[: n + 1].cpu(),
            self.val.byte_table,
            lambda: copy.deepcopy(pristine),
            seq_len=seq,
            stride=max(1, min(ev.stride or seq, seq // 2)),
            chunk_tokens=chunk,
            vocab_size=int(self.val.byte_table.base_bytes.numel()),
            boundary_token=getattr(ttt, "bos_id", None),
            doc_chunk=getattr(probe_ttt, "chunk_len", None),
        )
        return {**verdict, "time_s": time.perf_counter() - started}  # an audit: not part of eval_time_s

    def __call__(self, model: nn.Module, progress: bool | None = None) -> EvalResult:
        show = self.evaluator.progress if progress is None else progress
        return self.evaluator(
            model,
            self.val.tokens,
            self.val.byte_table,
            device=self.env.device,
            rank=self.env.rank,
            world_size=self.env.world_size,
            autocast_dtype=self.autocast_dtype,
            progress=show and self.env.is_main,
        )


# ---------------------------------------------------------------------------------------------- model


@dataclass
class PlacedModel:
    model: nn.Module  # the raw module: state dicts, hooks
    train_model: nn.Module  # what forward/backward run (compiled on CUDA by default)
    autocast_dtype: torch.dtype | None


def place_model(model: nn.Module, runtime: Runtime, env: D.DistEnv) -> tuple[PlacedModel, ModelInfo]:
    """Move the seeded model to the device, give every rank rank 0's weights, compile it if asked."""
    counts = count_params(model)
    model = prepare_for_device(model, env.device, runtime.bf16_embeddings)
    D.broadcast_parameters(model)
    train_model = model
    if resolve_compile(runtime.compile, env.device):
        torch._dynamo.reset()  # sweep jobs share a process: don't hit dynamo's per-function recompile limit
        train_model = torch.compile(model, dynamic=False, fullgraph=True)
    info = ModelInfo(params=counts["params"], params_by_group={k: v for k, v in counts.items() if k != "params"})
    return PlacedModel(model, train_model, resolve_autocast(runtime.autocast, env.device)), info


# ---------------------------------------------------------------------------------------------- train


class _AveragingHook:
    def __init__(self, averaging, model):
        self.averaging, self.model = averaging, model

    def on_step_start(self, step, elapsed_s, lr_scale):
        pass

    def on_step_end(self, info: StepInfo):
        self.averaging.update(self.model, info.step, info.lr_scale)

    def state_dict(self) -> dict[str, Any]:
        return self.averaging.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.averaging.load_state_dict(state)


def loop_hook(model: nn.Module, loop: LoopSettings, say: Callable[[str], None]) -> LoopSwitch | None:
    """The loop layers' switch (None without arch.loop), on by the fraction of this loop's cap or iterations."""

    def fraction(step: int, elapsed_s: float) -> float:
        return training_fraction(
            step, elapsed_s, iterations=loop.iterations, max_wallclock_s=loop.max_wallclock_seconds
        )

    return loop_switch(model, fraction, say)


def train(
    placed: PlacedModel,
    training: Training,
    train_files: list[Path],
    runtime: Runtime,
    env: D.DistEnv,
    out: RunOutput,
    validate: Callable[[int], None] | None = None,
    run_dir: Path | None = None,
) -> tuple[TrainSummary, TrainInfo]:
    """The train loop with its hooks (QAT, weight averaging), progress and metrics.

    With `run_dir`, checkpoints go to `run_dir/checkpoints` as `runtime.checkpoint` says, and
    `runtime.resume` (a killed run's directory) is continued from its newest usable checkpoint.
    """
    model, loop, averaging, reserved = placed.model, training.loop, training.averaging, training.calibration_reserve_s
    optimizer, qat = training.optimizer, training.qat
    optimizers = optimizer(
        list(model.named_parameters()), param_uses=model.parameter_uses(), param_roles=model.parameter_roles()
    )
    for g in optimizers.param_groups_summary():
        if g["num_tensors"]:
            out.say(
                f"optimizer_group {g['name']}: {g['optimizer']} lr={g['base_lr']} wd={g['weight_decay']} "
                f"tensors={g['num_tensors']} params={g['num_params']:,}"
            )
    if reserved:
        out.say(
            f"wallclock: training stops at {loop.max_wallclock_seconds:.0f}s, {reserved:.0f}s kept for GPTQ calibration"
        )
    if qat is not None:
        qat = qat.hook(model, training.quantizer, out.say)
    config = out.results.run.config or {}
    resumed = resume(Path(runtime.resume), config, env, out) if runtime.resume is not None else None
    checkpointer = None
    if run_dir is not None and runtime.checkpoint.enabled:
        checkpointer = ckpt.Checkpointer(run_dir, runtime.checkpoint, env, config, out.say)
    looping = loop_hook(model, loop, out.say)
    hooks = [h for h in (qat, looping) if h is not None] + [_AveragingHook(averaging, model)]
    trainer = Trainer(
        model,
        placed.train_model,
        optimizers,
        lambda: training.loader(train_files, env.rank, env.world_size, seed=runtime.loader_seed),
        loop,
        env,
        placed.autocast_dtype,
        hooks=hooks,
        checkpointer=checkpointer,
        resumed=resumed,
    )
    if loop.warmup_steps:
        out.say(f"warm-up: {loop.warmup_steps} steps (rolled back)")
    trainer.warm_up()
    averaging.update(model, 0)  # averaging starts from the (rolled-back) initial weights
    progress = TrainProgress(
        loop.iterations, enabled=env.is_main and runtime.progress, max_seconds=loop.max_wallclock_seconds or None
    )  # 0: no cap
    last_loss = float("nan")

    def on_log(info: StepInfo) -> None:
        nonlocal last_loss
        tps = info.tokens / max(info.elapsed_s, 1e-9)
        if info.loss is not None:
            last_loss = info.loss
            out.log(
                {
                    "train/loss": info.loss,
                    "train/lr_scale": info.lr_scale,
                    "train/tokens_per_s": tps,
                    "train/time_s": info.elapsed_s,
                },
                info.step,
            )
        progress.update(info.step, last_loss, tps, info.elapsed_s)

    summary = trainer.train(validate=validate, on_log=on_log)
    trainer.resumed = None  # its tensors are in the model and optimizers now
    progress.close()
    info = TrainInfo(
        steps=summary.steps,
        train_time_s=summary.train_time_s,
        stopped_by=summary.stopped_by,
        tokens_seen=summary.tokens_seen,
        train_tokens_per_s=summary.tokens_per_s,
        final_train_loss=summary.last_loss,
        calibration_reserved_s=reserved,
        resumed_from=resumed.describe() if resumed is not None else None,
        checkpoints=checkpointer.describe() if checkpointer is not None else None,
    )
    if qat is not None:
        qat.disable()  # evaluation and export see the fp32 weights; the artifact holds their rounding
        info.qat = {"enabled_at_step": qat.enabled_at, "layers": len(qat.layers), "start_lr_scale": qat.start_lr_scale}
    if looping is not None:
        looping.finish()  # evaluation sees the looped model, as the artifact's rebuild does
    out.say(
        f"trained {summary.steps} steps in {summary.train_time_s:.1f}s ({summary.stopped_by}), "
        f"{summary.tokens_per_s:,.0f} tok/s, last loss {summary.last_loss:.4f}"
    )
    return summary, info


def resume(run_dir: Path, config: dict[str, Any], env: D.DistEnv, out: RunOutput) -> ckpt.Resumed:
    """Load the newest usable checkpoint of `run_dir` and replay the metrics it had logged up to it.

    The resumed run writes into its own run directory; its metrics.jsonl (and logger) first gets
    the killed run's rows up to the checkpoint's step, so it holds the whole training's history.
    """
    resumed = ckpt.resume(run_dir, config, env, out.say if env.is_main else None)
    finished = resumed.own["loop"]["stopped_by"] is not None
    metrics = resumed.run_dir / "metrics.jsonl"
    if env.is_main and metrics.is_file():
        for row in read_metrics(metrics):
            step = row.get("step", 0)
            # at the step of the checkpoint written when training ended, only the loop's own rows
            if step < resumed.step or (step == resumed.step and (not finished or "train/loss" in row)):
                out.log({k: v for k, v in row.items() if k not in ("step", "time")}, step)
    return resumed


def periodic_validation(score: Scorer, model: nn.Module, out: RunOutput, step: int) -> None:
    r = score(model, progress=False)
    out.log({"val/loss": r.val_loss, "val/bpb": r.val_bpb}, step)
    out.say(f"step:{step} val_loss:{r.val_loss:.4f} val_bpb:{r.val_bpb:.4f}")


# ---------------------------------------------------------------------------------------------- average


def average(
    averaging: Any, model: nn.Module, score: Scorer, out: RunOutput
) -> tuple[dict[str, torch.Tensor], AveragingInfo]:
    """The weights to export (loaded into `model`, fp32 on the CPU), and their pre-quant scores.

    `pre_averaging_val_bpb` scores the raw final weights, `pre_quant_val_bpb` the exported ones.
    An averaging that selects on validation scores every candidate and keeps the best (non-compliant).
    """
    info, pre_quant = AveragingInfo(), score.evaluator.pre_quant
    raw = None
    if averaging.name != "none" and (pre_quant or averaging.selects_on_validation):
        raw = score(model)  # the model still holds the raw final weights
        info.pre_averaging_val_bpb, info.pre_averaging_val_loss = raw.val_bpb, raw.val_loss
        out.say(f"before averaging val_loss:{raw.val_loss:.4f} val_bpb:{raw.val_bpb:.4f}")
    chosen_eval = None
    if averaging.selects_on_validation:
        candidates = averaging.candidates(model)
        candidates["raw"] = {k: v.detach().clone() for k, v in candidates["raw"].items()}
        results = {"raw": raw}
        for name, state in candidates.items():
            if name != "raw":
                model.load_state_dict(state, strict=True)
                results[name] = score(model)
        chosen = min(results, key=lambda n: results[n].val_bpb)
        averaging.chosen = chosen
        averaged, chosen_eval = candidates[chosen], results[chosen]
        scores = {n: r.val_bpb for n, r in results.items()}
        out.say(f"averaging: chose {chosen} by validation score {scores} (selection on the test set: non-compliant)")
        info.averaging = {**averaging.describe(), "selected_on_validation": True, "candidates_val_bpb": scores}
    else:
        averaged = averaging.averaged_state_dict(model)
        info.averaging = {**averaging.describe(), "selected_on_validation": False}
    if averaging.name != "none":
        chosen = info.averaging.get("chosen")
        out.say(f"averaging: {info.averaging['method']}" + (f" → {chosen}" if chosen else ""))
    state = {k: v.detach().float().cpu() if v.is_floating_point() else v.detach().cpu() for k, v in averaged.items()}
    model.load_state_dict(state, strict=True)
    if pre_quant:
        pre = chosen_eval or score(model)
        info.pre_quant_val_bpb, info.pre_quant_val_loss, info.pre_quant_eval = pre.val_bpb, pre.val_loss, scored_as(pre)
        out.say(f"pre-quant val_loss:{pre.val_loss:.4f} val_bpb:{pre.val_bpb:.4f}")
    return state, info


# ---------------------------------------------------------------------------------------------- export


def export(
    recipe: ExportRecipe,
    state: dict[str, torch.Tensor],
    path: Path,
    out: RunOutput,
    *,
    meta: dict[str, Any],
    model: nn.Module | None = None,
    calibration: CalibrationData | None = None,
    trained: TrainInfo | None = None,
) -> ExportInfo:
    """Quantize (GPTQ calibrated on training data when the recipe asks), pack, compress, write the artifact.

    Training-only parts (declared by the model) are left out of the artifact; `trained`: the training
    whose time plus calibration's must fit the wallclock cap.
    """
    arch, state = artifact_view(recipe.arch, state)
    train_time_s = trained.train_time_s if trained is not None else None
    blob, report = recipe.export(
        state, arch, meta, model=model, data=calibration, train_time_s=train_time_s, say=out.say
    )
    write_atomic(path, blob, fsync=True)
    out.say(
        f"export: {report['quantizer']} + {report['codec']} ({report['packing']} packing) "
        f"{report['model_bytes']:,} model bytes"
    )
    return ExportInfo(quant=report, **report.pop("calibration", {}))


# ---------------------------------------------------------------------------------------------- score


def rebuild_from_artifact(path: Path, device: torch.device) -> nn.Module:
    """The scored model: built from the artifact file alone (architecture + weights)."""
    art = read_artifact(path)
    model = build_model(art.arch_config)
    model.load_state_dict(art.state_dict, strict=True)
    return model.to(device)


def measure_artifact(path: Path, code_config: dict[str, Any], budget_bytes: int) -> ArtifactInfo:
    """The artifact's bytes: the model file plus the generated `train_gpt.py` a submission would ship."""
    from paramgolf.export.bundle import script_bytes

    model_bytes = Path(path).stat().st_size
    code = script_bytes(code_config)
    total = model_bytes + code
    return ArtifactInfo(
        model_bytes=model_bytes,
        code_bytes=code,
        artifact_bytes=total,
        fits=total <= budget_bytes,
        artifact_file=str(path),
    )


SCORED_AS = ("method", "seq_len", "stride", "num_tokens", "num_bytes")  # two scores compare when these agree


def scored_as(r: EvalResult) -> dict[str, Any]:
    """How an evaluation scored and what: results.json's `pre_quant_eval`, compared before taking a gap."""
    return {k: getattr(r, k) for k in SCORED_AS}


def round_trip_gap(
    val_bpb: float, scored: dict[str, Any], pre_quant_val_bpb: float | None, pre_quant_eval: dict[str, Any] | None
) -> float | None:
    """val_bpb after the round trip minus before it; None unless both were scored by one method on one token set."""
    if pre_quant_val_bpb is None or pre_quant_eval is None:
        return None
    if any(pre_quant_eval.get(k) != scored.get(k) for k in SCORED_AS):
        return None
    return val_bpb - pre_quant_val_bpb


def score_artifact(
    path: Path,
    score: Scorer,
    ttt: Any,
    eval_cache: Any,
    *,
    selected_on_validation: bool,
    pre_quant_val_bpb: float | None,
    pre_quant_eval: dict[str, Any] | None,
    entropy_floor_bpb: float | None,
    train_time_s: float | None = None,
) -> ScoreInfo:
    """Rebuild the model from the artifact alone, evaluate it, and judge the evaluation's legality.

    `pre_quant_eval`: how `pre_quant_val_bpb` was scored (`scored_as`); the gap needs the same method;
    `train_time_s`: training plus what was computed from training data after it (the time budget).
    """
    model = rebuild_from_artifact(path, score.env.device)
    ev = score.evaluator
    checked = score.check_legality(model, ttt, eval_cache) if ev.compliance == "check" else None
    adaptive = ttt.name != "none" or eval_cache.name != "none"
    streamed = score.adaptive(model, ttt, eval_cache) if adaptive else None
    r = streamed.result if streamed is not None else score(model)
    verdict = compliance.assess(
        ev,
        ttt,
        eval_cache,
        num_scored=r.num_tokens,
        num_expected=ev.expected_scored(score.val.num_split_tokens) if not adaptive else score.val.tokens.numel() - 1,
        weights_selected_on_validation=selected_on_validation,
        checked=checked,
        within_budget=compliance.time_budget(r.eval_time_s, train_time_s, hardware(score.env)),
        read_ahead=streamed.read_ahead if streamed is not None else (),
        rescored=streamed.rescored if streamed is not None else 0,
    )
    return ScoreInfo(
        val_bpb=r.val_bpb,
        val_loss=r.val_loss,
        eval_time_s=r.eval_time_s,
        eval={
            "method": r.method,
            "seq_len": r.seq_len,
            "stride": r.stride,
            "ttt": ttt.name,
            "eval_cache": eval_cache.name,
            "num_tokens": r.num_tokens,
            "num_bytes": r.num_bytes,
            "on": "artifact_round_trip",
        },
        compliance=verdict,
        gap_to_floor_bpb=(r.val_bpb - entropy_floor_bpb) if entropy_floor_bpb else None,
        round_trip_gap_bpb=round_trip_gap(r.val_bpb, scored_as(r), pre_quant_val_bpb, pre_quant_eval),
    )


def hardware(env: D.DistEnv) -> str:
    """The run's hardware in the time budget's terms: "8×H100" on the challenge's machines."""
    if env.device.type == "cuda":
        name = torch.cuda.get_device_name(env.device)
        return f"{env.world_size}×{'H100' if 'H100' in name else name}"
    return f"{env.world_size}×{env.device.type}"


def score_stage(
    path: Path,
    score: Scorer,
    scoring: Scoring,
    out: RunOutput,
    *,
    step: int,
    pre_quant_val_bpb: float | None,
    pre_quant_eval: dict[str, Any] | None,
) -> ScoreInfo:
    """Measure the artifact's bytes (recorded before evaluating), then score it; logs both.

    `pre_quant_val_bpb`: the exported weights' score before the round trip, `pre_quant_eval`: how it was
    scored (for `round_trip_gap_bpb`, reported only when the round trip is scored the same way).
    """
    out.results.artifact = art = measure_artifact(path, scoring.code_config, scoring.budget_bytes)
    out.file.write()  # the bytes are known even if evaluation fails
    s = score_artifact(
        path,
        score,
        scoring.ttt,
        scoring.eval_cache,
        selected_on_validation=scoring.selected_on_validation,
        pre_quant_val_bpb=pre_quant_val_bpb,
        pre_quant_eval=pre_quant_eval,
        entropy_floor_bpb=score.val.entropy_floor_bpb,
        train_time_s=train_time_charged(out.results),
    )
    out.log(
        {
            "val/bpb": s.val_bpb,
            "val/loss": s.val_loss,
            "artifact/bytes": art.artifact_bytes,
            "artifact/model_bytes": art.model_bytes,
            "artifact/code_bytes": art.code_bytes,
        },
        step,
    )
    out.say(
        f"round-trip val_loss:{s.val_loss:.4f} val_bpb:{s.val_bpb:.4f} artifact_bytes:{art.artifact_bytes} "
        f"(model {art.model_bytes} + code {art.code_bytes}) {compliance.summarize(s.compliance)}"
    )
    return s


def train_time_charged(res: Results) -> float | None:
    """Training's time for the budget: the loop plus calibration on training data after it (GPTQ)."""
    if res.export is not None and res.export.train_plus_calibration_s is not None:
        return res.export.train_plus_calibration_s
    return res.train.train_time_s if res.train is not None else None


# ---------------------------------------------------------------------------------------------- report


def report(out: RunOutput, artifact_path: Path | None = None) -> int:
    """Final status, logger summary (and artifact), the printed summary; returns the exit code."""
    res = out.results
    art, s = res.artifact, res.score
    status = "ok" if art.fits else "over_budget"
    data = res.to_dict()
    summary = {k: data[k] for k in SUMMARY_KEYS if data.get(k) is not None}
    summary.update(status=status, compliant=bool(s.compliance.get("compliant")))
    for key in ("causal", "normalized", "score_first", "single_pass", "within_budget", "verdict"):
        summary[f"compliance/{key}"] = s.compliance.get(key)  # W&B filters on them; None: unknown
    summary["compliance/reasons"] = "; ".join(s.compliance.get("reasons", []))
    summary["valid"] = art.fits and summary["compliant"]  # a submission: fits and kept the rules
    out.logger.summary(summary)
    if artifact_path is not None:  # the logger knows whether it uploads artifacts (logger.log_artifact)
        out.logger.log_artifact(
            artifact_path,
            name=f"{res.run.name}-s{res.run.seed}",
            type="model",
            metadata={"val_bpb": s.val_bpb, "artifact_bytes": art.artifact_bytes},
        )
    out.file.write(status)
    if out.main:
        ckpt.remove_checkpoints(out.file.path.parent)  # the run finished: nothing is left to resume
    out.close()  # W&B prints its own lines; ours come last
    if out.main:
        print(format_summary(res.to_dict()), file=sys.stderr, flush=True)
    out.say(f"results: {out.file.path}")
    if not art.fits:
        out.say(
            f"OVER BUDGET by {art.artifact_bytes - res.run.budget_bytes:,} bytes "
            f"(model {art.model_bytes:,} + code {art.code_bytes:,} > {res.run.budget_bytes:,})"
        )
        return EXIT_OVER_BUDGET
    return 0
