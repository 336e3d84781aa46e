"""EMA math on toy tensors, every=k, start_step, export dtypes and state round trip."""

from __future__ import annotations

import pytest
import torch
from hydra.utils import instantiate
from torch import nn

from paramgolf.optim.averaging import EMA, NoAveraging


class Toy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.zeros(3))
        self.h = nn.Parameter(torch.zeros(2, dtype=torch.bfloat16))
        self.register_buffer("count", torch.zeros((), dtype=torch.long))


def set_w(model: Toy, value: float) -> None:
    with torch.no_grad():
        model.w.fill_(value)
        model.h.fill_(value)
        model.count.fill_(int(value))


def test_ema_every_step_matches_closed_form():
    model, ema = Toy(), EMA(decay=0.9)
    ema.update(model, 0)  # starts as a copy of w = 0
    for step in (1, 2, 3):
        set_w(model, float(step))
        ema.update(model, step)
    # e1 = 0.1*1; e2 = 0.9*e1 + 0.1*2; e3 = 0.9*e2 + 0.1*3
    expected = ((0.1 * 1) * 0.9 + 0.1 * 2) * 0.9 + 0.1 * 3
    out = ema.averaged_state_dict(model)
    assert out["w"] == pytest.approx(torch.full((3,), expected))
    assert out["h"].dtype == torch.bfloat16  # exported in the model's dtype
    assert ema.shadow["h"].dtype == torch.float32  # kept in fp32
    assert out["count"].item() == 3  # integer buffers pass through
    assert ema.num_updates == 3


def test_ema_every_k_uses_decay_to_the_k():
    model, ema = Toy(), EMA(decay=0.9, every=2)
    set_w(model, 1.0)
    ema.update(model, 0)
    for step in range(1, 5):
        set_w(model, float(step + 1))
        ema.update(model, step)
    # Blends only at steps 2 (w=3) and 4 (w=5), each with d = 0.81.
    e = 0.81 * 1.0 + 0.19 * 3.0
    e = 0.81 * e + 0.19 * 5.0
    assert ema.averaged_state_dict(model)["w"] == pytest.approx(torch.full((3,), e))
    assert ema.num_updates == 2


def test_ema_constant_weights_stay_put_and_start_step():
    model, ema = Toy(), EMA(decay=0.99, every=3, start_step=5)
    set_w(model, 2.0)
    for step in range(5):
        ema.update(model, step)
    assert ema.shadow == {}
    with pytest.warns(UserWarning, match="never started"):
        assert ema.averaged_state_dict(model)["w"].tolist() == [2.0] * 3
    for step in range(5, 12):
        ema.update(model, step)
    assert ema.averaged_state_dict(model)["w"] == pytest.approx(torch.full((3,), 2.0))
    assert ema.num_updates == 2  # steps 6 and 9 (5 started it)


def test_ema_state_round_trip():
    model, ema = Toy(), EMA(decay=0.5)
    ema.update(model, 0)
    set_w(model, 4.0)
    ema.update(model, 1)
    restored = EMA(decay=0.5)
    restored.load_state_dict(ema.state_dict())
    set_w(model, 8.0)
    ema.update(model, 2)
    restored.update(model, 2)
    assert torch.equal(ema.averaged_state_dict(model)["w"], restored.averaged_state_dict(model)["w"])
    assert restored.averaged_state_dict(model)["w"][0].item() == pytest.approx(0.5 * 2.0 + 0.5 * 8.0)


def test_no_averaging_returns_model_weights():
    model = Toy()
    set_w(model, 3.0)
    avg = NoAveraging()
    avg.update(model, 1)
    out = avg.averaged_state_dict(model)
    assert out.keys() == model.state_dict().keys() and out["w"].tolist() == [3.0] * 3


def test_hydra_instantiation_and_validation():
    ema = instantiate({"_target_": "paramgolf.optim.averaging.EMA", "decay": 0.99, "every": 4, "start_step": 10})
    assert (ema.decay, ema.every, ema.start_step) == (0.99, 4, 10)
    assert isinstance(instantiate({"_target_": "paramgolf.optim.averaging.NoAveraging"}), NoAveraging)
    with pytest.raises(ValueError, match="decay"):
        EMA(decay=1.0)
    with pytest.raises(ValueError, match="every"):
        EMA(every=0)
