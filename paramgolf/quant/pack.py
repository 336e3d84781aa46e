"""Bit-packing of integer codes: `bits`-bit values stored densely instead of one per int8 byte.

Codes q in [-qmax, qmax] are offset to u = q + qmax in [0, 2^bits - 2] and written as a
little-endian bit stream: every 8 codes become `bits` bytes. Whether packed codes or int8
containers compress smaller depends on the codec (an entropy coder already squeezes out the
unused high bits of an int8 container, and byte alignment helps its models), so the exporter
measures both (`quant.packing=auto`).
"""

from __future__ import annotations

import torch
from torch import Tensor

from paramgolf.errors import UserError
from paramgolf.quant.intn import qmax


def pack_codes(q: Tensor, bits: int) -> Tensor:
    """uint8 bit stream of the int8 codes `q` (any shape; flattened)."""
    m = qmax(bits)
    u = q.reshape(-1).to(torch.int64) + m
    if u.numel() and (int(u.min()) < 0 or int(u.max()) >= 2**bits):
        raise RuntimeError(f"codes outside the {bits}-bit range ±{m}")
    pad = (-u.numel()) % 8
    u = torch.cat([u, u.new_zeros(pad)]).view(-1, 8)
    shifts = torch.arange(8, dtype=torch.int64) * bits
    word = (u << shifts).sum(dim=1)  # 8 codes in the low 8·bits bits of one int64
    byte_shifts = torch.arange(bits, dtype=torch.int64) * 8
    return ((word[:, None] >> byte_shifts) & 0xFF).to(torch.uint8).reshape(-1)


def unpack_codes(packed: Tensor, bits: int, numel: int) -> Tensor:
    """The int8 codes `pack_codes` stored (flat, `numel` of them)."""
    m = qmax(bits)
    if packed.dtype != torch.uint8 or packed.numel() % bits:
        raise UserError(f"packed codes must be uint8 in groups of {bits} bytes, got {packed.dtype} × {packed.numel()}")
    b = packed.to(torch.int64).view(-1, bits)
    word = (b << (torch.arange(bits, dtype=torch.int64) * 8)).sum(dim=1)
    u = (word[:, None] >> (torch.arange(8, dtype=torch.int64) * bits)) & (2**bits - 1)
    u = u.reshape(-1)
    if u.numel() < numel:
        raise UserError(f"packed stream holds {u.numel()} codes, {numel} expected")
    return (u[:numel] - m).to(torch.int8)
