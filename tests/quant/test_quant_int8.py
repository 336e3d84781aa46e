"""The baseline int8 presets (quantizer/int8_row.yaml) against the official baseline's export formula.

`official_export` below is the export of records/track_10min_16mb/2026-03-17_NaiveBaseline/train_gpt.py
written out with torch.quantile and plain ops; the rule table must give the same records bit for bit
(the smoke run's artifact and val_bpb, and every existing int8 artifact, depend on it).
"""

from __future__ import annotations

import functools

import hydra.utils
import pytest
import torch

from paramgolf.config.compose import compose, to_container
from paramgolf.quant.artifact import pack_artifact
from paramgolf.quant.codecs import Zlib
from paramgolf.quant.intn import abs_quantile_rows
from paramgolf.quant.mixed import (
    CONTROL_TENSOR_PATTERNS,
    MixedQuantizer,
    QuantRule,
    quantize_dequantize,
)
from paramgolf.quant.schemes import QuantizedTensor, dequantize_tensor
from paramgolf.runner.build import build_model

Q = 0.9999984  # INT8_CLIP_PERCENTILE / 100
OFFICIAL_FP32_PATTERNS = (
    "attn_scale",
    "attn_scales",
    "mlp_scale",
    "mlp_scales",
    "resid_mix",
    "resid_mixes",
    "q_gain",
    "skip_weight",
    "skip_weights",
)


def official_export(state: dict[str, torch.Tensor], keep_float_max_numel: int = 65536) -> dict[str, QuantizedTensor]:
    """The official baseline's int8 export as QuantizedTensor records."""
    out = {}
    for name, t in state.items():
        t = t.detach().cpu().contiguous()
        shape, dtype = tuple(t.shape), str(t.dtype).removeprefix("torch.")
        if not t.is_floating_point():
            out[name] = QuantizedTensor("raw", shape, dtype, {"w": t})
        elif t.numel() <= keep_float_max_numel:
            if any(p in name for p in OFFICIAL_FP32_PATTERNS):
                out[name] = QuantizedTensor("fp32", shape, dtype, {"w": t.float()})
            elif t.dtype in (torch.float32, torch.bfloat16):
                out[name] = QuantizedTensor("fp16", shape, dtype, {"w": t.to(torch.float16)})
            else:  # fp16 / fp64 pass through
                out[name] = QuantizedTensor("raw", shape, dtype, {"w": t})
        elif t.dim() == 2:
            t32 = t.float()
            clip = torch.quantile(t32.abs(), Q, dim=1)
            clipped = torch.maximum(torch.minimum(t32, clip[:, None]), -clip[:, None])
            scale = (clip / 127.0).clamp_min(1.0 / 127.0)  # fp32: the codes are rounded with it
            q = torch.clamp(torch.round(clipped / scale[:, None]), -127, 127).to(torch.int8)
            out[name] = QuantizedTensor("int8_row", shape, dtype, {"q": q, "scale": scale.to(torch.float16)})
        else:
            t32 = t.float()
            clip = float(torch.quantile(t32.abs().flatten(), Q))
            scale = torch.tensor(clip / 127.0 if clip > 0 else 1.0, dtype=torch.float32)
            q = torch.clamp(torch.round(torch.clamp(t32, -clip, clip) / scale), -127, 127).to(torch.int8)
            out[name] = QuantizedTensor("int8_tensor", shape, dtype, {"q": q, "scale": scale})
    return out


@functools.cache
def preset(
    quant: str = "int8_zlib", keep: int | None = None, experiment: str = "smoke"
) -> tuple[MixedQuantizer, int, dict]:
    """(the preset's quantizer, its keep_float_max_numel, the composed config)."""
    overrides = [f"experiment={experiment}", f"quant={quant}"] + (
        [] if keep is None else [f"quant.keep_float_max_numel={keep}"]
    )
    c = to_container(compose(overrides))
    quantizer = hydra.utils.instantiate(c["quant"]["quantizer"])
    assert isinstance(quantizer, MixedQuantizer)
    return quantizer, c["quant"]["keep_float_max_numel"], c


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.reshape(-1).view(torch.uint8) if t.numel() else t.reshape(-1)


