"""Process model: torchrun ranks, submitit tasks, in-job elastic workers, or one plain process — all call `run`."""

from __future__ import annotations

import contextlib
import logging
import os
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

from paramgolf.errors import UserError
from paramgolf.runner.pipeline import run
from paramgolf.runner.plan import RunPlan


def under_torchrun() -> bool:
    return "TORCHELASTIC_RUN_ID" in os.environ and "RANK" in os.environ and os.environ.get("PARAMGOLF_WORKER") != "1"


def launcher_ranks() -> tuple[int, int] | None:
    """(rank, world_size) when an outside launcher started this process as one rank of the run: torchrun,
    or a submitit job with several tasks (`hydra/launcher=slurm_8gpu`: one task per GPU); None otherwise.

    For submitit, its job variables are exported as torch's env:// ones (MASTER_ADDR, MASTER_PORT, RANK,
    WORLD_SIZE, LOCAL_RANK); CUDA_VISIBLE_DEVICES is left alone (each rank takes GPU LOCAL_RANK).
    """
    if under_torchrun():
        return int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    if os.environ.get("SUBMITIT_EXECUTOR") and os.environ.get("PARAMGOLF_WORKER") != "1":
        import submitit

        if submitit.JobEnvironment().num_tasks > 1:
            env = submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False, overwrite=True)
            return env.rank, env.world_size
    return None


def _worker(cfg: Mapping[str, Any], run_dir: str, estimate: int | None = None) -> int:
    """Entry of each process started by `elastic_launch` (module-level so spawn can pickle it)."""
    os.environ["PARAMGOLF_WORKER"] = "1"
    try:
        return run(dict(cfg), Path(run_dir), int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), None, estimate)
    except (UserError, FileNotFoundError) as exc:  # the parent tells these from bugs by the class name
        raise UserError(str(exc)) from exc


def launch(cfg: Mapping[str, Any], run_dir: Path, plan: RunPlan | None = None, estimate: int | None = None) -> int:
    """Run the pipeline on every rank; returns rank 0's exit code.

    `plan`: the components built from `cfg` in this process; workers started here build their own.
    `estimate`: the budget check's estimated artifact bytes (results.json records it).
    """
    ranks = launcher_ranks()
    if ranks is not None:
        return run(cfg, run_dir, *ranks, plan, estimate)
    nproc = int(cfg["train"]["nproc_per_node"])
    if nproc <= 1:
        return run(cfg, run_dir, 0, 1, plan, estimate)
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    if cfg["train"]["device"] == "cpu" or not _cuda():
        # Share the cores between workers instead of oversubscribing them.
        os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    lc = LaunchConfig(
        min_nodes=1,
        max_nodes=1,
        nproc_per_node=nproc,
        run_id=f"paramgolf-{uuid.uuid4().hex[:8]}",
        rdzv_backend="c10d",
        rdzv_endpoint="localhost:0",
        max_restarts=0,
        start_method="spawn",
        monitor_interval=0.5,
    )
    with _quiet_elastic_logs():
        try:
            results = elastic_launch(lc, _worker)(dict(cfg), str(run_dir), estimate)
        except ChildFailedError as exc:
            _reraise_user_error(exc)
            raise
    return int(results.get(0, 0) or 0)


_USER_ERROR = f"{UserError.__name__}: "


def _reraise_user_error(exc: ChildFailedError) -> None:
    """A worker's user error (missing data, …) is one UserError here, printed once; a bug keeps its traceback."""
    _, failure = exc.get_first_failure()
    message = failure.message.get("message", "") if isinstance(failure.message, dict) else str(failure.message)
    if message.startswith(_USER_ERROR):
        raise UserError(message[len(_USER_ERROR) :]) from None


@contextlib.contextmanager
def _quiet_elastic_logs():
    """torch's launcher logs every failed worker's traceback and each SIGTERM it sends; the parent reports
    the first failure itself (a bug's traceback is in the ChildFailedError it raises)."""
    loggers = [logging.getLogger(n) for n in ("torch.distributed.elastic", "torch.multiprocessing")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()
