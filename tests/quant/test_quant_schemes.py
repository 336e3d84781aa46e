"""The dequantizer table: dtype/shape restoration and clear errors."""

from __future__ import annotations

import pytest
import torch

from paramgolf.quant.pack import pack_codes
from paramgolf.quant.schemes import (
    DEQUANTIZERS,
    QuantizedTensor,
    dequantize_state,
    dequantize_tensor,
    dtype_from_name,
    known_schemes,
)


def test_known_schemes():
    # Every scheme a quantizer writes, known without importing any quantizer module.
    assert known_schemes() == sorted(
        ["int8_row", "int8_tensor", "intn_row", "intn_row_packed", "fp16", "bf16", "fp32", "raw"]
    )
    assert known_schemes() == sorted(DEQUANTIZERS)


def test_intn_records_dequantize_from_the_table():
    q = torch.tensor([[1, -31], [0, 5]], dtype=torch.int8)
    scale = torch.tensor([0.5, 2.0]).half()
    plain = QuantizedTensor("intn_row", (2, 2), "float32", {"q": q, "scale": scale}, {"bits": 6})
    packed = QuantizedTensor(
        "intn_row_packed", (2, 2), "float32", {"packed": pack_codes(q, 6), "scale": scale}, {"bits": 6}
    )
    expected = torch.tensor([[0.5, -15.5], [0.0, 10.0]])
    assert torch.equal(dequantize_tensor(plain), expected) and torch.equal(dequantize_tensor(packed), expected)
    with pytest.raises(ValueError, match="6-bit range"):
        dequantize_tensor(QuantizedTensor("intn_row", (2, 2), "float32", {"q": q * 2, "scale": scale}, {"bits": 6}))


def test_int8_row_restores_dtype_and_shape():
    q = torch.tensor([[1, -2], [3, 127]], dtype=torch.int8)
    qt = QuantizedTensor("int8_row", (2, 2), "bfloat16", {"q": q, "scale": torch.tensor([0.5, 2.0]).half()})
    out = dequantize_tensor(qt)
    assert out.dtype == torch.bfloat16
    assert torch.equal(out.float(), torch.tensor([[0.5, -1.0], [6.0, 254.0]]))


def test_int8_tensor_and_casts():
    q = torch.tensor([1, 0, -4], dtype=torch.int8)
    qt = QuantizedTensor("int8_tensor", (3,), "float32", {"q": q, "scale": torch.tensor(0.25)})
    assert torch.equal(dequantize_tensor(qt), torch.tensor([0.25, 0.0, -1.0]))
    kept = QuantizedTensor("fp16", (2,), "float32", {"w": torch.tensor([1.5, -2.0]).half()})
    assert dequantize_tensor(kept).dtype == torch.float32
    raw = QuantizedTensor("raw", (2,), "int64", {"w": torch.tensor([3, 4])})
    assert torch.equal(dequantize_tensor(raw), torch.tensor([3, 4]))


def test_errors_name_the_problem():
    with pytest.raises(ValueError, match="int42"):
        dequantize_tensor(QuantizedTensor("int42", (1,), "float32", {"w": torch.zeros(1)}))
    with pytest.raises(ValueError, match="scale"):
        dequantize_tensor(QuantizedTensor("int8_row", (2, 2), "float32", {"q": torch.zeros(2, 2, dtype=torch.int8)}))
    with pytest.raises(ValueError, match="shape"):
        dequantize_tensor(QuantizedTensor("fp32", (3,), "float32", {"w": torch.zeros(2)}))
    with pytest.raises(ValueError, match="blocks.1.w"):
        dequantize_state({"blocks.1.w": QuantizedTensor("fp32", (3,), "float32", {"w": torch.zeros(2)})})
    with pytest.raises(ValueError, match="Tensor"):
        dtype_from_name("Tensor")  # never an arbitrary torch attribute
