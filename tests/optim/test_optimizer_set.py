"""OptimizerSet: the official split, schedules hooks, state round trip, Hydra factory."""

from __future__ import annotations

import copy

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from torch import nn

from paramgolf.optim.builder import OptimizerSet, build_optimizer
from paramgolf.optim.groups import ParamRule
from paramgolf.optim.muon import Muon
from paramgolf.optim.parallel_muon import ParallelMuon


def baseline_rules(tie_embeddings: bool = True) -> list[ParamRule]:
    """The official baseline's split by name (conf/optimizer/muon_adam.yaml matches control tensors by role)."""
    embed = (
        ParamRule("tied_embed", "adam", 0.05, pattern=r"^tok_emb\.")
        if tie_embeddings
        else ParamRule("embed", "adam", 0.6, pattern=r"^tok_emb\.")
    )
    return [
        embed,
        ParamRule("head", "adam", 0.008, pattern=r"^lm_head\."),
        ParamRule("scalars", "adam", 0.04, pattern=r"attn_scale|mlp_scale|resid_mix|q_gain|skip_weight"),
        ParamRule("matrices", "muon", 0.04, ndim=2),
        ParamRule("scalars_rest", "adam", 0.04),
    ]


BASELINE_RULES = baseline_rules()


def tiny_model(tied: bool = True) -> nn.Module:
    """A few parameters named like the official baseline's."""
    torch.manual_seed(0)
    m = nn.Module()
    m.tok_emb = nn.Embedding(10, 4)
    block = nn.Module()
    block.attn = nn.Module()
    block.attn.c_q = nn.Linear(4, 4, bias=False)
    block.attn.q_gain = nn.Parameter(torch.full((2,), 1.5))
    block.mlp = nn.Module()
    block.mlp.fc = nn.Linear(4, 8, bias=False)
    block.resid_mix = nn.Parameter(torch.ones(2, 4))
    m.blocks = nn.ModuleList([block])
    m.skip_weights = nn.Parameter(torch.ones(1, 4))
    if not tied:
        m.lm_head = nn.Linear(4, 10, bias=False)
    return m


def make_set(model: nn.Module, rules=BASELINE_RULES, **kw) -> OptimizerSet:
    return OptimizerSet(model.named_parameters(), rules, muon_ns_dtype=torch.float32, **kw)


def run_steps(model: nn.Module, opt: OptimizerSet, n: int, seed: int, start_step: int = 0) -> None:
    """n training steps with seeded fake gradients, the runner's schedule calls included."""
    gen = torch.Generator().manual_seed(seed)
    for step in range(start_step, start_step + n):
        for p in model.parameters():
            p.grad = torch.randn(p.shape, generator=gen)
        opt.set_lr_scale(1.0 - 0.1 * step)
        opt.set_muon_momentum(opt.momentum_at(step))
        opt.clip_grad_norm()
        opt.step()
        opt.zero_grad()


