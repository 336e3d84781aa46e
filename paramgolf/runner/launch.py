"""Process model: torchrun ranks, in-job elastic workers, or one plain process — all call `run`."""

from __future__ import annotations

import os
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from paramgolf.runner.pipeline import run
from paramgolf.runner.plan import RunPlan


def under_torchrun() -> bool:
    return "TORCHELASTIC_RUN_ID" in os.environ and "RANK" in os.environ and os.environ.get("PARAMGOLF_WORKER") != "1"


def _worker(cfg: Mapping[str, Any], run_dir: str) -> int:
    """Entry of each process started by `elastic_launch` (module-level so spawn can pickle it)."""
    os.environ["PARAMGOLF_WORKER"] = "1"
    return run(dict(cfg), Path(run_dir), int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]))


def launch(cfg: Mapping[str, Any], run_dir: Path, plan: RunPlan | None = None) -> int:
    """Run the pipeline on every rank; returns rank 0's exit code.

    `plan`: the components built from `cfg` in this process; workers started here build their own.
    """
    if under_torchrun():
        return run(cfg, run_dir, int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), plan)
    nproc = int(cfg["train"]["nproc_per_node"])
    if nproc <= 1:
        return run(cfg, run_dir, 0, 1, plan)
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
    results = elastic_launch(lc, _worker)(dict(cfg), str(run_dir))
    return int(results.get(0, 0) or 0)


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()
