"""The export recipe the runner calls: GPTQ calibration (when the quantizer needs it), quantize,
pack, compress — one object built from the `quant` config group.

The challenge counts calibration as training time: `training_cap` is the wallclock cap the
train loop gets (less `quant.calibration.reserve_s`), and `export` reports whether training
plus calibration fit the full cap.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch import Tensor, nn

from paramgolf.errors import UserError
from paramgolf.quant.calibration import Calibration
from paramgolf.quant.export import PACKINGS, build_artifact


@dataclass
class CalibrationData:
    """Where calibration batches come from (never the validation split)."""
    train_files: Sequence[str | Path]
    train_seq_len: int
    loader_seed: int
    vocab_size: int
    seed: int  # self-generated samples
    device: torch.device
    autocast_dtype: torch.dtype | None = None


class ExportRecipe:
    def __init__(self, quantizer: Any, codec: Any, packing: str, calibration: Calibration) -> None:
        if packing not in PACKINGS:
            raise UserError(f"quant.packing={packing!r} is not one of {', '.join(PACKINGS)}")
        self.quantizer, self.codec, self.packing, self.calibration = quantizer, codec, packing, calibration

    @property
    def calibrates(self) -> bool:
        return Calibration.needed(self.quantizer)

    def training_cap(self, cap_s: float | None) -> float | None:
        return self.calibration.training_cap(self.quantizer, cap_s)

    def export(self, state: dict[str, Tensor], arch: dict[str, Any], meta: dict[str, Any], *,
               model: nn.Module | None = None, data: CalibrationData | None = None, train_time_s: float | None = None,
               cap_s: float | None = None, say: Callable[[str], None] = lambda m: None) -> tuple[bytes, dict[str, Any]]:
        """(artifact bytes, report); `model` (holding `state`) and `data` are needed when the quantizer calibrates.

        The report holds the export's per-group bytes and timings, plus `calibration` (seconds, and
        training + calibration against `cap_s` when `train_time_s` is given) when it calibrated.
        """
        cal = None
        if self.calibrates:
            if model is None or data is None:
                raise RuntimeError("a GPTQ quantizer needs the model and calibration data to export")
            cal = self.calibration.run(self.quantizer, model, state, data.train_files, train_seq_len=data.train_seq_len,
                                       loader_seed=data.loader_seed, vocab_size=data.vocab_size, seed=data.seed,
                                       device=data.device, autocast_dtype=data.autocast_dtype, say=say)
        roles = model.parameter_roles() if model is not None else None
        blob, report = build_artifact(self.quantizer, self.codec, state, arch, meta, packing=self.packing,
                                      hessians=cal.hessians if cal else None, roles=roles)
        report["model_bytes"] = len(blob)
        if cal is not None:
            report["calibration"] = cal.report(train_time_s or 0.0, cap_s) if train_time_s is not None else \
                {"calibration_time_s": cal.seconds}
            within = report["calibration"].get("train_plus_calibration_within_cap")
            if within is False:
                say(f"WARNING: training {train_time_s:.1f}s + calibration {cal.seconds:.1f}s exceeds the "
                    f"{cap_s}s cap (train.max_wallclock_seconds); raise quant.calibration.reserve_s")
        return blob, report
