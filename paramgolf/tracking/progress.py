"""Console output for people watching a run: a training progress bar and the final summary block."""

from __future__ import annotations

import math
import os
import sys
from typing import IO, Any

from tqdm import tqdm

DEFAULT_BUDGET_BYTES = 16_000_000  # the challenge's artifact cap (code + compressed model)

# tqdm puts ", " in front of a non-empty postfix; the postfix carries everything after the counter.
_BAR_FORMAT = "{desc}{percentage:3.0f}%|{bar:20}| {n_fmt}/{total_fmt}{postfix}"


def _clock(seconds: float) -> str:
    """`H:MM:SS` for a duration."""
    seconds = max(0, int(round(seconds)))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def _si(value: float) -> str:
    """3 significant figures with k/M/G suffix (1234567 -> 1.23M)."""
    for scale, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= scale:
            return f"{value / scale:.3g}{suffix}"
    return f"{value:.3g}"


def _global_rank() -> int:
    """Rank from the launcher's environment (torchrun and elastic_launch set RANK)."""
    return int(os.environ.get("RANK", "0"))


def estimate_eta(step: int, total_steps: int, elapsed_s: float, max_seconds: float | None) -> tuple[float | None, str]:
    """Seconds left and the cap that ends training first ("steps" or "wallclock")."""
    by_steps = (total_steps - step) * elapsed_s / step if step > 0 else None
    by_wall = max(0.0, max_seconds - elapsed_s) if max_seconds is not None else None
    if by_wall is not None and (by_steps is None or by_wall < by_steps):
        return by_wall, "wallclock"
    return by_steps, "steps"


