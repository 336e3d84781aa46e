"""Parallel Muon (banked, sharded, batched Newton–Schulz) equals Muon on 1 and 2 processes."""

from __future__ import annotations

import copy
import logging

import pytest
import torch
import torch.distributed as dist
from gloo_workers import run_gloo_workers

from paramgolf.config.compose import compose, to_container
from paramgolf.optim.builder import OptimizerSet
from paramgolf.optim.muon import Muon
from paramgolf.optim.parallel_muon import ParallelMuon
from paramgolf.runner.build import build_model, build_optimizer_for
from paramgolf.runner.distributed import DistEnv
from paramgolf.runner.train_loop import LoopSettings, Trainer

SHAPES = [(64, 32), (64, 32), (32, 64), (48, 48), (64, 32), (48, 48), (80, 16)]  # repeated shapes form banks
# (CPU bmm equals a loop of mm bit for bit at these and the records' sizes, not at tiny odd ones like 8×4)


def _params(gen: torch.Generator) -> list[torch.nn.Parameter]:
    return [torch.nn.Parameter(torch.randn(s, generator=gen)) for s in SHAPES]


def _run(cls, ns_dtype, nesterov=True, steps=3) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    params = _params(gen)
    groups = [{"params": params[:4], "lr": 0.02}, {"params": params[4:], "lr": 0.05, "weight_decay": 0.1}]
    opt = cls(groups, lr=0.02, momentum=0.9, nesterov=nesterov, ns_dtype=ns_dtype)
    for _ in range(steps):
        for p in params:
            p.grad = torch.randn(p.shape, generator=gen)
        opt.step()
        opt.zero_grad()
    return [p.detach().clone() for p in params]


