"""Sweeps through Hydra's submitit launcher: local jobs for real, and the Slurm preset's layout (one
job = one distributed training, one task per rank) through submitit's job variables."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from paramgolf.config import compose as C
from paramgolf.runner import launch as L

TORCH_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
SHRINK = ["train.iterations=3", "train.batch_tokens=2048", "data.val_max_tokens=8192"]
QUIET = ["logger=none", "train.progress=false", "eval.progress=false"]


@pytest.fixture
def job_env(monkeypatch):
    """A clean environment for submitit's variables; whatever the code exports is undone afterwards."""
    for var in (*TORCH_VARS, "TORCHELASTIC_RUN_ID", "PARAMGOLF_WORKER", "CUDA_VISIBLE_DEVICES", "SUBMITIT_EXECUTOR"):
        monkeypatch.setenv(var, "")  # recorded, so the teardown restores (or removes) it
        monkeypatch.delenv(var)

    def enter(**variables: str) -> None:
        for k, v in variables.items():
            monkeypatch.setenv(k, v)

    return enter


def _local_task(enter, rank: int, ntasks: int) -> None:
    enter(
        SUBMITIT_EXECUTOR="local",
        SUBMITIT_LOCAL_JOB_ID="4242",
        SUBMITIT_LOCAL_NTASKS=str(ntasks),
        SUBMITIT_LOCAL_JOB_NUM_NODES="1",
        SUBMITIT_LOCAL_NODEID="0",
        SUBMITIT_LOCAL_GLOBALID=str(rank),
        SUBMITIT_LOCAL_LOCALID=str(rank),
    )


def test_a_task_of_a_multi_task_submitit_job_is_one_rank(job_env):
    _local_task(job_env, rank=1, ntasks=2)
    assert C.launcher_rank() == 1 and C._output_subdir() is None  # Hydra's .hydra/ comes from rank 0 alone
    assert L.launcher_ranks() == (1, 2)
    assert os.environ["RANK"] == "1" and os.environ["WORLD_SIZE"] == "2" and os.environ["LOCAL_RANK"] == "1"
    assert os.environ["MASTER_ADDR"] and 20000 <= int(os.environ["MASTER_PORT"]) <= 60000
    assert "CUDA_VISIBLE_DEVICES" not in os.environ  # every rank sees the node's GPUs, takes GPU LOCAL_RANK


def test_a_slurm_task_on_the_second_node(job_env):
    job_env(
        SUBMITIT_EXECUTOR="slurm",
        SLURM_JOB_ID="77",
        SLURM_NTASKS="16",
        SLURM_JOB_NUM_NODES="2",
        SLURM_NODEID="1",
        SLURM_PROCID="9",
        SLURM_LOCALID="1",
        SLURM_JOB_NODELIST="gpu[01-02]",
    )
    assert L.launcher_ranks() == (9, 16)
    assert os.environ["MASTER_ADDR"] == "gpu01" and os.environ["LOCAL_RANK"] == "1"
    assert os.environ["LOCAL_WORLD_SIZE"] == "8"


def test_a_single_task_job_and_a_plain_process_are_not_distributed(job_env):
    assert L.launcher_ranks() is None and C.launcher_rank() == 0 and C._output_subdir() == ".hydra"
    _local_task(job_env, rank=0, ntasks=1)
    assert L.launcher_ranks() is None and "RANK" not in os.environ


def test_launch_runs_the_pipeline_as_the_submitit_tasks_rank(job_env, monkeypatch, tmp_path):
    calls = []
    monkeypatch.setattr(L, "run", lambda cfg, run_dir, rank, world, plan, estimate: calls.append((rank, world)) or 0)
    _local_task(job_env, rank=1, ntasks=2)
    cfg = {"train": {"nproc_per_node": 4, "device": "cpu"}}  # the tasks are the ranks: no workers of its own
    assert L.launch(cfg, tmp_path) == 0
    assert calls == [(1, 2)]


@pytest.mark.parametrize(
    "launcher, target, expected",
    [
        ("slurm_8gpu", "SlurmLauncher", {"nodes": 1, "tasks_per_node": 8, "gpus_per_node": 8, "cpus_per_task": 8}),
        ("paramgolf_local", "LocalLauncher", {"timeout_min": 1440, "tasks_per_node": 1}),
    ],
)
def test_launcher_presets_compose(launcher, target, expected):
    cfg = C.compose([f"hydra/launcher={launcher}", "experiment=pr754"], return_hydra_config=True)
    lc = cfg.hydra.launcher
    assert lc._target_ == f"hydra_plugins.hydra_submitit_launcher.submitit_launcher.{target}"
    assert {k: lc[k] for k in expected} == expected
    assert lc.timeout_min >= 60  # long enough for a 10-minute training and its evaluation


def _sweep(tmp: Path, *overrides: str) -> Path:
    env = dict(os.environ, PARAMGOLF_CACHE=str(tmp / "cache"), OMP_NUM_THREADS="1", HYDRA_FULL_ERROR="1")
    for var in ("RANK", "WORLD_SIZE", "TORCHELASTIC_RUN_ID", "SUBMITIT_EXECUTOR", "PARAMGOLF_SWEEP_DIR"):
        env.pop(var, None)
    args = [sys.executable, "-m", "paramgolf.cli.train", "-m", *overrides, "hydra.sweep.dir=outputs/sweep"]
    proc = subprocess.run(args, cwd=tmp, env=env, capture_output=True, text=True, timeout=1200)
    sweep = tmp / "outputs" / "sweep"
    logs = "\n".join(p.read_text()[-3000:] for p in sorted(sweep.glob(".submitit/*/*_log.err")))
    assert proc.returncode == 0, f"exited {proc.returncode}\n{proc.stderr[-3000:]}\n{logs}"
    return sweep


@pytest.mark.slow
def test_submitit_local_runs_a_two_seed_smoke_sweep(tmp_path):
    sweep = _sweep(tmp_path, "hydra/launcher=submitit_local", "experiment=smoke", "seed=1,2", *SHRINK, *QUIET)
    for job, seed in (("0_seed1", 1), ("1_seed2", 2)):
        r = json.loads((sweep / job / "results.json").read_text())
        assert r["status"] == "ok" and r["seed"] == seed and r["world_size"] == 1
        assert r["name"] == "smoke,data.val_max_tokens=8192,train.batch_tokens=2048,train.iterations=3"
    assert len(list(sweep.glob(".submitit/*/*_0_log.out"))) == 2  # two submitit jobs


@pytest.mark.slow
def test_a_submitit_job_with_two_tasks_is_one_distributed_run(tmp_path):
    """The layout of `hydra/launcher=slurm_8gpu` (tasks_per_node=8), here with 2 CPU tasks over gloo."""
    sweep = _sweep(
        tmp_path, "hydra/launcher=paramgolf_local", "hydra.launcher.tasks_per_node=2", "experiment=smoke", "seed=5",
        *SHRINK, *QUIET,
    )  # fmt: skip
    (run,) = [p.parent for p in sweep.glob("*/results.json")]
    r = json.loads((run / "results.json").read_text())
    assert r["status"] == "ok" and r["world_size"] == 2 and r["seed"] == 5
    (job,) = {p.parent for p in sweep.glob(".submitit/*/*_log.err")}
    assert sorted(p.name.split("_")[1] for p in job.glob("*_log.err")) == ["0", "1"]  # two tasks, one job
    assert "budget:" not in next(job.glob("*_1_log.err")).read_text()  # rank 1 computes, rank 0 reports
