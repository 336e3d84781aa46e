"""Optimizer step time: per-matrix Muon vs Parallel Muon (banked, batched Newton–Schulz).

Uses the Muon matrices of a preset's model (default pr754: 22×512², 22×256×512, 11×1536×512,
11×512×1536), random gradients, and times `step()` of both optimizers alternately in one
process so that machine noise hits both alike. With several processes the Muon time includes
the gradient all-reduce the runner does before its step (Parallel Muon's step does its own
reduce-scatter). Newton–Schulz runs in the preset's dtype rule (`auto`: bf16 on CUDA, fp32 on
CPU) unless `--ns-dtype` says otherwise.

    python scripts/bench_muon.py                       # pr754 shapes on the current device
    python scripts/bench_muon.py --preset pr1263 --steps 5 --ns-dtype bfloat16
    torchrun --nproc_per_node=8 scripts/bench_muon.py  # sharded: each rank orthogonalises its slices
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import torch
import torch.distributed as dist


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="pr754")
    ap.add_argument("--steps", type=int, default=3, help="timed steps per optimizer (after 1 untimed)")
    ap.add_argument("--ns-dtype", default="auto", choices=["auto", "float32", "bfloat16"])
    ap.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    args = ap.parse_args()

    from paramgolf.config.compose import compose, to_container
    from paramgolf.optim.builder import _ns_dtype
    from paramgolf.optim.groups import as_rule, assign_params
    from paramgolf.optim.muon import Muon
    from paramgolf.optim.parallel_muon import ParallelMuon
    from paramgolf.runner.build import build_model
    from paramgolf.runner.distributed import all_reduce_gradients

    if "LOCAL_RANK" in os.environ:
        backend = "nccl" if torch.cuda.is_available() and args.device != "cpu" else "gloo"
        dist.init_process_group(backend)
    rank = dist.get_rank() if dist.is_initialized() else 0
    world = dist.get_world_size() if dist.is_initialized() else 1
    local = int(os.environ.get("LOCAL_RANK", 0))
    use_cuda = args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
    device = torch.device("cuda", local) if use_cuda else torch.device("cpu")

    c = to_container(compose([f"experiment={args.preset}"]))
    with torch.device("meta"):
        model = build_model(c["arch"])
    rules = [as_rule(r) for r in c["optimizer"]["rules"]]
    assigned = assign_params(list(model.named_parameters()), rules)
    shapes = [tuple(p.shape) for r in rules if r.optimizer == "muon" for _, p in assigned[r.name]]
    gen = torch.Generator().manual_seed(0)
    grads = [torch.randn(s, generator=gen).to(device) for s in shapes]
    ns_dtype = _ns_dtype(args.ns_dtype, [("x", grads[0])])

    def make(cls):
        params = [torch.nn.Parameter(torch.randn(s, generator=gen).to(device)) for s in shapes]
        return params, cls(params, lr=0.025, momentum=0.99, weight_decay=0.04, ns_dtype=ns_dtype)

    opts = {"muon": make(Muon), "parallel_muon": make(ParallelMuon)}

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    def one_step(name: str) -> float:
        params, opt = opts[name]
        for p, g in zip(params, grads):
            p.grad = g.clone()
        sync()
        t0 = time.perf_counter()
        if name == "muon":  # the runner averages plain Muon's gradients first; Parallel Muon does its own
            all_reduce_gradients(params, world)
        opt.step()
        sync()
        return time.perf_counter() - t0

    times: dict[str, list[float]] = {n: [] for n in opts}
    for n in opts:
        one_step(n)  # untimed: allocation, cuBLAS handles
    for _ in range(args.steps):
        for n in opts:  # interleaved
            times[n].append(one_step(n))
    med = {n: statistics.median(t) for n, t in times.items()}
    if rank == 0:
        print(
            json.dumps(
                {
                    "preset": args.preset,
                    "device": str(device),
                    "world_size": dist.get_world_size() if dist.is_initialized() else 1,
                    "ns_dtype": str(ns_dtype).replace("torch.", ""),
                    "matrices": len(shapes),
                    "banks": [
                        "{}x{}  ({} per rank)".format(b["matrices"], "x".join(map(str, b["shape"])), b["per_rank"])
                        for b in opts["parallel_muon"][1].bank_summary()
                    ],
                    "steps": args.steps,
                    "muon_step_ms": round(med["muon"] * 1e3, 2),
                    "parallel_muon_step_ms": round(med["parallel_muon"] * 1e3, 2),
                    "speedup": round(med["muon"] / med["parallel_muon"], 3),
                    "all_ms": {n: [round(x * 1e3, 1) for x in t] for n, t in times.items()},
                },
                indent=1,
                default=str,
            )
        )
    if dist.is_initialized():
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
