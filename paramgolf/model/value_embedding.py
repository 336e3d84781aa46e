"""Value embeddings (VE): a shared token embedding added to the values of chosen layers.

From PRs #537/#1185/#1263 and the 2026-03-23 record: ve = scale · proj(embed[t]) at the KV
width, added to layer l's values times its own learned scale.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from paramgolf.errors import UserError
from paramgolf.model.layers import CastedLinear, control_parameter, set_role


class SharedValueEmbedding(nn.Module):
    """scale · proj(embed[t]): embed (vocab × dim, N(0, 0.01)), proj dim → kv_dim, scale 0.1."""

    def __init__(self, vocab_size: int, dim: int, kv_dim: int, scale_init: float = 0.1, init_std: float = 0.01):
        """`scale_init`: the shared output scale at init; `init_std`: the table's N(0, std) init."""
        super().__init__()
        self.embed = nn.Embedding(vocab_size, dim)
        nn.init.normal_(self.embed.weight, std=init_std)
        set_role(self.embed.weight, "embedding")
        self.proj = CastedLinear(dim, kv_dim)
        self.scale = control_parameter(torch.tensor(float(scale_init)))

    def forward(self, idx: Tensor) -> Tensor:
        v = self.proj(self.embed(idx))
        return v * self.scale.to(v.dtype)


class ValueEmbeddings(nn.Module):
    """The shared table plus one learned scale (init 1.0) per VE layer; `for_layer` gives what to add."""

    def __init__(
        self,
        vocab_size: int,
        kv_dim: int,
        num_layers: int,
        dim: int = 128,
        layers: list[int] | None = None,
        scale_init: float = 0.1,
        init_std: float = 0.01,
        layer_scale_init: float = 1.0,
    ):
        """`scale_init`: the shared scale at init; `init_std`: the table's N(0, std) init;
        `layer_scale_init`: each VE layer's own scale at init."""
        super().__init__()
        self.layers = list(layers if layers is not None else [num_layers - 2, num_layers - 1])
        if any(not 0 <= i < num_layers for i in self.layers) or len(set(self.layers)) != len(self.layers):
            raise UserError(f"arch.value_embedding.layers={self.layers} must be distinct layers in 0..{num_layers - 1}")
        self.shared = SharedValueEmbedding(vocab_size, dim, kv_dim, scale_init=scale_init, init_std=init_std)
        self.layer_scales = nn.ParameterList(
            control_parameter(torch.full((1,), float(layer_scale_init))) for _ in self.layers
        )

    def forward(self, idx: Tensor) -> Tensor:
        return self.shared(idx)

    def for_layer(self, layer: int, ve: Tensor) -> Tensor | None:
        if layer not in self.layers:
            return None
        return ve * self.layer_scales[self.layers.index(layer)].to(ve.dtype)
