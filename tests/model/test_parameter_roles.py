"""Parameter roles: every module declares what kind each of its parameters is (GPT.parameter_roles).

Besides checking the roles themselves, these tests compare them with the name regexes that the
optimizer and quantizer configs use today, so a disagreement between the two shows up here.
"""

from __future__ import annotations

import copy
import re

import pytest
import torch
from torch import nn

from paramgolf.config.compose import CONF_DIR, compose, to_container
from paramgolf.model.layers import ROLES, control_parameter, get_role
from paramgolf.optim.groups import as_rule, assign_params
from paramgolf.quant.mixed import as_quant_rule
from paramgolf.runner.build import build_model

PRESETS = sorted(p.stem for p in (CONF_DIR / "experiment").glob("*.yaml"))

# Today's control regexes, copied from conf/optimizer/muon_adamw_wd.yaml (rule `scalars`) and
# conf/quant/quantizer/int6_rtn.yaml (rule `control`).
OPTIMIZER_SCALARS = (
    r"attn_scale|mlp_scale|resid_mix|q_gain|skip_weight|skip_gate|smear|bigram\.|ve\.|attn_gate|vr_lambda|parallel\."
)
QUANT_CONTROL = r"attn_scale|mlp_scale|resid_mix|q_gain|skip_weight"
EMBEDDINGS = r"^(tok_emb|bigram\.embed|ve\.shared\.embed)\."  # muon_adamw_wd.yaml, rule `embeddings`

# The optimizer rules (by the names the presets give them) a parameter of each role belongs in.
RULES_FOR_ROLE = {
    "embedding": {"embeddings", "tied_embed", "tok_emb"},
    "head": {"head"},
    "matrix": {"matrices"},
    "control": {"scalars", "vectors"},
}

# Where a preset's optimizer rules send a parameter elsewhere than its role says, today:
# (presets, parameter-name regex, role, rule it lands in, why). Each must still occur (kept current).
KNOWN_DISAGREEMENTS = [
    (
        ("pr549", "pr754", "pr1185", "pr1263"),
        r"^bigram\.proj\.weight$",
        "matrix",
        "feature_proj",
        "an explicit rule sends the 2-D BigramHash projection to AdamW, as the records do "
        "(docs/records/pr549.md: AdamW 'scalar' group holds bigram.proj.weight)",
    ),
    (
        ("pr549", "pr1185", "pr1263"),
        r"^ve\.shared\.proj\.weight$",
        "matrix",
        "feature_proj",
        "an explicit rule sends the 2-D VE projection to AdamW, as the records do",
    ),
    (
        ("pr620", "pr1667"),
        r"^(bigram|smear)\.",
        None,
        "frozen",
        "PR #620 never optimised BigramHash/SmearGate, nor #1667 its SmearGate (docs/records/pr1667.md): "
        "a deliberate `optimizer: none` rule",
    ),
    (
        ("pr1185",),
        r"^mtp\.heads\.\d+\.weight$",
        "head",
        "matrices",
        "the MTP heads are vocabulary heads but fall to the ndim-2 Muon rule (the record trains them not at all)",
    ),
]


def preset_config(preset: str) -> dict:
    return to_container(compose([f"experiment={preset}"]))


def meta_model(arch) -> nn.Module:
    with torch.device("meta"):
        return build_model(arch)


@pytest.fixture(scope="module")
def presets():
    out = {}
    for preset in PRESETS:
        cfg = preset_config(preset)
        model = meta_model(cfg["arch"])
        out[preset] = (cfg, model, model.parameter_roles())
    return out


def test_every_parameter_of_every_preset_has_exactly_one_declared_role(presets):
    for preset, (_, model, roles) in presets.items():
        names = [name for name, _ in model.named_parameters()]
        assert list(roles) == names, preset  # one entry per parameter, in named_parameters() order
        for name, role in roles.items():
            assert role in ROLES, (preset, name, role)
            assert role != "other", f"{preset}: {name} declares no role (use control_parameter / set_role)"
        for name, p in model.named_parameters():  # declared by the module, not guessed by parameter_roles
            assert get_role(p) == roles[name], (preset, name)


def test_roles_by_kind(presets):
    for preset, (cfg, model, roles) in presets.items():
        params = dict(model.named_parameters())
        for name, role in roles.items():
            if role in ("matrix", "head"):
                assert params[name].ndim == 2, (preset, name)
            if role == "embedding":
                assert re.search(EMBEDDINGS, name), (preset, name)
        assert roles["tok_emb.weight"] == "embedding"
        if cfg["arch"]["tie_embeddings"]:
            assert "lm_head.weight" not in roles  # tied: tok_emb is the head
        assert all(roles[n] == "head" for n in roles if n.startswith(("lm_head.", "mtp.heads.")))


def test_parameters_matching_todays_control_regexes_are_control(presets):
    for preset, (_, _, roles) in presets.items():
        for name, role in roles.items():
            if re.search(QUANT_CONTROL, name):
                assert role == "control", (preset, name, role)
            # The scalars rule comes after the embeddings rule; what reaches it should be control,
            # except the two feature projections (KNOWN_DISAGREEMENTS).
            if re.search(OPTIMIZER_SCALARS, name) and not re.search(EMBEDDINGS, name):
                expected = "matrix" if re.fullmatch(r"(bigram|ve\.shared)\.proj\.weight", name) else "control"
                assert role == expected, (preset, name, role)
            if role == "control":  # and the converse: the scalars regex knows every control parameter
                assert re.search(OPTIMIZER_SCALARS, name), (preset, name)