def assert_same_records(expected: dict[str, QuantizedTensor], got: dict[str, QuantizedTensor]) -> None:
    assert list(got) == list(expected)
    for name, a in expected.items():
        b = got[name]
        assert (b.scheme, b.shape, b.dtype, b.meta) == (a.scheme, a.shape, a.dtype, a.meta), name
        assert list(b.tensors) == list(a.tensors), name
        for part, x in a.tensors.items():
            y = b.tensors[part]
            assert (y.dtype, tuple(y.shape)) == (x.dtype, tuple(x.shape)), (name, part)
            assert torch.equal(_bits(y), _bits(x)), (name, part)
    assert pack_artifact(got, {"model_dim": 1}, Zlib()) == pack_artifact(expected, {"model_dim": 1}, Zlib())


def odd_state(seed: int) -> dict[str, torch.Tensor]:
    """Tensors of odd shapes and dtypes, tiny and large, around every rule's boundary."""
    g = torch.Generator().manual_seed(seed)

    def r(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=g)

    outliers = (torch.rand(300, 257, generator=g) < 0.002) * r(300, 257) * 20
    tiny_rows = r(90, 1000) * 1e-3  # under the 1/127 floor
    tiny_rows[3], tiny_rows[5] = 0.0, 1e-30
    return {
        "vec_large": r(70001),
        "bank": r(3, 200, 130),
        "bank4": r(2, 3, 50, 300) * 0.01,
        "zeros3": torch.zeros(2, 300, 300),
        "one_row": r(1, 70000),
        "one_col": r(70000, 1),
        "heavy": r(300, 257) * torch.rand(300, 1, generator=g) + outliers,
        "tiny_rows": tiny_rows,
        "blocks.0.attn_scale": r(300, 300),  # a large control tensor is quantized
        "blocks.1.mlp_scales": r(512).bfloat16(),
        "skip_weights": r(4, 512).half(),
        "blocks.0.resid_mix": r(2, 512).double(),
        "small": r(64, 64),
        "small_bf16": r(8, 8).bfloat16(),
        "small_fp16": r(8, 8).half(),
        "small_fp64": r(9, 3).double(),
        "edge": r(256, 256),  # exactly 65,536 elements
        "over": r(256, 257),
        "big_bf16": r(400, 300).bfloat16(),
        "big_fp16": r(300, 400).half(),
        "big_fp64": r(500, 200).double(),
        "big_fp64_3d": r(5, 100, 200).double(),
        "scalar": torch.tensor(3.5),
        "one": r(1),
        "ids": torch.arange(10),
        "mask": torch.rand(5, generator=g) > 0.5,
        "transposed": r(400, 300).t(),
    }


def test_abs_quantile_rows_matches_torch_quantile():
    g = torch.Generator().manual_seed(0)
    for cols in (1, 3, 512, 1024, 5000):
        x = torch.randn(6, cols, generator=g)
        for q in (0.0, 0.5, 0.99, Q, 1.0):
            assert torch.equal(abs_quantile_rows(x, q), torch.quantile(x.abs(), q, dim=1))


@pytest.mark.parametrize("quant", ["int8_zlib", "int8_zstd", "int8_lzma"])
def test_presets_export_the_smoke_model_as_the_official_baseline(quant):
    quantizer, keep, c = preset(quant)
    torch.manual_seed(c["seed"])
    state = build_model(c["arch"]).state_dict()
    schemes = {qt.scheme for qt in official_export(state, keep).values()}
    assert {"int8_row", "fp32"} <= schemes  # the smoke model exercises the main rules
    assert_same_records(official_export(state, keep), quantizer.quantize(state))
    trained_like = {n: t + 0.05 * torch.randn_like(t) if t.dim() == 2 else t for n, t in state.items()}
    assert_same_records(official_export(trained_like, keep), quantizer.quantize(trained_like))


