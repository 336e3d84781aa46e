"""The kernel switches (arch/mlp=leaky_relu2_fused, train/fused_ce=triton, train.grouped_allreduce) reach the
train loop and, off CUDA, leave training bit for bit as it was."""

from __future__ import annotations

import torch

from paramgolf.config.compose import compose, to_container
from paramgolf.export.bundle import script_bytes
from paramgolf.model.kernels.fused_ce import softcapped_cross_entropy
from paramgolf.model.kernels.fused_mlp import FusedLeakyReluSquaredMLP
from paramgolf.runner.build import build_model, build_optimizer_for
from paramgolf.runner.distributed import DistEnv
from paramgolf.runner.plan import loop_settings
from paramgolf.runner.train_loop import Trainer

SWITCHES = ["arch/mlp=leaky_relu2_fused", "train/fused_ce=triton", "train.grouped_allreduce=true"]
TINY = [
    "arch=record11",
    "arch.num_layers=2",
    "arch.model_dim=32",
    "arch.vocab_size=61",
    "arch.attention.num_heads=2",
    "arch.attention.num_kv_heads=1",
    "train.iterations=3",
    "train.batch_tokens=256",
    "train.seq_len=32",
    "train.micro_batches=2",
    "train.warmup_steps=0",
    "train.max_wallclock_seconds=null",
    "train.log_every=1",
]


class RandomLoader:
    def __init__(self):
        self.gen = torch.Generator().manual_seed(5)

    def next_batch(self, micro_tokens, seq_len):
        x = torch.randint(0, 61, (micro_tokens // seq_len, seq_len + 1), generator=self.gen)
        return x[:, :-1], x[:, 1:]


def _train(overrides):
    c = to_container(compose(TINY + overrides))
    torch.manual_seed(0)
    model = build_model(c["arch"])
    settings = loop_settings(c["train"])
    trainer = Trainer(model, model, build_optimizer_for(model, c["optimizer"]), RandomLoader, settings,
                      DistEnv(0, 1, 0, torch.device("cpu")))  # fmt: skip
    return trainer.train().losses, model, settings


def test_the_switches_reach_the_loop_and_change_nothing_on_the_cpu():
    plain_losses, plain, s0 = _train([])
    losses, fused, s1 = _train(SWITCHES)
    assert s0.softcapped_ce is None and not s0.grouped_allreduce
    assert s1.softcapped_ce(torch.zeros(2, 3), torch.tensor([0, 2]), 30.0) == softcapped_cross_entropy(
        torch.zeros(2, 3), torch.tensor([0, 2]), 30.0
    )
    assert s1.grouped_allreduce and isinstance(fused.blocks[0].mlp, FusedLeakyReluSquaredMLP)
    assert losses == plain_losses
    assert all(torch.equal(a, b) for a, b in zip(plain.state_dict().values(), fused.state_dict().values()))


def test_a_preset_without_the_switches_ships_no_kernel_code():
    c = to_container(compose(["experiment=pr754"]))
    fused = to_container(compose(["experiment=pr754", *SWITCHES[:2]]))
    assert script_bytes(c) + 500 < script_bytes(fused)
