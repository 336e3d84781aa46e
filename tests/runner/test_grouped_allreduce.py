"""Grouped all-reduce (#1530): small gradients share one buffer per (device, dtype), large ones go alone,
and the averages are bit for bit those of one all-reduce per tensor."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
from gloo_workers import run_gloo_workers

from paramgolf.runner import distributed as D

# (shape, dtype): small fp32 and bf16 ones, and two above GROUPED_MAX_NUMEL (one exactly at the limit).
SPECS = [
    ((8, 4), torch.float32),
    ((200, 200), torch.float32),  # 40,000 > 32,768: alone
    ((16,), torch.bfloat16),
    ((1 << 15,), torch.float32),  # exactly the limit: packed
    ((300, 130), torch.bfloat16),  # 39,000: alone
    ((3, 5), torch.bfloat16),
]


def make_params(rank: int) -> list[torch.nn.Parameter]:
    gen = torch.Generator().manual_seed(100 + rank)
    params = []
    for shape, dtype in SPECS:
        p = torch.nn.Parameter(torch.zeros(shape, dtype=dtype))
        p.grad = torch.randn(shape, generator=gen).to(dtype)
        params.append(p)
    params.append(torch.nn.Parameter(torch.zeros(4)))  # no gradient: skipped
    return params


def _ranks_reduce(rank: int, world_size: int) -> dict[str, list[torch.Tensor]]:
    out = {}
    for mode in ("flat", "grouped", "per_tensor"):
        params = make_params(rank)
        if mode == "per_tensor":
            for p in params[:-1]:
                dist.all_reduce(p.grad, op=dist.ReduceOp.SUM)
                p.grad.div_(world_size)
        else:
            D.all_reduce_gradients(params, world_size, grouped=mode == "grouped")
        out[mode] = [p.grad for p in params[:-1]]
    return out


@pytest.mark.slow
def test_grouped_equals_per_tensor_all_reduce_bit_for_bit_on_two_gloo_ranks():
    per_rank = run_gloo_workers(_ranks_reduce, world_size=2)
    g0, g1 = (p.grad for p in make_params(0)[:-1]), (p.grad for p in make_params(1)[:-1])
    expected = [(a + b) / 2 for a, b in zip(g0, g1, strict=True)]  # a 2-term sum has one rounding order
    for rank, got in enumerate(per_rank):
        for mode in ("flat", "grouped", "per_tensor"):
            for i, (g, e) in enumerate(zip(got[mode], expected, strict=True)):
                assert g.dtype == e.dtype and torch.equal(g, e), f"rank {rank} {mode}: gradient {i} differs"
    assert not torch.equal(expected[0], make_params(0)[0].grad)  # the ranks' gradients did differ


def test_grouped_packs_small_gradients_per_dtype_and_reduces_large_ones_alone(monkeypatch):
    calls = []

    class Done:
        def wait(self):
            calls.append("wait")

    def fake_all_reduce(t, op=None, async_op=False):  # two ranks holding the same gradients
        calls.append((t.numel(), t.dtype, async_op))
        t.mul_(2)
        return Done() if async_op else None

    monkeypatch.setattr(D.dist, "all_reduce", fake_all_reduce)
    for grouped, want in (
        (False, [(8 * 4 + 40_000 + (1 << 15), torch.float32, False), (16 + 39_000 + 15, torch.bfloat16, False)]),
        (
            True,
            [
                (40_000, torch.float32, True),
                (39_000, torch.bfloat16, True),
                (8 * 4 + (1 << 15), torch.float32, False),
                (16 + 15, torch.bfloat16, False),
                "wait",
                "wait",
            ],
        ),
    ):
        calls.clear()
        params = make_params(0)
        before = [p.grad.clone() for p in params[:-1]]
        D.all_reduce_gradients(params, 2, grouped=grouped)
        assert calls == want, grouped
        for p, b in zip(params, before, strict=False):
            assert torch.equal(p.grad, b)  # (2 g) / 2, back in place


def test_one_process_leaves_gradients_alone(monkeypatch):
    monkeypatch.setattr(D.dist, "all_reduce", lambda *a, **k: pytest.fail("no collective in one process"))
    params = make_params(0)
    before = [p.grad.clone() for p in params[:-1]]
    D.all_reduce_gradients(params, 1, grouped=True)
    assert all(torch.equal(p.grad, b) for p, b in zip(params, before, strict=False))