@pytest.mark.parametrize("keep", [None, 10, 65536])
@pytest.mark.parametrize("seed", [0, 1])
def test_odd_tensors_are_exported_as_the_official_baseline(keep, seed):
    quantizer, keep_numel, _ = preset("int8_zlib", keep)
    state = odd_state(seed)
    expected = official_export(state, keep_numel)
    control_kept = keep_numel >= 512  # the smallest control tensor here has 512 elements
    assert {qt.scheme for qt in expected.values()} == {"raw", "fp16", "int8_row", "int8_tensor"} | (
        {"fp32"} if control_kept else set()
    )
    assert_same_records(expected, quantizer.quantize(state))


def test_the_rounding_order_is_the_official_one():
    # Rows whose fp32 and fp16 scales differ enough to move some codes: the preset must round
    # with the fp32 scale (scale_rounding: after), the package's default does it with the fp16 one.
    g = torch.Generator().manual_seed(5)
    w = torch.randn(200, 4096, generator=g) * 3
    after = preset("int8_zlib")[0].quantize_tensor("m.weight", w)
    rule = QuantRule("m", "int", bits=8, clip="quantile", clip_quantile=Q, scale_floor=1 / 127)
    before = MixedQuantizer([rule]).quantize_tensor("m.weight", w)
    assert torch.equal(after.tensors["scale"], before.tensors["scale"])
    assert not torch.equal(after.tensors["q"], before.tensors["q"].reshape(w.shape))
    clip = abs_quantile_rows(w, Q)
    s32 = (clip / 127).clamp_min(1 / 127)
    codes = torch.round(torch.maximum(torch.minimum(w, clip[:, None]), -clip[:, None]) / s32[:, None])
    assert torch.equal(after.tensors["q"], codes.to(torch.int8))


def test_clipped_count_is_taken_on_the_fp32_grid_the_codes_were_rounded_on():
    g = torch.Generator().manual_seed(7)
    w = torch.randn(64, 3000, generator=g) * 2
    outliers = (torch.arange(64), torch.arange(64) * 7)
    w[outliers] = 40.0  # one far outlier per row, well above the 0.999 quantile
    rule = QuantRule("m", "int", clip_quantile=0.999, scale_floor=1 / 127, scale_rounding="after", record="int8_row")
    quant = MixedQuantizer([rule])
    qt = quant.quantize({"m.weight": w})["m.weight"]
    clip = abs_quantile_rows(w, 0.999)[:, None]
    s32, s16 = (clip / 127).clamp_min(1 / 127), qt.tensors["scale"].float()[:, None]
    q = qt.tensors["q"].float()
    off_grid = (w - q * s32).abs() > s32 * (0.5 + 1e-5)
    assert int(off_grid.sum()) == quant.report.clipped["m.weight"]
    assert bool(off_grid[outliers].all()) and bool((off_grid <= (w.abs() > clip)).all())  # only clipped ones
    # Measured on the stored fp16 grid, the fp32 rounding would look like many more clipped elements.
    assert int(((w - q * s16).abs() > s16 * (0.5 + 1e-5)).sum()) > int(off_grid.sum())


def test_round_trip_error_is_within_half_a_step_plus_the_fp16_scale_error():
    g = torch.Generator().manual_seed(2)
    w = torch.randn(128, 700, generator=g) * 2.0
    qt = preset("int8_zlib")[0].quantize_tensor("w", w)
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
    quant = preset("int8_zlib", 65536)[0]
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


def test_the_control_rule_covers_the_official_patterns():
    rule = preset("int8_zlib")[0].table[0]
    assert rule.scheme == "fp32" and CONTROL_TENSOR_PATTERNS == OFFICIAL_FP32_PATTERNS
    for p in CONTROL_TENSOR_PATTERNS:
        assert rule.matches(f"blocks.3.{p}", torch.zeros(4)), p
    assert not rule.matches("blocks.3.attn.c_q.weight", torch.zeros(4))


