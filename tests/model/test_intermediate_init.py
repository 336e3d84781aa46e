"""record_init_ for the intermediate presets: the same seed gives PR #1394's and PR #1667's initial weights.

Each reference below is a small copy of the record's model construction and `_init_weights`, written
from its code (#1394: train_gpt_human.py GPT.__init__ / _init_weights, lines 457-521; #1667: train_gpt.py
lines 625-914): the modules that draw from the global RNG are built in the record's order, then its init
runs. Every tensor must be torch.equal to ours, and the RNG must end where the record's does.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from paramgolf.config.compose import compose, to_container
from paramgolf.model.init import record_init_
from paramgolf.runner.build import build_model
from tests.model.record_inits import _MLP, _Attention, _linear, _Scales, assert_same_initial_weights, init_linears_

# Small widths that keep every part (gate window 12 ≤ d; 11 layers for the loops' indices).
SMALL = ["arch.vocab_size=96", "arch.model_dim=128", "arch.attention.num_heads=4"]


def record_model(preset: str, order: str, kv_heads: int, seed: int) -> tuple[nn.Module, dict]:
    """What the runner does (runner/plan.py): seed, build, record_init_."""
    arch = to_container(compose([f"experiment={preset}", *SMALL, f"arch.attention.num_kv_heads={kv_heads}"]))["arch"]
    assert arch["init_order"] == order, f"experiment={preset} must set arch.init_order={order}"
    torch.manual_seed(seed)
    model = build_model(arch)
    record_init_(model, arch, seed)
    return model, arch


def _skips(a: dict) -> int:
    """min(encoder, decoder) of the looped layer list: the records' skip count (both scripts)."""
    loop, n = a["loop"], a["num_layers"]
    order = list(range(loop["start"])) + list(range(loop["start"], loop["end"] + 1)) * (loop["num_loops"] + 1)
    order += list(range(loop["end"] + 1, n))
    return min(len(order) // 2, len(order) - len(order) // 2)


class _Block1394(_Scales):
    """#1394's Block: CausalSelfAttention (c_q, c_k, c_v, proj zero-flagged, q_gain), then MLP (fc, proj)."""

    def __init__(self, dim: int, heads: int, kv_heads: int, hidden: int, qk_gain: float):
        super().__init__(dim)
        self.attn = _Attention(dim, heads, kv_heads, qk_gain, banks=False, gated=False, vr=False)
        self.mlp = _MLP(dim, hidden, banks=False)


class Record1394(nn.Module):
    def __init__(self, a: dict):
        super().__init__()
        att, dim, n = a["attention"], a["model_dim"], a["num_layers"]
        hidden = int(a["mlp"]["mult"] * dim)
        self.tok_emb = nn.Embedding(a["vocab_size"], dim)
        self.blocks = nn.ModuleList(
            _Block1394(dim, att["num_heads"], att["num_kv_heads"], hidden, att["qk_gain_init"]) for _ in range(n)
        )
        self.skip_weights = nn.Parameter(torch.ones(_skips(a), dim))
        self.skip_gates = nn.Parameter(torch.zeros(_skips(a), dim))
        self.tok_std = a["embedding"]["init_std"]
        self._init_weights()

    @torch.no_grad()
    def _init_weights(self) -> None:  # H:512-521: no scaling of the (zero) projections
        nn.init.normal_(self.tok_emb.weight, mean=0.0, std=self.tok_std)
        init_linears_(self)

    def reference_state(self) -> dict[str, torch.Tensor]:
        return {k: v.clone() for k, v in self.state_dict().items()}


class _Attention1667(nn.Module):
    """#1667's CausalSelfAttention with GATE_ATTN_OUT=1: q_gain, then attn_gate_proj = CastedLinear(12, heads)."""

    def __init__(self, heads: int, qk_gain: float, window: int):
        super().__init__()
        self.q_gain = nn.Parameter(torch.full((heads,), qk_gain))
        self.attn_gate_proj = _linear(window, heads, zero=True)


class _Block1667(_Scales):
    def __init__(self, dim: int, heads: int, qk_gain: float, window: int):
        super().__init__(dim)
        self.attn = _Attention1667(heads, qk_gain, window)  # the banked MLP holds no parameters


class Record1667(nn.Module):
    def __init__(self, a: dict):
        super().__init__()
        att, dim, n = a["attention"], a["model_dim"], a["num_layers"]
        heads, hidden = att["num_heads"], int(a["mlp"]["mult"] * dim)
        kv_dim = att["num_kv_heads"] * (dim // heads)
        window = a["smear"]["window"]
        self.n = n
        self.tok_emb = nn.Embedding(a["vocab_size"], dim)
        self.qo_bank = nn.Parameter(torch.empty(2 * n, dim, dim))
        self.kv_bank = nn.Parameter(torch.empty(2 * n, kv_dim, dim))
        self.mlp_up_bank = nn.Parameter(torch.empty(n, hidden, dim))
        self.mlp_down_bank = nn.Parameter(torch.empty(n, dim, hidden))
        self.blocks = nn.ModuleList(_Block1667(dim, heads, att["qk_gain_init"], window) for _ in range(n))
        self.skip_weights = nn.Parameter(torch.ones(_skips(a), dim))
        self.skip_gates = nn.Parameter(torch.zeros(_skips(a), dim))
        self.parallel_post_lambdas = nn.Parameter(torch.ones(n, 2, 2))
        self.parallel_resid_lambdas = nn.Parameter(torch.full((n, 2), 1.1))
        self.smear_gate = _linear(window, 1, zero=True)  # built last, after the blocks (T:883-888)
        self.smear_lambda = nn.Parameter(torch.zeros(1))
        self.tok_std = a["embedding"]["init_std"]
        self._init_weights()

    @torch.no_grad()
    def _init_weights(self) -> None:  # T:891-914
        nn.init.normal_(self.tok_emb.weight, mean=0.0, std=self.tok_std)
        n = self.n
        for i in range(n):
            nn.init.orthogonal_(self.qo_bank.data[i], gain=1.0)
            nn.init.zeros_(self.qo_bank.data[n + i])
            self.qo_bank.data[n + i].mul_(1.0 / math.sqrt(2 * n))
            nn.init.orthogonal_(self.kv_bank.data[i], gain=1.0)
            nn.init.orthogonal_(self.kv_bank.data[n + i], gain=1.0)
            nn.init.orthogonal_(self.mlp_up_bank.data[i], gain=1.0)
            nn.init.zeros_(self.mlp_down_bank.data[i])
        init_linears_(self)

    def reference_state(self) -> dict[str, torch.Tensor]:
        """By paramgolf's names: the banks split per layer (Q, O = qo[i], qo[n+i]; K, V = kv[i], kv[n+i])."""
        n, out = self.n, {}
        for name, t in self.state_dict().items():
            if name.endswith("_bank"):
                halves = {
                    "qo_bank": ("attn.c_q", "attn.proj"),
                    "kv_bank": ("attn.c_k", "attn.c_v"),
                    "mlp_up_bank": ("mlp.fc",),
                    "mlp_down_bank": ("mlp.proj",),
                }[name]
                for i in range(t.shape[0]):
                    out[f"blocks.{i % n}.{halves[i // n]}.weight"] = t[i].clone()
                continue
            for old, new in (
                ("attn.attn_gate_proj.weight", "attn.output_gate.attn_gate_w"),
                ("smear_gate.weight", "smear.gate_w"),
                ("smear_lambda", "smear.lam"),
                ("parallel_post_lambdas", "parallel.post_lambdas"),
                ("parallel_resid_lambdas", "parallel.resid_lambdas"),
            ):
                name = name.replace(old, new)
            out[name] = t.clone()
        return out


REFERENCES = {"pr1394": ("ortho_modules", Record1394), "pr1667": ("ortho_banks", Record1667)}


@pytest.mark.parametrize("kv_heads", [2, 1])  # kv_dim 64 passes the ≥ 64 OrthoInit rule, kv_dim 32 does not
@pytest.mark.parametrize("preset", sorted(REFERENCES))
def test_same_seed_gives_the_records_initial_weights(preset, kv_heads):
    order, reference = REFERENCES[preset]
    model, arch = record_model(preset, order, kv_heads, seed=11)
    assert_same_initial_weights(model, 11, lambda: reference(arch).reference_state(), preset)


def test_pr1667s_gate_draws_move_every_orthogonal_matrix():
    """Without the record's construction draws of the 11 AttnOutGates and the SmearGate, Q_0 would be
    the matrix drawn right after tok_emb's tables: the replay must consume them."""
    model, arch = record_model("pr1667", "ortho_banks", kv_heads=2, seed=5)
    torch.manual_seed(5)
    nn.Embedding(arch["vocab_size"], arch["model_dim"])
    nn.init.normal_(torch.empty(arch["vocab_size"], arch["model_dim"]), std=0.005)
    q0 = nn.init.orthogonal_(torch.empty(arch["model_dim"], arch["model_dim"]))
    assert not torch.equal(model.blocks[0].attn.c_q.weight, q0)
