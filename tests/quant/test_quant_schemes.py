"""Dequantization registry: dtype/shape restoration and clear errors."""
from __future__ import annotations

import pytest
import torch

from paramgolf.quant.schemes import QuantizedTensor, dequantize_state, dequantize_tensor, dtype_from_name, known_schemes


def test_known_schemes():
    assert {"int8_row", "int8_tensor", "fp16", "bf16", "fp32", "raw"} <= set(known_schemes())


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
