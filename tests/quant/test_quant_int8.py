"""Int8PerRow against the official baseline's export rules."""
from __future__ import annotations

import hydra.utils
import pytest
import torch

from paramgolf.quant.int8 import CONTROL_TENSOR_PATTERNS, Int8PerRow, abs_quantile_rows, quantize_dequantize
from paramgolf.quant.schemes import dequantize_tensor

Q = 0.9999984


def reference_rows(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The baseline's per-row math written out with torch.quantile and plain ops."""
    clip = torch.quantile(t.abs(), Q, dim=1)
    clipped = torch.maximum(torch.minimum(t, clip[:, None]), -clip[:, None])
    scale = (clip / 127.0).clamp_min(1.0 / 127.0)
    q = torch.clamp(torch.round(clipped / scale[:, None]), -127, 127).to(torch.int8)
    return q, scale.half()


def test_abs_quantile_rows_matches_torch_quantile():
    g = torch.Generator().manual_seed(0)
    for cols in (1, 3, 512, 1024, 5000):
        x = torch.randn(6, cols, generator=g)
        for q in (0.0, 0.5, 0.99, Q, 1.0):
            assert torch.equal(abs_quantile_rows(x, q), torch.quantile(x.abs(), q, dim=1))


def test_rows_match_reference_bit_for_bit():
    g = torch.Generator().manual_seed(1)
    w = torch.randn(96, 1024, generator=g) * torch.rand(96, 1, generator=g) * 3
    qt = Int8PerRow().quantize_tensor("blocks.0.mlp.fc.weight", w)
    q_ref, s_ref = reference_rows(w)
    assert qt.scheme == "int8_row" and qt.shape == (96, 1024) and qt.dtype == "float32"
    assert torch.equal(qt.tensors["q"], q_ref)
    assert torch.equal(qt.tensors["scale"], s_ref)


def test_round_trip_error_is_within_half_a_step():
    g = torch.Generator().manual_seed(2)
    w = torch.randn(128, 700, generator=g) * 2.0
    qt = Int8PerRow().quantize_tensor("w", w)
    deq = dequantize_tensor(qt)
    clip = abs_quantile_rows(w, Q)
    s32 = (clip / 127).clamp_min(1 / 127)
    s16 = qt.tensors["scale"].float()
    # Rounding costs half a step; storing the scale in fp16 adds |q| * |s16 - s32|.
    bound = 0.5 * s32 + 127 * (s16 - s32).abs() + 1e-6
    err = (torch.maximum(torch.minimum(w, clip[:, None]), -clip[:, None]) - deq).abs()
    assert bool((err <= bound[:, None]).all())
    assert float((w - deq).pow(2).mean().sqrt() / w.pow(2).mean().sqrt()) < 0.01
    assert int(qt.tensors["q"].min()) >= -127 and int(qt.tensors["q"].max()) <= 127


def test_small_tensors_stay_float_by_the_official_rules():
    quant = Int8PerRow()
    sd = {
        "blocks.0.attn_scale": torch.rand(512),
        "blocks.0.resid_mix": torch.rand(2, 512),
        "skip_weights": torch.rand(4, 512).bfloat16(),
        "small.weight": torch.randn(64, 64),
        "small_bf16.weight": torch.randn(8, 8).bfloat16(),
        "small_fp16.weight": torch.randn(8, 8).half(),
        "edge.weight": torch.randn(256, 256),  # exactly 65,536 elements: kept
        "over.weight": torch.randn(65537),  # one more: quantized, per tensor
        "step": torch.tensor(7, dtype=torch.int64),
    }
    q = quant.quantize(sd)
    assert list(q) == list(sd)
    assert [q[k].scheme for k in sd] == ["fp32", "fp32", "fp32", "fp16", "fp16", "raw", "fp16", "int8_tensor", "raw"]
    assert q["skip_weights"].tensors["w"].dtype == torch.float32
    out = quantize_dequantize(quant, sd)
    for name, t in sd.items():
        assert out[name].dtype == t.dtype and out[name].shape == t.shape, name
    for exact in ("blocks.0.attn_scale", "blocks.0.resid_mix", "skip_weights", "small_fp16.weight", "step"):
        assert torch.equal(out[exact], sd[exact]), exact
    assert torch.equal(out["small.weight"], sd["small.weight"].half().float())


def test_large_control_tensor_is_still_quantized():
    # The fp32 rule only applies below keep_float_max_numel, as in the baseline.
    q = Int8PerRow().quantize_tensor("blocks.0.attn_scale", torch.randn(300, 300))
    assert q.scheme == "int8_row"


def test_scale_floor_and_all_zero_rows():
    w = torch.zeros(70, 1000)
    w[1] = torch.linspace(-0.01, 0.01, 1000)
    w[2] = torch.linspace(-5.0, 5.0, 1000)
    qt = Int8PerRow().quantize_tensor("w", w)
    scale, q = qt.tensors["scale"], qt.tensors["q"]
    floor = torch.tensor(1 / 127).half()
    assert scale[0] == floor and scale[1] == floor  # small rows hit the 1/127 floor
    assert torch.equal(q[0], torch.zeros(1000, dtype=torch.int8))
    assert torch.equal(q[1], torch.round(w[1] * 127).to(torch.int8))
    assert int(q[2].abs().max()) == 127
    deq = dequantize_tensor(qt)
    assert torch.equal(deq[0], torch.zeros(1000)) and torch.equal(deq[3:], torch.zeros(67, 1000))


def test_per_tensor_scheme_for_other_ranks():
    g = torch.Generator().manual_seed(3)
    w = torch.randn(3, 200, 200, generator=g)
    qt = Int8PerRow().quantize_tensor("bank", w)
    clip = float(torch.quantile(w.abs().flatten(), Q))
    assert qt.scheme == "int8_tensor" and qt.tensors["scale"].dtype == torch.float32
    assert qt.tensors["scale"].shape == () and float(qt.tensors["scale"]) == pytest.approx(clip / 127, rel=1e-6)
    # Elements above the clip quantile are clipped first; the rest are off by half a step at most.
    assert float((dequantize_tensor(qt) - w.clamp(-clip, clip)).abs().max()) <= clip / 127 / 2 + 1e-6
    zero = Int8PerRow().quantize_tensor("zero", torch.zeros(2, 300, 300))
    assert float(zero.tensors["scale"]) == 1.0 and torch.equal(dequantize_tensor(zero), torch.zeros(2, 300, 300))


def test_options_and_errors():
    q = Int8PerRow(keep_float_max_numel=10, keep_fp32_patterns=[], keep_float_dtype="bfloat16", scale_dtype="float32")
    out = q.quantize({"attn_scale": torch.rand(8), "w": torch.randn(4, 8)})
    assert out["attn_scale"].scheme == "bf16" and out["w"].tensors["scale"].dtype == torch.float32
    for bad in ({"clip_quantile": 0.0}, {"clip_quantile": 1.5}, {"keep_float_max_numel": -1}, {"scale_dtype": "int8"}):
        with pytest.raises(ValueError):
            Int8PerRow(**bad)
    w = torch.randn(300, 300)
    w[5, 5] = float("nan")
    with pytest.raises(ValueError, match="blocks.3.w"):
        Int8PerRow().quantize({"blocks.3.w": w})


def test_hydra_instantiates_with_typed_args():
    q = hydra.utils.instantiate(
        {"_target_": "paramgolf.quant.int8.Int8PerRow", "clip_quantile": 0.999, "keep_fp32_patterns": ["gain"]}
    )
    assert isinstance(q, Int8PerRow) and q.clip_quantile == 0.999 and q.keep_fp32_patterns == ("gain",)
    assert Int8PerRow().keep_fp32_patterns == CONTROL_TENSOR_PATTERNS
