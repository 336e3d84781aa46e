"""Tapered Muon weight decay (D5): 1 up to a training fraction, then linear to a final multiplier; Muon only."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from paramgolf.optim.builder import OptimizerSet
from paramgolf.optim.groups import ParamRule
from paramgolf.optim.schedules import wd_taper_scale


@pytest.mark.parametrize(
    "frac, expected", [(0.0, 1.0), (0.5, 1.0), (0.7, 1.0), (0.775, 0.875), (0.85, 0.75), (0.94, 0.6), (1.0, 0.5)]
)
def test_taper_of_1729(frac, expected):
    assert wd_taper_scale(frac, 0.7, 0.5) == pytest.approx(expected)


def test_no_taper():
    assert all(wd_taper_scale(f, None, 0.5) == 1.0 for f in (0.0, 0.7, 1.0))
    assert wd_taper_scale(1.0, 0.0, 0.0) == 0.0 and wd_taper_scale(0.25, 0.0, 0.0) == pytest.approx(0.75)


RULES = [
    ParamRule("embed", "adam", 0.03, pattern=r"^emb\.", weight_decay=0.085),
    ParamRule("matrices", "muon", 0.026, ndim=2, weight_decay=0.095),
    ParamRule("matrices_b", "muon", 0.026, pattern=r"^b\.", weight_decay=0.04),
    ParamRule("rest", "adam", 0.02, weight_decay=0.02),
]


def model() -> nn.Module:
    m = nn.Module()
    m.emb = nn.Embedding(8, 4)
    m.a = nn.Linear(4, 4, bias=False)
    m.gain = nn.Parameter(torch.ones(4))
    return m


def test_optimizer_set_scales_the_muon_groups_only():
    opt = OptimizerSet(model().named_parameters(), RULES, muon_wd_taper_start=0.7, muon_wd_taper_final_mul=0.5)
    assert opt.muon_wd_scale_at(0.3) == 1.0 and opt.muon_wd_scale_at(1.0) == pytest.approx(0.5)
    opt.set_muon_wd_scale(opt.muon_wd_scale_at(0.85))
    assert [g["weight_decay"] for g in opt.muon.param_groups] == pytest.approx([0.095 * 0.75])
    assert [g["weight_decay"] for g in opt.adam.param_groups] == [0.085, 0.02]
    opt.set_muon_wd_scale(opt.muon_wd_scale_at(0.2))  # from the rule's value, not compounding
    assert [g["weight_decay"] for g in opt.muon.param_groups] == [0.095]


def test_off_by_default_leaves_weight_decay_exact():
    opt = OptimizerSet(model().named_parameters(), RULES)
    assert opt.muon_wd_taper_start is None and opt.muon_wd_scale_at(0.99) == 1.0
    opt.set_muon_wd_scale(opt.muon_wd_scale_at(0.99))
    assert opt.muon.param_groups[0]["weight_decay"] == 0.095


@pytest.mark.parametrize(("start", "final", "key"), [(1.0, 0.5, "start"), (-0.1, 0.5, "start"), (0.7, -1.0, "final")])
def test_bad_taper_names_the_key(start, final, key):
    with pytest.raises(ValueError, match=f"optimizer.muon_wd_taper_{key}"):
        OptimizerSet(model().named_parameters(), RULES, muon_wd_taper_start=start, muon_wd_taper_final_mul=final)


def test_the_train_loop_applies_the_taper_each_step():
    from paramgolf.config.compose import compose, to_container
    from paramgolf.runner.build import build_model, build_optimizer_for
    from paramgolf.runner.distributed import DistEnv
    from paramgolf.runner.train_loop import LoopSettings, Trainer

    vocab = 32
    c = to_container(
        compose(
            [
                "arch.num_layers=2",
                "arch.model_dim=32",
                f"arch.vocab_size={vocab}",
                "arch.attention.num_heads=2",
                "arch.attention.num_kv_heads=1",
                "optimizer=pr1855",
                "optimizer.muon_wd_taper_start=0.5",
                "optimizer.muon_wd_taper_final_mul=0.2",
                "optimizer.muon_ns_dtype=float32",
            ]
        )
    )
    torch.manual_seed(0)
    net = build_model(c["arch"])
    opt = build_optimizer_for(net, c["optimizer"])

    class Loader:
        def next_batch(self, micro_tokens, seq_len):
            x = torch.randint(0, vocab, (micro_tokens // seq_len, seq_len + 1))
            return x[:, :-1], x[:, 1:]

    seen: list[tuple[float, float]] = []

    class Record:
        def on_step_start(self, step, elapsed_s, lr_scale):
            pass

        def on_step_end(self, info):  # the values the step just used
            seen.append((opt.muon.param_groups[0]["weight_decay"], opt.adam.param_groups[0]["weight_decay"]))

    settings = LoopSettings(
        iterations=4,
        batch_tokens=2 * 16,
        seq_len=16,
        micro_batches=1,
        warmup_steps=1,
        max_wallclock_seconds=None,
        val_every=0,
        log_every=1,
    )
    env = DistEnv(0, 1, 0, torch.device("cpu"))
    Trainer(net, net, opt, Loader, settings, env, hooks=[Record()]).train()
    # training fraction = step / 4: 0, 0.25, 0.5, 0.75 → multipliers 1, 1, 1, 0.6
    assert [m for m, _ in seen] == pytest.approx([0.095, 0.095, 0.095, 0.095 * 0.6])
    assert [a for _, a in seen] == [0.085] * 4
