"""Depth recurrence: a core used n times gets its gradient × 1/n when the preset asks (#537)."""

from __future__ import annotations

import pytest
import torch

from paramgolf.config.compose import compose, to_container
from paramgolf.runner.build import build_model, build_optimizer_for

ARCH = [
    "arch=record11",
    "arch.num_layers=3",
    "arch.model_dim=32",
    "arch.vocab_size=64",
    "arch.attention.num_heads=2",
    "arch.attention.num_kv_heads=1",
    "arch.recurrence=[0,1,0]",
]


def grads_after_begin_step(scale: bool) -> dict[str, torch.Tensor]:
    c = to_container(compose(ARCH + [f"optimizer.scale_shared_grads={str(scale).lower()}"]))
    torch.manual_seed(0)
    model = build_model(c["arch"])
    opt = build_optimizer_for(model, c["optimizer"])
    x = torch.randint(0, 64, (2, 17), generator=torch.Generator().manual_seed(1))
    torch.nn.functional.cross_entropy(model(x[:, :-1]).reshape(-1, 64), x[:, 1:].reshape(-1)).backward()
    opt.begin_step()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_parameter_uses_counts_core_reuse():
    model = build_model(to_container(compose(ARCH))["arch"])
    uses = model.parameter_uses()
    assert uses["cores.0.attn.c_q.weight"] == 2 and uses["cores.1.mlp.fc.weight"] == 1
    assert uses["tok_emb.weight"] == 1 and set(uses) == {n for n, _ in model.named_parameters()}


def test_shared_core_gradients_are_divided_by_their_uses_and_nothing_else_changes():
    plain, scaled = grads_after_begin_step(False), grads_after_begin_step(True)
    core0 = [n for n in plain if n.startswith("cores.0.")]
    assert core0
    for name in plain:
        expected = plain[name] / 2 if name.startswith("cores.0.") else plain[name]
        assert torch.equal(scaled[name], expected), name


def test_grad_scale_for_unknown_parameters_is_refused():
    from paramgolf.optim.builder import OptimizerSet
    from paramgolf.optim.groups import ParamRule

    model = build_model(to_container(compose(ARCH))["arch"])
    with pytest.raises(RuntimeError, match="grad_scale names parameters"):  # grad_scale comes from the model
        OptimizerSet(
            model.named_parameters(),
            [ParamRule("matrices", "muon", 0.04, ndim=2), ParamRule("rest", "adam", 0.04)],
            grad_scale={"nope.weight": 0.5},
        )
