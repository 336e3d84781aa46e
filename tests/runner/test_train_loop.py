"""The train loop: warm-up rollback, wallclock stop, hooks, batch plan."""

from __future__ import annotations

import pytest
import torch

from paramgolf.config.compose import compose, to_container
from paramgolf.optim.schedules import WarmdownSchedule
from paramgolf.runner.build import build_model, build_optimizer_for
from paramgolf.runner.distributed import DistEnv
from paramgolf.runner.train_loop import LoopSettings, Trainer, micro_batch_plan

VOCAB = 61


class RandomLoader:
    """Deterministic random tokens: a fresh loader replays the same stream."""

    def __init__(self):
        self.gen = torch.Generator().manual_seed(123)

    def next_batch(self, micro_tokens, seq_len):
        x = torch.randint(0, VOCAB, (micro_tokens // seq_len, seq_len + 1), generator=self.gen)
        return x[:, :-1], x[:, 1:]


class FixedLoader(RandomLoader):
    """The same batch every time: a model can memorise it."""

    def next_batch(self, micro_tokens, seq_len):
        self.gen.manual_seed(7)
        return super().next_batch(micro_tokens, seq_len)


def make_trainer(warmup=0, iterations=4, cap=None, hooks=None, micro_batches=2, loader=RandomLoader):
    c = to_container(
        compose(
            [
                "arch.num_layers=2",
                "arch.model_dim=32",
                f"arch.vocab_size={VOCAB}",
                "arch.attention.num_heads=2",
                "arch.attention.num_kv_heads=1",
            ]
        )
    )
    torch.manual_seed(0)
    model = build_model(c["arch"])
    opt = build_optimizer_for(model, c["optimizer"])
    schedule = WarmdownSchedule(iterations=iterations, max_wallclock_s=cap, warmdown_iters=2)
    s = LoopSettings(
        iterations=iterations,
        batch_tokens=256,
        seq_len=32,
        micro_batches=micro_batches,
        warmup_steps=warmup,
        max_wallclock_seconds=cap,
        val_every=0,
        log_every=1,
        lr_schedule=schedule,
    )
    return Trainer(model, model, opt, loader, s, DistEnv(0, 1, 0, torch.device("cpu")), hooks=hooks)


def test_warm_up_steps_are_rolled_back_bit_for_bit():
    plain = make_trainer(warmup=0)
    plain_losses = plain.train().losses
    warmed = make_trainer(warmup=3)
    before = {k: v.clone() for k, v in warmed.model.state_dict().items()}
    warmed.warm_up()
    after = warmed.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert warmed.train().losses == plain_losses
    # and the warm-up did train (otherwise the rollback test proves nothing)
    probe = make_trainer(warmup=3)
    probe.s.warmup_steps = 0
    probe._step(probe.make_loader(), 1.0, 0.85)
    assert any(not torch.equal(before[k], v) for k, v in probe.model.state_dict().items())


def test_training_reduces_loss_and_reports_time_and_tokens():
    t = make_trainer(iterations=6, loader=FixedLoader)
    summary = t.train()
    assert summary.steps == 6 and summary.stopped_by == "iterations"
    assert summary.tokens_seen == 6 * 256 and summary.train_time_s > 0
    assert summary.losses[-1] < summary.losses[0]


def test_wallclock_cap_stops_training():
    summary = make_trainer(iterations=50, cap=1e-6).train()
    assert summary.stopped_by == "wallclock" and summary.steps == 1


class Recorder:
    def __init__(self):
        self.starts, self.ends = [], []

    def on_step_start(self, step, elapsed_s, lr_scale):
        self.starts.append((step, lr_scale))

    def on_step_end(self, info):
        self.ends.append(info)


def test_hooks_see_step_lr_scale_and_time():
    rec = Recorder()
    make_trainer(iterations=4, hooks=[rec]).train()
    assert [s for s, _ in rec.starts] == [0, 1, 2, 3]
    # warm-down over the last 2 of 4 iterations: 1, 1, 1, 0.5
    assert [round(x, 6) for _, x in rec.starts] == [1.0, 1.0, 1.0, 0.5]
    assert [i.step for i in rec.ends] == [1, 2, 3, 4]
    assert all(b.elapsed_s >= a.elapsed_s for a, b in zip(rec.ends, rec.ends[1:]))


def test_micro_batch_plan_checks_divisibility():
    s = make_trainer().s
    assert micro_batch_plan(s, 1) == (2, 128) and micro_batch_plan(s, 2) == (1, 128)
    with pytest.raises(ValueError, match="train.micro_batches"):
        micro_batch_plan(s, 3)
    s.batch_tokens = 100
    with pytest.raises(ValueError, match="train.batch_tokens"):
        micro_batch_plan(s, 1)