def test_large_control_tensor_is_still_quantized():
    # The fp32 rule only applies below keep_float_max_numel, as in the baseline.
    q = preset("int8_zlib", 65536)[0].quantize_tensor("blocks.0.attn_scale", torch.randn(300, 300))
    assert q.scheme == "int8_row"


def test_scale_floor_and_all_zero_rows():
    w = torch.zeros(70, 1000)
    w[1] = torch.linspace(-0.01, 0.01, 1000)
    w[2] = torch.linspace(-5.0, 5.0, 1000)
    qt = preset("int8_zlib")[0].quantize_tensor("w", w)
    scale, q = qt.tensors["scale"], qt.tensors["q"]
    floor = torch.tensor(1 / 127).half()
    assert scale[0] == floor and scale[1] == floor  # small rows hit the 1/127 floor
    assert torch.equal(q[0], torch.zeros(1000, dtype=torch.int8))
    assert torch.equal(q[1], torch.round(w[1] * 127).to(torch.int8))
    assert int(q[2].abs().max()) == 127
    deq = dequantize_tensor(qt)
    assert torch.equal(deq[0], torch.zeros(1000)) and torch.equal(deq[3:], torch.zeros(67, 1000))


def test_per_tensor_scheme_for_other_ranks():
    quant = preset("int8_zlib")[0]
    g = torch.Generator().manual_seed(3)
    w = torch.randn(3, 200, 200, generator=g)
    qt = quant.quantize_tensor("bank", w)
    clip = float(torch.quantile(w.abs().flatten(), Q))
    assert qt.scheme == "int8_tensor" and qt.tensors["scale"].dtype == torch.float32
    assert qt.tensors["scale"].shape == () and float(qt.tensors["scale"]) == pytest.approx(clip / 127, rel=1e-6)
    # Elements above the clip quantile are clipped first; the rest are off by half a step at most.
    assert float((dequantize_tensor(qt) - w.clamp(-clip, clip)).abs().max()) <= clip / 127 / 2 + 1e-6
    zero = quant.quantize_tensor("zero", torch.zeros(2, 300, 300))
    assert float(zero.tensors["scale"]) == 1.0 and torch.equal(dequantize_tensor(zero), torch.zeros(2, 300, 300))


def test_qat_forward_equals_the_exported_weights():
    quant = preset("int8_zlib")[0]
    g = torch.Generator().manual_seed(6)
    for name, w in (("m.weight", torch.randn(96, 128, generator=g)), ("bank", torch.randn(4, 40, 50, generator=g))):
        w = w.requires_grad_()
        fake = quant.fake_quantizer(name, w)
        out = fake(w)
        assert torch.equal(out.detach(), dequantize_tensor(quant.quantize_tensor(name, w.detach()))), name
        out.sum().backward()
        assert torch.equal(w.grad, torch.ones_like(w)), name  # straight through
    assert quant.fake_quantizer("blocks.0.attn_scale", torch.zeros(8)) is None


def test_record_options_and_errors():
    for bad in (
        {"record": "int4_row"},
        {"record": "int8_row", "bits": 6},
        {"record": "int8_tensor", "clip": "search"},
        {"scale_rounding": "later"},
        {"scale_rounding": "after", "clip": "gptq"},
    ):
        with pytest.raises(ValueError, match=next(iter(bad))):
            QuantRule("m", "int", **bad)
    with pytest.raises(ValueError, match="dtypes"):
        QuantRule("f", "fp16", dtypes=["float33"])
    with pytest.raises(ValueError, match="dtypes"):
        QuantRule("f", "fp16", dtypes="float32")
    scalar_rows = MixedQuantizer([QuantRule("m", "int", record="int8_row")])
    with pytest.raises(ValueError, match="int8_tensor"):
        scalar_rows.quantize_tensor("s", torch.tensor(2.0))
    w = torch.randn(300, 300)
    w[5, 5] = float("nan")
    with pytest.raises(ValueError, match="blocks.3.w"):
        preset("int8_zlib")[0].quantize({"blocks.3.w": w})
