"""The run plan: every component of a run built once from the composed config, checked together.

Hydra's schemas already refuse misspelt keys, wrong types and unknown options when composing;
building each component here runs its own argument checks, and the few checks that span
components (batch divisibility, optimizer rules covering every parameter, QAT's quantizer)
run once, before any data is read. The stages then receive built objects, never the config.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from paramgolf.errors import UserError
from paramgolf.evaluation.stream import check_methods
from paramgolf.model.init import record_init_
from paramgolf.quant.calibration import CalibrationData
from paramgolf.quant.qat import LateQAT
from paramgolf.quant.recipe import ExportRecipe
from paramgolf.runner.build import build_model, instantiate_unwrapped
from paramgolf.runner.checkpoint import CheckpointSettings
from paramgolf.runner.train_loop import LoopSettings, micro_batch_plan


@dataclass
class Runtime:
    """Where and how the run computes (the `train` keys that are not the training recipe)."""

    device: str  # auto | cpu | cuda
    autocast: str  # auto | bf16 | none
    compile: str  # auto | true | false
    bf16_embeddings: bool
    collective_timeout_s: float
    loader_seed: int
    progress: bool
    checkpoint: CheckpointSettings
    resume: str | None  # a run directory whose newest checkpoint this run continues


@dataclass
class Training:
    """What the train stage runs: the optimizer over the model's parameters, the loop and its hooks."""

    optimizer: Callable[..., Any]  # (named_params, param_uses=, param_roles=) -> OptimizerSet
    loop: LoopSettings  # its wallclock cap may keep some seconds for GPTQ calibration
    loader: Callable[..., Any]  # (files, rank, world_size, seed=) -> the training batch loader
    averaging: Any
    qat: LateQAT | None  # None: no QAT
    quantizer: Any  # what QAT fake-quantizes with (the export's)
    calibration_reserve_s: float | None  # seconds of the configured cap kept for GPTQ calibration


@dataclass
class Scoring:
    """What the score stage needs besides the artifact: the evaluation components and the byte budget."""

    evaluator: Any  # the `eval` group: which windows are scored
    ttt: Any
    eval_cache: Any
    code_config: dict[str, Any]  # the config whose generated train_gpt.py is the code_bytes (export.bundle)
    budget_bytes: int
    selected_on_validation: bool  # the exported weights were picked by their validation score


@dataclass
class RunPlan:
    """The built components of one run (on one process)."""

    name: str
    seed: int
    config: dict[str, Any]  # resolved: saved in results.json and sent to the logger
    data: Any  # a data source: .resolve() -> DatasetInfo
    model: nn.Module  # the seeded initial weights, on the CPU
    vocab_size: int
    runtime: Runtime
    training: Training
    export: ExportRecipe  # quantizer, codec, packing, GPTQ calibration, the artifact's architecture
    scoring: Scoring
    logger: Any

    def calibration_data(self, train_files: list, device: Any, autocast_dtype: Any) -> CalibrationData:
        return CalibrationData(
            train_files,
            self.training.loop.seq_len,
            self.runtime.loader_seed,
            self.vocab_size,
            self.seed,
            device,
            autocast_dtype,
        )


def lr_schedule_for(train: Mapping[str, Any]) -> Callable[[int, float], float]:
    """The configured LR schedule, completed with the run's iterations and wallclock cap."""
    return instantiate_unwrapped(train["schedule"])(
        iterations=train["iterations"], max_wallclock_s=train["max_wallclock_seconds"]
    )


def loop_settings(train: Mapping[str, Any]) -> LoopSettings:
    """The train loop's settings from the `train` config; the run plan adds the LR schedule once it
    knows the cap training stops at (GPTQ's reserve taken out)."""
    t = train
    for key in ("iterations", "batch_tokens", "seq_len", "micro_batches", "nproc_per_node"):
        if t[key] < 1:
            raise UserError(f"train.{key}={t[key]} must be ≥ 1")
    cap = t["max_wallclock_seconds"]
    if cap is not None and cap < 0:
        raise UserError(f"train.max_wallclock_seconds={cap} must be ≥ 0 (0 or null: no cap)")
    return LoopSettings(
        iterations=t["iterations"],
        batch_tokens=t["batch_tokens"],
        seq_len=t["seq_len"],
        micro_batches=t["micro_batches"],
        warmup_steps=t["warmup_steps"],
        max_wallclock_seconds=cap,
        val_every=t["val_every"],
        log_every=t["log_every"],
        softcapped_ce=instantiate_unwrapped(t["fused_ce"]),
        grouped_allreduce=t["grouped_allreduce"],
    )


