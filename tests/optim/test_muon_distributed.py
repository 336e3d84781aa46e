"""Muon sharded over 2 gloo processes gives the same parameters as 1 process."""
from __future__ import annotations

import os
import time
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

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


def _worker(rank: int, world_size: int, store_path: str, out_dir: str) -> None:
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    torch.set_num_threads(1)
    store = dist.FileStore(store_path, world_size)
    dist.init_process_group("gloo", store=store, rank=rank, world_size=world_size, timeout=timedelta(seconds=30))
    try:
        for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
            torch.save(run_muon(dtype), Path(out_dir) / f"{name}_rank{rank}.pt")
        dist.barrier()  # no rank tears gloo down while its peer still talks to it
    finally:
        dist.destroy_process_group()


def test_two_process_muon_equals_one_process(tmp_path):
    ctx = mp.start_processes(
        _worker, args=(2, str(tmp_path / "store"), str(tmp_path)), nprocs=2, join=False, start_method="spawn"
    )
    deadline = time.monotonic() + 90
    try:
        while not ctx.join(timeout=2):  # raises ProcessRaisedException if a rank failed
            assert time.monotonic() < deadline, "a gloo rank hung"
    finally:
        for proc in ctx.processes:
            if proc.is_alive():
                proc.kill()

    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        expected = run_muon(dtype)
        for rank in range(2):
            got = torch.load(tmp_path / f"{name}_rank{rank}.pt")
            for g, e in zip(got, expected, strict=True):
                assert torch.equal(g, e), f"{name} rank {rank} differs from the 1-process result"
    initial = [torch.randn(s, generator=torch.Generator().manual_seed(0)) for s in SHAPES[:1]]
    assert not torch.equal(expected[0], initial[0])  # the steps did move the parameters
