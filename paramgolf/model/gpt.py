"""The GPT assembly: embeddings → blocks with U-Net skips → norm → (tied) head → softcap."""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
from torch import Tensor, nn

from paramgolf.errors import UserError
from paramgolf.model.block import Block, Core
from paramgolf.model.init import orthogonal_init_
from paramgolf.model.layers import ROLES, CastedLinear, RMSNorm, control_parameter, get_role, rms_norm, set_role


class GPT(nn.Module):
    """Decoder-only LM; `forward(idx) -> logits` for every position (the loss lives outside).

    The first half of the layers stores its outputs, the second half adds them back in
    reverse order with learned per-channel weights (U-Net skips, official baseline).
    Swappable parts come in as factories: `attention(dim, layer=, num_layers=)`, `mlp(dim)`,
    `embedding(vocab, dim)`, and the optional input features `bigram(vocab, dim)` (added to the
    token embedding) and `smear(dim)` (applied after the embedding norm), and value embeddings
    `value_embedding(vocab, kv_dim, num_layers)` added to chosen layers' values.
    Depth recurrence: `recurrence[l]` names the shared core logical layer l runs; each logical
    layer keeps its own norms, scales and mixes (`blocks.{l}`), the cores hold attention and MLP.
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
    ):
        """Init constants (defaults as in the records): `orthogonal_init_min_dim`, the smallest dimension a
        matrix needs for OrthoInit to touch it; `skip_weight_init`, the U-Net skip weights; `attn_scale_init`
        / `mlp_scale_init`, each block's branch scales; `resid_mix_init` / `resid_mix_x0_init`, each block's
        mix weights on the stream / on x0."""
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
        if recurrence is None:
            self.cores = None
            self.blocks = nn.ModuleList(
                Block(
                    model_dim,
                    attention(model_dim, layer=i, num_layers=num_layers),
                    mlp(model_dim),
                    depth_scale=scales[i],
                    scale_where=where,
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
        kv_dim = self._kv_dim(model_dim)
        self.ve = value_embedding(vocab_size, kv_dim, num_layers) if value_embedding is not None else None
        self.num_encoder_layers = num_layers // 2 if unet_skips else 0
        num_skips = min(self.num_encoder_layers, num_layers - self.num_encoder_layers)
        self.skip_weights = control_parameter(torch.full((num_skips, model_dim), float(skip_weight_init)))
        self.final_norm = RMSNorm()
        self.mtp = mtp(model_dim, vocab_size, logit_softcap) if mtp is not None else None
        self.lm_head = None if tie_embeddings else CastedLinear(model_dim, vocab_size, zero_init=True)
        if self.lm_head is not None:
            set_role(self.lm_head.weight, "head")
        if orthogonal_init:
            orthogonal_init_(self, min_dim=orthogonal_init_min_dim)
        # The declared roles, kept by name too: copies of a Parameter (deepcopy, to_empty) drop its tag.
        self._declared_roles = {name: get_role(p) for name, p in self.named_parameters() if get_role(p)}

    def _kv_dim(self, model_dim: int) -> int:
        attn = self.blocks[0].attn if self.cores is None else self.cores[0].attn
        return attn.num_kv_heads * attn.head_dim

    def parameter_uses(self) -> dict[str, int]:
        """How many times each parameter runs per forward: >1 only for shared recurrence cores."""
        uses = {name: 1 for name, _ in self.named_parameters()}
        if self.cores is not None:
            for c, core in enumerate(self.cores):
                n = self.core_of.count(c)
                for name, _ in core.named_parameters():
                    uses[f"cores.{c}.{name}"] = n
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

    def forward(self, idx: Tensor, return_hidden: bool = False) -> Tensor | tuple[Tensor, Tensor]:
        """Logits for every position; with `return_hidden`, also the final normed hidden state (MTP)."""
        x = self.tok_emb(idx)
        if self.bigram is not None:
            x = x + self.bigram(idx).to(x.dtype)
        x = rms_norm(x)
        if self.smear is not None:
            x = self.smear(x)
        x0 = x
        ve = self.ve(idx) if self.ve is not None else None
        state: dict[str, Tensor] = {}  # per-forward values shared across layers (value residual)
        skips: list[Tensor] = []
        for i, block in enumerate(self.blocks):
            if i >= self.num_encoder_layers and skips:
                j = i - self.num_encoder_layers
                x = x + self.skip_weights[j].to(x.dtype) * skips.pop()
            v_extra = self.ve.for_layer(i, ve) if ve is not None else None
            core = self.cores[self.core_of[i]] if self.cores is not None else None
            x = block(x, x0, v_extra, state, core)
            if i < self.num_encoder_layers:
                skips.append(x)
        x = self.final_norm(x)
        logits = self.head_logits(x)
        return (logits, x) if return_hidden else logits

    def head_logits(self, hidden: Tensor, extra: Tensor | None = None) -> Tensor:
        """Softcapped logits from the final normed hidden state; `extra` is added before the softcap
        (evaluation-time methods: SLOT's logit bias, the LoRA head's output)."""
        if self.lm_head is None:
            logits = hidden @ self.tok_emb.weight.to(hidden.dtype).t()
        else:
            logits = self.lm_head(hidden)
        if extra is not None:
            logits = logits + extra.to(logits.dtype)
        c = self.logit_softcap
        return c * torch.tanh(logits / c)
