"""experiment=pr1787 (docs/records/pr1787.md): composed and built on the meta device, the preset has PR
#1787's parameter count and layer split, its gates, optimizer, schedule, quantizer table and codec as its
run (README command, train_seed42.log) had them, and differs from experiment=pr1855 exactly where the
two records' runs differ."""

from __future__ import annotations

import functools

import pytest
import torch
from hydra.utils import instantiate

from paramgolf.config.compose import compose, to_container
from paramgolf.optim.groups import as_rule, assign_params
from paramgolf.runner.build import build_model
from paramgolf.runner.plan import lr_schedule_for


@functools.cache
def config(preset: str = "pr1787") -> dict:
    return to_container(compose([f"experiment={preset}"]))


@functools.cache
def model() -> torch.nn.Module:
    with torch.device("meta"):
        return build_model(config()["arch"])


def test_the_preset_builds_the_records_model():
    m, cfg = model(), config()
    roles = m.parameter_roles()
    by_role: dict[str, int] = {}
    for name, p in m.named_parameters():
        by_role[roles[name]] = by_role.get(roles[name], 0) + p.numel()
    assert sum(by_role.values()) == 35_945_658  # model_params in every log
    assert by_role["matrix"] + by_role["embedding"] == 35_913_728 and by_role["control"] == 31_930
    assert m.layer_split() == ([0, 1, 2, 3, 4, 5, 3, 4], [5, 3, 4, 5, 6, 7, 8, 9, 10])  # its loop_warmup line
    assert m.skip_weights.shape == m.skip_gates.shape == (8, 512)
    assert cfg["arch"]["init_order"] == "ortho_banks_split"
    assert cfg["seed"] == 42 and cfg["train"]["expected_steps"] == 4961
    assert (cfg["train"]["batch_tokens"], cfg["train"]["seq_len"], cfg["train"]["micro_batches"]) == (786432, 2048, 8)


def test_sparse_attn_gate_at_scale_1_and_no_smear_gate():
    m, arch = model(), config()["arch"]
    gate = m.blocks[0].attn.output_gate
    assert (gate.window, gate.scale, gate.init_std, gate.double) == (12, 1.0, 0.0, False)
    assert gate.attn_gate_w.shape == (8, 12)
    assert arch["smear"] is None and not [n for n, _ in m.named_parameters() if "smear" in n]
    loop, att = arch["loop"], arch["attention"]
    assert (loop["start"], loop["end"], loop["num_loops"], loop["enable_at"]) == (3, 5, 2, 0.35)
    assert arch["parallel"]["start"] == 8 and (att["qk_gain_init"], att["rope_dims"], att["xsa_last_n"]) == (
        5.0,
        16,
        11,
    )


def test_optimizer_polar_express_and_the_scripts_beta2():
    m, opt = model(), config()["optimizer"]
    assert opt["muon"]["ns_coefficients"] == "polar_express" and opt["muon"]["row_normalize"]
    assert opt["adam_betas"] == [0.9, 0.95] and opt["grad_clip_norm"] == 0.3
    rules = [as_rule(r) for r in opt["rules"]]
    assigned = assign_params(list(m.named_parameters()), rules, m.parameter_roles())
    groups = {g: {n for n, _ in members} for g, members in assigned.items()}
    assert groups["tok_emb"] == {"tok_emb.weight"}
    assert {"blocks.4.attn.output_gate.attn_gate_w", "skip_gates", "parallel.resid_lambdas"} <= groups["scalars"]
    assert {"blocks.0.attn.c_q.weight", "blocks.10.mlp.proj.weight"} <= groups["matrices"]


def test_schedule_min_lr_floor_on_the_075_warmdown():
    train = config()["train"]
    s = lr_schedule_for(train)
    assert (s.warmdown_frac, s.min_scale, s.floor, s.warmup_iters) == (0.75, 0.1, "clamp", 0)
    cap = train["max_wallclock_seconds"]
    assert s(100, 0.2 * cap) == 1.0
    assert s(100, 0.5 * cap) == pytest.approx(0.5 / 0.75)
    assert s(100, 0.95 * cap) == pytest.approx(0.1)  # (1 − 0.95)/0.75 = 0.067 < MIN_LR


