"""#1855's export techniques: SDClip, GPTQ of the tied embedding, int7, QuantGate, LQER, the reserve check."""

from __future__ import annotations

import pytest
import torch

from paramgolf.config.compose import compose, to_container
from paramgolf.errors import UserError
from paramgolf.quant.artifact import pack_artifact, unpack_artifact
from paramgolf.quant.calibration import Calibration, CalibrationData, collect_hessians, tied_head_inputs
from paramgolf.quant.codecs import Zlib
from paramgolf.quant.export import build_artifact
from paramgolf.quant.gptq import gptq_quantize
from paramgolf.quant.lqer import LQER, lqer_factors
from paramgolf.quant.mixed import MixedQuantizer, pack_state
from paramgolf.quant.recipe import ExportRecipe
from paramgolf.quant.schemes import dequantize_state
from paramgolf.runner.build import build_model, instantiate_unwrapped


def heavy_tailed(rows, cols, seed=0):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(rows, cols, generator=g) * 0.05
    return w + (torch.rand(rows, cols, generator=g) < 0.01) * torch.randn(rows, cols, generator=g) * 0.3


def hessian(cols, seed=1, n=400):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, cols, generator=g) @ (torch.eye(cols) + 0.3 * torch.randn(cols, cols, generator=g))
    return x.T @ x / n


def sdclip(bits=6, k=12.0, gptq=False, **kw):
    rule = {"name": "m", "scheme": "int", "bits": bits, "clip": "sdclip", "clip_sigmas": k, "gptq": gptq}
    return MixedQuantizer([rule], **kw)


# ---------------------------------------------------------------- SDClip (F1)
@pytest.mark.parametrize("bits,k", [(6, 13.0), (6, 11.5), (7, 14.0)])
def test_sdclip_step_is_k_sample_stds_over_qmax_in_fp16_and_codes_are_plain_rounding(bits, k):
    w = heavy_tailed(48, 1024)
    w[0, 0] = 5.0  # ~30 standard deviations of its row: beyond the grid
    qt = sdclip(bits, k).quantize({"w": w})["w"]
    m = 2 ** (bits - 1) - 1
    want = (k * w.std(dim=1, unbiased=True) / m).to(torch.float16)
    assert torch.equal(qt.tensors["scale"], want)
    assert not torch.equal(want, (k * w.std(dim=1, unbiased=False) / m).to(torch.float16))  # n − 1, not n
    s = want.float()[:, None]
    assert torch.equal(qt.tensors["q"], torch.clamp(torch.round(w / s), -m, m).to(torch.int8))
    assert int(qt.tensors["q"][0, 0]) == m  # clipped at the grid's end


def test_sdclip_inside_gptq_keeps_the_sdclip_grid_and_lowers_the_layer_output_error():
    w, H = heavy_tailed(64, 96), hessian(96)
    plain = sdclip(6, 12.0).quantize({"w": w})["w"]
    qt = sdclip(6, 12.0, gptq=True).quantize({"w": w}, hessians={"w": H})["w"]
    assert torch.equal(qt.tensors["scale"], plain.tensors["scale"])  # the sweep runs on the SDClip grid
    no_hessian = sdclip(6, 12.0, gptq=True).quantize({"w": w})["w"]  # e.g. the budget estimate: plain rounding
    assert torch.equal(no_hessian.tensors["q"], plain.tensors["q"])
    assert not torch.equal(qt.tensors["q"], plain.tensors["q"])

    def out_err(q):
        d = w - dequantize_state({"w": q})["w"]
        return float(torch.einsum("ri,ij,rj->", d, H, d))

    assert out_err(qt) < out_err(plain)
    # A diagonal Hessian has no cross terms: GPTQ on that grid is plain rounding.
    q_diag, _, info = gptq_quantize(w, torch.diag(torch.rand(96) + 0.5), 6, scale=plain.tensors["scale"])
    assert torch.equal(q_diag, plain.tensors["q"]) and "quantile" not in info


