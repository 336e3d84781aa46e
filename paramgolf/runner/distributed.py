"""Process-group set-up and the explicit collectives of the train loop."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from paramgolf.errors import UserError


@dataclass
class DistEnv:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def pick_device(spec: str, local_rank: int) -> torch.device:
    """`auto` → CUDA when available, else CPU; `cuda` without a GPU is an error."""
    if spec == "auto":
        spec = "cuda" if torch.cuda.is_available() else "cpu"
    if spec == "cuda":
        if not torch.cuda.is_available():
            raise UserError("train.device=cuda but no CUDA device is visible; use train.device=cpu or auto")
        torch.cuda.set_device(local_rank)
        return torch.device("cuda", local_rank)
    if spec == "cpu":
        return torch.device("cpu")
    raise UserError(f"train.device={spec!r} is not one of auto, cpu, cuda")


def preload_group_default_modules() -> None:
    """Import, before any process group exists, the torch modules that bind the default group at import.

    `torch.distributed.nn.functional` declares `group=group.WORLD` default arguments, evaluated when it is
    first imported, and torch.optim imports it (through torch._dynamo) the first time an optimizer is
    built. Imported after `init_process_group`, those defaults hold the world group for good, so
    `destroy_process_group` no longer frees it: gloo's worker threads and its socket loop then live on
    into interpreter exit, where a peer that exits first hangs up on them while this process tears
    down: SIGABRT, "terminate called without an active exception" (most often on a loaded machine,
    where the ranks exit far apart). Imported first, the defaults are None.
    """
    if not dist.is_initialized():
        import torch.distributed.nn.functional  # noqa: F401


def init_distributed(rank: int, world_size: int, device_spec: str, timeout_s: float) -> DistEnv:
    """Join the process group that torchrun / the elastic launcher described in the environment.

    NCCL on GPUs, gloo on CPUs; every collective times out after `timeout_s` so a hung rank
    fails instead of blocking forever.
    """
    local_rank = int(os.environ.get("LOCAL_RANK", rank))
    device = pick_device(device_spec, local_rank)
    if world_size > 1 and not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        kwargs = {"device_id": device} if device.type == "cuda" else {}
        preload_group_default_modules()
        dist.init_process_group(
            backend=backend, rank=rank, world_size=world_size, timeout=timedelta(seconds=timeout_s), **kwargs
        )
    return DistEnv(rank, world_size, local_rank, device)


def shutdown_distributed(*, barrier: bool | None = None) -> None:
    """Leave the process group: a barrier on a clean exit, then `destroy_process_group`.

    The barrier keeps a rank from tearing gloo down while a peer still talks to it; the group is
    destroyed even when the barrier fails. (That destroying really frees gloo's threads and sockets
    needs `init_distributed`'s `preload_group_default_modules`.)

    `barrier=None` (the default) waits at the barrier unless an exception is propagating (this is called
    from a `finally:`): a failed rank's peers may be inside another collective, and a barrier would match
    it or block until the collective timeout; destroying right away makes the peers fail fast instead.
    """
    if not dist.is_initialized():
        return
    if barrier is None:
        barrier = sys.exc_info()[1] is None
    try:
        if barrier:
            dist.barrier()
    finally:
        dist.destroy_process_group()


GROUPED_MAX_NUMEL = 1 << 15  # 32,768: the largest gradient a grouped all-reduce packs (#1530)


def all_reduce_gradients(params: list[torch.nn.Parameter], world_size: int, grouped: bool = False) -> None:
    """Average gradients over ranks (explicit, not DDP): one flat all-reduce per (device, dtype).

    `grouped` (#1530): only gradients of at most GROUPED_MAX_NUMEL elements share one flat buffer per
    (device, dtype); each larger one is all-reduced in place on its own (asynchronously, while the small
    ones are packed), so the big tensors (the embedding) are never copied. Elementwise the same sums.
    """
    if world_size <= 1:
        return
    grads = [p.grad for p in params if p.grad is not None]
    alone = [g for g in grads if g.numel() > GROUPED_MAX_NUMEL and g.is_contiguous()] if grouped else []
    handles = [dist.all_reduce(g, op=dist.ReduceOp.SUM, async_op=True) for g in alone]
    packed = [g for g in grads if all(g is not a for a in alone)]
    buckets: dict[tuple[torch.device, torch.dtype], list[torch.Tensor]] = {}
    for g in packed:
        buckets.setdefault((g.device, g.dtype), []).append(g)
    for bucket in buckets.values():
        flat = torch.cat([g.reshape(-1) for g in bucket])
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        flat.div_(world_size)
        offset = 0
        for g in bucket:
            n = g.numel()
            g.copy_(flat[offset : offset + n].view_as(g))
            offset += n
    for handle, g in zip(handles, alone, strict=True):
        handle.wait()
        g.div_(world_size)


def all_reduce_scalar(value: float, device: torch.device, op: str = "sum") -> float:
    if not dist.is_initialized():
        return value
    t = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(t, op={"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX}[op])
    return float(t.item())


def broadcast_parameters(module: torch.nn.Module) -> None:
    """Make every rank start from rank 0's initial weights."""
    if not dist.is_initialized():
        return
    with torch.no_grad():
        for t in list(module.parameters()) + list(module.buffers()):
            dist.broadcast(t.data, src=0)


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()
