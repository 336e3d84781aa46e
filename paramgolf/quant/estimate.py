"""Artifact size before training: quantize and compress surrogate *trained* weights.

Zero- or freshly-initialised weights compress far better than trained ones, so the estimate
draws weights that look trained (Student-t rows at a predicted RMS) and runs the real quantizer,
`pack_artifact` and codec on them. Calibration and measurements: docs/budget-estimate.md.
"""

from __future__ import annotations

import math
import time
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from paramgolf.errors import UserError
from paramgolf.quant.artifact import build_payload, frame_payload
from paramgolf.quant.codecs import Codec
from paramgolf.quant.mixed import CONTROL_TENSOR_PATTERNS
from paramgolf.quant.schemes import QuantizedTensor, Quantizer, dtype_from_name

TensorSpec = tuple[tuple[int, ...], torch.dtype]
# Each row's coefficient a_r on the shared direction is N(SHARED_COEF_MEAN, 1): on the trained smoke
# embedding the mean row holds 0.41 of the top direction's energy, mu^2 / (mu^2 + 1) = 0.41.
SHARED_COEF_MEAN = 0.82
_MIN_SAMPLED_ROWS = 64  # tensors with fewer rows are always compressed whole


@dataclass
class EstimateResult:
    """Estimated artifact size and how each tensor would be stored."""

    model_bytes: int
    per_tensor: dict[str, dict[str, int | str]]
    num_params: int
    stored_bytes: int  # the quantized parts before compression
    row_fraction: float
    seconds: float
    settings: dict[str, float] = field(default_factory=dict)


def _spec(name: str, value) -> tuple[TensorSpec, Tensor | None]:
    if isinstance(value, Tensor):
        return (tuple(value.shape), value.dtype), value
    try:
        shape, dtype = value
        dtype = dtype_from_name(dtype) if isinstance(dtype, str) else dtype
        if not isinstance(dtype, torch.dtype):
            raise TypeError(f"dtype {dtype!r}")
        return (tuple(int(d) for d in shape), dtype), None
    except (TypeError, ValueError) as e:
        raise UserError(f"tensor {name!r}: expected a Tensor or (shape, dtype), got {value!r} ({e})") from e


def _is_control(name: str) -> bool:
    return any(p in name for p in CONTROL_TENSOR_PATTERNS)


def surrogate_tensor(
    name: str,
    shape: tuple[int, ...],
    dtype: torch.dtype,
    seed: int,
    tail_dof: float,
    matrix_rms: float,
    row_rms_spread: float,
    shared_share: float = 0.0,
) -> Tensor:
    """Trained-looking values for one float tensor (see module docstring).

    `shared_share`: the share of a matrix's energy along one direction all its rows share,
    `a_r * m` (a trained embedding's common direction; see docs/budget-estimate.md).
    """
    # Seeded by name, so each tensor's draw does not depend on the others.
    rng = np.random.default_rng([seed, zlib.crc32(name.encode())])
    numel = math.prod(shape)
    if len(shape) < 2 or _is_control(name) or numel == 0:
        values = 1.0 + 0.25 * rng.standard_normal(numel, dtype=np.float32)
        return torch.from_numpy(values).reshape(shape).to(dtype)
    cols = shape[-1]
    rows = numel // cols
    x = rng.standard_normal((rows, cols), dtype=np.float32)
    if math.isfinite(tail_dof):
        # Student-t = normal / sqrt(chi2 / dof); sqrt((dof - 2) / dof) makes the variance 1.
        chi2 = 2.0 * rng.standard_gamma(tail_dof / 2.0, size=(rows, cols), dtype=np.float32)
        x *= np.sqrt((tail_dof - 2.0) / chi2, dtype=np.float32)
    if shared_share > 0.0:
        # Drawn after the rest, so a tensor without the shared direction keeps its values bit for bit.
        m = rng.standard_normal((1, cols), dtype=np.float32)
        a = SHARED_COEF_MEAN + rng.standard_normal((rows, 1), dtype=np.float32)
        a /= np.sqrt(SHARED_COEF_MEAN**2 + 1.0, dtype=np.float32)
        x = np.sqrt(1.0 - shared_share, dtype=np.float32) * x + np.sqrt(shared_share, dtype=np.float32) * a * m
        # It turns the rows, not their lengths: each row keeps its expected variance of 1.
        x /= np.sqrt(1.0 - shared_share + shared_share * a * a, dtype=np.float32)
    row_rms = matrix_rms * np.exp(row_rms_spread * rng.standard_normal((rows, 1), dtype=np.float32))
    x *= row_rms.astype(np.float32)
    return torch.from_numpy(x).reshape(shape).to(dtype)


