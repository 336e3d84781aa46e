"""The GPT assembly: embeddings → blocks with U-Net skips → norm → (tied) head → softcap."""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
from torch import Tensor, nn

from paramgolf.errors import UserError
from paramgolf.model.block import Block, Core
from paramgolf.model.init import InitOrder, orthogonal_init_
from paramgolf.model.layers import ROLES, CastedLinear, RMSNorm, control_parameter, get_role, rms_norm, set_role
from paramgolf.model.loop import LoopLayers
from paramgolf.model.parallel import TwoLaneResidual


class GPT(nn.Module):
    """Decoder-only LM; `forward(idx) -> logits` for every position (the loss lives outside).

    The first half of the layers stores its outputs, the second half adds them back in
    reverse order with learned per-channel weights (U-Net skips, official baseline).
    Swappable parts come in as factories: `attention(dim, layer=, num_layers=)`, `mlp(dim)`,
    `embedding(vocab, dim)`, and the optional input features `bigram(vocab, dim)` (added to the
    token embedding) and `smear(dim)` (SmearGate after the embedding norm; InputSmearGate before it,
    with the token ids), and value embeddings
    `value_embedding(vocab, kv_dim, num_layers)` added to chosen layers' values.
    Depth recurrence: `recurrence[l]` names the shared core logical layer l runs; each logical
    layer keeps its own norms, scales and mixes (`blocks.{l}`), the cores hold attention and MLP.
    Loop layers (`loop(num_layers)`, a LoopLayers): a range of whole blocks runs several times,
    switched at run time (`set_looping`); the U-Net split follows the looped order (#1493/#1855).
    Two-lane parallel residuals from a physical layer on (`parallel(num_layers)`, #1529/#1855),
    sigmoid-gated skips (`skip_gates`, #1218), an MLP-only first block (`disable_layer0_attn`, #1204).
    """

    def __init__(
        self,
        attention: Callable[..., nn.Module],
        mlp: Callable[[int], nn.Module],
        embedding: Callable[[int, int], nn.Module],
        bigram: Callable[[int, int], nn.Module] | None = None,
        smear: Callable[[int], nn.Module] | None = None,
        value_embedding: Callable[..., nn.Module] | None = None,
        mtp: Callable[..., nn.Module] | None = None,
        vocab_size: int = 1024,
        num_layers: int = 9,
        model_dim: int = 512,
        tie_embeddings: bool = True,
        logit_softcap: float = 30.0,
        unet_skips: bool = True,
        depth_scale: Literal["none", "input", "output"] = "none",
        orthogonal_init: bool = False,
        recurrence: list[int] | None = None,
        orthogonal_init_min_dim: int = 64,
        skip_weight_init: float = 1.0,
        attn_scale_init: float = 1.0,
        mlp_scale_init: float = 1.0,
        resid_mix_init: float = 1.0,
        resid_mix_x0_init: float = 0.0,
        loop: Callable[[int], LoopLayers] | None = None,
        parallel: Callable[[int], TwoLaneResidual] | None = None,
        skip_gates: bool = False,
        disable_layer0_attn: bool = False,
        init_order: InitOrder = "ours",
    ):
        """Init constants (defaults as in the records): `orthogonal_init_min_dim`, the smallest dimension a
        matrix needs for OrthoInit to touch it; `skip_weight_init`, the U-Net skip weights; `attn_scale_init`
        / `mlp_scale_init`, each block's branch scales; `resid_mix_init` / `resid_mix_x0_init`, each block's
        mix weights on the stream / on x0. `skip_gates`: x ← lerp(w⊙skip, x, σ(g)) with g = 0 at init
        (#1855 T:1223-1235) instead of x + w⊙skip. `init_order`: the record whose order of random draws the
        runner replays after building (paramgolf.model.init.record_init_; "ours": none)."""
        super().__init__()
        if logit_softcap <= 0:
            raise UserError(f"arch.logit_softcap must be positive, got {logit_softcap}")
        if num_layers < 1 or model_dim < 1 or vocab_size < 2:
            raise UserError(
                f"arch: need num_layers ≥ 1, model_dim ≥ 1, vocab_size ≥ 2 "
                f"(got {num_layers}, {model_dim}, {vocab_size})"
            )
        self.vocab_size = vocab_size
        self.logit_softcap = logit_softcap
        if depth_scale not in ("none", "input", "output"):
            raise UserError(f"arch.depth_scale={depth_scale!r} must be none, input or output")
        self.tok_emb = embedding(vocab_size, model_dim)
        self.bigram = bigram(vocab_size, model_dim) if bigram is not None else None
        self.smear = smear(model_dim) if smear is not None else None
        scales = [1.0 if depth_scale == "none" else (i + 1) ** -0.5 for i in range(num_layers)]
        where = "input" if depth_scale == "none" else depth_scale
        block_inits = dict(
            attn_scale_init=attn_scale_init,
            mlp_scale_init=mlp_scale_init,
            resid_mix_init=resid_mix_init,
            resid_mix_x0_init=resid_mix_x0_init,
        )
        if recurrence is not None and (loop is not None or disable_layer0_attn):
            raise UserError(
                "arch.recurrence (shared cores) cannot be combined with arch.loop or arch.disable_layer0_attn"
            )
        if recurrence is None:
            self.cores = None
            attends = [not (i == 0 and disable_layer0_attn) for i in range(num_layers)]
            self.blocks = nn.ModuleList(
                Block(
                    model_dim,
                    attention(model_dim, layer=i, num_layers=num_layers) if attends[i] else None,
                    mlp(model_dim),
                    depth_scale=scales[i],
                    scale_where=where,
                    has_attention=attends[i],
                    **block_inits,
                )
                for i in range(num_layers)
            )
        else:
            num_cores = max(recurrence) + 1 if recurrence else 0
            if len(recurrence) != num_layers or sorted(set(recurrence)) != list(range(num_cores)):
                raise UserError(
                    f"arch.recurrence={list(recurrence)} must give a core for each of the {num_layers} "
                    f"layers and use every core 0..{num_cores - 1}"
                )
            self.core_of = list(recurrence)
            self.cores = nn.ModuleList(
                Core(attention(model_dim, layer=c, num_layers=num_cores), mlp(model_dim)) for c in range(num_cores)
            )
            self.blocks = nn.ModuleList(
                Block(model_dim, None, None, depth_scale=scales[i], scale_where=where, **block_inits)
                for i in range(num_layers)
            )
        self.ve = value_embedding(vocab_size, self._kv_dim(), num_layers) if value_embedding is not None else None
        self.num_encoder_layers = num_layers // 2 if unet_skips else 0
        plain = list(range(num_layers))
        self.loop = loop(num_layers) if loop is not None else None
        # (encoder, decoder) physical layer indices with the loop off / on
        self._splits = {False: (plain[: self.num_encoder_layers], plain[self.num_encoder_layers :])}
        self._splits[True] = self.loop.split(unet_skips) if self.loop is not None else self._splits[False]
        self.looping = self.loop is not None  # the architecture; LoopSwitch turns it off early in training
        num_skips = min(len(part) for part in self._splits[True])
        self.skip_weights = control_parameter(torch.full((num_skips, model_dim), float(skip_weight_init)))
        self.skip_gates = control_parameter(torch.zeros(num_skips, model_dim)) if skip_gates else None
        self.parallel = parallel(num_layers) if parallel is not None else None
        if self.parallel is not None:
            for enc, dec in self._splits.values():
                self._check_parallel_split(enc, dec)
        self.final_norm = RMSNorm()
        self.mtp = mtp(model_dim, vocab_size, logit_softcap) if mtp is not None else None
        self.lm_head = None if tie_embeddings else CastedLinear(model_dim, vocab_size, zero_init=True)
        if self.lm_head is not None:
            set_role(self.lm_head.weight, "head")
        if orthogonal_init:
            orthogonal_init_(self, min_dim=orthogonal_init_min_dim)
        # The declared roles, kept by name too: copies of a Parameter (deepcopy, to_empty) drop its tag.
        self._declared_roles = {name: get_role(p) for name, p in self.named_parameters() if get_role(p)}

    def _kv_dim(self) -> int:
        owners = self.blocks if self.cores is None else self.cores
        attn = next((m.attn for m in owners if m.attn is not None), None)
        if attn is None:
            raise UserError("arch.value_embedding needs an attention layer (arch.disable_layer0_attn leaves none)")
        return attn.num_kv_heads * attn.head_dim

    def _check_parallel_split(self, encoder: list[int], decoder: list[int]) -> None:
        start = self.parallel.start
        lanes = [i >= start for i in decoder]
        if any(i >= start for i in encoder) or lanes != sorted(lanes):
            raise UserError(
                f"arch.parallel.start={start}: the layers from it on must all come after the encoder and every other "
                f"layer (encoder {encoder}, decoder {decoder}); choose a later start or another loop"
            )

    def set_looping(self, on: bool) -> None:
        """Run the loop layers (the looped order) or the plain order; a no-op switch without arch.loop."""
        self.looping = bool(on) and self.loop is not None

    def layer_split(self) -> tuple[list[int], list[int]]:
        """The (encoder, decoder) physical layer indices the next forward runs."""
        return self._splits[self.looping]

    def parameter_uses(self) -> dict[str, int]:
        """How many times each parameter runs per forward: >1 for shared recurrence cores and loop layers."""
        uses = {name: 1 for name, _ in self.named_parameters()}
        if self.cores is not None:
            for c, core in enumerate(self.cores):
                n = self.core_of.count(c)
                for name, _ in core.named_parameters():
                    uses[f"cores.{c}.{name}"] = n
        if self.loop is not None:
            for i, block in enumerate(self.blocks):
                n = self.loop.order.count(i)
                for name, _ in block.named_parameters():
                    uses[f"blocks.{i}.{name}"] = n
        return uses

    def parameter_roles(self) -> dict[str, str]:
        """The role (one of paramgolf.model.layers.ROLES) of every parameter, by its `named_parameters()` name.

        A parameter's role is the one its module declared (its tag, else the one recorded at construction);
        undeclared: an nn.Embedding table is "embedding", another 2-D weight "matrix", anything else "other".
        With tied embeddings there is no head parameter: tok_emb.weight (role "embedding") is the head.
        """
        embedding_tables = {id(m.weight) for m in self.modules() if isinstance(m, nn.Embedding)}
        roles = {}
        for name, p in self.named_parameters():
            role = get_role(p) or self._declared_roles.get(name)
            if role is None:
                role = "embedding" if id(p) in embedding_tables else "matrix" if p.ndim == 2 else "other"
            assert role in ROLES, (name, role)
            roles[name] = role
        return roles

    def forward(
        self,
        idx: Tensor,
        return_hidden: bool = False,
        cu_seqlens: Tensor | None = None,
        max_seqlen: int | None = None,
        softcap: bool = True,
    ) -> Tensor | tuple[Tensor, Tensor]:
        """Logits for every position; with `return_hidden`, also the final normed hidden state (MTP).

        `cu_seqlens` (int32 document starts and the total, idx of batch 1) and `max_seqlen`: packed
        documents, attention kept within each (varlen). `softcap=False`: the logits before the softcap
        (for a loss that applies it itself, the fused softcapped CE).
        """
        x = self.tok_emb(idx)
        if self.bigram is not None:
            x = x + self.bigram(idx).to(x.dtype)
        if self.smear is not None and self.smear.before_norm:
            x = self.smear(x, idx)
        x = rms_norm(x)
        if self.smear is not None and not self.smear.before_norm:
            x = self.smear(x)
        x0 = x
        ve = self.ve(idx) if self.ve is not None else None
        state: dict[str, Tensor] = {}  # per-forward values shared across layers (value residual, varlen)
        if cu_seqlens is not None:
            state["cu_seqlens"], state["max_seqlen"] = cu_seqlens, max_seqlen
        encoder, decoder = self.layer_split()
        skips: list[Tensor] = []
        lanes: tuple[Tensor, Tensor] | None = None
        for k, i in enumerate(encoder + decoder):
            block = self.blocks[i]
            v_extra = self.ve.for_layer(i, ve) if ve is not None else None
            core = self.cores[self.core_of[i]] if self.cores is not None else None
            j = k - len(encoder)  # position in the decoder: which skip weight
            if self.parallel is not None and j >= 0 and i >= self.parallel.start:
                lane0, lane1 = lanes if lanes is not None else (x, x)
                if skips:
                    lane0 = self._add_skip(lane0, j, skips.pop())
                a, m = block.parallel_branches(lane0, lane1, x0, v_extra, state, core)
                lanes = self.parallel(i, lane0, lane1, a, m)
                continue
            if j >= 0 and skips:
                x = self._add_skip(x, j, skips.pop())
            x = block(x, x0, v_extra, state, core)
            if j < 0:
                skips.append(x)
        if lanes is not None:
            x = self.parallel.merge(*lanes)
        x = self.final_norm(x)
        logits = self.head_logits(x, softcap=softcap)
        return (logits, x) if return_hidden else logits

    def _add_skip(self, x: Tensor, j: int, skip: Tensor) -> Tensor:
        """The decoder's j-th U-Net skip: x + w⊙skip, or with skip gates lerp(w⊙skip, x, σ(g))."""
        if self.skip_gates is None:
            return x + self.skip_weights[j].to(x.dtype) * skip
        return torch.lerp(self.skip_weights[j].to(x.dtype) * skip, x, torch.sigmoid(self.skip_gates[j].to(x.dtype)))

    def head_logits(self, hidden: Tensor, extra: Tensor | None = None, softcap: bool = True) -> Tensor:
        """Softcapped logits from the final normed hidden state; `extra` is added before the softcap
        (evaluation-time methods: SLOT's logit bias, the LoRA head's output); `softcap=False`: without it."""
        if self.lm_head is None:
            logits = hidden @ self.tok_emb.weight.to(hidden.dtype).t()
        else:
            logits = self.lm_head(hidden)
        if extra is not None:
            logits = logits + extra.to(logits.dtype)
        if not softcap:
            return logits
        c = self.logit_softcap
        return c * torch.tanh(logits / c)