@pytest.mark.slow
@pytest.mark.parametrize("ns_dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("nesterov", [True, False])
def test_one_process_banked_equals_per_matrix_muon_exactly(ns_dtype, nesterov):
    banked = _run(ParallelMuon, ns_dtype, nesterov)
    plain = _run(Muon, ns_dtype, nesterov)
    for b, p in zip(banked, plain, strict=True):
        assert torch.equal(b, p)
    start = _params(torch.Generator().manual_seed(0))
    assert not torch.equal(banked[0], start[0].detach())


def test_banks_are_same_shaped_matrices_per_group_biggest_first():
    gen = torch.Generator().manual_seed(0)
    params = _params(gen)
    opt = ParallelMuon([{"params": params[:4], "lr": 0.02}, {"params": params[4:], "lr": 0.05}], lr=0.02)
    rows = opt.bank_summary()
    assert [(r["shape"], r["matrices"]) for r in rows] == [
        ((64, 32), 2),
        ((48, 48), 1),
        ((48, 48), 1),
        ((32, 64), 1),
        ((64, 32), 1),
        ((80, 16), 1),
    ]
    assert sum(len(b.params) for b in opt.banks) == len(params)


def test_record_preset_banks_match_the_records_bank_layout():
    """pr754's Muon matrices bank into the records' qo (22×512×512), kv (22×256×512), up, down."""
    c = to_container(compose(["experiment=pr754"]))
    with torch.device("meta"):
        model = build_model(c["arch"])
    opt = build_optimizer_for(model, c["optimizer"])
    assert isinstance(opt.muon, ParallelMuon) and opt.parallel
    got = sorted((r["shape"], r["matrices"]) for r in opt.muon.bank_summary())
    assert got == sorted([((512, 512), 22), ((256, 512), 22), ((1536, 512), 11), ((512, 1536), 11)])


def test_missing_gradient_is_a_clear_error():
    p, q = torch.nn.Parameter(torch.randn(4, 4)), torch.nn.Parameter(torch.randn(4, 4))
    opt = ParallelMuon([p, q], lr=0.1)
    p.grad = torch.randn(4, 4)
    with pytest.raises(ValueError, match="no gradient"):
        opt.step()


def test_bad_comm_mode_is_refused():
    with pytest.raises(ValueError, match="optimizer.muon.comm"):
        ParallelMuon([torch.nn.Parameter(torch.randn(4, 4))], lr=0.1, comm="bogus")


# ---------------------------------------------------------------- through the train loop

VOCAB = 64
ARCH = [
    "arch=record11",
    "arch.num_layers=3",
    "arch.model_dim=64",
    f"arch.vocab_size={VOCAB}",
    "arch.attention.num_heads=4",
    "arch.attention.num_kv_heads=2",
    "arch/bigram=hash",
    "arch.bigram.buckets=64",
    "arch.bigram.dim=16",
]
MICRO = 4  # global micro-batches per step; 2 per rank on 2 processes


class GlobalBatchLoader:
    """Micro-batch m of step k is the same tokens whichever rank draws it: rank r of W draws m = r·M/W + i."""

    def __init__(self, rank: int, world_size: int):
        self.rank, self.ws, self.calls = rank, world_size, 0

    def next_batch(self, micro_tokens: int, seq_len: int):
        per_rank = MICRO // self.ws
        step, i = divmod(self.calls, per_rank)
        self.calls += 1
        m = self.rank * per_rank + i
        gen = torch.Generator().manual_seed(1000 * step + m)
        x = torch.randint(0, VOCAB, (micro_tokens // seq_len, seq_len + 1), generator=gen)
        return x[:, :-1], x[:, 1:]


def train_three_steps(rank: int, world_size: int, overrides: list[str]) -> dict[str, torch.Tensor]:
    c = to_container(compose(ARCH + ["optimizer=parallel_muon", *overrides]))
    torch.manual_seed(0)
    model = build_model(c["arch"])
    opt = build_optimizer_for(model, c["optimizer"])
    settings = LoopSettings(
        iterations=3,
        batch_tokens=MICRO * 2 * 32,
        seq_len=32,
        micro_batches=MICRO,
        warmup_steps=0,
        max_wallclock_seconds=None,
        val_every=0,
        log_every=1,
    )
    env = DistEnv(rank, world_size, rank, torch.device("cpu"))
    Trainer(model, model, opt, lambda: GlobalBatchLoader(rank, world_size), settings, env).train()
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


VARIANTS = {  # name: overrides of the 2-process run
    "fp32": ["optimizer.muon_ns_dtype=float32"],
    "fp32_all_reduce": ["optimizer.muon_ns_dtype=float32", "optimizer.muon.comm=all_reduce"],
    "fp32_auto_fallback": ["optimizer.muon_ns_dtype=float32"],  # reduce_scatter_tensor made to fail
    "bf16": ["optimizer.muon_ns_dtype=bfloat16"],
}


def _ranks_train_variants(rank: int, world_size: int) -> dict[str, dict]:
    out = {}
    for name, overrides in VARIANTS.items():
        log_records: list[str] = []
        handler = logging.Handler()
        handler.emit = lambda record: log_records.append(record.getMessage())  # type: ignore[method-assign]
        logging.getLogger("paramgolf").addHandler(handler)
        real = dist.reduce_scatter_tensor
        if name == "fp32_auto_fallback":

            def broken(*args, **kwargs):
                raise RuntimeError("reduce_scatter_tensor is not supported (test)")

            dist.reduce_scatter_tensor = broken
        try:
            state = train_three_steps(rank, world_size, overrides)
        finally:
            dist.reduce_scatter_tensor = real
            logging.getLogger("paramgolf").removeHandler(handler)
        out[name] = {"state": state, "log": log_records}
    return out


def max_relative_change(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    """max over parameters of ‖a − b‖ / ‖b‖."""
    worst = 0.0
    for k in b:
        if b[k].is_floating_point():
            worst = max(worst, float((a[k].double() - b[k].double()).norm() / b[k].double().norm().clamp_min(1e-30)))
    return worst


@pytest.mark.slow
def test_two_process_parallel_muon_matches_one_process_muon():
    per_rank = run_gloo_workers(_ranks_train_variants, world_size=2, timeout_s=600)

    reference = {  # 1 process, per-matrix Muon, the same global batches
        "fp32": train_three_steps(0, 1, ["optimizer/muon=per_matrix", "optimizer.muon_ns_dtype=float32"]),
        "bf16": train_three_steps(0, 1, ["optimizer/muon=per_matrix", "optimizer.muon_ns_dtype=bfloat16"]),
    }
    torch.manual_seed(0)
    initial = build_model(to_container(compose(ARCH))["arch"]).state_dict()
    assert max_relative_change(initial, reference["fp32"]) > 1e-3  # the steps moved the weights

    report = {}
    for name in VARIANTS:
        ranks = [r[name] for r in per_rank]
        for k, v in ranks[0]["state"].items():  # every rank ends with the same weights
            assert torch.equal(v, ranks[1]["state"][k]), (name, k)
        ref = reference["bf16" if name == "bf16" else "fp32"]
        report[name] = max_relative_change(ranks[0]["state"], ref)
        if name == "fp32_auto_fallback":
            assert any("lacks reduce_scatter_tensor" in m for m in ranks[0]["log"]), ranks[0]["log"]
        else:
            assert not any("lacks" in m for m in ranks[0]["log"])
    print(f"\nParallel Muon 2 processes vs Muon 1 process, max ‖Δ‖/‖p‖ after 3 steps: {report}")
    for name in ("fp32", "fp32_all_reduce", "fp32_auto_fallback"):
        assert report[name] <= 1e-5, report
    assert report["bf16"] < 0.1, report  # bf16 NS amplifies summation-order noise; the figure is reported


def test_clipping_with_shards_equals_plain_clipping_on_one_process():
    def run(impl: str) -> tuple[dict[str, torch.Tensor], float]:
        c = to_container(
            compose(ARCH + ["optimizer=parallel_muon", f"optimizer/muon={impl}", "optimizer.grad_clip_norm=0.05"])
        )
        torch.manual_seed(0)
        model = build_model(c["arch"])
        opt: OptimizerSet = build_optimizer_for(model, c["optimizer"])
        x, y = GlobalBatchLoader(0, 1).next_batch(64, 32)
        torch.nn.functional.cross_entropy(model(x).float().reshape(-1, VOCAB), y.reshape(-1)).backward()
        opt.begin_step()
        norm = float(opt.clip_grad_norm())
        opt.step()
        return {k: v.detach().clone() for k, v in model.state_dict().items()}, norm

    (banked, n_banked), (plain, n_plain) = run("parallel"), run("per_matrix")
    assert n_plain > 0.05  # the clip was active
    assert n_banked == pytest.approx(n_plain, rel=1e-5)
    assert max_relative_change(banked, plain) <= 1e-5  # the clip coefficient differs in rounding only


def test_state_dict_round_trip_restores_the_bank_momentum():
    gen = torch.Generator().manual_seed(0)
    params = _params(gen)
    opt = ParallelMuon(params, lr=0.02, ns_dtype=torch.float32)
    for p in params:
        p.grad = torch.randn(p.shape, generator=gen)
    opt.step()
    saved_state, saved_params = copy.deepcopy(opt.state_dict()), [p.detach().clone() for p in params]
    grads = [torch.randn(p.shape, generator=gen) for p in params]

    def one_step():
        for p, g in zip(params, grads):
            p.grad = g.clone()
        opt.step()
        return [p.detach().clone() for p in params]

    first = one_step()
    opt.load_state_dict(saved_state)
    with torch.no_grad():
        for p, s in zip(params, saved_params):
            p.copy_(s)
    assert all(torch.equal(a, b) for a, b in zip(first, one_step()))