class TrainProgress:
    """A tqdm bar on stderr: step, loss, tokens/s, elapsed and ETA under the step or wallclock cap.

    Off on ranks other than 0. When the stream is not a terminal (CI, log files) it
    redraws at most every 30 s so logs stay short.
    """

    def __init__(
        self,
        total_steps: int,
        enabled: bool = True,
        max_seconds: float | None = None,
        file: IO[str] | None = None,
        mininterval: float | None = None,
    ) -> None:
        assert total_steps > 0, f"total_steps={total_steps} must be > 0 (the train.iterations cap)"
        assert max_seconds is None or max_seconds > 0, (
            f"max_seconds={max_seconds} must be > 0 or None (no wallclock cap)"
        )
        self.total_steps = total_steps
        self.max_seconds = max_seconds
        self.enabled = enabled and _global_rank() == 0
        self._bar: tqdm | None = None
        self._drawn = False
        if not self.enabled:
            return
        stream = file if file is not None else sys.stderr
        is_tty = hasattr(stream, "isatty") and stream.isatty()
        if mininterval is None:
            mininterval = 0.5 if is_tty else 30.0
        self._bar = tqdm(
            total=total_steps,
            file=stream,
            bar_format=_BAR_FORMAT,
            mininterval=mininterval,
            ascii=not is_tty,  # log files and CI viewers mangle block characters
            dynamic_ncols=is_tty,
            leave=True,
        )

    def postfix(self, step: int, loss: float, tokens_per_s: float, elapsed_s: float) -> str:
        """The text after the counter: loss, throughput, elapsed and ETA."""
        eta, cap = estimate_eta(step, self.total_steps, elapsed_s, self.max_seconds)
        eta_text = f"ETA {_clock(eta)} ({cap} cap)" if eta is not None else "ETA ?"
        loss_text = f"{loss:.4f}" if math.isfinite(loss) else str(loss)
        return f"loss {loss_text}, {_si(tokens_per_s)} tok/s, {_clock(elapsed_s)} elapsed, {eta_text}"

    def update(self, step: int, loss: float, tokens_per_s: float, elapsed_s: float) -> None:
        """Move the bar to `step` (absolute, not a delta) and show the latest numbers."""
        if self._bar is None:
            return
        self._bar.set_postfix_str(self.postfix(step, float(loss), float(tokens_per_s), float(elapsed_s)), refresh=False)
        self._bar.update(step - self._bar.n)
        if not self._drawn:
            # Draw the first real numbers at once, whatever mininterval says.
            self._bar.refresh()
            self._drawn = True

    def close(self) -> None:
        """Draw the last state and release the bar."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None


def _bytes(n: int) -> str:
    return f"{n:,}"


def _fmt_float(value: Any, digits: int = 4) -> str:
    return f"{value:.{digits}f}" if isinstance(value, (int, float)) else str(value)


def _verdict(results: dict[str, Any]) -> str:
    """Whether the run is a valid submission: the artifact fits and evaluation kept the rules."""
    reasons = []
    if not results["fits"]:
        over = int(results["artifact_bytes"]) - int(results.get("budget_bytes") or DEFAULT_BUDGET_BYTES)
        reasons.append(f"over budget by {_bytes(over)} bytes")
    rules = _compliance_line(results["compliance"])
    if rules != "compliant":
        reasons.append(f"evaluation {rules}")
    if not reasons:
        return "VALID (fits the budget, evaluation kept the rules)"
    return "NOT VALID: " + "; ".join(reasons)


RULE_KEYS = ("causal", "normalized", "score_first", "single_pass", "within_budget")


def _compliance_line(compliance: Any) -> str:
    """One line from a compliance verdict: a bool, a string, or a dict of checks."""
    if isinstance(compliance, bool):
        return "compliant" if compliance else "NON-COMPLIANT"
    if isinstance(compliance, str):
        return compliance
    if isinstance(compliance, dict) and "verdict" in compliance:  # paramgolf.evaluation.compliance.assess
        failed = [k for k in RULE_KEYS if compliance.get(k) is False]
        if compliance.get("compliant"):
            return "compliant"
        return "NON-COMPLIANT" + (f" ({', '.join(failed)})" if failed else "")
    if isinstance(compliance, dict):
        checks = compliance.get("checks", {k: v for k, v in compliance.items() if k != "compliant"})
        if not isinstance(checks, dict):
            checks = {}
        failed = []
        for name, verdict in checks.items():
            passed = verdict.get("passed", verdict.get("ok")) if isinstance(verdict, dict) else verdict
            if passed is False:
                failed.append(name)
        ok = compliance.get("compliant", not failed)
        if ok:
            return "compliant"
        return "NON-COMPLIANT" + (f" ({', '.join(failed)})" if failed else "")
    return str(compliance)


def format_summary(results: dict[str, Any]) -> str:
    """A readable block of a run's `results.json`: headline bpb, byte budget, size, time, legality.

    Keys that are missing or None are left out.
    """

    def has(key: str) -> bool:
        return results.get(key) is not None

    rows: list[tuple[str, str]] = []
    if has("val_bpb"):
        rows.append(("val_bpb", f"{_fmt_float(results['val_bpb'])}  (model rebuilt from the artifact)"))
    if has("pre_quant_val_bpb"):
        text = _fmt_float(results["pre_quant_val_bpb"])
        if has("round_trip_gap_bpb"):  # absent when the two were scored by different methods
            text += f"  (quantization cost {results['round_trip_gap_bpb']:+.4f})"
        rows.append(("pre-quant val_bpb", text))
    if has("val_loss"):
        rows.append(("val_loss", _fmt_float(results["val_loss"])))
    if has("artifact_bytes"):
        size = int(results["artifact_bytes"])
        budget = int(results.get("budget_bytes") or DEFAULT_BUDGET_BYTES)
        margin = budget - size
        verdict = f"fits, {_bytes(margin)} to spare" if margin >= 0 else f"OVER BY {_bytes(-margin)} bytes"
        rows.append(("artifact bytes", f"{_bytes(size)} / {_bytes(budget)}  {verdict}"))
    if has("model_bytes"):
        rows.append(("  model bytes", _bytes(int(results["model_bytes"]))))
    if has("code_bytes"):
        rows.append(("  code bytes", _bytes(int(results["code_bytes"]))))
    if has("params"):
        rows.append(("params", _bytes(int(results["params"]))))
    if has("steps"):
        rows.append(("steps", _bytes(int(results["steps"]))))
    if has("train_time_s"):
        rows.append(("train time", f"{results['train_time_s']:.1f} s"))
    if has("eval_time_s"):
        rows.append(("eval time", f"{results['eval_time_s']:.1f} s"))
    if has("entropy_floor_bpb"):
        floor = results["entropy_floor_bpb"]
        text = _fmt_float(floor)
        gap = results.get("entropy_gap_bpb")
        if gap is None and has("val_bpb"):
            gap = results["val_bpb"] - floor
        if gap is not None:
            text += f"  (gap {gap:+.4f})"
        rows.append(("entropy floor bpb", text))
    if has("compliance"):
        rows.append(("compliance", _compliance_line(results["compliance"])))
        c = results["compliance"]
        if isinstance(c, dict) and "verdict" in c:
            marks = {True: "yes", False: "NO", None: "unknown"}
            how = "checked by running it" if c.get("checked") else "declared"
            rows.append(("  rules", " · ".join(f"{k} {marks[c.get(k)]}" for k in RULE_KEYS) + f"  ({how})"))
            rows += [("  reason", r) for r in c.get("reasons", [])[:4]]
    if has("compliance") and has("fits"):
        rows.append(("verdict", _verdict(results)))

    width = max((len(label) for label, _ in rows), default=0)
    title = "paramgolf result" + (f": {results['run_name']}" if has("run_name") else "")
    lines = [f"=== {title} ==="] + [f"{label.ljust(width)}  {value}" for label, value in rows]
    return "\n".join(lines)