@pytest.mark.parametrize(
    "rule,match",
    [
        ({"clip": "sdclip"}, "clip_sigmas"),
        ({"clip": "rowmax", "clip_sigmas": 3.0}, "clip_sigmas"),
        ({"clip": "sdclip", "clip_sigmas": 0.0}, "clip_sigmas"),
        ({"clip": "search", "gptq": True}, "gptq=true"),
        ({"clip": "sdclip", "clip_sigmas": 3.0, "record": "int8_tensor"}, "int8_tensor"),
    ],
)
def test_bad_sdclip_and_gptq_rules_are_refused(rule, match):
    with pytest.raises(UserError, match=match):
        MixedQuantizer([{"name": "m", "scheme": "int", "bits": 8, **rule}])


# ---------------------------------------------------------------- tied embedding Hessian (F3), int7 (F4)
@pytest.fixture(scope="module")
def tiny():
    c = to_container(compose(["experiment=smoke", "quant=pr1855"]))
    torch.manual_seed(0)
    model = build_model(c["arch"])
    for p in model.parameters():
        p.data.add_(torch.randn_like(p) * 0.05)
    return c, model


def test_tied_embedding_hessian_is_the_mean_over_batches_of_the_final_norms_output_gram(tiny):
    c, model = tiny
    assert tied_head_inputs(model) == {"tok_emb.weight": model.final_norm}
    vocab = c["arch"]["vocab_size"]
    g = torch.Generator().manual_seed(3)
    batches = [torch.randint(0, vocab, (2, 16), generator=g) for _ in range(3)]
    H = collect_hessians(model, batches, param_names={"tok_emb.weight", "blocks.0.mlp.fc.weight"})
    assert set(H) == {"tok_emb.weight", "blocks.0.mlp.fc.weight"}
    with torch.no_grad():
        hs = [model(x, return_hidden=True)[1].reshape(-1, model.tok_emb.weight.shape[1]) for x in batches]
    want = sum(h.T @ h for h in hs) / len(batches)
    assert torch.allclose(H["tok_emb.weight"], want, rtol=1e-5, atol=1e-6)
    assert not model.final_norm._forward_hooks


def test_loop_layer_hessians_sum_every_pass_over_the_batch_count_and_gates_take_the_quant_gate():
    c = to_container(
        compose(
            ["arch=pr1855", "arch.model_dim=64", "arch.vocab_size=128", "arch.num_layers=7", "arch.parallel.start=6"]
            + ["arch.attention.num_heads=4", "arch.attention.num_kv_heads=2", "arch.attention.rope_dims=8"]
            + ["quant=pr1855", "quant.keep_float_max_numel=1024"]
        )
    )
    torch.manual_seed(0)
    model = build_model(c["arch"])
    model.set_looping(True)
    assert model.parameter_uses()["blocks.3.attn.c_q.weight"] == 3  # layers 3-5 run three times
    seen: list[torch.Tensor] = []
    probe = model.blocks[3].attn.c_q.register_forward_hook(lambda m, i, o: seen.append(i[0].reshape(-1, 64).float()))
    batches = [torch.randint(0, 128, (2, 8), generator=torch.Generator().manual_seed(s)) for s in range(2)]
    H = collect_hessians(model, batches, param_names={"blocks.3.attn.c_q.weight", "blocks.0.attn.c_q.weight"})
    probe.remove()
    assert len(seen) == 3 * len(batches)
    want = sum(x.T @ x for x in seen) / len(batches)
    assert torch.allclose(H["blocks.3.attn.c_q.weight"], want, rtol=1e-5, atol=1e-6)
    q = instantiate_unwrapped(c["quant"]["quantizer"])
    state = {k: v.detach() for k, v in model.state_dict().items()}
    q.quantize(state, roles=model.parameter_roles())
    gates = {n: r for n, r in q.report.rule_of.items() if n.endswith("attn_gate_w")}
    assert len(gates) == 7 and set(gates.values()) == {"quant_gate"}
    assert q.report.rule_of["smear.gate_w"] == "small"  # 12 elements: below the gate window, fp16


