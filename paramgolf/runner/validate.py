"""Check a composed config once, up front, so a mistake fails before data, model or training.

Hydra's schemas already refuse misspelt keys, wrong types and unknown options; this adds the
checks that span keys (batch divisibility, stride ≤ seq_len), builds the model on the meta
device (its constructors check shapes) and constructs every component.
"""
from __future__ import annotations

from typing import Any, Mapping

import torch

from paramgolf.quant.export import PACKINGS
from paramgolf.runner.build import build_model, build_optimizer_for, instantiate_unwrapped, loop_settings
from paramgolf.runner.train_loop import micro_batch_plan


def validate_config(c: Mapping[str, Any], world_size: int) -> None:
    """Raise ValueError naming the key and the fix; `world_size` is the number of ranks that will train."""
    t, e = c["train"], c["eval"]
    for key in ("iterations", "batch_tokens", "seq_len", "micro_batches", "nproc_per_node"):
        if t[key] < 1:
            raise ValueError(f"train.{key}={t[key]} must be ≥ 1")
    if t["max_wallclock_seconds"] is not None and t["max_wallclock_seconds"] < 0:
        raise ValueError(f"train.max_wallclock_seconds={t['max_wallclock_seconds']} must be ≥ 0 (0 or null: no cap)")
    micro_batch_plan(loop_settings(t), world_size)  # also builds the LR schedule, which checks its keys
    seq_len = e["seq_len"] or t["seq_len"]
    if seq_len < 1:
        raise ValueError(f"eval.seq_len={seq_len} must be ≥ 1")
    if e["method"] == "sliding" and not 1 <= e["stride"] <= seq_len:
        raise ValueError(f"eval.stride={e['stride']} must be between 1 and the evaluation seq_len ({seq_len})")
    if c["budget_bytes"] <= 0:
        raise ValueError(f"budget_bytes={c['budget_bytes']} must be positive")
    with torch.device("meta"):
        model = build_model(c["arch"])
    build_optimizer_for(model, c["optimizer"])  # rules cover every parameter; options are known
    for key in ("data", "logger", "ttt", "eval_cache"):
        instantiate_unwrapped(c[key])
    for group, key in (("quant", "quantizer"), ("quant", "codec"), ("train", "averaging")):
        instantiate_unwrapped(c[group][key])
    q = c["quant"]
    if q["packing"] not in PACKINGS:
        raise ValueError(f"quant.packing={q['packing']!r} is not one of {', '.join(PACKINGS)}")
    cal = q["calibration"]
    if cal["source"] not in ("train", "self_generated"):
        from paramgolf.runner.pipeline import calibration_source_error
        raise ValueError(calibration_source_error(cal["source"]))
    if cal["batches"] < 1 or cal["batch_seqs"] < 1:
        raise ValueError(f"quant.calibration.batches={cal['batches']} and batch_seqs={cal['batch_seqs']} must be ≥ 1")
    if q["qat"]["enabled"]:
        quantizer = instantiate_unwrapped(q["quantizer"])
        if not hasattr(quantizer, "fake_quantizer"):
            raise ValueError(f"quant.qat.enabled=true needs a rule-table quantizer (e.g. quant=int6_rtn); "
                             f"quant.quantizer is {type(quantizer).__name__}")
        s = q["qat"]["start_lr_scale"]
        if s is not None and not 0.0 < s <= 1.0:
            raise ValueError(f"quant.qat.start_lr_scale={s} must be in (0, 1] or null (from the first step)")
