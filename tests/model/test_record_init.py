"""record_init_: the same seed gives each preset's record its own initial weights (CPU, fp32).

The reference (tests/model/record_inits.py) rebuilds the record's model as its script does, from the
same seed; every tensor of the state dict must be torch.equal, and the global RNG must end where the
record's does after building its model.
"""

from __future__ import annotations

import copy
import functools

import pytest
import torch

from paramgolf.config.compose import compose, to_container
from paramgolf.errors import UserError
from paramgolf.model.init import record_init_
from paramgolf.runner.build import build_model
from tests.model.record_inits import assert_same_initial_weights, reference_state

# The init order each preset's record uses, and the reference family that replays it.
RECORD_ORDER = {
    "baseline": ("baseline", "baseline"),
    "pr537": ("ortho_modules", "modules"),
    "pr620": ("ortho_modules", "modules"),
    "pr1263": ("ortho_modules", "modules"),
    "pr549": ("ortho_banks", "banks"),
    "pr754": ("ortho_banks", "banks"),
    "pr1185": ("ortho_banks", "banks"),
    "pr1855": ("ortho_banks_split", "pr1855"),
}
# Small widths that keep every record feature (bigram / VE projections exist: their dims differ from the
# width they project to); kv_dim 64 passes the records' ≥ 64 OrthoInit rule, kv_dim 32 does not (#1855's
# banks are orthogonal whatever their size). The depth stays: #1855's loop and parallel lanes keep their
# 11-layer structure.
SMALL = ["arch.vocab_size=96", "arch.model_dim=128", "arch.attention.num_heads=4"]


@functools.cache
def _composed(preset: str) -> dict:
    return to_container(compose([f"experiment={preset}", *SMALL]))["arch"]


def preset_arch(preset: str, kv_heads: int) -> dict:
    arch = copy.deepcopy(_composed(preset))
    arch["attention"]["num_kv_heads"] = kv_heads
    if arch["bigram"]:
        arch["bigram"].update(buckets=32, dim=64)
    if arch["value_embedding"]:
        arch["value_embedding"]["dim"] = 96
    return arch


def record_model(preset: str, order: str, kv_heads: int, seed: int) -> tuple[torch.nn.Module, dict]:
    """What the runner does (runner/plan.py, export/standalone.py): seed, build, record_init_."""
    arch = preset_arch(preset, kv_heads)
    assert arch["init_order"] == order, f"experiment={preset} must set arch.init_order={order}"
    torch.manual_seed(seed)
    model = build_model(arch)
    record_init_(model, arch, seed)
    return model, arch


@pytest.mark.parametrize("kv_heads", [2, 1])
@pytest.mark.parametrize("preset", sorted(RECORD_ORDER))
def test_same_seed_gives_the_records_initial_weights(preset, kv_heads):
    order, family = RECORD_ORDER[preset]
    model, arch = record_model(preset, order, kv_heads, seed=7)
    assert_same_initial_weights(model, 7, lambda: reference_state(arch, family), preset)


def test_pr1855_draws_the_mlp_up_matrices_after_every_layers_attention():
    """#1855's order (T:1259-1267) is not the earlier bank records': interleaving Q, K, V, up per layer
    (ortho_banks) leaves layer 0's Q, K, V the same (the first draws) and the last MLP-up (the last draws), and
    moves every other MLP-up."""
    arch = preset_arch("pr1855", kv_heads=2)
    torch.manual_seed(11)
    ref = reference_state(arch, "pr1855")
    torch.manual_seed(11)
    model = build_model(arch)
    record_init_(model, {**arch, "init_order": "ortho_banks"}, 11)
    ours = model.state_dict()
    assert all(
        torch.equal(ours[f"blocks.0.attn.{m}.weight"], ref[f"blocks.0.attn.{m}.weight"]) for m in ("c_q", "c_k", "c_v")
    )
    same_up = [i for i in range(11) if torch.equal(ours[f"blocks.{i}.mlp.fc.weight"], ref[f"blocks.{i}.mlp.fc.weight"])]
    assert same_up == [10]


def test_smoke_keeps_paramgolfs_own_init():
    assert compose(["experiment=smoke"]).arch.init_order == "ours"


def test_ours_leaves_the_weights_and_the_rng_alone():
    arch = preset_arch("baseline", kv_heads=2)
    torch.manual_seed(3)
    model = build_model(arch)
    before, rng = copy.deepcopy(model.state_dict()), torch.get_rng_state()
    record_init_(model, {**arch, "init_order": "ours"}, 3)
    assert torch.equal(torch.get_rng_state(), rng)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_the_baseline_order_moves_the_embeddings_draw_after_the_blocks():
    """Official baseline: nn.Linear defaults drawn right after tok_emb's N(0, 1), its N(0, 0.005) last."""
    model, _ = record_model("baseline", "baseline", kv_heads=2, seed=5)
    torch.manual_seed(5)
    torch.nn.Embedding(96, 128)
    first = torch.nn.Linear(128, 128, bias=False)
    assert torch.equal(model.blocks[0].attn.c_q.weight, first.weight)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"init_order": "pr549"}, "must be one of"),
        ({"init_order": "baseline", "tie_embeddings": False}, "ties the embeddings"),
        ({"init_order": "ortho_banks", "orthogonal_init": True}, "orthogonal_init"),
        ({"init_order": "ortho_banks", "recurrence": [0, 1, 2, 3, 4, 5, 6, 7, 8]}, "recurrence"),
    ],
)
def test_orders_the_records_do_not_have_are_refused(change, message):
    arch = {**preset_arch("baseline", kv_heads=2), **change}
    torch.manual_seed(0)
    model = build_model({k: v for k, v in arch.items() if k != "init_order"})
    with pytest.raises(UserError, match=message):
        record_init_(model, arch, 0)


def test_a_part_with_draws_no_record_has_is_refused():
    arch = preset_arch("pr549", kv_heads=2)
    torch.manual_seed(0)
    model = build_model({**arch, "orthogonal_init": False})
    torch.randn(4)  # what a module the replay does not know would draw at construction
    with pytest.raises(UserError, match="no record"):
        record_init_(model, {**arch, "orthogonal_init": False, "init_order": "ortho_banks"}, 0)