def surrogate_state_dict(
    state_dict_shapes: Mapping,
    seed: int = 0,
    tail_dof: float = 80.0,
    matrix_rms: float | Mapping[str, float] = 1.0,
    row_rms_spread: float = 0.2,
    init_weights: Mapping[str, Tensor] | None = None,
    shared_share: Mapping[str, float] | None = None,
) -> dict[str, Tensor]:
    """A state dict of surrogate trained weights with the given names, shapes and dtypes.

    `matrix_rms` is one RMS for every matrix, or a per-tensor mapping (missing names: 1.0).
    `shared_share` maps matrices to the energy share of a direction their rows share (missing: 0).
    With `init_weights`, a matrix is its initial value plus a surrogate of that RMS: trained
    weights are the initialisation plus the accumulated updates.
    """
    out = {}
    for name, value in state_dict_shapes.items():
        (shape, dtype), real = _spec(name, value)
        if dtype.is_floating_point:
            rms = matrix_rms.get(name, 1.0) if isinstance(matrix_rms, Mapping) else matrix_rms
            share = (shared_share or {}).get(name, 0.0)
            out[name] = surrogate_tensor(name, shape, dtype, seed, tail_dof, max(rms, 1e-8), row_rms_spread, share)
            base = init_weights.get(name) if init_weights is not None else None
            if base is not None and len(shape) >= 2 and not _is_control(name):
                out[name] = (base.detach().float().cpu() + out[name].float()).to(dtype)
        else:
            out[name] = real.detach().cpu() if real is not None else torch.zeros(shape, dtype=dtype)
    return out


def _sliced(qstate: dict[str, QuantizedTensor], fraction: float) -> dict[str, QuantizedTensor]:
    """Keep `fraction` of the leading rows of every part aligned with a large tensor's rows."""
    out = {}
    for name, qt in qstate.items():
        rows = qt.shape[0] if qt.shape else 0
        if rows < _MIN_SAMPLED_ROWS:
            out[name] = qt
            continue
        keep = max(1, round(rows * fraction))
        parts = {k: (v[:keep] if v.dim() >= 1 and v.shape[0] == rows else v) for k, v in qt.tensors.items()}
        out[name] = QuantizedTensor(qt.scheme, qt.shape, qt.dtype, parts, qt.meta)
    return out


def _artifact_size(qstate: dict[str, QuantizedTensor], arch_config: dict, codec: Codec) -> int:
    payload = build_payload(qstate, arch_config)
    return len(frame_payload(codec.compress(payload), codec.name, len(payload)))


def estimate_model_bytes(
    state_dict_shapes: Mapping,
    quantizer: Quantizer,
    codec: Codec,
    arch_config: dict,
    seed: int = 0,
    tail_dof: float = 80.0,
    matrix_rms: float | Mapping[str, float] = 1.0,
    row_rms_spread: float = 0.2,
    row_fraction: float = 0.25,
    init_weights: Mapping[str, Tensor] | None = None,
    roles: Mapping[str, str] | None = None,
    shared_share: Mapping[str, float] | None = None,
) -> EstimateResult:
    """Artifact bytes that weights of these shapes will take once trained, quantized and compressed.

    `state_dict_shapes` maps names to tensors (e.g. a fresh model's state_dict;
    only shapes, dtypes and non-float values are used) or to (shape, dtype).
    """
    if not (tail_dof > 2.0):
        raise UserError(f"tail_dof must be > 2 (finite variance), got {tail_dof}")
    if not 0.0 < row_fraction <= 1.0:
        raise UserError(f"row_fraction must be in (0, 1], got {row_fraction}")
    rms_values = matrix_rms.values() if isinstance(matrix_rms, Mapping) else [matrix_rms]
    if any(r < 0 for r in rms_values) or (not isinstance(matrix_rms, Mapping) and matrix_rms == 0):
        raise UserError("matrix_rms must be > 0 (a per-tensor mapping may hold 0 for frozen tensors)")
    if row_rms_spread < 0:
        raise UserError(f"row_rms_spread must be >= 0, got {row_rms_spread}")
    bad = {k: v for k, v in (shared_share or {}).items() if not 0.0 <= v < 1.0}
    if bad:
        raise UserError(f"shared_share must be in [0, 1) for every tensor, got {bad}")
    start = time.perf_counter()
    weights = surrogate_state_dict(
        state_dict_shapes, seed, tail_dof, matrix_rms, row_rms_spread, init_weights, shared_share
    )
    qstate = quantizer.quantize(weights, roles=roles)
    del weights
    if row_fraction >= 1.0:
        size = _artifact_size(qstate, arch_config, codec)
    else:
        # S(x) = C + x * M for fraction x of the rows: two sizes give C and M, and S(1).
        s_full = _artifact_size(_sliced(qstate, row_fraction), arch_config, codec)
        s_half = _artifact_size(_sliced(qstate, row_fraction / 2), arch_config, codec)
        per_fraction = (s_full - s_half) / (row_fraction / 2)
        size = round(s_full + (1.0 - row_fraction) * per_fraction)
    per_tensor = {
        name: {"scheme": qt.scheme, "numel": qt.numel, "stored_bytes": qt.stored_bytes} for name, qt in qstate.items()
    }
    return EstimateResult(
        model_bytes=int(size),
        per_tensor=per_tensor,
        num_params=sum(qt.numel for qt in qstate.values()),
        stored_bytes=sum(qt.stored_bytes for qt in qstate.values()),
        row_fraction=row_fraction,
        seconds=time.perf_counter() - start,
        settings={
            "seed": seed,
            "tail_dof": tail_dof,
            "row_rms_spread": row_rms_spread,
            "matrix_rms": dict(matrix_rms) if isinstance(matrix_rms, Mapping) else matrix_rms,
            "shared_share": dict(shared_share or {}),
        },
    )


