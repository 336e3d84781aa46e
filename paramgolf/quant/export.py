"""Export: quantize → choose the packing → compress → the artifact bytes, plus what results.json says.

The packing of sub-8-bit codes (int8 containers or a dense bit stream) is chosen by measuring
both after the codec (`packing=auto`), because which one compresses smaller depends on the codec.
Per tensor group (the quantizer's rule that took the tensor) the report gives tensors, parameters,
bits per parameter before compression and the group's bytes compressed on its own with the same
codec (groups compress a little better together, so these do not sum exactly to `model_bytes`).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from paramgolf.errors import UserError
from paramgolf.quant.artifact import _split_frame, pack_artifact
from paramgolf.quant.schemes import QuantizedTensor

PACKINGS = ("auto", "int8", "bits")


def _quantize(
    quantizer, state: Mapping[str, Tensor], hessians: Mapping[str, Tensor] | None, roles: Mapping[str, str] | None
):
    return quantizer.quantize(state, hessians=hessians, roles=roles)


def group_of(quantizer, name: str, qt: QuantizedTensor) -> str:
    report = getattr(quantizer, "report", None)
    return report.rule_of.get(name, qt.scheme) if report is not None else qt.scheme


def _raw_bytes(t: Tensor) -> bytes:
    return t.detach().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()


def group_stats(quantizer, qstate: Mapping[str, QuantizedTensor], codec) -> dict[str, dict[str, Any]]:
    """Per quantizer group: tensors, params, stored bytes, schemes, and `compressed_bytes`, the codec on
    the group's bytes alone (pergroup routes whole payloads only, so there it is its brotli; its own
    per-stream sizes are the report's `codec_streams`)."""
    groups: dict[str, dict[str, Any]] = {}
    parts: dict[str, list[bytes]] = {}
    for name, qt in qstate.items():
        g = group_of(quantizer, name, qt)
        row = groups.setdefault(g, {"tensors": 0, "params": 0, "stored_bytes": 0, "schemes": []})
        row["tensors"] += 1
        row["params"] += qt.numel
        row["stored_bytes"] += qt.stored_bytes
        label = qt.scheme + (f"{qt.meta['bits']}" if "bits" in qt.meta else "")
        if label not in row["schemes"]:
            row["schemes"].append(label)
        parts.setdefault(g, []).extend(_raw_bytes(t) for t in qt.tensors.values())
    for g, row in groups.items():
        row["bits_per_param"] = 8.0 * row["stored_bytes"] / max(row["params"], 1)
        row["compressed_bytes"] = len(codec.compress(b"".join(parts[g])))
    return groups


def build_artifact(
    quantizer,
    codec,
    state: Mapping[str, Tensor],
    arch: dict,
    meta: dict,
    *,
    packing: str = "auto",
    hessians: Mapping[str, Tensor] | None = None,
    roles: Mapping[str, str] | None = None,
    stats: bool = True,
) -> tuple[bytes, dict[str, Any]]:
    """(artifact bytes, export report) for a float state dict; `roles`: the parameters' declared roles."""
    from paramgolf.quant.mixed import pack_state

    if packing not in PACKINGS:
        raise UserError(f"quant.packing={packing!r} is not one of {', '.join(PACKINGS)}")
    t0 = time.perf_counter()
    qstate = _quantize(quantizer, state, hessians, roles)
    quant_s = time.perf_counter() - t0
    sub8 = any(qt.scheme == "intn_row" and int(qt.meta.get("bits", 8)) < 8 for qt in qstate.values())
    options = {"int8": qstate} if packing in ("auto", "int8") or not sub8 else {}
    if sub8 and packing in ("auto", "bits"):
        options["bits"] = pack_state(qstate)
    t0 = time.perf_counter()
    blobs = {k: pack_artifact(q, arch, codec, meta) for k, q in options.items()}
    compress_s = time.perf_counter() - t0
    chosen = min(blobs, key=lambda k: len(blobs[k]))
    report: dict[str, Any] = {
        "quantizer": type(quantizer).__name__,
        "codec": getattr(codec, "name", type(codec).__name__),
        "codec_settings": repr(codec),
        "packing": chosen,
        "packing_bytes": {k: len(b) for k, b in blobs.items()},
        "quantize_s": quant_s,
        "compress_s": compress_s,
    }
    rep = getattr(quantizer, "report", None)
    if rep is not None:
        report["pruned_elements"] = sum(rep.pruned.values())
        report["clipped_elements"] = sum(getattr(rep, "clipped", {}).values())
        if rep.info:
            report["tensor_info"] = rep.info
    sizes = getattr(codec, "stream_sizes", None)  # a codec that splits the payload itself (pergroup)
    if sizes is not None:
        report["codec_streams"] = sizes(_split_frame(blobs[chosen], "<export>")[2])
    if stats:
        report["groups"] = group_stats(quantizer, qstate, codec)
    return blobs[chosen], report
