"""conf/optimizer/pr1855.yaml builds the top record's optimizers; the new switches default to today's math."""

from __future__ import annotations

import pytest
import torch

from paramgolf.config.compose import compose, to_container
from paramgolf.optim.muon import Muon
from paramgolf.optim.parallel_muon import ParallelMuon
from paramgolf.runner.build import build_model, build_optimizer_for

ARCH = ["arch.num_layers=2", "arch.model_dim=32", "arch.vocab_size=64", "arch.attention.num_heads=2"]
ARCH += ["arch.attention.num_kv_heads=1"]


def built(overrides: list[str]):
    c = to_container(compose(ARCH + overrides))
    torch.manual_seed(0)
    model = build_model(c["arch"])
    return model, build_optimizer_for(model, c["optimizer"])


def test_pr1855_preset_values_reach_the_optimizers():
    model, opt = built(["optimizer=pr1855"])
    assert isinstance(opt.muon, ParallelMuon)
    assert opt.muon.row_normalize is True and opt.muon.ns_coefficients == "polar_express"
    (muon_group,) = opt.muon.param_groups
    assert (muon_group["base_lr"], muon_group["weight_decay"], muon_group["backend_steps"]) == (0.026, 0.095, 5)
    assert muon_group["nesterov"] is True
    assert opt.momentum_at(0) == pytest.approx(0.92) and opt.momentum_at(750) == pytest.approx(0.945)
    assert opt.momentum_at(1500) == pytest.approx(0.97) and opt.momentum_at(4000) == pytest.approx(0.97)
    adam = {g["name"]: g for g in opt.adam.param_groups}
    assert (adam["tok_emb"]["base_lr"], adam["tok_emb"]["weight_decay"]) == (0.03, 0.085)
    assert (adam["scalars"]["base_lr"], adam["scalars"]["weight_decay"]) == (0.02, 0.02)
    # One AdamW holds both the token and the scalar groups: adam_betas covers both (D7).
    assert all(g["betas"] == (0.9, 0.99) and g["eps"] == 1e-8 for g in opt.adam.param_groups)
    assert opt.grad_clip_norm == 0.3 and opt.muon_wd_taper_start is None
    assert [n for n, _ in model.named_parameters() if n.startswith("tok_emb")] == ["tok_emb.weight"]
    muon_ids = {id(p) for p in muon_group["params"]}
    roles = model.parameter_roles()
    assert all((roles[n] == "matrix") == (id(p) in muon_ids) for n, p in model.named_parameters())


@pytest.mark.parametrize("preset", ["muon_adam", "muon_adamw_wd", "parallel_muon"])
def test_existing_presets_keep_standard_muon(preset):
    _, opt = built([f"optimizer={preset}"])
    assert opt.muon.row_normalize is False and opt.muon.ns_coefficients == "standard"
    assert opt.muon_wd_taper_start is None


def test_switches_from_the_command_line():
    _, opt = built(
        [
            "optimizer=muon_adamw_wd",
            "optimizer.muon.row_normalize=true",
            "optimizer.muon.ns_coefficients=polar_express",
            "optimizer.muon_wd_taper_start=0.7",
        ]
    )
    assert type(opt.muon) is Muon and opt.muon.row_normalize and opt.muon.ns_coefficients == "polar_express"
    assert opt.muon_wd_scale_at(1.0) == pytest.approx(0.5)
    with pytest.raises(Exception, match="ns_coefficients"):
        compose(["optimizer.muon.ns_coefficients=polar"])
