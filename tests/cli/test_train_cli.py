"""`paramgolf-train` as a user types it: run directories, config mistakes, --help, the budget check."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from paramgolf.config.compose import setup


def _train(tmp_path: Path, *args: str, env: dict[str, str] | None = None, timeout: int = 300):
    e = dict(os.environ, OMP_NUM_THREADS="1", PARAMGOLF_CACHE=str(tmp_path / "cache"), **(env or {}))
    e.pop("HYDRA_FULL_ERROR", None)
    return subprocess.run(
        [sys.executable, "-m", "paramgolf.cli.train", *args],
        cwd=tmp_path,
        env=e,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _leaf_dirs(root: Path) -> list[Path]:
    return [d for d in root.rglob("*") if d.is_dir() and not any(c.is_dir() for c in d.iterdir())]


def test_run_dirs_resolved_in_the_same_second_are_distinct_and_created(tmp_path, monkeypatch):
    """The default `hydra.run.dir`: two runs whose clocks read the same second get their own directory."""
    setup()
    monkeypatch.setattr("time.strftime", lambda fmt, *a: "2026-01-01/00-00-00")
    base = str(tmp_path / "runs")
    dirs = [OmegaConf.create({"d": f"${{pg_run_dir:{base}}}"}).d for _ in range(20)]
    assert len(set(dirs)) == 20
    assert all(Path(d).is_dir() and Path(d).parent.name == "2026-01-01" for d in dirs)
    assert all(Path(d).name.startswith("00-00-00-") for d in dirs)


def test_torchrun_without_standalone_gets_a_launch_specific_dir(monkeypatch):
    """Plain `torchrun` (no --standalone) sets TORCHELASTIC_RUN_ID=none for every launch."""
    from paramgolf.config import compose

    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "none")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.delenv("PARAMGOLF_WORKER", raising=False)
    d = compose._run_dir("outputs/runs")
    assert d != "outputs/runs/torchrun-none" and f"-{os.getppid()}-" in d
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "abc123")
    assert compose._run_dir("outputs/runs") == "outputs/runs/torchrun-abc123"


@pytest.mark.slow
def test_two_runs_started_together_never_share_a_directory(tmp_path):
    args = ["experiment=smoke", "logger=none", "train.iterations=2", "train.progress=false", "eval.progress=false"]
    e = dict(os.environ, OMP_NUM_THREADS="1", PARAMGOLF_CACHE=str(tmp_path / "cache"))
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "paramgolf.cli.train", *args, f"seed={seed}"],
            cwd=tmp_path,
            env=e,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for seed in (11, 22)
    ]
    for p in procs:
        _, err = p.communicate(timeout=600)
        assert p.returncode == 0, err[-3000:]
    runs = sorted(p.parent for p in (tmp_path / "outputs" / "runs").rglob("results.json"))
    assert len(runs) == 2
    for run in runs:  # each directory's saved config, results and artifact are one run's
        seed = json.loads((run / "results.json").read_text())["seed"]
        assert OmegaConf.load(run / ".hydra" / "config.yaml").seed == seed
        assert (run / "model.pgart").is_file()
    assert {json.loads((r / "results.json").read_text())["seed"] for r in runs} == {11, 22}


@pytest.mark.parametrize(
    "args, expected",
    [
        (["arch.num_layer=6"], "did you mean 'arch.num_layers'?"),
        (["+arch.num_layer=6"], "did you mean 'arch.num_layers'?"),
        (["experiment=smoke", "train.iterations=abc"], "train.iterations"),
        (["arch=basline"], "did you mean 'arch=baseline'?"),
        (["experiment=smoke", "train.nproc_per_node=0"], "train.nproc_per_node=0"),
    ],
)
def test_config_mistakes_are_one_line_exit_2_and_leave_no_run_dir(tmp_path, args, expected):
    proc = _train(tmp_path, *args, "logger=none")
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and expected in lines[0] and "Traceback" not in proc.stderr, proc.stderr
    assert "+arch.num_layer" not in proc.stderr  # not Hydra's hint to append the misspelt key
    runs = tmp_path / "outputs" / "runs"
    assert not runs.exists() or not _leaf_dirs(runs)  # no run directory, not even one holding only .hydra/


def test_help_lists_options_but_not_internal_schemas(tmp_path):
    proc = _train(tmp_path, "--help")
    assert proc.returncode == 0
    assert "quant/codec: 7z, brotli, brotli_shuffle, lzma, pergroup, zlib, zstd" in proc.stdout
    assert "experiment: baseline," in proc.stdout and "_schema" not in proc.stdout
    missing = _train(tmp_path, "eval=slidng")
    assert missing.returncode == 2 and "options: sliding, standard" in missing.stderr
    assert "_schema" not in missing.stderr


@pytest.mark.slow
def test_a_workers_user_error_is_one_line_printed_once(tmp_path):
    """Two in-process workers both find no data: one line, exit 2, no launcher tracebacks."""
    proc = _train(tmp_path, "experiment=baseline", "logger=none", "budget_check=off", "train.nproc_per_node=2")
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "paramgolf-data download" in lines[0], proc.stderr
    assert "results.json" in lines[0]


@pytest.mark.slow
def test_a_killed_run_is_recognizable_and_keeps_its_finished_figures(tmp_path):
    """SIGKILL mid-training: results.json says `running` and holds the data and model stages' figures."""
    import signal
    import time

    args = ["experiment=smoke", "logger=none", "train.iterations=100000", "train.progress=false", "train.log_every=1"]
    e = dict(os.environ, OMP_NUM_THREADS="1", PARAMGOLF_CACHE=str(tmp_path / "cache"))
    proc = subprocess.Popen(
        [sys.executable, "-m", "paramgolf.cli.train", *args, "hydra.run.dir=outputs/runs/k"],
        cwd=tmp_path,
        env=e,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    metrics = tmp_path / "outputs" / "runs" / "k" / "metrics.jsonl"
    deadline = time.monotonic() + 600
    while not (metrics.is_file() and metrics.read_text().count("train/loss") >= 3):
        assert proc.poll() is None and time.monotonic() < deadline, "the run ended or never started training"
        time.sleep(0.5)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    r = json.loads((tmp_path / "outputs" / "runs" / "k" / "results.json").read_text())
    assert r["status"] == "running" and "val_bpb" not in r
    assert r["num_val_tokens"] > 0 and r["params"] > 0 and r["seed"] == 1337
