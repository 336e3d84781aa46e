"""The rule-table quantizer: error bounds, pruning, packing, QAT equality, clear errors."""

from __future__ import annotations

import pytest
import torch

from paramgolf.config.compose import compose, to_container
from paramgolf.quant.artifact import pack_artifact, unpack_artifact
from paramgolf.quant.codecs import Zlib
from paramgolf.quant.export import build_artifact
from paramgolf.quant.intn import qmax
from paramgolf.quant.mixed import MixedQuantizer, QuantRule, pack_state
from paramgolf.quant.qat import QAT
from paramgolf.quant.schemes import dequantize_state, dequantize_tensor
from paramgolf.runner.build import build_model


def heavy_tailed(rows: int, cols: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    """Rows of different scales plus rare large outliers (what clipping is for)."""
    base = torch.randn(rows, cols, generator=g) * torch.rand(rows, 1, generator=g) * 0.1
    return base + (torch.rand(rows, cols, generator=g) < 0.001) * torch.randn(rows, cols, generator=g)


@pytest.mark.parametrize("bits", [8, 6, 5])
@pytest.mark.parametrize("clip", ["rowmax", "quantile", "search"])
@pytest.mark.parametrize("floor", [None, 1 / 31])
def test_round_trip_error_is_within_half_a_step_except_counted_clipped_elements(bits, clip, floor):
    w = heavy_tailed(96, 160)
    rule = QuantRule("m", "int", bits=bits, clip=clip, clip_quantile=0.999, scale_floor=floor)
    qz = MixedQuantizer([rule])
    qt = qz.quantize({"w": w})["w"]
    deq = dequantize_tensor(qt)
    scale = qt.tensors["scale"].float()[:, None]  # the stored fp16 scale: its rounding is included
    err = (w - deq).abs()
    beyond = err > scale * (0.5 + 1e-5)  # elements outside the step/2 bound: the clipped ones
    assert int(beyond.sum()) == qz.report.clipped["w"]
    if clip == "rowmax":  # nothing is clipped; fp16 rounding of the scale costs < 2^-10 relative
        assert bool((err <= scale * (0.5 + qmax(bits) * 2.0**-10)).all())
    else:  # only the largest |w| of a row can be clipped: at most the tail above the lowest quantile used
        lowest = 0.999 if clip == "quantile" else min(rule.clip_candidates)
        tail = int((1 - lowest) * w.shape[1]) + 1
        assert int(beyond.sum(dim=1).max()) <= tail
        order = w.abs().argsort(dim=1, descending=True)[:, :tail]
        assert bool(torch.zeros_like(beyond).scatter_(1, order, True)[beyond].all())
    assert int(qt.tensors["q"].abs().max()) <= qmax(bits)


def test_first_matching_rule_decides_and_floats_stay_floats():
    table = [
        {"name": "control", "scheme": "fp32", "pattern": "scale"},
        {"name": "small", "scheme": "fp16", "max_numel": 100},
        {"name": "mlp", "scheme": "int", "bits": 5, "pattern": r"\.mlp\."},
        {"name": "rest", "scheme": "int", "bits": 8},
    ]
    qz = MixedQuantizer(table)
    state = {
        "a.attn_scale": torch.randn(10),
        "b.mlp.fc.weight": torch.randn(32, 16),
        "c.attn.c_q.weight": torch.randn(32, 16),
        "tiny": torch.randn(5, 5),
        "ids": torch.arange(4),
    }
    q = qz.quantize(state)
    assert qz.report.rule_of == {
        "a.attn_scale": "control",
        "b.mlp.fc.weight": "mlp",
        "c.attn.c_q.weight": "rest",
        "tiny": "small",
        "ids": "raw",
    }
    assert q["b.mlp.fc.weight"].meta["bits"] == 5 and q["c.attn.c_q.weight"].meta["bits"] == 8
    assert torch.equal(dequantize_tensor(q["a.attn_scale"]), state["a.attn_scale"])
    assert torch.equal(dequantize_tensor(q["ids"]), state["ids"])


@pytest.mark.parametrize(
    "table, match",
    [
        ([{"name": "a", "scheme": "int", "bits": 9}], "bits=9"),
        ([{"name": "a", "scheme": "int4"}], "scheme='int4'"),
        ([{"name": "a", "scheme": "int", "clip": "max"}], "clip='max'"),
        ([{"name": "a", "scheme": "fp16", "patern": "x"}], "unknown key"),
        ([{"name": "a", "scheme": "fp16", "pattern": "("}], "not a valid regex"),
        ([], "empty"),
    ],
)
def test_bad_tables_are_refused_with_the_key_named(table, match):
    with pytest.raises(ValueError, match=match):
        MixedQuantizer(table)


def test_a_tensor_no_rule_takes_is_a_clear_error():
    qz = MixedQuantizer([{"name": "only_mlp", "scheme": "int", "pattern": "mlp"}])
    with pytest.raises(ValueError, match="matches no rule.*catch-all"):
        qz.quantize({"attn.w": torch.randn(4, 4)})


def test_pruning_per_tensor_and_global():
    a, b = heavy_tailed(64, 64, 1), heavy_tailed(64, 64, 2) * 5  # b is larger: global pruning takes less of it
    per = MixedQuantizer([{"name": "f", "scheme": "fp32"}], prune_fraction=0.03, prune_min_numel=1000)
    out = dequantize_state(per.quantize({"a": a, "b": b, "small": torch.randn(10, 10)}))
    for name, t in (("a", a), ("b", b)):
        zeroed = int((out[name] == 0).sum()) - int((t == 0).sum())
        assert abs(zeroed - 0.03 * t.numel()) <= 2, (name, zeroed)
    assert per.report.pruned.keys() == {"a", "b"}  # "small" is below prune_min_numel
    glob = MixedQuantizer(
        [{"name": "f", "scheme": "fp32"}], prune_fraction=0.03, prune_scope="global", prune_min_numel=1000
    )
    outg = dequantize_state(glob.quantize({"a": a, "b": b}))
    total = sum(glob.report.pruned.values())
    assert abs(total - 0.03 * (a.numel() + b.numel())) <= 2
    assert glob.report.pruned["a"] > glob.report.pruned["b"]  # one threshold: the small-valued tensor loses more
    kept_a = outg["a"][outg["a"] != 0].abs().min()
    kept_b = outg["b"][outg["b"] != 0].abs().min()
    assert min(kept_a, kept_b) >= max(a[outg["a"] == 0].abs().max(), b[outg["b"] == 0].abs().max())


@pytest.mark.parametrize("bits", [5, 6, 7])
def test_packed_and_container_artifacts_hold_the_same_weights(bits):
    state = {"w": heavy_tailed(33, 70), "v": torch.randn(9)}
    qz = MixedQuantizer(
        [{"name": "small", "scheme": "fp32", "max_numel": 10}, {"name": "m", "scheme": "int", "bits": bits}]
    )
    q = qz.quantize(state)
    packed = pack_state(q)
    assert packed["w"].scheme == "intn_row_packed"
    assert packed["w"].stored_bytes < q["w"].stored_bytes
    a = unpack_artifact(pack_artifact(q, {}, Zlib()))
    b = unpack_artifact(pack_artifact(packed, {}, Zlib()))
    for k in state:
        assert torch.equal(a.state_dict[k], b.state_dict[k])


def test_auto_packing_keeps_the_smaller_measured_artifact():
    state = {"w": heavy_tailed(128, 256)}
    qz = MixedQuantizer([{"name": "m", "scheme": "int", "bits": 5}])
    data, report = build_artifact(qz, Zlib(), state, {}, {}, packing="auto")
    assert set(report["packing_bytes"]) == {"int8", "bits"}
    assert len(data) == min(report["packing_bytes"].values())
    assert report["packing_bytes"][report["packing"]] == len(data)
    g = report["groups"]["m"]
    assert g["tensors"] == 1 and g["params"] == 128 * 256 and g["compressed_bytes"] > 0
    with pytest.raises(ValueError, match="quant.packing"):
        build_artifact(qz, Zlib(), state, {}, {}, packing="dense")


QAT_TABLE = [
    {"name": "floats", "scheme": "fp32", "pattern": "^(tok_emb|bigram)|scale|mix|gain|skip"},
    {"name": "small", "scheme": "fp32", "ndim": 1},
    {"name": "mlp", "scheme": "int", "bits": 5, "pattern": r"\.mlp\.", "clip": "rowmax"},
    {"name": "attn", "scheme": "int", "bits": 6, "clip": "quantile", "clip_quantile": 0.9995, "scale_floor": 0.001},
]


def _small_model():
    c = to_container(
        compose(
            [
                "arch=record11",
                "arch.num_layers=2",
                "arch.model_dim=64",
                "arch.vocab_size=64",
                "arch.attention.num_heads=4",
                "arch.attention.num_kv_heads=2",
            ]
        )
    )
    torch.manual_seed(0)
    model = build_model(c["arch"])
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)  # away from the zero init of the output projections
    return c, model


