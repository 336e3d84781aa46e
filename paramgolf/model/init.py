"""Initialisation: OrthoInit (2026-03-19 record, PR #754) and the record scripts' own draw orders.

`record_init_` re-draws a built GPT's initial weights the way a record script draws them from the
same seed, so `seed` gives the record's own initial weights (on the CPU, fp32). A record seeds the
global RNG, then builds its model: each nn.Embedding draws N(0, 1) and each nn.Linear its default
(Kaiming-uniform weight, uniform bias) when constructed, in the record's module order; then its
`_init_weights` draws the tied embedding's N(0, std) and, in the 11-layer records, orthogonal
matrices. The orders (`arch.init_order`):

  ours           the weights as paramgolf's modules build them (no re-draw)
  baseline       official naive baseline: matrices keep nn.Linear's default init
  ortho_modules  per-layer nn.Linear matrices (PRs #537/#620/#1263): each non-zero linear layer with
                 both dims ≥ min_dim orthogonal in module order, the feature projections (`*.proj`)
                 scaled by 1/sqrt(2·num_layers)
  ortho_banks    parameter banks (2026-03-23 record = PR #549, PRs #754/#1185, #1667): no construction
                 draws for the attention/MLP matrices; per layer Q, K, V, MLP-up orthogonal, then every
                 other linear layer with both dims ≥ min_dim orthogonal, unscaled
  ortho_banks_split  the same, with the MLP-up matrices after every layer's Q, K, V (#1855, T:1254-1267)

The later records' gates draw at construction as their modules do: AttnOutGate (#1667) and the
input SmearGate (#1667, #1855) are zero-initialised `CastedLinear`s, whose default init still
consumes the RNG; the dense GatedAttn (#1736) draws N(0, std).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, Literal, get_args

import torch
from torch import nn

from paramgolf.errors import UserError
from paramgolf.model.layers import CastedLinear

InitOrder = Literal["ours", "baseline", "ortho_modules", "ortho_banks", "ortho_banks_split"]  # arch.init_order
INIT_ORDERS = get_args(InitOrder)


@torch.no_grad()
def orthogonal_init_(model: nn.Module, min_dim: int = 64) -> None:
    """Orthogonal (gain 1) for every linear layer with both dims ≥ min_dim that does not start at zero."""
    for module in model.modules():
        if isinstance(module, CastedLinear) and not module.zero_init and min(module.weight.shape) >= min_dim:
            if module.weight.is_meta:
                continue
            nn.init.orthogonal_(module.weight)


# A draw plan: the steps in which a script's model construction and init consume the global RNG.
# ("linear", m, zero): nn.Linear's constructor draws, then a gate keeps its values and a zero-init
# layer (or `zero`) starts at zero; ("table", embedding): nn.Embedding's N(0, 1);
# ("normal", weight, std) / ("zeros", weight); ("orthogonal", linear, scale);
# ("draw", (in, out)): a zero-init CastedLinear(in, out, bias=False) the record builds (its draws only).
Step = tuple


def _layers(model: nn.Module) -> list[nn.Module]:
    """The modules holding attention and MLP weights, in construction order (cores under recurrence)."""
    return list(model.cores if model.cores is not None else model.blocks)


def _gate(attn: nn.Module) -> nn.Linear | None:
    return attn.attn_gate.proj if attn.attn_gate is not None else None


def _output_gate_steps(attn: nn.Module | None, record: bool) -> list[Step]:
    """Construction draws of one layer's AttnOutputGate (module doc)."""
    gate = getattr(attn, "output_gate", None) if attn is not None else None
    if gate is None:
        return []
    w = gate.attn_gate_w
    steps = [("draw", (w.shape[1], w.shape[0]))] if gate.double and record else []  # AttnOutGate's CastedLinear
    return steps + ([("normal", w, gate.init_std)] if gate.init_std > 0 else [])


def _layer_steps(model: nn.Module, matrices: bool, record: bool) -> list[Step]:
    """Each layer's construction: its linear layers (`matrices=False`: gates only) and output gate."""
    steps = []
    for layer in _layers(model):
        attn, mlp = layer.attn, layer.mlp
        if attn is not None:
            steps += [("linear", m, False) for m in ([attn.c_q, attn.c_k, attn.c_v, attn.proj] if matrices else [])]
            steps += [("linear", _gate(attn), False)] if _gate(attn) is not None else []
            steps += _output_gate_steps(attn, record)
        steps += [("linear", m, False) for m in ([mlp.fc, mlp.proj] if matrices else [])]
    return steps


def _smear_steps(model: nn.Module, record: bool) -> list[Step]:
    smear = model.smear
    if record and smear is not None and getattr(smear, "before_norm", False):  # the input SmearGate
        return [("draw", (smear.window, 1))]
    return []


def _layer_linears(model: nn.Module, matrices: bool) -> list[nn.Linear]:
    """Each layer's q, k, v, out, gate, MLP fc, proj in construction order (`matrices=False`: gates only)."""
    out = []
    for layer in _layers(model):
        attn, mlp = layer.attn, layer.mlp
        if attn is not None:
            out += [attn.c_q, attn.c_k, attn.c_v, attn.proj] if matrices else []
            out += [_gate(attn)] if _gate(attn) is not None else []
        out += [mlp.fc, mlp.proj] if matrices else []
    return out


