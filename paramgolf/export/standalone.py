"""The entry of an exported record's `train_gpt.py`: train, export, round-trip and score one config.

The generated script (paramgolf.export.bundle) holds this module and the parts of paramgolf it
reaches, nothing else: no Hydra (components are built by `build` below from their `_target_`s), no
logger, no compliance audit. It runs the same components in the same order as paramgolf's pipeline
(runner/plan.py, runner/pipeline.py), so on the CPU with a fixed seed it reproduces the run's
val_bpb bit for bit.

    python train_gpt.py                                 # one process (CPU or one GPU)
    torchrun --standalone --nproc_per_node=8 train_gpt.py
    DATA_PATH=... TOKENIZER_PATH=... python train_gpt.py
"""

from __future__ import annotations

import functools
import importlib
import json
import os
import time
from pathlib import Path
from typing import Any

import torch

from paramgolf.data.byte_table import build_byte_table, load_sidecar
from paramgolf.data.loader import load_validation_tokens
from paramgolf.data.shards import list_shards, list_sidecars, read_shard_header
from paramgolf.data.tokenizer import load_tokenizer
from paramgolf.errors import UserError
from paramgolf.evaluation.stream import check_methods, run_stream, stream_chunk_tokens
from paramgolf.fsio import write_atomic
from paramgolf.model.init import record_init_
from paramgolf.model.training import artifact_view
from paramgolf.quant.artifact import read_artifact
from paramgolf.quant.calibration import CalibrationData
from paramgolf.quant.qat import LateQAT
from paramgolf.quant.recipe import ExportRecipe
from paramgolf.runner import distributed as D
from paramgolf.runner.build import prepare_for_device, resolve_autocast, resolve_compile
from paramgolf.runner.stages import _AveragingHook, loop_hook
from paramgolf.runner.train_loop import LoopSettings, Trainer

ARTIFACT_FILE = "final_model.pgart"


def build(node: Any) -> Any:
    """A config node's object: `_target_` called with its (built) keys, a partial when `_partial_` is set.

    The subset of Hydra's `instantiate` paramgolf's schemas use (tests/export check they agree).
    """
    if isinstance(node, list):
        return [build(v) for v in node]
    if not isinstance(node, dict):
        return node
    kwargs = {k: build(v) for k, v in node.items() if k not in ("_target_", "_partial_")}
    if "_target_" not in node:
        return kwargs
    module, _, name = node["_target_"].rpartition(".")
    target = getattr(importlib.import_module(module), name)
    return functools.partial(target, **kwargs) if node.get("_partial_") else target(**kwargs)


def data_paths(data: dict[str, Any]) -> tuple[Path, Path]:
    """The shard directory and tokenizer: $DATA_PATH / $TOKENIZER_PATH, else the config's FineWeb paths."""
    data_dir = os.environ.get("DATA_PATH") or data.get("data_dir")
    if not data_dir:
        raise UserError("set DATA_PATH to the dataset directory (its fineweb_train_*.bin / fineweb_val_*.bin shards)")
    data_dir = Path(data_dir).expanduser()
    tokenizer = os.environ.get("TOKENIZER_PATH") or data.get("tokenizer_path") or data_dir / "tokenizer.model"
    return data_dir, Path(tokenizer).expanduser()


