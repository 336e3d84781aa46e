"""The export recipe the runner calls: GPTQ calibration (when the quantizer needs it), quantize,
pack, compress — one object built from the `quant` config group.

The challenge counts calibration as training time: `training_cap` is the wallclock cap the
train loop gets (less `quant.calibration.reserve_s`), and `export` reports whether calibration
fit its reserve and whether training plus calibration fit the full cap.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import Tensor, nn

from paramgolf.errors import UserError
from paramgolf.quant.calibration import Calibration, CalibrationData
from paramgolf.quant.export import PACKINGS, build_artifact


class ExportRecipe:
    """How a run's weights become the artifact (the `quant` group), for the architecture `arch` it describes;
    `wallclock_cap_s`: the training cap that training plus calibration must fit."""

    def __init__(
        self,
        quantizer: Any,
        codec: Any,
        packing: str,
        calibration: Calibration,
        arch: dict[str, Any] | None = None,
        wallclock_cap_s: float | None = None,
    ) -> None:
        if packing not in PACKINGS:
            raise UserError(f"quant.packing={packing!r} is not one of {', '.join(PACKINGS)}")
        self.quantizer, self.codec, self.packing, self.calibration = quantizer, codec, packing, calibration
        self.arch, self.wallclock_cap_s = dict(arch or {}), wallclock_cap_s

    @property
    def calibrates(self) -> bool:
        return Calibration.needed(self.quantizer)

    def training_cap(self, cap_s: float | None) -> float | None:
        return self.calibration.training_cap(self.quantizer, cap_s)

    def export(
        self,
        state: dict[str, Tensor],
        arch: dict[str, Any],
        meta: dict[str, Any],
        *,
        model: nn.Module | None = None,
        data: CalibrationData | None = None,
        train_time_s: float | None = None,
        say: Callable[[str], None] = lambda m: None,
    ) -> tuple[bytes, dict[str, Any]]:
        """(artifact bytes, report); `model` (holding `state`) and `data` are needed when the quantizer calibrates.

        The report holds the export's per-group bytes and timings, plus `calibration` (seconds, and
        training + calibration against `wallclock_cap_s` when `train_time_s` is given) when it calibrated.
        """
        cal, cap_s = None, self.wallclock_cap_s
        roles = model.parameter_roles() if model is not None else None
        if self.calibrates:
            if model is None or data is None:
                raise RuntimeError("a GPTQ quantizer needs the model and calibration data to export")
            cal = self.calibration.run(self.quantizer, model, state, data, roles=roles, say=say)
        blob, report = build_artifact(
            self.quantizer,
            self.codec,
            state,
            arch,
            meta,
            packing=self.packing,
            hessians=cal.hessians if cal else None,
            roles=roles,
        )
        report["model_bytes"] = len(blob)
        if cal is not None:
            full = cal.report(train_time_s or 0.0, cap_s)
            keep = ("calibration_time_s", "calibration_within_reserve")
            report["calibration"] = full if train_time_s is not None else {k: full[k] for k in keep}
            if full["calibration_within_reserve"] is False:
                say(
                    f"WARNING: calibration took {cal.seconds:.1f}s, more than the {cal.reserve_s:.1f}s kept for it "
                    f"(quant.calibration.reserve_s); raise the reserve"
                )
            if report["calibration"].get("train_plus_calibration_within_cap") is False:
                say(
                    f"WARNING: training {train_time_s:.1f}s + calibration {cal.seconds:.1f}s exceeds the "
                    f"{cap_s}s cap (train.max_wallclock_seconds); raise quant.calibration.reserve_s"
                )
        return blob, report
