"""Quantized-tensor records and the table of their dequantizers.

A quantizer turns each tensor of a state dict into a `QuantizedTensor`: a scheme
name, the original shape and dtype, the stored tensors (integer codes, scales,
...) and a little JSON-able metadata. Reading an artifact only needs the
functions below that map a scheme name back to a float tensor, so the reader
never has to know which quantizer class produced the file.

`DEQUANTIZERS` is one explicit table of every scheme an artifact may hold, defined
here and nowhere else: importing this module (as the artifact reader does) is all
it takes to read any artifact, and the code-bytes count (the import closure of the
reader) includes every dequantizer. A new scheme is a new entry in that table.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import torch
from torch import Tensor

from paramgolf.errors import UserError
from paramgolf.quant.intn import qmax
from paramgolf.quant.lqer import lqer_correction
from paramgolf.quant.pack import unpack_codes

MetaValue = float | int | str

# Dtypes an artifact may name. An explicit table (not getattr(torch, name)) so a
# file can never make the reader look up an arbitrary attribute of torch.
DTYPES: dict[str, torch.dtype] = {
    "float64": torch.float64,
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "int64": torch.int64,
    "int32": torch.int32,
    "int16": torch.int16,
    "int8": torch.int8,
    "uint8": torch.uint8,
    "bool": torch.bool,
}


def dtype_name(dtype: torch.dtype) -> str:
    """'float32' for torch.float32; ValueError for dtypes artifacts cannot hold."""
    name = str(dtype).removeprefix("torch.")
    if name not in DTYPES:
        raise UserError(f"dtype {dtype} cannot be stored; supported: {sorted(DTYPES)}")
    return name


def dtype_from_name(name: str) -> torch.dtype:
    """torch.float32 for 'float32'; ValueError for names outside DTYPES."""
    if name not in DTYPES:
        raise UserError(f"unknown dtype name {name!r}; supported: {sorted(DTYPES)}")
    return DTYPES[name]


@dataclass
class QuantizedTensor:
    """One tensor as stored: `tensors` holds the scheme's parts (e.g. 'q', 'scale')."""

    scheme: str
    shape: tuple[int, ...]
    dtype: str
    tensors: dict[str, Tensor]
    meta: dict[str, MetaValue] = field(default_factory=dict)

    @property
    def numel(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n

    @property
    def stored_bytes(self) -> int:
        """Bytes of the stored parts before compression."""
        return sum(t.numel() * t.element_size() for t in self.tensors.values())


class Quantizer(Protocol):
    """Anything that turns a state dict into QuantizedTensor records (MixedQuantizer, ...)."""

    def quantize(self, state_dict: dict[str, Tensor]) -> dict[str, QuantizedTensor]: ...


Dequantizer = Callable[[QuantizedTensor], Tensor]


def known_schemes() -> list[str]:
    return sorted(DEQUANTIZERS)


def dequantize_tensor(qt: QuantizedTensor) -> Tensor:
    """The float tensor `qt` stands for, in its original dtype and shape."""
    fn = DEQUANTIZERS.get(qt.scheme)
    if fn is None:
        raise UserError(f"unknown quant scheme {qt.scheme!r}; this paramgolf knows {known_schemes()}")
    out = fn(qt).to(dtype=dtype_from_name(qt.dtype))
    if tuple(out.shape) != tuple(qt.shape):
        raise UserError(f"scheme {qt.scheme!r} produced shape {tuple(out.shape)}, record says {tuple(qt.shape)}")
    return out.contiguous()


def dequantize_state(qstate: dict[str, QuantizedTensor]) -> dict[str, Tensor]:
    """Dequantize every record, keeping the key order."""
    out = {}
    for name, qt in qstate.items():
        try:
            out[name] = dequantize_tensor(qt)
        except ValueError as e:
            raise UserError(f"tensor {name!r}: {e}") from e
    return out


def _part(qt: QuantizedTensor, key: str) -> Tensor:
    if key not in qt.tensors:
        raise UserError(f"scheme {qt.scheme!r} needs part {key!r}, record has {sorted(qt.tensors)}")
    return qt.tensors[key]


def _dequant_int8_row(qt: QuantizedTensor) -> Tensor:
    # One scale per row (dim 0), broadcast over the remaining dims.
    q, scale = _part(qt, "q"), _part(qt, "scale")
    if q.dim() < 1 or scale.dim() != 1 or scale.shape[0] != q.shape[0]:
        raise UserError(f"int8_row: scale shape {tuple(scale.shape)} does not match q shape {tuple(q.shape)}")
    return q.float() * scale.float().view(-1, *([1] * (q.dim() - 1)))


def _dequant_int8_tensor(qt: QuantizedTensor) -> Tensor:
    q, scale = _part(qt, "q"), _part(qt, "scale")
    if scale.numel() != 1:
        raise UserError(f"int8_tensor: scale must hold one value, has shape {tuple(scale.shape)}")
    return q.float() * scale.float().reshape(())


def _dequant_intn_row(qt: QuantizedTensor) -> Tensor:
    # Codes of `bits` (meta) in int8 containers, [rows, cols] with dim 0 of the tensor as rows.
    q, scale = _part(qt, "q"), _part(qt, "scale")
    bits = int(qt.meta.get("bits", 8))
    if scale.dim() != 1 or q.dim() < 1 or scale.shape[0] != q.shape[0]:
        raise UserError(f"intn_row: scale shape {tuple(scale.shape)} does not match q shape {tuple(q.shape)}")
    if q.numel() and int(q.abs().max()) > qmax(bits):
        raise UserError(f"intn_row: a code exceeds the {bits}-bit range ±{qmax(bits)}")
    return _with_lqer(qt, q.float().reshape(q.shape[0], -1) * scale.float()[:, None]).reshape(qt.shape)


def _dequant_intn_row_packed(qt: QuantizedTensor) -> Tensor:
    # The same codes as intn_row, bit-packed (paramgolf.quant.pack).
    packed, scale = _part(qt, "packed"), _part(qt, "scale")
    bits, rows = int(qt.meta.get("bits", 8)), scale.shape[0]
    q = unpack_codes(packed, bits, qt.numel).reshape(rows, -1)
    return _with_lqer(qt, q.float() * scale.float()[:, None]).reshape(qt.shape)


def _with_lqer(qt: QuantizedTensor, w: Tensor) -> Tensor:
    # intn_row records may carry LQER's low-rank correction (paramgolf.quant.lqer), declared by `lqer_rank`.
    if "lqer_rank" not in qt.meta:
        return w
    return w + lqer_correction(qt.tensors, w.shape[0], w.shape[1], int(qt.meta.get("lqer_group", 0)))


def _stored_as_is(qt: QuantizedTensor) -> Tensor:
    # Floats kept at lower (or full) precision: dequantize_tensor casts back to the original dtype.
    return _part(qt, "w")


# Every scheme an artifact may name. Explicit, so reading never depends on which modules
# happen to be imported.
DEQUANTIZERS: dict[str, Dequantizer] = {
    "int8_row": _dequant_int8_row,  # the official baseline's per-row int8 (paramgolf.quant.mixed, record: int8_row)
    "int8_tensor": _dequant_int8_tensor,  # ... and its one-scale-per-tensor int8 (record: int8_tensor)
    "intn_row": _dequant_intn_row,  # per-row codes at 2..8 bits, fp16 scale per row, + LQER (record: intn_row)
    "intn_row_packed": _dequant_intn_row_packed,  # intn_row with bit-packed codes (mixed.pack_state)
    "fp16": _stored_as_is,
    "bf16": _stored_as_is,
    "fp32": _stored_as_is,
    "raw": _stored_as_is,  # stored exactly (non-float tensors, or floats a rule keeps as they are)
}