def params_of(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def test_matches_the_official_optimizer_split():
    """Same parameters after 3 steps as one Adam per official group plus one Muon."""
    ours, ref = tiny_model(), tiny_model()
    opt = make_set(ours, muon_momentum_warmup_steps=2)
    ref_params = dict(ref.named_parameters())
    matrices = [ref_params["blocks.0.attn.c_q.weight"], ref_params["blocks.0.mlp.fc.weight"]]
    scalars = [p for n, p in ref_params.items() if n != "tok_emb.weight" and all(p is not q for q in matrices)]

    def adam(params, lr):
        return torch.optim.Adam([{"params": params, "lr": lr, "base_lr": lr}], betas=(0.9, 0.95), eps=1e-8)

    muon = Muon(matrices, lr=0.04, momentum=0.95, ns_dtype=torch.float32)
    for g in muon.param_groups:
        g["base_lr"] = 0.04
    ref_opts = [adam([ref_params["tok_emb.weight"]], 0.05), muon, adam(scalars, 0.04)]

    gen = torch.Generator().manual_seed(3)
    for step in range(3):
        grads = {n: torch.randn(p.shape, generator=gen) for n, p in ref_params.items()}
        for model in (ours, ref):
            for n, p in model.named_parameters():
                p.grad = grads[n].clone()
        scale = 1.0 - 0.2 * step
        opt.set_lr_scale(scale)
        opt.set_muon_momentum(opt.momentum_at(step))
        opt.step()
        frac = min(step / 2, 1.0)
        muon.param_groups[0]["momentum"] = (1 - frac) * 0.85 + frac * 0.95
        for o in ref_opts:
            for g in o.param_groups:
                g["lr"] = g["base_lr"] * scale
            o.step()
    for n, p in ours.named_parameters():
        assert torch.equal(p.detach(), ref_params[n].detach()), n


def test_state_dict_round_trip_restores_exactly():
    model = tiny_model()
    opt = make_set(model, grad_clip_norm=1.0)
    run_steps(model, opt, 2, seed=0)
    saved_params, saved_opt = params_of(model), copy.deepcopy(opt.state_dict())

    run_steps(model, opt, 3, seed=1, start_step=2)
    first = params_of(model)

    with torch.no_grad():
        for n, p in model.named_parameters():
            p.copy_(saved_params[n])
    opt.load_state_dict(saved_opt)
    run_steps(model, opt, 3, seed=1, start_step=2)
    for n, p in params_of(model).items():
        assert torch.equal(p, first[n]), n

    # Restoring only the weights is not enough: optimizer state (momentum, Adam moments) matters.
    with torch.no_grad():
        for n, p in model.named_parameters():
            p.copy_(saved_params[n])
    run_steps(model, opt, 3, seed=1, start_step=2)
    assert any(not torch.equal(p, first[n]) for n, p in params_of(model).items())


def test_rollback_to_empty_state_like_the_compile_warmup():
    model = tiny_model()
    opt = make_set(model)
    init_params, init_opt = params_of(model), copy.deepcopy(opt.state_dict())
    run_steps(model, opt, 2, seed=5)
    fresh_model = tiny_model()
    fresh = make_set(fresh_model)
    run_steps(fresh_model, fresh, 2, seed=7)
    with torch.no_grad():
        for n, p in model.named_parameters():
            p.copy_(init_params[n])
    opt.load_state_dict(init_opt)
    run_steps(model, opt, 2, seed=7)
    for n, p in fresh_model.named_parameters():
        assert torch.equal(p.detach(), dict(model.named_parameters())[n].detach()), n


def test_lr_scale_momentum_and_summary():
    model = tiny_model(tied=False)
    opt = make_set(model, baseline_rules(tie_embeddings=False))
    opt.set_lr_scale(0.5)
    opt.set_muon_momentum(0.9)
    rows = {r["name"]: r for r in opt.param_groups_summary()}
    assert rows["head"]["lr"] == pytest.approx(0.004) and rows["head"]["base_lr"] == 0.008
    assert rows["matrices"]["optimizer"] == "muon" and rows["matrices"]["num_tensors"] == 2
    assert rows["matrices"]["num_params"] == 16 + 32
    assert all(g["momentum"] == 0.9 for g in opt.muon.param_groups)
    assert opt.momentum_at(0) == pytest.approx(0.85)
    assert opt.momentum_at(250) == pytest.approx(0.90)
    assert opt.momentum_at(10_000) == pytest.approx(0.95)
    assert "tied_embed" not in rows and rows["embed"]["lr"] == pytest.approx(0.3)


def test_clip_grad_norm_is_off_at_zero():
    model = tiny_model()
    opt = make_set(model)
    for p in model.parameters():
        p.grad = torch.full_like(p, 10.0)
    before = [p.grad.clone() for p in model.parameters()]
    assert opt.clip_grad_norm() is None
    assert all(torch.equal(p.grad, b) for p, b in zip(model.parameters(), before))
    norm = opt.clip_grad_norm(1.0)
    assert norm > 1.0
    total = torch.sqrt(sum(p.grad.pow(2).sum() for p in model.parameters()))
    assert total == pytest.approx(1.0, rel=1e-4)


def test_grad_sync_params_and_frozen_params():
    model = tiny_model()
    model.skip_weights.requires_grad_(False)
    opt = make_set(model)
    synced = {id(p) for p in opt.grad_sync_params()}
    assert synced == {id(p) for p in model.parameters() if p.requires_grad}

    opt = make_set(model, muon_class=ParallelMuon)  # banked Muon averages its own gradients
    synced = {id(p) for p in opt.grad_sync_params()}
    assert id(model.blocks[0].attn.c_q.weight) not in synced and id(model.tok_emb.weight) in synced
    assert {id(p) for p in opt.self_synced_params()} == {id(p) for p in opt.muon.owned_params()}


def test_hydra_partial_factory():
    cfg = OmegaConf.create(
        {
            "_target_": "paramgolf.optim.builder.build_optimizer",
            "_partial_": True,
            "rules": [
                {
                    "name": "matrices",
                    "optimizer": "muon",
                    "lr": 0.02,
                    "pattern": None,
                    "ndim": 2,
                    "min_ndim": None,
                    "max_ndim": None,
                    "weight_decay": 0.04,
                },
                {"name": "rest", "optimizer": "adam", "lr": 0.03},
            ],
            "muon_momentum": 0.99,
            "adam_betas": [0.8, 0.9],
        }
    )
    opt = instantiate(cfg)(tiny_model().named_parameters())
    assert isinstance(opt, OptimizerSet)
    assert opt.adam.defaults["betas"] == (0.8, 0.9)
    assert [g["name"] for g in opt.muon.param_groups] == ["matrices"]
    assert opt.muon.param_groups[0]["weight_decay"] == 0.04 and opt.momentum_at(10**6) == 0.99
    with pytest.raises(ValueError, match="matches no parameter rule"):
        build_optimizer(
            tiny_model().named_parameters(), rules=[{"name": "m", "optimizer": "muon", "lr": 0.1, "ndim": 2}]
        )


def test_load_state_dict_from_other_rules_fails_clearly():
    model = tiny_model()
    state = make_set(model).state_dict()
    adam_only = OptimizerSet(model.named_parameters(), [{"name": "all", "optimizer": "adam", "lr": 0.1}])
    with pytest.raises(RuntimeError, match="other rules"):  # only the warm-up rollback loads one: a bug
        adam_only.load_state_dict(state)
