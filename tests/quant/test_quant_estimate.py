"""Pre-training size estimate: calibrated on the official baseline, deterministic, fast."""

from __future__ import annotations

import functools
import math

import hydra.utils
import pytest
import torch

from paramgolf.config.compose import compose, to_container
from paramgolf.quant.artifact import pack_artifact
from paramgolf.quant.codecs import Zlib
from paramgolf.quant.estimate import estimate_model_bytes, surrogate_state_dict


@functools.cache
def baseline_int8(keep_float_max_numel: int = 65536):
    """quant=int8_zlib's quantizer (the official baseline's int8 export) at a small-tensor limit."""
    c = to_container(compose(["quant=int8_zlib", f"quant.keep_float_max_numel={keep_float_max_numel}"]))
    return hydra.utils.instantiate(c["quant"]["quantizer"])


PUBLISHED_BASELINE_BYTES = 15_815_847  # records/track_10min_16mb/2026-03-17_NaiveBaseline, int8+zlib
PUBLISHED_BASELINE_PARAMS = 17_059_912


def baseline_shapes(num_layers: int = 9, dim: int = 512, vocab: int = 1024) -> dict:
    """The official naive baseline's state dict: 8 heads, 4 KV heads, MLP x2, tied embeddings."""
    f32 = torch.float32
    shapes = {"tok_emb.weight": ((vocab, dim), f32)}
    for i in range(num_layers):
        p = f"blocks.{i}."
        shapes[p + "attn.c_q.weight"] = ((dim, dim), f32)
        shapes[p + "attn.c_k.weight"] = ((dim // 2, dim), f32)
        shapes[p + "attn.c_v.weight"] = ((dim // 2, dim), f32)
        shapes[p + "attn.proj.weight"] = ((dim, dim), f32)
        shapes[p + "attn.q_gain"] = ((8,), f32)
        shapes[p + "mlp.fc.weight"] = ((2 * dim, dim), f32)
        shapes[p + "mlp.proj.weight"] = ((dim, 2 * dim), f32)
        shapes[p + "attn_scale"] = ((dim,), f32)
        shapes[p + "mlp_scale"] = ((dim,), f32)
        shapes[p + "resid_mix"] = ((2, dim), f32)
    shapes["skip_weights"] = ((num_layers // 2, dim), f32)
    return shapes


@pytest.mark.slow
def test_baseline_estimate_matches_the_published_size_and_is_deterministic():
    shapes = baseline_shapes()
    first = estimate_model_bytes(shapes, baseline_int8(), Zlib(9), {"model_dim": 512})
    assert first.num_params == PUBLISHED_BASELINE_PARAMS
    assert abs(first.model_bytes / PUBLISHED_BASELINE_BYTES - 1) < 0.02
    again = estimate_model_bytes(shapes, baseline_int8(), Zlib(9), {"model_dim": 512})
    assert again.model_bytes == first.model_bytes
    assert first.per_tensor["tok_emb.weight"] == {"scheme": "int8_row", "numel": 524288, "stored_bytes": 524288 + 2048}
    assert first.per_tensor["blocks.3.attn.q_gain"]["scheme"] == "fp32"
    assert first.seconds < 30  # ~2 s alone; generous for a shared 2-core machine


@pytest.mark.slow
def test_row_sampling_is_close_to_the_exact_size():
    shapes = baseline_shapes(num_layers=1)
    exact = estimate_model_bytes(shapes, baseline_int8(), Zlib(9), {}, row_fraction=1.0).model_bytes
    sampled = estimate_model_bytes(shapes, baseline_int8(), Zlib(9), {}, row_fraction=0.25).model_bytes
    assert abs(sampled / exact - 1) < 0.003
    other_seed = estimate_model_bytes(shapes, baseline_int8(), Zlib(9), {}, seed=1, row_fraction=1.0).model_bytes
    assert other_seed != exact and abs(other_seed / exact - 1) < 0.003


@pytest.mark.slow
def test_trained_surrogate_costs_far_more_than_zero_init():
    shapes = baseline_shapes(num_layers=1, dim=128, vocab=512)
    quant = baseline_int8(keep_float_max_numel=1024)  # so these small matrices are quantized

    def estimate(**kwargs) -> int:
        return estimate_model_bytes(shapes, quant, Zlib(9), {}, row_fraction=1.0, **kwargs).model_bytes

    est = estimate()
    zeros = {name: torch.zeros(shape) for name, (shape, _) in shapes.items()}
    assert est > 5 * len(pack_artifact(quant.quantize(zeros), {}, Zlib(9)))
    # Heavier tails and rows under the 1/127 scale floor both shrink the estimate.
    assert estimate(tail_dof=5.0) < 0.95 * est
    assert estimate(matrix_rms=0.05) < 0.8 * est


def test_surrogate_values_and_inputs():
    sd = {
        "w": torch.zeros(64, 256),
        "blocks.0.attn_scale": torch.zeros(256),
        "bias": torch.zeros(10, dtype=torch.bfloat16),
        "ids": torch.arange(6),
    }
    out = surrogate_state_dict(sd, seed=3, matrix_rms=0.5)
    assert out["w"].std().item() == pytest.approx(0.5, rel=0.1)
    assert out["blocks.0.attn_scale"].mean().item() == pytest.approx(1.0, abs=0.1)
    assert out["bias"].dtype == torch.bfloat16 and torch.equal(out["ids"], torch.arange(6))
    assert torch.equal(surrogate_state_dict(sd, seed=3, matrix_rms=0.5)["w"], out["w"])
    specs = {"w": ([64, 256], "float32"), "ids": ((6,), torch.int64)}
    res = estimate_model_bytes(specs, baseline_int8(), Zlib(), {}, row_fraction=1.0)
    assert res.num_params == 64 * 256 + 6 and res.per_tensor["ids"]["scheme"] == "raw"
    with pytest.raises(ValueError, match="'w'"):
        estimate_model_bytes({"w": "big"}, baseline_int8(), Zlib(), {})
    for bad in ({"tail_dof": 2.0}, {"row_fraction": 0.0}, {"matrix_rms": 0.0}):
        with pytest.raises(ValueError):
            estimate_model_bytes(specs, baseline_int8(), Zlib(), {}, **bad)
    assert math.isfinite(res.model_bytes) and res.model_bytes > 0


def _embedding_stats(w: torch.Tensor) -> tuple[float, float]:
    """A matrix's rows normalised to unit RMS: the energy shares of its top singular direction and of its mean row."""
    w = w.float() / w.float().pow(2).mean(dim=1, keepdim=True).sqrt()
    s = torch.linalg.svdvals(w).pow(2)
    return (s[0] / s.sum()).item(), (w.mean(0).pow(2).sum() / w.pow(2).sum(1).mean()).item()


def test_the_embedding_s_shared_direction_has_the_trained_smoke_embedding_s_statistics():
    from paramgolf.runner.budget import EMBEDDING_SHARED_SHARE, shared_shares

    assert shared_shares({"tok_emb.weight": "embedding", "w": "matrix"}) == {"tok_emb.weight": EMBEDDING_SHARED_SHARE}
    sd = {"tok_emb.weight": torch.zeros(512, 128), "w": torch.zeros(256, 128)}  # the smoke embedding's shape
    plain = surrogate_state_dict(sd, seed=1, matrix_rms=0.5)
    shared = surrogate_state_dict(sd, seed=1, matrix_rms=0.5, shared_share={"tok_emb.weight": EMBEDDING_SHARED_SHARE})
    assert torch.equal(shared["w"], plain["w"])  # a tensor without a share keeps its draw
    assert torch.equal(surrogate_state_dict(sd, seed=1, matrix_rms=0.5, shared_share={"w": 0.0})["w"], plain["w"])
    top, mean = _embedding_stats(plain["tok_emb.weight"])
    assert top < 0.03 and mean < 0.01
    top, mean = _embedding_stats(shared["tok_emb.weight"])
    assert top == pytest.approx(0.51, abs=0.05) and mean == pytest.approx(0.21, abs=0.04)  # measured: 0.510, 0.208
    assert shared["tok_emb.weight"].std().item() == pytest.approx(0.5, rel=0.15)  # the RMS is unchanged
    for bad in (1.0, -0.1):
        with pytest.raises(ValueError, match="shared_share"):
            estimate_model_bytes(sd, baseline_int8(), Zlib(), {}, shared_share={"w": bad})


@pytest.mark.slow
def test_only_the_per_group_codec_sees_an_embedding_s_shared_direction(lrzip):
    """What the L1 row sort and the column-major lrzip streams gain on trained embeddings: a direction
    every row shares leaves each row's values Gaussian, so a row-major brotli stream cannot use it."""
    from paramgolf.quant.codecs import Brotli
    from paramgolf.quant.pergroup import PerGroup

    c = to_container(compose(["experiment=pr1855"]))
    quant = hydra.utils.instantiate({**c["quant"]["quantizer"], "lqer": None})
    shapes = {"tok_emb.weight": ((2048, 256), torch.float32)}

    def sizes(share: float) -> tuple[int, int]:
        kw = dict(row_fraction=1.0, roles={"tok_emb.weight": "embedding"}, shared_share={"tok_emb.weight": share})
        return tuple(
            estimate_model_bytes(shapes, quant, codec, {}, **kw).model_bytes for codec in (PerGroup(), Brotli())
        )

    (pg0, br0), (pg5, br5) = sizes(0.0), sizes(0.5)
    assert pg5 < 0.95 * pg0  # the per-group codec gains
    assert abs(br5 / br0 - 1) < 0.005  # brotli does not
