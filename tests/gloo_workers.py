"""Run a function on N gloo ranks in fresh processes, for the multi-process tests.

What makes it hold up on a loaded 2-core box:

* a fresh rendezvous per call: a FileStore file in a new temporary directory, so there is no TCP port to
  pick (and lose to another process) and nothing left over from an earlier test;
* generous, bounded waits: the collectives time out after `collective_timeout_s` (a rank that is starved of
  CPU for a while is not a failure), and the whole call after `timeout_s`, after which every rank is killed;
* one intra-op thread per rank, so two ranks do not oversubscribe two cores;
* gloo really torn down: `preload_group_default_modules` before the group exists, so that
  `destroy_process_group` frees gloo's threads and sockets instead of leaving them to interpreter exit
  (and each rank checks that the group object is gone after the teardown);
* an orderly exit: a rank that finished leaves through `shutdown_distributed` (a barrier, then
  `destroy_process_group`), so no rank tears gloo down while a peer still talks to it; a rank that failed
  skips the barrier (its peers may be inside another collective) and reports its traceback to the parent.

`fn(rank, world_size, *args)` must be a module-level function (spawn pickles it by name); what it returns
comes back, per rank, via `torch.save` / `torch.load`.
"""

from __future__ import annotations

import multiprocessing as mp
import multiprocessing.connection
import os
import signal
import sys
import tempfile
import time
import traceback
import weakref
from collections.abc import Callable, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

# Read by OpenMP / MKL when the child imports torch: one thread per rank.
_CHILD_ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo"}


def _rank_main(
    fn: Callable[..., Any],
    rank: int,
    world_size: int,
    store_path: str,
    out_dir: str,
    collective_timeout_s: float,
    args: Sequence[Any],
) -> None:
    """Body of each spawned rank; exits 0 only when `fn` and the teardown both succeeded."""
    import torch
    import torch.distributed as dist

    from paramgolf.runner.distributed import (
        preload_group_default_modules,
        shutdown_distributed,
    )

    torch.set_num_threads(1)
    out = Path(out_dir)
    ok = False
    try:
        preload_group_default_modules()  # else destroy_process_group leaves gloo's threads running
        store = dist.FileStore(store_path, world_size)
        dist.init_process_group(
            "gloo", store=store, rank=rank, world_size=world_size, timeout=timedelta(seconds=collective_timeout_s)
        )
        world = weakref.ref(dist.group.WORLD)
        result = fn(rank, world_size, *args)
        torch.save(result, out / f"result{rank}.pt")
        ok = True
    except BaseException:  # noqa: BLE001 - reported to the parent, which fails the test
        (out / f"error{rank}.txt").write_text(traceback.format_exc())
    try:
        shutdown_distributed(barrier=ok)
        if ok and world() is not None:
            raise AssertionError(
                "the process group outlived destroy_process_group (something still holds it), "
                "so gloo's threads and sockets stay up into interpreter exit"
            )
    except BaseException:  # noqa: BLE001 - as above
        if ok:
            (out / f"error{rank}.txt").write_text("teardown failed:\n" + traceback.format_exc())
        ok = False
    sys.stdout.flush()
    sys.stderr.flush()
    sys.exit(0 if ok else 1)


def _describe(code: int | None) -> str:
    if code is None:
        return "still running (killed)"
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


def run_gloo_workers(
    fn: Callable[..., Any],
    world_size: int = 2,
    args: Sequence[Any] = (),
    *,
    timeout_s: float = 300.0,
    collective_timeout_s: float = 180.0,
) -> list[Any]:
    """Run `fn(rank, world_size, *args)` on `world_size` gloo ranks; returns their results, by rank.

    Raises AssertionError naming each failed rank (with its traceback, or the signal that killed it), or
    saying which ranks were still running after `timeout_s`.
    """
    ctx = mp.get_context("spawn")
    with tempfile.TemporaryDirectory(prefix="gloo-workers-") as tmp:
        out = Path(tmp)
        store_path = str(out / "rendezvous.store")
        saved = {k: os.environ.get(k) for k in _CHILD_ENV}
        os.environ.update(_CHILD_ENV)  # a spawned child takes a copy of the environment when it starts
        procs = []
        try:
            for rank in range(world_size):
                p = ctx.Process(
                    target=_rank_main,
                    name=f"gloo-rank{rank}",
                    args=(fn, rank, world_size, store_path, tmp, collective_timeout_s, tuple(args)),
                )
                p.start()
                procs.append(p)
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v

        deadline = time.monotonic() + timeout_s
        failed = hung = False
        try:
            while True:
                running = [p for p in procs if p.exitcode is None]
                failed = any(p.exitcode not in (None, 0) for p in procs)
                if not running or failed:
                    break
                left = deadline - time.monotonic()
                if left <= 0:
                    hung = True
                    break
                mp.connection.wait([p.sentinel for p in running], timeout=min(left, 5.0))
            if failed:  # a failed rank's peers fail fast once its sockets close; give them a moment
                end = time.monotonic() + 10
                for p in procs:
                    p.join(timeout=max(0.0, end - time.monotonic()))
        finally:
            codes = [p.exitcode for p in procs]  # None: still running, killed below
            for p in procs:
                if p.is_alive():
                    p.kill()
                p.join()

        if failed or hung:
            lines = [f"gloo ranks hung (still running after {timeout_s:.0f}s):" if hung else "gloo ranks failed:"]
            for rank in range(world_size):
                err = out / f"error{rank}.txt"
                lines.append(f"  rank {rank}: {_describe(codes[rank])}")
                if err.is_file():
                    lines.append("    " + err.read_text().rstrip().replace("\n", "\n    "))
            raise AssertionError("\n".join(lines))

        import torch

        return [torch.load(out / f"result{rank}.pt", weights_only=False) for rank in range(world_size)]