def test_pr1855_preset_gptqs_tok_emb_at_int7_and_the_artifact_reloads_packed_or_not(tiny):
    c, model = tiny
    q = instantiate_unwrapped(c["quant"]["quantizer"])
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    roles = model.parameter_roles()
    names = q.gptq_names(state, roles)
    assert "tok_emb.weight" in names
    vocab = c["arch"]["vocab_size"]
    H = collect_hessians(model, [torch.randint(0, vocab, (2, 16)) for _ in range(2)], param_names=names)
    qstate = q.quantize(state, hessians=H, roles=roles)
    emb = qstate["tok_emb.weight"]
    assert emb.meta["bits"] == 7 and q.report.info["tok_emb.weight"]["method"] == "gptq/sdclip"
    assert int(emb.tensors["q"].abs().max()) <= 63
    want = dequantize_state(qstate)
    for packed in (qstate, pack_state(qstate)):
        got = unpack_artifact(pack_artifact(packed, {"a": 1}, Zlib(9))).state_dict
        assert all(torch.equal(got[n], want[n]) for n in want)
    assert pack_state(qstate)["tok_emb.weight"].scheme == "intn_row_packed"


# ---------------------------------------------------------------- QuantGate (F6)
def test_quant_gate_stores_gates_in_its_window_int8_per_row_and_others_as_before(tiny):
    c, _ = tiny
    q = instantiate_unwrapped(c["quant"]["quantizer"])
    g = torch.Generator().manual_seed(5)
    state = {
        "blocks.0.attn.output_gate.attn_gate_w": torch.randn(8, 12, generator=g),  # 96: in the window
        "blocks.1.attn.output_gate.attn_gate_w": torch.randn(4, 4, generator=g),  # 16: below it, fp16
        "blocks.0.attn_scale": torch.rand(512, generator=g),
    }
    qs = q.quantize(state)
    assert q.report.rule_of == {
        "blocks.0.attn.output_gate.attn_gate_w": "quant_gate",
        "blocks.1.attn.output_gate.attn_gate_w": "small",
        "blocks.0.attn_scale": "small",
    }
    w = state["blocks.0.attn.output_gate.attn_gate_w"]
    gate = qs["blocks.0.attn.output_gate.attn_gate_w"]
    s = (w.abs().amax(dim=1) / 127).to(torch.float16)
    assert gate.meta["bits"] == 8 and torch.equal(gate.tensors["scale"], s)
    assert torch.equal(gate.tensors["q"], torch.clamp(torch.round(w / s.float()[:, None]), -127, 127).to(torch.int8))
    assert qs["blocks.1.attn.output_gate.attn_gate_w"].scheme == "fp16"


# ---------------------------------------------------------------- LQER (F7)
def lqer_case(top_k=2):
    g = torch.Generator().manual_seed(7)
    state = {f"l{i}.weight": heavy_tailed(64, 96, seed=i) * (1 + i) for i in range(4)}
    state["emb.weight"] = torch.randn(128, 96, generator=g) * 0.02
    state["rtn.weight"] = torch.randn(64, 96, generator=g) * 10  # huge error, but no GPTQ rule: not a candidate
    table = [
        {"name": "rtn", "scheme": "int", "bits": 4, "pattern": "^rtn", "clip": "rowmax"},
        {"name": "m", "scheme": "int", "bits": 5, "clip": "sdclip", "clip_sigmas": 8.0, "gptq": True},
    ]
    H = {n: hessian(96, seed=10 + i) for i, n in enumerate(state)}
    on = MixedQuantizer(table, lqer={"rank": 4, "top_k": top_k, "group": 64})
    return state, H, on, MixedQuantizer(table)


