"""SWA, EMA + SWA and the choice between them: hand-computed averages, also over a real short run."""

from __future__ import annotations

import pytest
import torch
from hydra.utils import instantiate
from torch import nn

from paramgolf.config.compose import compose, to_container
from paramgolf.optim.averaging import EMA, EMASWA, SWA
from paramgolf.optim.schedules import WarmdownSchedule
from paramgolf.runner.build import build_model, build_optimizer_for
from paramgolf.runner.distributed import DistEnv
from paramgolf.runner.train_loop import LoopSettings, StepInfo, Trainer


class Toy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.zeros(3))
        self.h = nn.Parameter(torch.zeros(2, dtype=torch.bfloat16))


def set_w(model: Toy, value: float) -> None:
    with torch.no_grad():
        model.w.fill_(value)
        model.h.fill_(value)


def test_swa_averages_snapshots_taken_every_k_steps_below_the_lr_threshold():
    model, swa = Toy(), SWA(every=2, start_lr_scale=0.5)
    scales = {1: 1.0, 2: 0.8, 3: 0.6, 4: 0.4, 5: 0.3, 6: 0.2, 7: 0.1, 8: 0.0}
    for step, scale in scales.items():
        set_w(model, float(step))
        swa.update(model, step, scale)
    # snapshots at steps 4, 6, 8 (even, scale < 0.5): mean of 4, 6, 8
    out = swa.averaged_state_dict(model)
    assert out["w"] == pytest.approx(torch.full((3,), 6.0))
    assert out["h"].dtype == torch.bfloat16 and swa.count == 3 and swa.first_step == 4
    assert swa.describe()["snapshots"] == 3


def test_swa_by_start_step_and_without_snapshots():
    model, swa = Toy(), SWA(every=3, start_lr_scale=None, start_step=5)
    for step in range(1, 11):
        set_w(model, float(step))
        swa.update(model, step, 1.0)
    assert swa.count == 2  # steps 6 and 9
    assert swa.averaged_state_dict(model)["w"] == pytest.approx(torch.full((3,), 7.5))
    empty = SWA(every=50)
    set_w(model, 3.0)
    with pytest.warns(UserWarning, match="no snapshot"):
        out = empty.averaged_state_dict(model)
    assert out["w"] == pytest.approx(torch.full((3,), 3.0))


@pytest.mark.parametrize("bad", [dict(every=0), dict(start_lr_scale=0.0), dict(start_step=-1)])
def test_swa_refuses_bad_settings(bad):
    with pytest.raises(ValueError, match="train.averaging"):
        SWA(**bad)


def _ema_swa(select: str, source: str = "raw", min_snapshots: int = 2) -> tuple[Toy, EMASWA]:
    model = Toy()
    avg = EMASWA(
        EMA(decay=0.5), SWA(every=2, start_lr_scale=0.5), select=select, swa_source=source, min_snapshots=min_snapshots
    )
    avg.update(model, 0, 1.0)  # EMA starts at w = 0
    for step, scale in ((1, 1.0), (2, 0.4), (3, 0.3), (4, 0.2)):
        set_w(model, float(step))
        avg.update(model, step, scale)
    return model, avg


# EMA (d = 0.5) of 0, 1, 2, 3, 4: 0.5, 1.25, 2.125, 3.0625. Raw SWA: mean(2, 4) = 3. SWA of the EMA: mean(1.25, 3.0625).
EMA_END, SWA_RAW, SWA_OF_EMA = 3.0625, 3.0, (1.25 + 3.0625) / 2


@pytest.mark.parametrize(
    "select, source, min_snapshots, expected, chosen",
    [
        ("ema", "raw", 2, EMA_END, "ema"),
        ("swa", "raw", 2, SWA_RAW, "swa"),
        ("swa", "ema", 2, SWA_OF_EMA, "swa"),
        ("swa_if_snapshots", "raw", 2, SWA_RAW, "swa"),
        ("swa_if_snapshots", "raw", 3, EMA_END, "ema"),  # only 2 snapshots: the rule falls back to EMA
    ],
)
def test_ema_swa_rules_fixed_before_evaluation(select, source, min_snapshots, expected, chosen):
    model, avg = _ema_swa(select, source, min_snapshots)
    out = avg.averaged_state_dict(model)
    assert out["w"] == pytest.approx(torch.full((3,), expected))
    assert avg.chosen == chosen and avg.describe()["chosen"] == chosen
    assert not avg.selects_on_validation