def codec_candidates() -> list[Codec]:
    """Every codec setting `paramgolf-budget --all-codecs` compares (brotli when installed)."""
    from paramgolf.quant.codecs import Brotli, Lzma, Raw, SevenZip, Zlib, Zstd

    out: list[Codec] = [
        Zlib(9),
        Zstd(19),
        Zstd(22),
        Lzma(6, extreme=False),
        Lzma(9, extreme=True),
        SevenZip("lzma2", 9),
        SevenZip("ppmd"),
        SevenZip("lzma2", 9, filter="bcj"),
        SevenZip("lzma2", 9, filter="delta"),
        Raw(),
    ]
    try:
        out.insert(-1, Brotli(11))
    except ValueError:
        pass  # the optional extra is not installed
    return out


def codec_table(
    qstate: dict[str, QuantizedTensor], arch_config: dict, codecs: list[Codec], meta: dict | None = None
) -> list[dict]:
    """Artifact bytes of the same quantized state under each codec (int8 containers and bit-packed
    codes, the smaller kept, as the exporter does), with compression and decompression seconds.

    A codec that fails on a payload (7z/ppmd crashes on some, in its child process) is reported in
    the row's `error` ("<packing>: <why>") and the table goes on; a row without `model_bytes` (None)
    failed on every payload.
    """
    from paramgolf.quant.mixed import pack_state

    payloads = {"int8": build_payload(qstate, arch_config, meta)}
    packed = pack_state(qstate)
    if any(p is not q for p, q in zip(packed.values(), qstate.values())):
        payloads["bits"] = build_payload(packed, arch_config, meta)
    rows = []
    for codec in codecs:
        best, errors = None, {}
        for packing, payload in payloads.items():
            t0 = time.perf_counter()
            try:
                blob = codec.compress(payload)
                t1 = time.perf_counter()
                ok = codec.decompress(blob, len(payload)) == payload
            except (ValueError, RuntimeError) as e:  # a codec failing on this payload is reported, not fatal
                errors[packing] = str(e)
                continue
            t2 = time.perf_counter()
            if not ok:
                errors[packing] = f"{codec!r} did not round-trip the payload"
                continue
            row = {
                "codec": codec.name,
                "settings": repr(codec),
                "packing": packing,
                "model_bytes": len(frame_payload(blob, codec.name, len(payload))),
                "compress_s": round(t1 - t0, 3),
                "decompress_s": round(t2 - t1, 3),
            }
            if best is None or row["model_bytes"] < best["model_bytes"]:
                best = row
        if best is None:
            best = {"codec": codec.name, "settings": repr(codec), "packing": None, "model_bytes": None}
        if errors:
            best["error"] = "; ".join(f"{packing}: {why}" for packing, why in errors.items())
        rows.append(best)
    return sorted(rows, key=lambda r: (r["model_bytes"] is None, r["model_bytes"] or 0))