def dry_run_optimizer(optimizer: Callable[..., Any], model: nn.Module) -> None:
    """Check the optimizer's options and that its rules cover every parameter, on meta-device stand-ins
    (the real optimizer is built on the training device: Muon picks its dtype and banks there)."""
    stand_ins = [
        (n, nn.Parameter(torch.empty(p.shape, dtype=p.dtype, device="meta"), requires_grad=p.requires_grad))
        for n, p in model.named_parameters()
    ]
    optimizer(stand_ins, param_uses=model.parameter_uses(), param_roles=model.parameter_roles())


def build_plan(c: Mapping[str, Any], world_size: int) -> RunPlan:
    """Build and check every component; a UserError names the key and the fix.

    `world_size` is the number of ranks that will train. The model is built with the run's seed,
    so its initial weights are the run's.
    """
    t, q = c["train"], c["quant"]
    loop = loop_settings(t)
    micro_batch_plan(loop, world_size)
    loader = instantiate_unwrapped(t["loader"])
    if c["budget_bytes"] <= 0:
        raise UserError(f"budget_bytes={c['budget_bytes']} must be positive")
    evaluator = instantiate_unwrapped(c["eval"])
    evaluator.bind(t["seq_len"])
    torch.manual_seed(c["seed"])
    model = build_model(c["arch"])
    record_init_(model, c["arch"], c["seed"])  # arch.init_order: a record's draw order from the seed
    optimizer = instantiate_unwrapped(c["optimizer"])
    dry_run_optimizer(optimizer, model)
    cap = loop.max_wallclock_seconds
    export = ExportRecipe(
        instantiate_unwrapped(q["quantizer"]),
        instantiate_unwrapped(q["codec"]),
        q["packing"],
        instantiate_unwrapped(q["calibration"]),
        arch=c["arch"],
        wallclock_cap_s=cap,
    )
    loop.max_wallclock_seconds = export.training_cap(cap)
    # The schedule runs to where training stops, as the records' training fraction does.
    loop.lr_schedule = lr_schedule_for({**t, "max_wallclock_seconds": loop.max_wallclock_seconds})
    qat = LateQAT.plan(export.quantizer, **q["qat"], after_step=getattr(loop.lr_schedule, "warmup_iters", 0))
    reserved = cap - loop.max_wallclock_seconds if cap and loop.max_wallclock_seconds != cap else None
    runtime = Runtime(
        device=t["device"],
        autocast=t["autocast"],
        compile=str(t["compile"]),
        bf16_embeddings=t["bf16_embeddings"],
        collective_timeout_s=t["collective_timeout_s"],
        loader_seed=t["loader_seed"],
        progress=t["progress"],
        checkpoint=CheckpointSettings(t["checkpoint_every_steps"], t["checkpoint_every_s"], t["checkpoint_keep"]),
        resume=t["resume"],
    )
    averaging = instantiate_unwrapped(t["averaging"])
    ttt, eval_cache = instantiate_unwrapped(c["ttt"]), instantiate_unwrapped(c["eval_cache"])
    check_methods(ttt, eval_cache)
    return RunPlan(
        name=c["name"],
        seed=c["seed"],
        config=dict(c),
        data=instantiate_unwrapped(c["data"]),
        model=model,
        vocab_size=c["arch"]["vocab_size"],
        runtime=runtime,
        training=Training(optimizer, loop, loader, averaging, qat, export.quantizer, calibration_reserve_s=reserved),
        export=export,
        scoring=Scoring(
            evaluator,
            ttt,
            eval_cache,
            dict(c),
            c["budget_bytes"],
            selected_on_validation=averaging.selects_on_validation,
        ),
        logger=instantiate_unwrapped(c["logger"]),
    )