def test_best_on_validation_leaves_the_choice_to_the_runner():
    model, avg = _ema_swa("best_on_validation")
    assert avg.selects_on_validation
    with pytest.raises(RuntimeError, match="runner must score"):
        avg.averaged_state_dict(model)
    cands = avg.candidates(model)
    assert set(cands) == {"raw", "ema", "swa"}
    assert cands["raw"]["w"] == pytest.approx(torch.full((3,), 4.0))
    assert cands["swa"]["w"] == pytest.approx(torch.full((3,), SWA_RAW))


def test_hydra_builds_ema_swa_from_the_config_group():
    c = to_container(compose(["train/averaging=ema_swa", "train.averaging.select=swa_if_snapshots"]))
    avg = instantiate(c["train"]["averaging"])
    assert isinstance(avg, EMASWA) and isinstance(avg.ema, EMA) and isinstance(avg.swa, SWA)
    assert avg.select == "swa_if_snapshots" and avg.ema.decay == 0.997 and avg.swa.every == 50
    with pytest.raises(ValueError, match="select"):
        EMASWA(EMA(), SWA(), select="best")


class Recorder:
    """Train-loop hook: the raw weights and LR scale after every step, and feeds the averaging."""

    def __init__(self, model: nn.Module, averaging) -> None:
        self.model, self.averaging = model, averaging
        self.weights: dict[int, dict[str, torch.Tensor]] = {}
        self.scales: dict[int, float] = {}

    def on_step_start(self, step, elapsed_s, lr_scale):
        pass

    def on_step_end(self, info: StepInfo):
        self.weights[info.step] = {k: v.detach().double().clone() for k, v in self.model.state_dict().items()}
        self.scales[info.step] = info.lr_scale
        self.averaging.update(self.model, info.step, info.lr_scale)


class Loader:
    def __init__(self):
        self.gen = torch.Generator().manual_seed(5)

    def next_batch(self, micro_tokens, seq_len):
        x = torch.randint(0, 64, (micro_tokens // seq_len, seq_len + 1), generator=self.gen)
        return x[:, :-1], x[:, 1:]


def test_ema_and_swa_over_a_short_training_run_equal_hand_computed_averages():
    c = to_container(
        compose(
            [
                "arch.num_layers=2",
                "arch.model_dim=32",
                "arch.vocab_size=64",
                "arch.attention.num_heads=2",
                "arch.attention.num_kv_heads=1",
            ]
        )
    )
    torch.manual_seed(0)
    model = build_model(c["arch"])
    opt = build_optimizer_for(model, c["optimizer"])
    steps = 12
    schedule = WarmdownSchedule(iterations=steps, max_wallclock_s=None, warmdown_iters=8)  # (12 - i) / 8 at step i ≥ 4
    avg = EMASWA(EMA(decay=0.8, every=2), SWA(every=2, start_lr_scale=0.5), select="swa")
    start = {k: v.detach().double().clone() for k, v in model.state_dict().items()}
    avg.update(model, 0, 1.0)
    rec = Recorder(model, avg)
    s = LoopSettings(
        iterations=steps,
        batch_tokens=128,
        seq_len=32,
        micro_batches=1,
        warmup_steps=0,
        max_wallclock_seconds=None,
        val_every=0,
        log_every=1,
        lr_schedule=schedule,
    )
    Trainer(model, model, opt, Loader, s, DistEnv(0, 1, 0, torch.device("cpu")), hooks=[rec]).train()

    # hand-computed: EMA blends every 2nd step with d**2; SWA averages the even steps whose scale < 0.5
    swa_steps = [t for t in range(2, steps + 1, 2) if rec.scales[t] < 0.5]
    assert swa_steps == [10, 12]
    d = 0.8**2
    for name, w0 in start.items():
        if not w0.is_floating_point():
            continue
        ema = w0
        for t in range(2, steps + 1, 2):
            ema = d * ema + (1 - d) * rec.weights[t][name]
        swa = sum(rec.weights[t][name] for t in swa_steps) / len(swa_steps)
        assert torch.allclose(avg.ema.shadow[name].double(), ema, atol=1e-6), name
        assert torch.allclose(avg.averaged_state_dict(model)[name].double(), swa, atol=1e-6), name
    assert not torch.allclose(rec.weights[steps]["tok_emb.weight"], start["tok_emb.weight"])  # training moved it
