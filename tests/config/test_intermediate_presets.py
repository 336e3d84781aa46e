"""The intermediate record presets (PR #1394, PR #1667): composed and built on the meta device, each
preset has its record's parameter count, layer split, init order, optimizer groups, quantizer table
and export settings (docs/records/pr1394.md, docs/records/pr1667.md)."""

from __future__ import annotations

import functools

import pytest
import torch
from hydra.utils import instantiate

from paramgolf.config.compose import compose, to_container
from paramgolf.optim.groups import as_rule, assign_params
from paramgolf.runner.build import build_model

# (model_params in every log, encoder/decoder layers with looping on, skips, init order, seed-42 steps)
RECORDS = {
    "pr1394": (35_943_512, ([0, 1, 2, 3, 4, 5, 4], [5, 4, 5, 6, 7, 8, 9, 10]), 7, "ortho_modules", 4986),
    "pr1667": (35_945_671, ([0, 1, 2, 3, 4, 5, 3, 4], [5, 3, 4, 5, 6, 7, 8, 9, 10]), 8, "ortho_banks", 4843),
}


@functools.cache
def config(preset: str) -> dict:
    return to_container(compose([f"experiment={preset}"]))


@functools.cache
def model(preset: str) -> torch.nn.Module:
    with torch.device("meta"):
        return build_model(config(preset)["arch"])


def groups(preset: str) -> dict[str, set[str]]:
    m = model(preset)
    rules = [as_rule(r) for r in config(preset)["optimizer"]["rules"]]
    assigned = assign_params(list(m.named_parameters()), rules, m.parameter_roles())
    return {group: {name for name, _ in members} for group, members in assigned.items()}


@pytest.mark.parametrize("preset", sorted(RECORDS))
def test_the_preset_builds_the_records_model(preset):
    params, split, skips, order, steps = RECORDS[preset]
    m, cfg = model(preset), config(preset)
    assert sum(p.numel() for p in m.parameters()) == params
    assert m.layer_split() == split
    assert m.skip_weights.shape == m.skip_gates.shape == (skips, 512)
    assert cfg["arch"]["init_order"] == order
    assert cfg["seed"] == 42 and cfg["train"]["expected_steps"] == steps
    assert (cfg["train"]["batch_tokens"], cfg["train"]["seq_len"], cfg["train"]["micro_batches"]) == (786432, 2048, 8)


def test_pr1394_has_no_gates_lanes_or_banks_and_loops_4_to_5_from_half_time():
    m, arch = model("pr1394"), config("pr1394")["arch"]
    names = [n for n, _ in m.named_parameters()]
    assert not [n for n in names if "smear" in n or "output_gate" in n or n.startswith("parallel.")]
    assert (arch["loop"]["start"], arch["loop"]["end"], arch["loop"]["enable_at"]) == (4, 5, 0.5)
    assert arch["attention"]["qk_gain_init"] == 4.0 and arch["attention"]["rope_train_seq_len"] == 2048


def test_pr1667_has_attn_out_gates_and_the_leaky_smear_gate():
    m, arch = model("pr1667"), config("pr1667")["arch"]
    gate = m.blocks[0].attn.output_gate
    assert gate.double and gate.attn_gate_w.shape == (8, 12) and gate.init_std == 0.0
    assert arch["smear"]["bos_mask"] is False and arch["smear"]["window"] == 12
    assert arch["attention"]["qk_gain_init"] == 5.25 and arch["parallel"]["start"] == 8


def test_pr1394_optimizer_groups():
    g = groups("pr1394")
    assert g["tok_emb"] == {"tok_emb.weight"}
    assert {"blocks.0.attn.c_q.weight", "blocks.10.mlp.proj.weight"} <= g["matrices"]
    assert {"skip_weights", "skip_gates", "blocks.3.attn.q_gain"} <= g["scalars"]
    opt = config("pr1394")["optimizer"]
    assert opt["muon"]["row_normalize"] and opt["muon"]["ns_coefficients"] == "standard"
    assert (opt["muon_momentum"], opt["adam_betas"]) == (0.99, [0.9, 0.95])


def test_pr1667_freezes_the_smear_gate_as_its_record_never_optimises_it():
    g = groups("pr1667")
    assert g["frozen"] == {"smear.gate_w", "smear.lam"}
    assert {"blocks.4.attn.output_gate.attn_gate_w", "parallel.resid_lambdas", "skip_gates"} <= g["scalars"]
    assert "blocks.0.attn.c_v.weight" in g["matrices"]
    rules = {r["name"]: r for r in config("pr1667")["optimizer"]["rules"]}
    assert rules["frozen"]["optimizer"] == "none"
    assert (rules["matrices"]["lr"], rules["matrices"]["weight_decay"]) == (0.026, 0.095)


# name → (scheme, bits, SDClip k) per record
QUANT = {
    "pr1394": {
        "tok_emb.weight": ("int", 8, 20.0),
        "blocks.0.attn.c_q.weight": ("int", 6, 12.85),
        "blocks.5.mlp.fc.weight": ("int", 6, 12.85),
        "blocks.0.attn.q_gain": ("fp16", None, None),
    },
    "pr1667": {
        "tok_emb.weight": ("int", 7, 15.0),
        "blocks.0.attn.proj.weight": ("int", 6, 13.0),
        "blocks.5.mlp.proj.weight": ("int", 6, 12.0),
        "blocks.2.attn.output_gate.attn_gate_w": ("fp16", None, None),
        "smear.gate_w": ("fp16", None, None),
    },
}


@pytest.mark.parametrize("preset", sorted(QUANT))
def test_the_quantizer_table_is_the_records(preset):
    quant = config(preset)["quant"]
    quantizer = instantiate(quant["quantizer"])
    state = dict(model(preset).named_parameters())
    for name, (scheme, bits, k) in QUANT[preset].items():
        rule = quantizer.rule_for(name, state[name])
        assert rule.scheme == scheme, name
        if scheme == "int":
            assert (rule.bits, rule.clip, rule.clip_sigmas, rule.gptq) == (bits, "sdclip", k, True), name
    codec = quant["codec"]
    assert (codec["quality"], codec["lgwin"], codec["shuffle"]) == (11, 22, 2)
    cal = quant["calibration"]
    assert (cal["source"], cal["batches"], cal["batch_seqs"]) == ("train", 64, 48)
    assert cal["reserve_s"] == {"pr1394": 12.0, "pr1667": 13.0}[preset]


def test_schedules_loaders_and_evaluation():
    a, b = config("pr1394"), config("pr1667")
    assert a["train"]["schedule"]["warmdown_frac"] == 0.667 and b["train"]["schedule"]["warmdown_frac"] == 0.75
    assert a["train"]["averaging"]["decay"] == 0.997 and b["train"]["averaging"]["decay"] == 0.9965
    assert a["train"]["loader"]["_target_"].endswith("DistributedTokenLoader")
    assert b["train"]["loader"]["_target_"].endswith("DocumentPackingLoader")
    assert a["eval"]["_target_"].endswith("Sliding") and (a["eval"]["stride"], a["eval"]["seq_len"]) == (64, 2048)
    assert b["eval"]["_target_"].endswith("NonOverlapping")
    assert a["ttt"]["_target_"].endswith("NoTTT") and b["ttt"]["_target_"].endswith("NoTTT")


def test_only_pr1394_trains_past_the_budget_estimate():
    # its model fits but paramgolf's script is 35,704 B larger than the record's (docs/records/pr1394.md §4)
    assert config("pr1394")["budget_check"] == "warn" and config("pr1667")["budget_check"] == "refuse"
