"""Muon sharded over 2 gloo processes gives the same parameters as 1 process."""

from __future__ import annotations

import torch
from gloo_workers import run_gloo_workers

from paramgolf.optim.muon import Muon

SHAPES = [(8, 4), (4, 8), (6, 6), (5, 3), (3, 7)]
STEPS = 3


def run_muon(ns_dtype: torch.dtype) -> list[torch.Tensor]:
    """Same params and grads on every rank (as after the runner's all-reduce); two lr groups."""
    gen = torch.Generator().manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(s, generator=gen)) for s in SHAPES]
    opt = Muon(
        [{"params": params[:3], "lr": 0.02}, {"params": params[3:], "lr": 0.05, "weight_decay": 0.1}],
        lr=0.02,
        momentum=0.9,
        ns_dtype=ns_dtype,
    )
    for _ in range(STEPS):
        for p in params:
            p.grad = torch.randn(p.shape, generator=gen)
        opt.step()
    return [p.detach().clone() for p in params]


def _ranks_run_muon(rank: int, world_size: int) -> dict[str, list[torch.Tensor]]:
    return {name: run_muon(dtype) for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16))}


def test_two_process_muon_equals_one_process():
    per_rank = run_gloo_workers(_ranks_run_muon, world_size=2)

    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        expected = run_muon(dtype)
        for rank, got in enumerate(per_rank):
            for g, e in zip(got[name], expected, strict=True):
                assert torch.equal(g, e), f"{name} rank {rank} differs from the 1-process result"
    initial = [torch.randn(s, generator=torch.Generator().manual_seed(0)) for s in SHAPES[:1]]
    assert not torch.equal(expected[0], initial[0])  # the steps did move the parameters
