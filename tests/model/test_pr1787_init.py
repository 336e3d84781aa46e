"""record_init_ for experiment=pr1787: the same seed gives PR #1787's initial weights (CPU, fp32).

The reference is tests/model/record_inits.py's copy of #1855's construction without its SmearGate:
#1787's (records/track_10min_16mb/2026-04-23_SP8192_CaseOps_SparseGate_QuantGate_Loop45_PhasedTTT_PolarNS_MinLR_FusedCE,
T:N = line N of its train_gpt.py: GPT.__init__ T:1134-1245, Block T:1078-1117, CausalSelfAttention
T:934-994, _init_weights T:1247-1271) draws nothing but nn.Embedding's table at construction (the banks
are torch.empty, the SparseAttnGate starts at zeros, there is no SmearGate), so the order is #1855's
`ortho_banks_split` without #1855's SmearGate draw. Every tensor must be torch.equal to ours, and the
RNG must end where the record's does.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from paramgolf.config.compose import compose, to_container
from paramgolf.model.init import record_init_
from paramgolf.runner.build import build_model
from tests.model.record_inits import assert_same_initial_weights, reference_state

# Small widths that keep every part (gate window 12 ≤ d; 11 layers for the loop's indices).
SMALL = ["arch.vocab_size=96", "arch.model_dim=128", "arch.attention.num_heads=4"]


def record_model(kv_heads: int, seed: int, preset: str = "pr1787") -> tuple[nn.Module, dict]:
    """What the runner does (runner/plan.py): seed, build, record_init_."""
    arch = to_container(compose([f"experiment={preset}", *SMALL, f"arch.attention.num_kv_heads={kv_heads}"]))["arch"]
    torch.manual_seed(seed)
    model = build_model(arch)
    record_init_(model, arch, seed)
    return model, arch


@pytest.mark.parametrize("kv_heads", [2, 1])  # kv_dim 64 and 32: the banks are orthogonal at any size
def test_same_seed_gives_the_records_initial_weights(kv_heads):
    model, arch = record_model(kv_heads, seed=13)
    assert arch["init_order"] == "ortho_banks_split"
    assert_same_initial_weights(model, 13, lambda: reference_state(arch, "pr1787"), "pr1787")


def test_without_a_smear_gate_q0_is_the_first_draw_after_the_embedding():
    """#1787 draws nothing between tok_emb's N(0, 1) table, its N(0, 0.005) and Q_0; #1855's SmearGate
    CastedLinear(12, 1) draws in between, so the same seed gives the two records different matrices."""
    model, arch = record_model(kv_heads=2, seed=5)
    torch.manual_seed(5)
    nn.Embedding(arch["vocab_size"], arch["model_dim"])
    nn.init.normal_(torch.empty(arch["vocab_size"], arch["model_dim"]), std=0.005)
    q0 = nn.init.orthogonal_(torch.empty(arch["model_dim"], arch["model_dim"]))
    assert torch.equal(model.blocks[0].attn.c_q.weight, q0)
    other, _ = record_model(kv_heads=2, seed=5, preset="pr1855")
    assert not torch.equal(other.blocks[0].attn.c_q.weight, q0)