def test_lqer_corrects_exactly_the_top_k_gptq_errors_and_lowers_their_error():
    state, H, on, off = lqer_case(top_k=2)
    base, corrected = off.quantize(state, hessians=H), on.quantize(state, hessians=H)
    deq0, deq1 = dequantize_state(base), dequantize_state(corrected)
    err = {n: float((state[n] - deq0[n]).norm()) for n in state}
    candidates = [n for n in state if n != "rtn.weight"]
    top = sorted(candidates, key=lambda n: -err[n])[:2]
    assert {n for n, qt in corrected.items() if "lqer_rank" in qt.meta} == set(top)
    for n in state:
        after = float((state[n] - deq1[n]).norm())
        if n in top:
            assert after < err[n]
            assert on.report.info[n]["lqer_residual_fro"] == pytest.approx(err[n], rel=1e-6)
            assert on.report.info[n]["lqer_corrected_fro"] == pytest.approx(after, rel=1e-5)
            assert torch.equal(corrected[n].tensors["q"], base[n].tensors["q"])  # the base codes are untouched
        else:
            assert torch.equal(deq1[n], deq0[n]) and set(corrected[n].tensors) == set(base[n].tensors)


def test_lqer_factor_codes_ranges_scales_and_the_stored_formula():
    g = torch.Generator().manual_seed(2)
    E = torch.randn(40, 50, generator=g) * 0.01  # 4·50 = 200 elements of B: groups of 64, the last of 8
    p = lqer_factors(E, 4, 64)
    qa, sa, qb, sb = p["lqer_a"], p["lqer_a_scale"], p["lqer_b"], p["lqer_b_scale"]
    assert qa.shape == (40, 4) and qb.shape == (4, 50) and sb.shape == (4,) and sa.dtype == sb.dtype == torch.float16
    assert int(qa.min()) >= -2 and int(qa.max()) <= 1 and int(qb.min()) >= -8 and int(qb.max()) <= 7
    U, S, Vh = torch.linalg.svd(E, full_matrices=False)
    A, B = U[:, :4] * S[:4], Vh[:4]
    assert sa.item() == (A.abs().max() / 1.5).half().item()
    flat = B.reshape(-1)
    want_sb = torch.stack([flat[i : i + 64].abs().max() / 7.5 for i in range(0, 200, 64)]).half()
    assert torch.equal(sb, want_sb)


def test_lqer_survives_the_artifact_and_reload_reproduces_the_weights_exactly():
    state, H, on, _ = lqer_case(top_k=3)
    blob, report = build_artifact(on, Zlib(9), state, {"a": 1}, {}, packing="auto", hessians=H)
    for packed in ("int8", "bits"):
        qstate = on.quantize(state, hessians=H)
        want = dequantize_state(qstate)
        stored = pack_state(qstate) if packed == "bits" else qstate
        loaded = unpack_artifact(pack_artifact(stored, {"a": 1}, Zlib(9)))
        for n, qt in loaded.qstate.items():
            assert torch.equal(loaded.state_dict[n], want[n])
            if "lqer_rank" in qt.meta:
                base = qstate[n].tensors["q"].float() * qstate[n].tensors["scale"].float()[:, None]
                t = qt.tensors
                A = t["lqer_a"].float() * t["lqer_a_scale"].float()
                B = (t["lqer_b"].float().reshape(-1, 64) * t["lqer_b_scale"].float()[:, None]).reshape(4, 96)
                assert torch.equal(loaded.state_dict[n], base + A @ B)  # W ≈ Q·s + (qA·sA)(qB·sB)
    assert sum("lqer_residual_fro" in v for v in report["tensor_info"].values()) == 3


def test_lqer_config_is_checked_and_a_damaged_factor_is_refused():
    with pytest.raises(UserError, match="top_k"):
        LQER(top_k=0)
    with pytest.raises(UserError, match="unknown key"):
        MixedQuantizer([{"name": "all", "scheme": "fp16"}], lqer={"rank": 4, "topk": 3})
    state, H, on, _ = lqer_case(top_k=1)
    qstate = on.quantize(state, hessians=H)
    (name,) = [n for n, qt in qstate.items() if "lqer_rank" in qt.meta]
    qstate[name].tensors["lqer_a"][0, 0] = 3  # outside INT2's [-2, 1]
    with pytest.raises(UserError, match="outside"):
        unpack_artifact(pack_artifact(qstate, {"a": 1}, Zlib(9)))