# name → (scheme, bits, SDClip k); the gates int8 per row (QuantGate)
QUANT = {
    "tok_emb.weight": ("int", 7, 15.0),
    "blocks.0.attn.c_q.weight": ("int", 6, 13.0),
    "blocks.0.attn.proj.weight": ("int", 6, 13.0),
    "blocks.5.mlp.fc.weight": ("int", 6, 12.0),
    "blocks.5.mlp.proj.weight": ("int", 6, 12.0),
    "blocks.2.attn.q_gain": ("fp16", None, None),
    "skip_gates": ("fp16", None, None),
}


def test_quantizer_table_codec_and_calibration():
    quant = config()["quant"]
    quantizer = instantiate(quant["quantizer"])
    assert quantizer.lqer is None
    state = dict(model().named_parameters())
    for name, (scheme, bits, k) in QUANT.items():
        rule = quantizer.rule_for(name, state[name])
        assert rule.scheme == scheme, name
        if scheme == "int":
            assert (rule.bits, rule.clip, rule.clip_sigmas, rule.gptq) == (bits, "sdclip", k, True), name
    gate = quantizer.rule_for("blocks.7.attn.output_gate.attn_gate_w", state["blocks.7.attn.output_gate.attn_gate_w"])
    assert (gate.scheme, gate.bits, gate.clip, gate.gptq) == ("int", 8, "rowmax", False)
    codec = quant["codec"]
    assert codec["_target_"].endswith("Brotli") and (codec["quality"], codec["lgwin"], codec["shuffle"]) == (11, 22, 2)
    cal = quant["calibration"]
    assert (cal["source"], cal["batches"], cal["batch_seqs"], cal["reserve_s"]) == ("train", 16, 48, 8.0)


def test_data_loader_and_evaluation():
    c = config()
    assert c["data"]["data_dir"].endswith("fineweb10B_sp8192_lossless_caps_caseops_v1_reserved")
    assert c["train"]["loader"]["_target_"].endswith("DocumentPackingLoader")
    assert c["train"]["averaging"]["decay"] == 0.9965 and c["train"]["val_every"] == 0
    assert c["eval"]["_target_"].endswith("NonOverlapping") and c["ttt"]["_target_"].endswith("NoTTT")


def _flat(d, prefix: str = "") -> dict:
    if isinstance(d, dict):
        return {k: v for key, val in d.items() for k, v in _flat(val, f"{prefix}.{key}" if prefix else key).items()}
    if isinstance(d, list) and d and all(isinstance(x, dict) for x in d):
        return {k: v for i, x in enumerate(d) for k, v in _flat(x, f"{prefix}[{i}]").items()}
    return {prefix: d}


def test_pr1855_is_pr1787_plus_smear_lqer_pergroup_and_its_overrides():
    """Where the two records' seed-42 Hyperparameters dumps differ in training or export (beta2,
    compressor, embed/mlp clip sigmas, lqer_*, smear_gate_enabled, sparse_attn_gate_scale,
    warmdown_frac; the TTT keys are evaluation-side), and only there."""
    a, b = _flat(config("pr1787")), _flat(config("pr1855"))
    differ = {k for k in a.keys() | b.keys() if a.get(k, "-") != b.get(k, "-") and k != "budget_check"}
    prefixes = ("arch.smear", "quant.codec", "quant.quantizer.lqer")
    assert {k for k in differ if not k.startswith(prefixes)} == {
        "name",
        "arch.attention.output_gate.scale",  # 1.0 | 0.5
        "optimizer.adam_betas",  # [0.9, 0.95] | [0.9, 0.99]
        "quant.quantizer.table[2].clip_sigmas",  # tok_emb 15.0 | 14.0
        "quant.quantizer.table[3].clip_sigmas",  # mlp 12.0 | 11.5
        "train.schedule.warmdown_frac",  # 0.75 | 0.85
        "train.expected_steps",  # 4961 | 4945
    }
    assert all(any(k.startswith(p) for k in differ) for p in prefixes)