def main(c: dict[str, Any], out_dir: str | Path = ".", script: str | None = None) -> dict[str, Any]:
    """Train, export, round-trip and score the config `c`; returns (and rank 0 prints and writes) the results.

    `script`: the generated file, whose size is the code bytes.
    """
    if os.environ.get("SEED"):
        c = {**c, "seed": int(os.environ["SEED"])}  # the record's other seeds
    t, q, out_dir = c["train"], c["quant"], Path(out_dir)
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    # The components, in the order paramgolf's run plan builds them (the model's seed comes first).
    cap = t["max_wallclock_seconds"]
    keys = ("iterations", "batch_tokens", "seq_len", "micro_batches", "warmup_steps", "val_every", "log_every")
    loop = LoopSettings(**{k: t[k] for k in keys}, max_wallclock_seconds=cap)
    loop.softcapped_ce, loop.grouped_allreduce = build(t["fused_ce"]), t["grouped_allreduce"]
    evaluator = build(c["eval"])
    evaluator.bind(t["seq_len"])
    torch.manual_seed(c["seed"])
    model = build(c["arch"])
    record_init_(model, c["arch"], c["seed"])
    optimizer = build(c["optimizer"])
    recipe = ExportRecipe(
        build(q["quantizer"]), build(q["codec"]), q["packing"], build(q["calibration"]), c["arch"], cap
    )
    loop.max_wallclock_seconds = recipe.training_cap(cap)
    schedule = build(t["schedule"])(iterations=t["iterations"], max_wallclock_s=loop.max_wallclock_seconds)
    loop.lr_schedule = schedule  # to where training stops (GPTQ's reserve taken out)
    qat = LateQAT.plan(recipe.quantizer, **q["qat"], after_step=getattr(schedule, "warmup_iters", 0))
    loader = build(t["loader"])
    averaging = build(t["averaging"])
    if averaging.selects_on_validation:
        raise UserError("train.averaging picks weights by their validation score: that cannot be a record script")
    ttt, cache = build(c["ttt"]), build(c["eval_cache"])
    check_methods(ttt, cache)

    env = D.init_distributed(rank, world, t["device"], t["collective_timeout_s"])
    say = print if env.is_main else (lambda m: None)
    try:
        data_dir, tok_path = data_paths(c["data"])
        train_files, val_files = list_shards(data_dir, "train"), list_shards(data_dir, "val")
        vocab = c["arch"]["vocab_size"]
        sidecars = list_sidecars(data_dir, val_files)  # CaseOps data: bytes of the original text per token
        sidecar = load_sidecar(sidecars, sum(read_shard_header(f) for f in val_files)) if sidecars else None
        byte_table = build_byte_table(load_tokenizer(tok_path), table_size=vocab, sidecar=sidecar)
        split = load_validation_tokens(val_files, 1)
        cut = c["data"].get("val_max_tokens", 0)
        if cut > 0:
            split = split[: min(cut, split.numel() - 1) + 1]
        val = evaluator.scored_tokens(split)
        byte_table = byte_table.to(env.device)

        model = prepare_for_device(model, env.device, t["bf16_embeddings"])
        D.broadcast_parameters(model)
        train_model = model
        if resolve_compile(str(t["compile"]), env.device):
            train_model = torch.compile(model, dynamic=False, fullgraph=True)
        dtype = resolve_autocast(t["autocast"], env.device)
        say(f"params:{sum(p.numel() for p in model.parameters())} world_size:{world} device:{env.device}")

        optimizers = optimizer(
            list(model.named_parameters()), param_uses=model.parameter_uses(), param_roles=model.parameter_roles()
        )
        hooks = [qat.hook(model, recipe.quantizer, say)] if qat is not None else []
        looping = loop_hook(model, loop, say)  # the loop layers' switch, as the run plan orders the hooks
        hooks += [looping] if looping is not None else []
        hooks.append(_AveragingHook(averaging, model))

        def make_loader() -> Any:
            return loader(train_files, env.rank, env.world_size, seed=t["loader_seed"])

        trainer = Trainer(model, train_model, optimizers, make_loader, loop, env, dtype, hooks=hooks)
        trainer.warm_up()
        averaging.update(model, 0)

        def on_log(info: Any) -> None:
            if info.loss is not None:
                say(f"step:{info.step}/{loop.iterations} train_loss:{info.loss:.6f} time:{info.elapsed_s:.1f}s")

        summary = trainer.train(on_log=on_log)
        if qat is not None:
            hooks[0].disable()
        if looping is not None:
            looping.finish()
        state = averaging.averaged_state_dict(model)
        state = {k: v.detach().float().cpu() if v.is_floating_point() else v.detach().cpu() for k, v in state.items()}
        model.load_state_dict(state, strict=True)

        path = out_dir / ARTIFACT_FILE
        if env.is_main:
            cal = CalibrationData(train_files, loop.seq_len, t["loader_seed"], vocab, c["seed"], env.device, dtype)
            arch, kept = artifact_view(recipe.arch, state)
            blob, _ = recipe.export(
                kept,
                arch,
                {"steps": summary.steps, "seed": c["seed"]},
                model=model,
                data=cal,
                train_time_s=summary.train_time_s,
                say=say,
            )
            write_atomic(path, blob, fsync=True)
        D.barrier()

        art = read_artifact(path)  # the scored model is built from the artifact file alone
        scored = build(art.arch_config)
        scored.load_state_dict(art.state_dict, strict=True)
        scored = scored.to(env.device)
        started = time.perf_counter()
        if ttt.name != "none" or cache.name != "none":
            if getattr(ttt, "seq_len", 0) is None:
                ttt.seq_len = evaluator.seq_len
            if hasattr(ttt, "autocast_dtype"):
                ttt.autocast_dtype = dtype
            r = run_stream(
                scored,
                val,
                byte_table,
                ttt=ttt,
                eval_cache=cache,
                seq_len=evaluator.seq_len,
                stride=evaluator.stride or evaluator.seq_len,
                chunk_tokens=stream_chunk_tokens(ttt, cache, val.numel()),
                batch_seqs=evaluator.batch_seqs(world),
                device=env.device,
                rank=env.rank,
                world_size=world,
                autocast_dtype=dtype,
                method=f"{evaluator.name}+{ttt.name}+{cache.name}",
            ).result
        else:
            r = evaluator(scored, val, byte_table, device=env.device, rank=env.rank, world_size=world,
                          autocast_dtype=dtype, progress=False)  # fmt: skip
        model_bytes = path.stat().st_size
        code_bytes = os.path.getsize(script) if script else 0
        results = {
            "val_bpb": r.val_bpb,
            "val_loss": r.val_loss,
            "steps": summary.steps,
            "train_time_s": summary.train_time_s,
            "eval_time_s": time.perf_counter() - started,
            "model_bytes": model_bytes,
            "code_bytes": code_bytes,
            "artifact_bytes": model_bytes + code_bytes,
            "losses": summary.losses,
        }
        if env.is_main:
            say(
                f"final val_loss:{r.val_loss:.8f} val_bpb:{r.val_bpb:.8f} "
                f"artifact_bytes:{model_bytes + code_bytes} (model {model_bytes} + code {code_bytes})"
            )
            (out_dir / "results.json").write_text(json.dumps(results, indent=1) + "\n")
        return results
    finally:
        D.shutdown_distributed()