def test_qat_forward_equals_the_dequantized_models_forward_exactly():
    c, model = _small_model()
    qz = MixedQuantizer(QAT_TABLE)
    x = torch.randint(0, 64, (2, 24), generator=torch.Generator().manual_seed(3))
    plain = model(x)
    qat = QAT(model, qz, start_lr_scale=0.5)
    qat.on_step_start(0, 0.0, 1.0)
    assert qat.enabled_at is None  # the LR scale has not dropped below 0.5 yet
    qat.on_step_start(7, 0.0, 0.4)
    assert qat.enabled_at == 7 and len(qat.layers) == 2 * 6
    warm = QAT(_small_model()[1], qz, start_lr_scale=0.5, after_step=5)
    warm.on_step_start(0, 0.0, 0.2)  # a low scale during the LR warm-up is not the late phase
    assert warm.enabled_at is None
    with torch.no_grad():
        fake = model(x)
    exported = build_model(c["arch"])
    exported.load_state_dict(dequantize_state(qz.quantize(model.state_dict())))
    with torch.no_grad():
        real = exported(x)
    assert torch.equal(fake, real)
    assert not torch.equal(fake, plain)  # the fake quantization did change the forward
    # straight-through: gradients reach the fp32 weights
    model.zero_grad()
    model(x).float().square().mean().backward()
    assert model.blocks[0].mlp.fc.weight.grad is not None and model.blocks[0].mlp.fc.weight.grad.abs().sum() > 0
    qat.disable()
    with torch.no_grad():
        assert torch.equal(model(x), plain)


def test_qat_compiles_as_one_graph_and_matches_eager():
    _, model = _small_model()
    qz = MixedQuantizer(QAT_TABLE)
    QAT(model, qz, start_lr_scale=None).on_step_start(0, 0.0, 1.0)
    x = torch.randint(0, 64, (2, 24), generator=torch.Generator().manual_seed(4))
    compiled = torch.compile(model, backend="eager", fullgraph=True)
    with torch.no_grad():
        assert torch.equal(compiled(x), model(x))


def test_qat_needs_a_rule_table_quantizer():
    class NoTable:  # a quantizer without rules cannot say how a weight will be stored
        def quantize(self, state):
            return {}

    _, model = _small_model()
    with pytest.raises(ValueError, match="rule.table"):
        QAT(model, NoTable())


def test_calibrating_on_validation_data_is_refused():
    from paramgolf.runner.plan import build_plan

    c = to_container(compose(["experiment=smoke", "quant=int6_gptq", "quant.calibration.source=validation"]))
    with pytest.raises(ValueError, match="validation is refused"):
        build_plan(c, world_size=1)
    ok = to_container(compose(["experiment=smoke", "quant=int6_gptq", "quant.calibration.source=self_generated"]))
    build_plan(ok, world_size=1)
