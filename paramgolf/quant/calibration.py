"""Calibration activations for GPTQ: input Hessians of the model's linear layers.

`collect_hessians` hooks every `nn.Linear` whose weight is asked for, runs the model over the
calibration batches and returns H = (1 / num_batches) · Σ XᵀX per weight (X: the layer's inputs
flattened to [tokens, in_features], fp32), as #1263 does. A layer that runs several times per
forward (a shared recurrence core) accumulates every call. The batches come from training data
or from `self_generated_batches`; the runner refuses validation data.
"""
from __future__ import annotations

from typing import Iterable, Iterator

import torch
from torch import Tensor, nn


@torch.no_grad()
def collect_hessians(model: nn.Module, batches: Iterable[Tensor], *, param_names: set[str] | None = None,
                     device: torch.device | None = None, autocast_dtype: torch.dtype | None = None) -> dict[str, Tensor]:
    """{weight name: H [in, in]} for the Linear layers whose weight name is in `param_names` (all if None)."""
    targets: dict[str, nn.Linear] = {}
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear) and (param_names is None or f"{name}.weight" in param_names):
            targets[f"{name}.weight"] = module
    sums: dict[str, Tensor] = {}
    handles = []

    def hook_for(key: str):
        def hook(module: nn.Module, inputs: tuple[Tensor, ...], output: Tensor) -> None:
            x = inputs[0].detach().float().reshape(-1, inputs[0].shape[-1])
            h = x.T @ x
            if key in sums:
                sums[key] += h
            else:
                sums[key] = h
        return hook

    for key, module in targets.items():
        handles.append(module.register_forward_hook(hook_for(key)))
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
        raise ValueError("GPTQ calibration got no batches (quant.calibration.batches must be ≥ 1)")
    missing = sorted(set(targets) - set(sums))
    if missing:
        raise ValueError(f"GPTQ calibration: layers never ran during the forward: {missing[:5]}")
    return {k: v / num_batches for k, v in sums.items()}


@torch.no_grad()
def self_generated_batches(model: nn.Module, num_seqs: int, seq_len: int, *, vocab_size: int,
                           temperature: float = 1.0, seed: int = 0, batch_size: int = 8,
                           device: torch.device | None = None) -> Iterator[Tensor]:
    """Calibration sequences the model samples itself: [B, seq_len] token batches, deterministic per seed."""
    if temperature <= 0:
        raise ValueError(f"quant.calibration.temperature={temperature} must be > 0")
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
