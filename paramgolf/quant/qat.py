"""Quantization-aware training: fake quantization of the model's linear weights during training.

`QAT(quantizer, start_lr_scale)` is a train-loop hook. Once the LR scale of a step drops below
`start_lr_scale` (late QAT, e.g. 0.15 in #549/#754/#1263) after any LR warm-up (`after_step`), or
from the first step when it is null, every `CastedLinear` whose weight the export quantizes to integers computes its forward
with the weight the artifact will hold (the quantizer's own rounding and fp16 scales) and passes
gradients straight through to the fp32 weight. The model code only offers the generic
`CastedLinear.weight_fn` slot; this module fills it.

Under torch.compile the first enabled step recompiles the model once (the slot is guarded), so
QAT really runs — unlike a class-level flag that the compiler folds into a constant.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from paramgolf.errors import UserError
from paramgolf.model.layers import CastedLinear


class QAT:
    """Train hook switching fake quantization on (once) when the LR scale falls below a threshold."""

    def __init__(
        self,
        model: nn.Module,
        quantizer,
        start_lr_scale: float | None = 0.15,
        say: Callable[[str], None] | None = None,
        after_step: int = 0,
    ) -> None:
        self.check(quantizer, start_lr_scale)
        self.model, self.quantizer, self.start_lr_scale = model, quantizer, start_lr_scale
        self.after_step = after_step  # an LR warm-up's low scales are not the late phase
        self.say = say or (lambda m: None)
        self.enabled_at: int | None = None
        self.layers: list[str] = []

    @staticmethod
    def check(quantizer, start_lr_scale: float | None) -> None:
        """ValueError unless QAT can run with this quantizer and threshold."""
        if not hasattr(quantizer, "fake_quantizer"):
            raise UserError(
                f"quant.qat.enabled=true needs a rule-table quantizer (e.g. quant=int6_rtn); "
                f"quant.quantizer is {type(quantizer).__name__}"
            )
        if start_lr_scale is not None and not 0.0 < start_lr_scale <= 1.0:
            raise UserError(f"quant.qat.start_lr_scale={start_lr_scale} must be in (0, 1] or null (from the start)")

    def enable(self, step: int = 0) -> None:
        roles = self.model.parameter_roles() if hasattr(self.model, "parameter_roles") else {}
        for name, module in self.model.named_modules():
            if isinstance(module, CastedLinear):
                fake = self.quantizer.fake_quantizer(f"{name}.weight", module.weight, roles.get(f"{name}.weight"))
                if fake is not None:
                    module.weight_fn = fake
                    self.layers.append(name)
        self.enabled_at = step
        self.say(f"qat: fake quantization on at step {step} for {len(self.layers)} linear layers")

    def disable(self) -> None:
        for module in self.model.modules():
            if isinstance(module, CastedLinear):
                module.weight_fn = None

    def on_step_start(self, step: int, elapsed_s: float, lr_scale: float) -> None:
        late = self.start_lr_scale is None or (lr_scale < self.start_lr_scale and step >= self.after_step)
        if self.enabled_at is None and late:
            self.enable(step)

    def on_step_end(self, info) -> None:
        pass

    def state_dict(self) -> dict:
        """A checkpoint's part: the step QAT switched on at (None: not yet)."""
        return {"enabled_at": self.enabled_at}

    def load_state_dict(self, state: dict) -> None:
        if state["enabled_at"] is not None and self.enabled_at is None:
            self.enable(int(state["enabled_at"]))


@dataclass
class LateQAT:
    """QAT as a run plans it (config `quant.qat`): fake quantization from the first step whose LR scale is
    below `start_lr_scale` (None: from step 0), not before step `after_step` (the end of any LR warm-up)."""

    start_lr_scale: float | None
    after_step: int = 0

    @classmethod
    def plan(cls, quantizer, *, enabled: bool, start_lr_scale: float | None, after_step: int = 0) -> LateQAT | None:
        """The QAT of a run from `quant.qat` (None when off), checked against the export's quantizer."""
        if not enabled:
            return None
        QAT.check(quantizer, start_lr_scale)
        return cls(start_lr_scale, after_step)

    def hook(self, model: nn.Module, quantizer, say: Callable[[str], None] | None = None) -> QAT:
        return QAT(model, quantizer, self.start_lr_scale, say, after_step=self.after_step)
