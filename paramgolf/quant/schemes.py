"""Quantized-tensor records and the dequantization registry.

A quantizer turns each tensor of a state dict into a `QuantizedTensor`: a scheme
name, the original shape and dtype, the stored tensors (integer codes, scales,
...) and a little JSON-able metadata. Reading an artifact only needs the
functions below that map a scheme name back to a float tensor, so the reader
never has to know which quantizer class produced the file.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Protocol

import torch
from torch import Tensor

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
        raise ValueError(f"dtype {dtype} cannot be stored; supported: {sorted(DTYPES)}")
    return name


def dtype_from_name(name: str) -> torch.dtype:
    """torch.float32 for 'float32'; ValueError for names outside DTYPES."""
    if name not in DTYPES:
        raise ValueError(f"unknown dtype name {name!r}; supported: {sorted(DTYPES)}")
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
    """Anything that turns a state dict into QuantizedTensor records (Int8PerRow, ...)."""

    def quantize(self, state_dict: dict[str, Tensor]) -> dict[str, QuantizedTensor]: ...


Dequantizer = Callable[[QuantizedTensor], Tensor]
_DEQUANTIZERS: dict[str, Dequantizer] = {}


def register_scheme(name: str) -> Callable[[Dequantizer], Dequantizer]:
    """Decorator: make `fn` the dequantizer of scheme `name`."""

    def deco(fn: Dequantizer) -> Dequantizer:
        if name in _DEQUANTIZERS:
            raise ValueError(f"quant scheme {name!r} is registered twice")
        _DEQUANTIZERS[name] = fn
        return fn

    return deco


def known_schemes() -> list[str]:
    return sorted(_DEQUANTIZERS)


def dequantize_tensor(qt: QuantizedTensor) -> Tensor:
    """The float tensor `qt` stands for, in its original dtype and shape."""
    fn = _DEQUANTIZERS.get(qt.scheme)
    if fn is None:
        raise ValueError(f"unknown quant scheme {qt.scheme!r}; this paramgolf knows {known_schemes()}")
    out = fn(qt).to(dtype=dtype_from_name(qt.dtype))
    if tuple(out.shape) != tuple(qt.shape):
        raise ValueError(f"scheme {qt.scheme!r} produced shape {tuple(out.shape)}, record says {tuple(qt.shape)}")
    return out.contiguous()


def dequantize_state(qstate: dict[str, QuantizedTensor]) -> dict[str, Tensor]:
    """Dequantize every record, keeping the key order."""
    out = {}
    for name, qt in qstate.items():
        try:
            out[name] = dequantize_tensor(qt)
        except ValueError as e:
            raise ValueError(f"tensor {name!r}: {e}") from e
    return out


def _part(qt: QuantizedTensor, key: str) -> Tensor:
    if key not in qt.tensors:
        raise ValueError(f"scheme {qt.scheme!r} needs part {key!r}, record has {sorted(qt.tensors)}")
    return qt.tensors[key]


@register_scheme("int8_row")
def _dequant_int8_row(qt: QuantizedTensor) -> Tensor:
    # One scale per row (dim 0), broadcast over the remaining dims.
    q, scale = _part(qt, "q"), _part(qt, "scale")
    if q.dim() < 1 or scale.dim() != 1 or scale.shape[0] != q.shape[0]:
        raise ValueError(f"int8_row: scale shape {tuple(scale.shape)} does not match q shape {tuple(q.shape)}")
    return q.float() * scale.float().view(-1, *([1] * (q.dim() - 1)))


@register_scheme("int8_tensor")
def _dequant_int8_tensor(qt: QuantizedTensor) -> Tensor:
    q, scale = _part(qt, "q"), _part(qt, "scale")
    if scale.numel() != 1:
        raise ValueError(f"int8_tensor: scale must hold one value, has shape {tuple(scale.shape)}")
    return q.float() * scale.float().reshape(())


def _stored_as_is(qt: QuantizedTensor) -> Tensor:
    # dequantize_tensor casts back to the original dtype.
    return _part(qt, "w")


# Floats kept at lower (or full) precision: the cast back happens in dequantize_tensor.
for _name in ("fp16", "bf16", "fp32", "raw"):
    register_scheme(_name)(_stored_as_is)