def _tables_and_heads(model: nn.Module, arch: Mapping[str, Any], part: str, record: bool) -> list[Step]:
    """Construction steps of the bigram ("bigram") or value embedding ("ve") part; the records zero
    both projections at construction (OrthoInit may overwrite them later)."""
    module = model.bigram if part == "bigram" else model.ve.shared if model.ve is not None else None
    if module is None:
        return []
    w, std = module.embed.weight, arch["bigram" if part == "bigram" else "value_embedding"]["init_std"]
    init = ("normal", w, std) if std or part == "ve" else ("zeros", w)  # as BigramHash / SharedValueEmbedding
    return [("table", module.embed), init, ("linear", module.proj, record)]


def _heads(model: nn.Module, record: bool) -> list[Step]:
    heads = list(model.mtp.heads) if model.mtp is not None else []
    lm = [model.lm_head] if model.lm_head is not None else []
    return [("linear", h, False) for h in (lm + heads if record else heads + lm)]


def _ours(model: nn.Module, arch: Mapping[str, Any]) -> list[Step]:
    """paramgolf's construction (GPT.__init__), without OrthoInit."""
    tok = model.tok_emb
    steps = [("table", tok), ("normal", tok.weight, tok.init_std)]
    steps += _tables_and_heads(model, arch, "bigram", record=False)
    steps += _layer_steps(model, matrices=True, record=False)
    return steps + _tables_and_heads(model, arch, "ve", record=False) + _heads(model, record=False)


def _record(model: nn.Module, arch: Mapping[str, Any], order: str) -> list[Step]:
    """A record's construction (its modules' order: tok_emb, bigram, layers, value embeddings, heads),
    then its `_init_weights` (module doc)."""
    banks = order in ("ortho_banks", "ortho_banks_split")
    tok = model.tok_emb
    steps = [("table", tok)] + _tables_and_heads(model, arch, "bigram", record=True)
    steps += _layer_steps(model, matrices=not banks, record=True)
    steps += _tables_and_heads(model, arch, "ve", record=True) + _heads(model, record=True)
    steps += _smear_steps(model, record=True)
    steps.append(("normal", tok.weight, tok.init_std))
    if order == "baseline":
        return steps
    if order == "ortho_banks":
        for block in model.blocks:
            steps += [("orthogonal", m, 1.0) for m in (block.attn.c_q, block.attn.c_k, block.attn.c_v, block.mlp.fc)]
    elif order == "ortho_banks_split":
        attn = [m for b in model.blocks if b.attn is not None for m in (b.attn.c_q, b.attn.c_k, b.attn.c_v)]
        steps += [("orthogonal", m, 1.0) for m in attn + [b.mlp.fc for b in model.blocks]]
    # The records' init loop, in module order; their names of the bigram and VE projections end in
    # ".proj", which the per-layer-module records scale by 1/sqrt(2 L).
    proj_scale = 1.0 if banks else 1.0 / math.sqrt(2 * len(model.blocks))
    loop = [(model.bigram.proj, proj_scale)] if model.bigram is not None else []
    loop += [(m, 1.0) for m in _layer_linears(model, matrices=not banks)]
    loop += [(model.ve.shared.proj, proj_scale)] if model.ve is not None else []
    min_dim = arch["orthogonal_init_min_dim"]
    for m, scale in loop:
        if not getattr(m, "zero_init", False) and min(m.weight.shape) >= min_dim:
            steps.append(("orthogonal", m, scale))
    return steps


def _run(steps: list[Step]) -> None:
    for kind, target, *args in steps:
        if kind == "linear":
            keep = None if isinstance(target, CastedLinear) else [p.clone() for p in target.parameters()]
            target.reset_parameters()
            if args[0] or getattr(target, "zero_init", False):
                nn.init.zeros_(target.weight)
            for p, value in zip(target.parameters(), keep or []):
                p.copy_(value)
        elif kind == "draw":
            CastedLinear(*target)  # its constructor's draws; the record zeroes the layer afterwards
        elif kind == "table":
            target.reset_parameters()
        elif kind == "normal":
            nn.init.normal_(target, mean=0.0, std=args[0])
        elif kind == "zeros":
            nn.init.zeros_(target)
        else:
            nn.init.orthogonal_(target.weight)
            if args[0] != 1.0:
                target.weight.mul_(args[0])


@torch.no_grad()
def record_init_(model: nn.Module, arch: Mapping[str, Any], seed: int) -> None:
    """Re-draw `model`'s initial weights from `seed` in the order `arch.init_order` names (module doc).

    Call it right after `torch.manual_seed(seed); model = <build arch>`. "ours" leaves the model (and
    the global RNG) as they are; otherwise the global RNG ends where the record's is after building
    its model. A model part whose draws the replay does not know (no record has it) is refused.
    """
    order = arch["init_order"]
    if order not in INIT_ORDERS:
        raise UserError(f"arch.init_order={order!r} must be one of {', '.join(INIT_ORDERS)}")
    if order == "ours":
        return
    if model.lm_head is not None:
        raise UserError(f"arch.init_order={order} replays a record's init, which ties the embeddings")
    if arch["orthogonal_init"]:
        raise UserError(f"arch.init_order={order} sets the whole init: drop arch.orthogonal_init=true")
    if order == "ortho_banks" and model.cores is not None:
        raise UserError("arch.init_order=ortho_banks: the bank records have no depth recurrence (arch.recurrence)")
    # Replaying paramgolf's own construction from the seed must end at the RNG state the build did: then
    # every draw of the model is one the replay knows (and the replay rewrote the model's own values).
    built = torch.get_rng_state()
    torch.manual_seed(seed)
    _run(_ours(model, arch))
    if not torch.equal(torch.get_rng_state(), built):
        raise UserError(
            f"arch.init_order={order}: the model draws random numbers at construction that no record's init "
            "has (a part the records lack); use arch.init_order=ours"
        )
    torch.manual_seed(seed)
    _run(_record(model, arch, order))