# ---------------------------------------------------------------- the calibration reserve (F11)
def test_the_run_measures_calibration_and_says_whether_the_reserve_and_the_cap_held(tiny, tmp_path):
    from paramgolf.data.shards import write_shard

    c, model = tiny
    vocab = c["arch"]["vocab_size"]
    shard = tmp_path / "fineweb_train_000000.bin"
    write_shard(shard, torch.randint(0, vocab, (4096,), generator=torch.Generator().manual_seed(0)).numpy())
    data = CalibrationData([str(shard)], 16, 0, vocab, 0, torch.device("cpu"))
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    q = instantiate_unwrapped(c["quant"]["quantizer"])
    for reserve, cap, within in ((60.0, 600.0, True), (0.0, 1.0, False)):
        cal = Calibration(batches=2, batch_seqs=2, reserve_s=reserve)
        recipe = ExportRecipe(q, Zlib(9), "int8", cal, wallclock_cap_s=cap)
        assert recipe.training_cap(cap) == max(cap - reserve, 1.0)
        _, report = recipe.export(state, {"a": 1}, {}, model=model, data=data, train_time_s=cap - reserve)
        r = report["calibration"]
        assert r["calibration_time_s"] > 0 and r["calibration_within_reserve"] is within
        assert r["train_plus_calibration_s"] == pytest.approx(cap - reserve + r["calibration_time_s"])
        assert r["train_plus_calibration_within_cap"] is within


def test_pr1855_quant_preset_settings():
    c = to_container(compose(["quant=pr1855"]))["quant"]
    cal = c["calibration"]
    assert (cal["batches"], cal["batch_seqs"], cal["reserve_s"], cal["source"]) == (16, 48, 8.0, "train")
    q = instantiate_unwrapped(c["quantizer"])
    assert (q.gptq_damp, q.gptq_block_size, q.gptq_act_order) == (0.01, 128, True)
    assert (q.lqer.rank, q.lqer.top_k, q.lqer.group) == (4, 3, 64)
    rules = {r.name: (r.bits, r.clip, r.clip_sigmas, r.gptq) for r in q.table}
    assert rules == {
        "quant_gate": (8, "rowmax", None, False),
        "small": (8, "quantile", None, False),
        "tok_emb": (7, "sdclip", 14.0, True),
        "mlp": (6, "sdclip", 11.5, True),
        "attn": (6, "sdclip", 13.0, True),
        "rest": (6, "sdclip", 12.85, True),
    }
    assert instantiate_unwrapped(c["codec"]).name == "pergroup"


@pytest.mark.slow
def test_a_pr1855_quant_run_records_the_calibration_verdicts_and_lqer(tmp_path):
    import json

    from paramgolf.runner.pipeline import run

    c = compose(
        ["experiment=smoke", "quant=pr1855", "data=synthetic", "logger=none", "train.iterations=3"]
        + ["train.max_wallclock_seconds=600", "quant.calibration.batches=2", "quant.calibration.batch_seqs=2"]
        + ["quant.keep_float_max_numel=1024", "train.progress=false", "eval.progress=false", "budget_check=off"]
    )
    assert run(to_container(c), tmp_path, 0, 1) == 0
    r = json.loads((tmp_path / "results.json").read_text())
    assert r["calibration_reserved_s"] == 8.0 and 0 < r["calibration_time_s"] <= 8.0
    assert r["calibration_within_reserve"] is True and r["train_plus_calibration_within_cap"] is True
    info = r["quant"]["tensor_info"]
    assert {v["method"] for v in info.values()} == {"gptq/sdclip"} and "tok_emb.weight" in info
    assert sum("lqer_corrected_fro" in v for v in info.values()) == 3
