"""Loop layers: a range of physical layers run several times per forward (#1394, #1493 and the top record #1855).

The model carries the layer order (`LoopLayers`) and a run-time switch (`GPT.set_looping`); the
train loop turns it on part-way through training (`LoopSwitch`, a train hook), the records'
ENABLE_LOOPING_AT, after priming both graphs in the compile warm-up.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from paramgolf.errors import UserError


class LoopLayers:
    """Physical layers start..end repeated `num_loops` extra times: [0..s-1] + [s..e]×(num_loops+1) + [e+1..L-1].

    With U-Net skips the first half of this virtual order is the encoder, the rest the decoder
    (#1855: 3–5 ×3 of 11 gives encoder [0,1,2,3,4,5,3,4], decoder [5,3,4,5,6,7,8,9,10]). The
    repeats reuse the same modules, per-layer scalars included. `enable_at`: the training
    fraction (wallclock, else steps) from which the loop runs; before it, the plain order.
    """

    def __init__(self, num_layers: int, start: int = 3, end: int = 5, num_loops: int = 2, enable_at: float = 0.35):
        if not 0 <= start <= end < num_layers:
            raise UserError(f"arch.loop: need 0 ≤ start ≤ end < num_layers={num_layers} (got start={start}, end={end})")
        if num_loops < 1:
            raise UserError(f"arch.loop.num_loops={num_loops} must be ≥ 1 (extra passes; remove arch.loop for none)")
        if not 0.0 <= enable_at <= 1.0:
            raise UserError(f"arch.loop.enable_at={enable_at} must be a training fraction in [0, 1]")
        self.start, self.end, self.num_loops, self.enable_at = start, end, num_loops, enable_at
        segment = list(range(start, end + 1))
        self.order = list(range(start)) + segment * (num_loops + 1) + list(range(end + 1, num_layers))

    def split(self, unet_skips: bool = True) -> tuple[list[int], list[int]]:
        """(encoder, decoder) physical indices of the looped order."""
        n = len(self.order) // 2 if unet_skips else 0
        return self.order[:n], self.order[n:]


class LoopSwitch:
    """Train hook: loop layers off from the start of training, on once `fraction(step, elapsed_s)` ≥ enable_at.

    The compile warm-up also runs its steps with the loop on (`warm_up_phases`), so switching mid-run
    finds both graphs compiled (#1394/#1855 warm-up). After training, `finish()` leaves the loop on:
    evaluation sees the model the artifact rebuilds.
    """

    def __init__(self, model: Any, fraction: Callable[[int, float], float], say: Callable[[str], None] | None = None):
        self.model, self.fraction, self.say = model, fraction, say
        self.enable_at = model.loop.enable_at
        self.enabled_at_step: int | None = None
        model.set_looping(self.enable_at <= 0.0)

    def on_step_start(self, step: int, elapsed_s: float, lr_scale: float) -> None:
        if not self.model.looping and self.fraction(step, elapsed_s) >= self.enable_at:
            self.model.set_looping(True)
            self.enabled_at_step = step
            if self.say is not None:
                enc, dec = self.model.layer_split()
                self.say(f"loop layers on at step {step} ({elapsed_s:.1f}s): encoder {enc} decoder {dec}")

    def on_step_end(self, info: Any) -> None:
        pass

    def warm_up_phases(self) -> list[Any]:
        """Context managers the warm-up repeats its steps under: the loop on, when training starts without it."""
        return [] if self.model.looping else [self._looping_on()]

    @contextmanager
    def _looping_on(self) -> Iterator[None]:
        was = self.model.looping
        self.model.set_looping(True)
        try:
            yield
        finally:
            self.model.set_looping(was)

    def finish(self) -> None:
        self.model.set_looping(True)

    def state_dict(self) -> dict[str, Any]:
        return {"looping": self.model.looping, "enabled_at_step": self.enabled_at_step}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.set_looping(bool(state["looping"]))
        self.enabled_at_step = state["enabled_at_step"]


def loop_switch(
    model: Any, fraction: Callable[[int, float], float], say: Callable[[str], None] | None = None
) -> LoopSwitch | None:
    """The loop's train hook for `model`, or None when it has no loop layers."""
    return LoopSwitch(model, fraction, say) if getattr(model, "loop", None) is not None else None
