"""Calibration activations for GPTQ: input Hessians of the model's linear layers.

`collect_hessians` hooks every `nn.Linear` whose weight is asked for, runs the model over the
calibration batches and returns H = (1 / num_batches) · Σ XᵀX per weight (X: the layer's inputs
flattened to [tokens, in_features], fp32), as #1263 does. A layer that runs several times per
forward (a shared recurrence core) accumulates every call. A tied embedding is also the output
head (logits = h · tok_emb.weightᵀ, with h the final norm's output): its H = (1 / num_batches) · Σ hᵀh
over that output, so it can be GPTQ'd as an output projection (#1394, #1855 T:2114-2143). The
batches come from training data or from `self_generated_batches`; validation data is refused.

`Calibration` (config `quant.calibration`) owns the whole of it for the runner: the wallclock
reserve inside the training cap, the batches, the Hessians and the checks that calibration took
no longer than its reserve and that training plus calibration fits the cap (the challenge counts
calibration on training data as training time, F11).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from paramgolf.errors import UserError

SOURCES = ("train", "self_generated")


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


@dataclass
class CalibrationResult:
    hessians: dict[str, Tensor]  # on the CPU
    seconds: float  # batches, forwards and Hessians, until they are on the CPU
    reserve_s: float | None = None  # the seconds of the cap kept for it (when there is a cap)

    def report(self, train_time_s: float, cap_s: float | None) -> dict[str, Any]:
        """What results.json says: calibration time against its reserve, training + calibration against the cap."""
        total = train_time_s + self.seconds
        return {
            "calibration_time_s": self.seconds,
            "calibration_within_reserve": (self.seconds <= self.reserve_s)
            if cap_s and self.reserve_s is not None
            else None,
            "train_plus_calibration_s": total,
            "train_plus_calibration_within_cap": (total <= cap_s) if cap_s else None,
        }


class Calibration:
    """GPTQ calibration: Hessians from `batches` × `batch_seqs` sequences of training data or of the
    model's own samples; `reserve_s` seconds of the training wallclock cap are kept for it."""

    def __init__(
        self,
        source: str = "train",
        batches: int = 32,
        batch_seqs: int = 8,
        seq_len: int | None = None,
        temperature: float = 1.0,
        reserve_s: float = 10.0,
    ) -> None:
        """`seq_len` None: train.seq_len; `temperature`: self_generated sampling."""
        if source == "validation":
            raise UserError(
                "quant.calibration.source=validation is refused: GPTQ calibrated on validation tokens "
                "lets the scored data shape the artifact. Use train (training batches) or "
                "self_generated (the model's own samples)"
            )
        if source not in SOURCES:
            raise UserError(f"quant.calibration.source={source!r} is not one of {', '.join(SOURCES)}")
        if batches < 1 or batch_seqs < 1:
            raise UserError(f"quant.calibration.batches={batches} and batch_seqs={batch_seqs} must be ≥ 1")
        if temperature <= 0:
            raise UserError(f"quant.calibration.temperature={temperature} must be > 0")
        if reserve_s < 0:
            raise UserError(f"quant.calibration.reserve_s={reserve_s} must be ≥ 0")
        self.source, self.batches, self.batch_seqs, self.seq_len = source, batches, batch_seqs, seq_len
        self.temperature, self.reserve_s = temperature, reserve_s

    @staticmethod
    def needed(quantizer: Any) -> bool:
        return bool(getattr(quantizer, "needs_hessians", False))

    def training_cap(self, quantizer: Any, cap_s: float | None) -> float | None:
        """The wallclock cap the train loop gets: `cap_s` less the reserve when the quantizer needs Hessians."""
        if not cap_s or not self.needed(quantizer):
            return cap_s
        return max(cap_s - self.reserve_s, 1.0)

    def batches_for(self, model: nn.Module, data: CalibrationData) -> Iterator[Tensor]:
        seq_len = self.seq_len or data.train_seq_len
        if self.source == "train":
            from paramgolf.data.loader import DistributedTokenLoader

            loader = DistributedTokenLoader(data.train_files, 0, 1, seed=data.loader_seed)
            for _ in range(self.batches):
                x, _ = loader.next_batch(self.batch_seqs * seq_len, seq_len)
                yield x.to(data.device)
        else:
            yield from self_generated_batches(
                model,
                self.batches * self.batch_seqs,
                seq_len,
                vocab_size=data.vocab_size,
                temperature=self.temperature,
                seed=data.seed,
                batch_size=self.batch_seqs,
                device=data.device,
            )

    def run(
        self,
        quantizer: Any,
        model: nn.Module,
        state: dict[str, Tensor],
        data: CalibrationData,
        roles: Mapping[str, str] | None = None,
        say: Callable[[str], None] = lambda m: None,
    ) -> CalibrationResult | None:
        """Hessians for the quantizer's GPTQ tensors (None when it needs none), timed; `roles`: the model's
        declared parameter roles, for table rows that match by role."""
        names = quantizer.gptq_names(state, roles) if self.needed(quantizer) else set()
        if not names:
            return None
        t0 = time.perf_counter()
        hessians = collect_hessians(
            model,
            self.batches_for(model, data),
            param_names=names,
            device=data.device,
            autocast_dtype=data.autocast_dtype,
        )
        hessians = {k: v.cpu() for k, v in hessians.items()}  # inside the timer: waits for the device's work
        seconds = time.perf_counter() - t0
        say(
            f"gptq calibration: {len(hessians)} matrices from {self.batches} {self.source} batches in {seconds:.1f}s "
            f"(reserve {self.reserve_s:.1f}s)"
        )
        return CalibrationResult(hessians, seconds, self.reserve_s)


