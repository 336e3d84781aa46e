"""Small copies of the record scripts' model construction and `_init_weights`, for tests/model/test_record_init.py.

Written from the records' code (records/track_10min_16mb/2026-03-17_NaiveBaseline; refs/pull/N/head of
openai/parameter-golf for N = 537, 549, 620, 754, 1185, 1263; #1855 from its merged folder
records/track_10min_16mb/2026-04-27_SP8192_LQER_SparseGate_BOSSmearFix_9HpStack_1.0611, T:N = line N of
its train_gpt.py): the same modules built in the same order
(nn.Embedding / nn.Linear draw their default init when constructed), then the same `_init_weights`, so
`reference_state(...)` after `torch.manual_seed(seed)` holds the record's initial weights, renamed to
paramgolf's parameter names. Only what draws or sets a value is kept; the forward passes are not.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn


def _linear(fan_in: int, fan_out: int, zero: bool = False) -> nn.Linear:
    """The records' CastedLinear(fan_in, fan_out, bias=False), `_zero_init` flagged as they do."""
    layer = nn.Linear(fan_in, fan_out, bias=False)
    layer._zero_init = zero
    return layer


class _Attention(nn.Module):
    def __init__(self, dim: int, heads: int, kv_heads: int, qk_gain: float, banks: bool, gated: bool, vr: bool):
        super().__init__()
        kv_dim = kv_heads * (dim // heads)
        if not banks:
            self.c_q = _linear(dim, dim)
            self.c_k = _linear(dim, kv_dim)
            self.c_v = _linear(dim, kv_dim)
            self.proj = _linear(dim, dim, zero=True)
        self.q_gain = nn.Parameter(torch.full((heads,), qk_gain))
        if gated:
            self.attn_gate = nn.Linear(dim, heads, bias=True)
            nn.init.zeros_(self.attn_gate.weight)
            nn.init.constant_(self.attn_gate.bias, 4.0)
        if vr:
            self.vr_lambda = nn.Parameter(torch.tensor([0.5, 0.5]))


class _MLP(nn.Module):
    def __init__(self, dim: int, hidden: int, banks: bool):
        super().__init__()
        if not banks:
            self.fc = _linear(dim, hidden)
            self.proj = _linear(hidden, dim, zero=True)


class _Core(nn.Module):
    """Attention + MLP: a record Block's weights (or PR #537's BlockCore)."""

    def __init__(self, dim, heads, kv_heads, hidden, qk_gain, banks, gated, vr):
        super().__init__()
        self.attn = _Attention(dim, heads, kv_heads, qk_gain, banks, gated, vr)
        self.mlp = _MLP(dim, hidden, banks)


class _Scales(nn.Module):
    """A Block's attn_scale, mlp_scale, resid_mix (ones, ones, [ones; zeros])."""

    def __init__(self, dim: int):
        super().__init__()
        self.attn_scale = nn.Parameter(torch.ones(dim))
        self.mlp_scale = nn.Parameter(torch.ones(dim))
        self.resid_mix = nn.Parameter(torch.stack((torch.ones(dim), torch.zeros(dim))))


class _Bigram(nn.Module):
    def __init__(self, buckets: int, bigram_dim: int, dim: int):
        super().__init__()
        self.embed = nn.Embedding(buckets, bigram_dim)
        nn.init.zeros_(self.embed.weight)
        self.proj = _linear(bigram_dim, dim)
        nn.init.zeros_(self.proj.weight)
        self.scale = nn.Parameter(torch.tensor(0.05))


class _ValueEmbedding(nn.Module):
    def __init__(self, vocab: int, ve_dim: int, kv_dim: int):
        super().__init__()
        self.embed = nn.Embedding(vocab, ve_dim)
        nn.init.normal_(self.embed.weight, std=0.01)
        self.proj = _linear(ve_dim, kv_dim)
        nn.init.zeros_(self.proj.weight)
        self.scale = nn.Parameter(torch.tensor(0.1))


class RecordGPT(nn.Module):
    """The records' GPT constructor (the parts that hold parameters), then their `_init_weights`.

    family: "baseline" (the naive baseline), "modules" (PRs #537/#620/#1263: per-block CastedLinear,
    orthogonal init, `.proj` scaled) or "banks" (PR #549 = 2026-03-23 record, #754, #1185: 3-D banks).
    """

    def __init__(self, a: dict[str, Any], family: str):
        super().__init__()
        att = a["attention"]
        dim, n, vocab = a["model_dim"], a["num_layers"], a["vocab_size"]
        heads, kv_heads = att["num_heads"], att["num_kv_heads"]
        hidden, kv_dim = int(a["mlp"]["mult"] * dim), kv_heads * (dim // heads)
        self.family, self.tok_std, self.n = family, a["embedding"]["init_std"], n
        banks = family == "banks"
        core = (dim, heads, kv_heads, hidden, att["qk_gain_init"], banks, att["gated"], att["value_residual"])
        self.tok_emb = nn.Embedding(vocab, dim)
        if a.get("bigram"):
            self.bigram = _Bigram(a["bigram"]["buckets"], a["bigram"]["dim"], dim)
        if a.get("smear"):
            self.smear_gate = nn.Parameter(torch.zeros(dim))
        self.skip_weights = nn.Parameter(torch.ones(n // 2, dim))
        if banks:
            self.qo_bank = nn.Parameter(torch.empty(2 * n, dim, dim))
            self.kv_bank = nn.Parameter(torch.empty(2 * n, kv_dim, dim))
            self.mlp_up_bank = nn.Parameter(torch.empty(n, hidden, dim))
            self.mlp_down_bank = nn.Parameter(torch.empty(n, dim, hidden))
        recurrence = a.get("recurrence")
        if recurrence:  # PR #537: the shared cores first, then blocks holding only scales
            self.cores = nn.ModuleList(_Core(*core) for _ in range(max(recurrence) + 1))
            self.blocks = nn.ModuleList(_Scales(dim) for _ in range(n))
        else:
            self.blocks = nn.ModuleList(_Core(*core) for _ in range(n))
            self.scales = nn.ModuleList(_Scales(dim) for _ in range(n))
        if a.get("value_embedding"):
            self.ve_layers = a["value_embedding"]["layers"]
            self.ve_shared = _ValueEmbedding(vocab, a["value_embedding"]["dim"], kv_dim)
            self.ve_layer_scales = nn.ParameterList(nn.Parameter(torch.ones(1)) for _ in self.ve_layers)
        if a.get("mtp"):
            self.mtp_heads = nn.ModuleList(_linear(dim, vocab, zero=True) for _ in range(a["mtp"]["count"]))
        self._init_weights()

    @torch.no_grad()
    def _init_weights(self) -> None:
        nn.init.normal_(self.tok_emb.weight, mean=0.0, std=self.tok_std)
        n = self.n
        if self.family == "banks":
            for i in range(n):
                nn.init.orthogonal_(self.qo_bank.data[i], gain=1.0)
                nn.init.zeros_(self.qo_bank.data[n + i])
                nn.init.orthogonal_(self.kv_bank.data[i], gain=1.0)
                nn.init.orthogonal_(self.kv_bank.data[n + i], gain=1.0)
                nn.init.orthogonal_(self.mlp_up_bank.data[i], gain=1.0)
                nn.init.zeros_(self.mlp_down_bank.data[i])
                self.qo_bank.data[n + i].mul_(1.0 / math.sqrt(2 * n))
                self.mlp_down_bank.data[i].mul_(1.0 / math.sqrt(2 * n))
        for name, module in self.named_modules():
            if not isinstance(module, nn.Linear):
                continue
            if getattr(module, "_zero_init", False):
                nn.init.zeros_(module.weight)
            elif self.family != "baseline" and min(module.weight.shape) >= 64:
                nn.init.orthogonal_(module.weight, gain=1.0)
                if self.family == "modules" and (".proj." in name or name.endswith(".proj")):
                    module.weight.mul_(1.0 / math.sqrt(2 * n))


def _our_name(name: str) -> str:
    """A reference parameter's name in paramgolf's GPT."""
    if name.startswith("scales."):
        return "blocks." + name[len("scales.") :]
    for old, new in (
        ("attn.attn_gate.", "attn.attn_gate.proj."),
        ("attn.vr_lambda", "attn.value_residual.vr_lambda"),
        ("ve_shared.", "ve.shared."),
        ("ve_layer_scales.", "ve.layer_scales."),
        ("mtp_heads.", "mtp.heads."),
        ("smear_gate", "smear.gate"),
    ):
        name = name.replace(old, new)
    return name


def init_linears_(model: nn.Module) -> None:
    """The bank records' `_init_weights` loop over nn.Linear: a `_zero_init` layer zeroed, one with both
    dims >= 64 orthogonal (#1394, #1667, #1855)."""
    for module in model.modules():
        if isinstance(module, nn.Linear):
            if getattr(module, "_zero_init", False):
                nn.init.zeros_(module.weight)
            elif min(module.weight.shape) >= 64:
                nn.init.orthogonal_(module.weight, gain=1.0)


def assert_same_initial_weights(model: nn.Module, seed: int, reference: Callable[[], dict[str, Tensor]], label=""):
    """`model` was just built and record_init_'ed from `seed`: `reference()`, run from the same seed, must give
    every tensor torch.equal and end the global RNG where the build did."""
    ours, ours_rng = model.state_dict(), torch.get_rng_state()
    torch.manual_seed(seed)
    ref = reference()
    assert torch.equal(ours_rng, torch.get_rng_state()), "the RNG must end where the record's does"
    assert sorted(ours) == sorted(ref)
    differ = [name for name in ref if ours[name].shape != ref[name].shape or not torch.equal(ours[name], ref[name])]
    assert not differ, f"{label}: {differ}"


class _Attention1855(nn.Module):
    """#1855's CausalSelfAttention parameters (T:941-1001): q_gain and the SparseAttnGate weight (zeros at
    SPARSE_ATTN_GATE_INIT_STD=0); its matrices live in the GPT's banks."""

    def __init__(self, heads: int, qk_gain: float, window: int):
        super().__init__()
        self.q_gain = nn.Parameter(torch.full((heads,), qk_gain))
        self.attn_gate_w = nn.Parameter(torch.zeros(heads, window))


class _Block1855(nn.Module):
    """#1855's Block (T:1085-1124): the attention's small tensors, branch scales and mix, no linear layer."""

    def __init__(self, dim: int, heads: int, qk_gain: float, window: int):
        super().__init__()
        self.attn = _Attention1855(heads, qk_gain, window)
        self.attn_scale = nn.Parameter(torch.ones(dim))
        self.mlp_scale = nn.Parameter(torch.ones(dim))
        self.resid_mix = nn.Parameter(torch.stack((torch.ones(dim), torch.zeros(dim))))


class Record1855GPT(nn.Module):
    """PR #1855's GPT constructor (T:1141-1252, the parts that hold parameters), then its `_init_weights`
    (T:1254-1283): nn.Embedding's N(0, 1); the four banks empty; the input SmearGate's CastedLinear(window, 1)
    drawn at construction; then tok_emb N(0, std), per layer orthogonal Q, (O zero), K, V, then per layer
    orthogonal MLP-up, (down zero); then the zero-init linear layers (the SmearGate) zeroed."""

    def __init__(self, a: dict[str, Any], smear: bool = True):
        super().__init__()
        att, loop = a["attention"], a["loop"]
        dim, n, vocab = a["model_dim"], a["num_layers"], a["vocab_size"]
        heads = att["num_heads"]
        kv_dim, hidden = att["num_kv_heads"] * (dim // heads), int(a["mlp"]["mult"] * dim)
        window = att["output_gate"]["window"]
        assert not smear or a["smear"]["window"] == window, "#1855 has one GATE_WINDOW for both gates"
        self.n, self.tok_std = n, a["embedding"]["init_std"]
        self.tok_emb = nn.Embedding(vocab, dim)
        self.qo_bank = nn.Parameter(torch.empty(2 * n, dim, dim))
        self.kv_bank = nn.Parameter(torch.empty(2 * n, kv_dim, dim))
        self.mlp_up_bank = nn.Parameter(torch.empty(n, hidden, dim))
        self.mlp_down_bank = nn.Parameter(torch.empty(n, dim, hidden))
        self.blocks = nn.ModuleList(_Block1855(dim, heads, att["qk_gain_init"], window) for _ in range(n))
        segment = list(range(loop["start"], loop["end"] + 1))
        order = list(range(loop["start"])) + segment * (loop["num_loops"] + 1) + list(range(loop["end"] + 1, n))
        skips = min(len(order) // 2, len(order) - len(order) // 2)  # of the looped order, also while off
        self.skip_weights = nn.Parameter(torch.ones(skips, dim))
        self.skip_gates = nn.Parameter(torch.zeros(skips, dim))
        self.parallel_post_lambdas = nn.Parameter(torch.ones(n, 2, 2))
        self.parallel_resid_lambdas = nn.Parameter(torch.full((n, 2), 1.1))
        if smear:
            self.smear_gate = _linear(window, 1, zero=True)
            self.smear_lambda = nn.Parameter(torch.zeros(1))
        self._init_weights()

    @torch.no_grad()
    def _init_weights(self) -> None:
        nn.init.normal_(self.tok_emb.weight, mean=0.0, std=self.tok_std)
        n = self.n
        for i in range(n):
            nn.init.orthogonal_(self.qo_bank.data[i], gain=1.0)
            nn.init.zeros_(self.qo_bank.data[n + i])
            nn.init.orthogonal_(self.kv_bank.data[i], gain=1.0)
            nn.init.orthogonal_(self.kv_bank.data[n + i], gain=1.0)
        for i in range(n):
            nn.init.orthogonal_(self.mlp_up_bank.data[i], gain=1.0)
            nn.init.zeros_(self.mlp_down_bank.data[i])
        init_linears_(self)


_NAMES_1855 = {
    "attn.attn_gate_w": "attn.output_gate.attn_gate_w",
    "parallel_post_lambdas": "parallel.post_lambdas",
    "parallel_resid_lambdas": "parallel.resid_lambdas",
    "smear_gate.weight": "smear.gate_w",
    "smear_lambda": "smear.lam",
}


def _name_1855(name: str) -> str:
    for old, new in _NAMES_1855.items():
        name = name.replace(old, new)
    return name


def reference_state(arch: dict[str, Any], family: str) -> dict[str, Tensor]:
    """The record's initial weights for `arch` (seed the global RNG first), by paramgolf's names.

    family: one of RecordGPT's, "pr1855" (Record1855GPT) or "pr1787" (#1787's constructor, T:1134-1271 of
    its script, is #1855's without the SmearGate)."""
    banked = family in ("pr1855", "pr1787")
    model = Record1855GPT(arch, smear=family == "pr1855") if banked else RecordGPT(arch, family)
    rename = _name_1855 if banked else _our_name
    state = {}
    for name, t in model.state_dict().items():
        if name.endswith("_bank"):
            n = model.n
            kind = name[: -len("_bank")]
            for i in range(t.shape[0]):
                layer, half = i % n, i // n
                target = {
                    "qo": ("attn.c_q", "attn.proj"),
                    "kv": ("attn.c_k", "attn.c_v"),
                    "mlp_up": ("mlp.fc",),
                    "mlp_down": ("mlp.proj",),
                }[kind][half]
                state[f"blocks.{layer}.{target}.weight"] = t[i].clone()
        else:
            state[rename(name)] = t.clone()
    return state
