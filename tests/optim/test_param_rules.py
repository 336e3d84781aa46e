"""Parameter rules: first match wins, unmatched parameters fail loudly, baseline split."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from paramgolf.config.compose import compose, to_container
from paramgolf.optim.groups import ParamRule, as_rule, assign_params, assignment_summary
from paramgolf.runner.build import build_model


def baseline(overrides=()):
    """The official baseline GPT (on the meta device), its optimizer rules and its parameters' roles."""
    c = to_container(compose(["experiment=baseline", *overrides]))
    with torch.device("meta"):
        model = build_model(c["arch"])
    return model, [as_rule(r) for r in c["optimizer"]["rules"]], model.parameter_roles()


class FakeBlock(nn.Module):
    def __init__(self, dim: int = 8) -> None:
        super().__init__()
        self.attn = nn.Module()
        for name in ("c_q", "c_k", "c_v", "proj"):
            setattr(self.attn, name, nn.Linear(dim, dim, bias=False))
        self.attn.q_gain = nn.Parameter(torch.ones(2))
        self.mlp = nn.Module()
        self.mlp.fc = nn.Linear(dim, 2 * dim, bias=False)
        self.mlp.proj = nn.Linear(2 * dim, dim, bias=False)
        self.attn_scale = nn.Parameter(torch.ones(dim))
        self.mlp_scale = nn.Parameter(torch.ones(dim))
        self.resid_mix = nn.Parameter(torch.ones(2, dim))


class FakeGPT(nn.Module):
    """The official baseline's parameter names, at toy sizes."""

    def __init__(self, tied: bool = True, dim: int = 8, layers: int = 2) -> None:
        super().__init__()
        self.tok_emb = nn.Embedding(16, dim)
        self.blocks = nn.ModuleList(FakeBlock(dim) for _ in range(layers))
        self.skip_weights = nn.Parameter(torch.ones(1, dim))
        self.lm_head = None if tied else nn.Linear(dim, 16, bias=False)


def names(assigned, rule):
    return [n for n, _ in assigned[rule]]


def test_baseline_rules_reproduce_the_official_split():
    model, rules, roles = baseline()
    assigned = assign_params(model.named_parameters(), rules, roles)
    assert names(assigned, "tied_embed") == ["tok_emb.weight"]
    assert names(assigned, "head") == []
    matrices = set(names(assigned, "matrices"))
    assert matrices == {
        f"blocks.{i}.{m}.weight"
        for i in range(9)
        for m in ("attn.c_q", "attn.c_k", "attn.c_v", "attn.proj", "mlp.fc", "mlp.proj")
    }
    # 2-D control tensors (resid_mix, skip_weights) stay on Adam: their modules declare them
    scalars = set(names(assigned, "scalars"))
    assert {"skip_weights", "blocks.0.resid_mix", "blocks.1.attn.q_gain", "blocks.0.attn_scale"} <= scalars
    assert names(assigned, "vectors") == []  # every baseline non-matrix is a declared control tensor
    by_name = {r.name: r for r in rules}
    for name, _ in model.named_parameters():
        rule = next(r for r, members in assigned.items() if any(n == name for n, _ in members))
        if name != "tok_emb.weight":
            assert by_name[rule].lr == 0.04
            assert (by_name[rule].optimizer == "muon") == (name in matrices)


def test_untied_head_goes_to_the_head_rule():
    model, rules, roles = baseline(["arch.tie_embeddings=false"])
    assert names(assign_params(model.named_parameters(), rules, roles), "head") == ["lm_head.weight"]


def test_a_role_rule_needs_the_models_roles_and_matches_only_that_role():
    rule = ParamRule("ctl", "adam", 0.1, role="control")
    assert rule.matches("anything", torch.ones(2), "control") and not rule.matches("anything", torch.ones(2), "matrix")
    assert not rule.is_catch_all
    with pytest.raises(ValueError, match="declares no parameter roles"):
        assign_params([("w", nn.Parameter(torch.ones(2)))], [rule, ParamRule("rest", "adam", 0.1)])


def test_first_match_wins():
    p = nn.Parameter(torch.ones(3, 3))
    rules = [ParamRule("first", "adam", 0.1, pattern="w"), ParamRule("second", "muon", 0.2, ndim=2)]
    assert names(assign_params([("w", p)], rules), "first") == ["w"]
    assert names(assign_params([("w", p)], rules[::-1]), "second") == ["w"]


def test_conditions_combine():
    rule = ParamRule("r", "adam", 0.1, pattern=r"emb", min_ndim=2, max_ndim=2)
    assert rule.matches("bigram.emb.weight", torch.ones(2, 2))
    assert not rule.matches("bigram.emb.weight", torch.ones(2))
    assert not rule.matches("head.weight", torch.ones(2, 2))


def test_unmatched_parameter_names_itself_and_suggests_catch_all():
    rules = [ParamRule("matrices", "muon", 0.04, ndim=2)]
    with pytest.raises(ValueError, match=r"'gate\.bias'.*catch-all"):
        assign_params([("w", nn.Parameter(torch.ones(2, 2))), ("gate.bias", nn.Parameter(torch.ones(2)))], rules)


def test_muon_rule_rejects_vectors_and_bad_rules_fail_early():
    with pytest.raises(ValueError, match="ndim >= 2"):
        assign_params([("v", nn.Parameter(torch.ones(2)))], [ParamRule("all", "muon", 0.04)])
    with pytest.raises(ValueError, match="optimizer must be one of"):
        ParamRule("x", "sgd", 0.1)
    with pytest.raises(ValueError, match="bad regex"):
        ParamRule("x", "adam", 0.1, pattern="(")
    with pytest.raises(ValueError, match="unknown key"):
        as_rule({"name": "x", "optimizer": "adam", "lr": 0.1, "patern": "w"})
    with pytest.raises(ValueError, match="used twice"):
        assign_params([], [ParamRule("x", "adam", 0.1, ndim=1), ParamRule("x", "adam", 0.1)])
    with pytest.raises(ValueError, match="move it last"):
        assign_params([], [ParamRule("all", "adam", 0.1), ParamRule("m", "muon", 0.1, ndim=2)])


def test_summary_reports_empty_rules():
    model, rules, roles = baseline()
    assigned = assign_params(model.named_parameters(), rules, roles)
    rows = {r["name"]: r for r in assignment_summary(rules, assigned)}
    assert rows["head"]["num_tensors"] == 0 and rows["head"]["num_params"] == 0
    assert rows["tied_embed"]["num_params"] == 1024 * 512
    assert sum(r["num_params"] for r in rows.values()) == sum(p.numel() for p in model.parameters())