@torch.no_grad()
def collect_hessians(
    model: nn.Module,
    batches: Iterable[Tensor],
    *,
    param_names: set[str] | None = None,
    device: torch.device | None = None,
    autocast_dtype: torch.dtype | None = None,
) -> dict[str, Tensor]:
    """{weight name: H [in, in]} for the Linear layers whose weight name is in `param_names` (all if None),
    and for a tied embedding named there (`tied_head_inputs`)."""
    targets: dict[str, nn.Module] = {}
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear) and (param_names is None or f"{name}.weight" in param_names):
            targets[f"{name}.weight"] = module
    head_inputs = {k: m for k, m in tied_head_inputs(model).items() if param_names is None or k in param_names}
    sums: dict[str, Tensor] = {}
    handles = []

    def hook_for(key: str, of_output: bool = False):
        def hook(module: nn.Module, inputs: tuple[Tensor, ...], output: Tensor) -> None:
            a = output if of_output else inputs[0]
            x = a.detach().float().reshape(-1, a.shape[-1])
            h = x.T @ x
            if key in sums:
                sums[key] += h
            else:
                sums[key] = h

        return hook

    for key, module in targets.items():
        handles.append(module.register_forward_hook(hook_for(key)))
    for key, module in head_inputs.items():
        handles.append(module.register_forward_hook(hook_for(key, of_output=True)))
    was_training = model.training
    model.eval()
    num_batches = 0
    try:
        for x in batches:
            x = x.to(device) if device is not None else x
            if autocast_dtype is not None and x.device.type in ("cuda", "cpu"):
                with torch.autocast(device_type=x.device.type, dtype=autocast_dtype):
                    model(x)
            else:
                model(x)
            num_batches += 1
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    if num_batches == 0:
        raise RuntimeError("GPTQ calibration got no batches (quant.calibration.batches must be ≥ 1)")
    missing = sorted((set(targets) | set(head_inputs)) - set(sums))
    if missing:
        raise RuntimeError(f"GPTQ calibration: layers never ran during the forward: {missing[:5]}")
    return {k: v / num_batches for k, v in sums.items()}


def tied_head_inputs(model: nn.Module) -> dict[str, nn.Module]:
    """{"tok_emb.weight": the final norm} when the model's head is its tied embedding (no `lm_head`):
    the norm's output is the head's input. Empty for other models."""
    norm, emb = getattr(model, "final_norm", None), getattr(model, "tok_emb", None)
    if getattr(model, "lm_head", True) is None and isinstance(norm, nn.Module) and isinstance(emb, nn.Embedding):
        return {"tok_emb.weight": norm}
    return {}


@torch.no_grad()
def self_generated_batches(
    model: nn.Module,
    num_seqs: int,
    seq_len: int,
    *,
    vocab_size: int,
    temperature: float = 1.0,
    seed: int = 0,
    batch_size: int = 8,
    device: torch.device | None = None,
) -> Iterator[Tensor]:
    """Calibration sequences the model samples itself: [B, seq_len] token batches, deterministic per seed."""
    gen = torch.Generator(device="cpu").manual_seed(seed)
    was_training = model.training
    model.eval()
    try:
        done = 0
        while done < num_seqs:
            b = min(batch_size, num_seqs - done)
            seq = torch.randint(0, vocab_size, (b, 1), generator=gen)
            for _ in range(seq_len - 1):
                logits = model(seq.to(device) if device is not None else seq)[:, -1].float().cpu()
                probs = torch.softmax(logits / temperature, dim=-1)
                seq = torch.cat([seq, torch.multinomial(probs, 1, generator=gen)], dim=1)
            done += b
            yield seq.to(device) if device is not None else seq
    finally:
        model.train(was_training)