def optimizer_disagreements(preset: str, cfg: dict, model: nn.Module, roles: dict[str, str]):
    rules = [as_rule(r) for r in cfg["optimizer"]["rules"]]
    assigned = assign_params(list(model.named_parameters()), rules, roles)
    rule_of = {name: rule for rule, named in assigned.items() for name, _ in named}
    return {(name, roles[name], rule_of[name]) for name in roles if rule_of[name] not in RULES_FOR_ROLE[roles[name]]}


def _known(preset: str, name: str, role: str, rule: str):
    for entry in KNOWN_DISAGREEMENTS:
        presets_, pattern, role_, rule_, _ = entry
        if preset in presets_ and re.search(pattern, name) and role_ in (None, role) and rule_ == rule:
            return entry
    return None


def test_roles_agree_with_each_presets_optimizer_rules(presets):
    """Every parameter's optimizer rule is the one its role calls for, but for KNOWN_DISAGREEMENTS."""
    unexplained, seen = [], set()
    for preset, (cfg, model, roles) in presets.items():
        for name, role, rule in sorted(optimizer_disagreements(preset, cfg, model, roles)):
            entry = _known(preset, name, role, rule)
            if entry is None:
                unexplained.append(f"{preset}: {name} has role {role} but lands in rule {rule!r}")
            else:
                seen.add((KNOWN_DISAGREEMENTS.index(entry), preset))
    assert not unexplained, "\n".join(unexplained)
    stale = [(e[1], p) for i, e in enumerate(KNOWN_DISAGREEMENTS) for p in e[0] if (i, p) not in seen]
    assert not stale, f"KNOWN_DISAGREEMENTS entries that no longer occur: {stale}"


def test_control_parameters_are_never_integer_quantized(presets):
    """Every preset's quantizer table keeps the control parameters as floats (fp32 or fp16), but for the
    gate weights that QuantGate (#1736, the `quant_gate` rule) stores as int8 per row."""
    for preset, (cfg, model, roles) in presets.items():
        table = [as_quant_rule(r) for r in cfg["quant"]["quantizer"]["table"]]
        for name, p in model.named_parameters():
            if roles[name] != "control":
                continue
            rule = next(r for r in table if r.matches(name, p))
            if rule.name == "quant_gate":
                assert rule.bits == 8 and name.endswith("attn_gate_w"), (preset, name)
                continue
            assert rule.scheme != "int", (preset, name, rule.name)


def test_roles_survive_copies_and_meta_materialisation():
    cfg = compose(
        [
            "experiment=pr1185",
            "arch.num_layers=3",
            "arch.model_dim=128",
            "arch.vocab_size=97",
            "arch.value_embedding.layers=[2]",
            "arch.attention.xsa_last_n=1",
        ]
    )
    torch.manual_seed(0)
    model = build_model(cfg.arch)
    roles = model.parameter_roles()
    assert copy.deepcopy(model).parameter_roles() == roles
    meta = meta_model(cfg.arch)
    assert meta.parameter_roles() == roles
    assert meta.to_empty(device="cpu").parameter_roles() == roles


def test_control_parameter_tags_new_and_existing_parameters():
    p = control_parameter(torch.ones(3))
    assert isinstance(p, nn.Parameter) and get_role(p) == "control"
    q = nn.Parameter(torch.zeros(2))
    assert control_parameter(q) is q and get_role(q) == "control"


def test_new_init_arguments_reach_the_parameters():
    cfg = compose(
        [
            "experiment=pr1185",
            "arch.num_layers=3",
            "arch.model_dim=128",
            "arch.vocab_size=97",
            "arch.value_embedding.layers=[2]",
            "arch.attention.xsa_last_n=1",
        ]
    )
    arch = to_container(cfg)["arch"]
    arch.update(
        skip_weight_init=0.5,
        attn_scale_init=0.25,
        mlp_scale_init=0.75,
        resid_mix_init=0.9,
        resid_mix_x0_init=0.1,
        orthogonal_init=True,
        orthogonal_init_min_dim=256,
    )
    arch["attention"].update(gate_bias_init=2.0, value_residual_first_init=0.3, value_residual_self_init=0.7)
    arch["value_embedding"].update(init_std=0.0, layer_scale_init=0.2)
    arch["smear"]["gate_init"] = -1.0
    arch["bigram"]["init_std"] = 0.02
    torch.manual_seed(0)
    m = build_model(arch)
    assert torch.all(m.skip_weights == 0.5)
    b = m.blocks[1]
    assert torch.all(b.attn_scale == 0.25) and torch.all(b.mlp_scale == 0.75)
    assert torch.all(b.resid_mix[0] == 0.9) and torch.all(b.resid_mix[1] == 0.1)
    assert torch.all(b.attn.attn_gate.proj.bias == 2.0)
    assert b.attn.value_residual.vr_lambda.tolist() == pytest.approx([0.3, 0.7])
    assert torch.all(m.ve.shared.embed.weight == 0) and torch.all(m.ve.layer_scales[0] == 0.2)
    assert torch.all(m.smear.gate == -1.0)
    assert 0.01 < m.bigram.embed.weight.std().item() < 0.03
    # min_dim 256 > model_dim 128: OrthoInit touches nothing, so c_q keeps nn.Linear's default init
    w = b.attn.c_q.weight
    assert not torch.allclose(w @ w.t(), torch.eye(128), atol=1e-3)
    arch["orthogonal_init_min_dim"] = 64
    w = build_model(arch).blocks[1].attn.c_q.weight
    assert torch.allclose(w @ w.t(), torch.eye(128), atol=1e-4)
