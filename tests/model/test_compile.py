"""torch.compile (the CUDA default) computes the same logits as eager mode."""

from __future__ import annotations

import pytest
import torch

from paramgolf.config.compose import CONF_DIR, compose
from paramgolf.runner.build import build_model


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    """Each test compiles new models; dynamo's per-function recompile limit must not carry over."""
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


@pytest.mark.slow
def test_compiled_model_equals_eager():
    torch.manual_seed(0)
    cfg = compose(
        [
            "experiment=pr549",
            "arch.num_layers=2",
            "arch.model_dim=128",
            "arch.vocab_size=97",
            "arch.value_embedding.layers=[1]",
        ]
    )  # a small record preset, every feature on
    model = build_model(cfg.arch)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    x = torch.randint(0, 97, (2, 16))
    compiled = torch.compile(model, dynamic=False, fullgraph=True)
    with torch.no_grad():
        eager, fast = model(x), compiled(x)
    assert torch.allclose(eager, fast, atol=1e-5, rtol=1e-5)
    assert eager.abs().max() > 0.1  # a non-trivial model, so equality means something


@pytest.mark.parametrize(
    "extra",
    [
        [],
        [
            "arch/bigram=hash",
            "arch/smear=gate",
            "arch/mlp=leaky_relu2",
            "arch.attention.xsa_last_n=2",
            "arch.attention.rope_dims=8",
            "arch.depth_scale=input",
        ],
    ],
)
def test_model_compiles_as_one_graph(extra):
    """fullgraph=True (as the runner compiles on CUDA) fails on any graph break."""
    cfg = compose(
        [
            "arch.num_layers=3",
            "arch.model_dim=64",
            "arch.vocab_size=97",
            "arch.attention.num_heads=4",
            "arch.attention.num_kv_heads=2",
            *extra,
        ]
    )
    model = build_model(cfg.arch)
    x = torch.randint(0, 97, (2, 16))
    compiled = torch.compile(model, backend="eager", fullgraph=True)
    assert torch.equal(compiled(x), model(x))


@pytest.mark.slow
@pytest.mark.parametrize("preset", sorted(p.stem for p in (CONF_DIR / "experiment").glob("*.yaml")))
def test_every_preset_model_compiles_as_one_graph(preset):
    cfg = compose([f"experiment={preset}", "arch.model_dim=128", "arch.vocab_size=97"])
    torch.manual_seed(0)
    model = build_model(cfg.arch)
    x = torch.randint(0, 97, (1, 16))
    compiled = torch.compile(model, backend="eager", fullgraph=True)
    assert torch.allclose(compiled(x), model(x))
