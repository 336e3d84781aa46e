"""A real seed sweep with logger=wandb (offline), each run read back from its `.wandb` file with
wandb's own reader (tests/tracking/wandb_files.py): the W&B layout of issue 12's candidates."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from wandb_files import read_offline_run  # tests/tracking/wandb_files.py

from paramgolf.tracking.wandb_logger import artifact_name

pytestmark = pytest.mark.slow

SHRINK = ["train.iterations=3", "train.batch_tokens=2048", "data.val_max_tokens=8192"]
QUIET = ["train.progress=false", "eval.progress=false"]
# seed and the progress switches are not part of the candidate; the shrinking overrides are.
CANDIDATE = "smoke,data.val_max_tokens=8192,train.batch_tokens=2048,train.iterations=3"
SUMMARY_KEYS = ("val_bpb", "val_loss", "artifact_bytes", "train_time_s", "eval_time_s")


def _env(tmp: Path) -> dict[str, str]:
    env = dict(os.environ, PARAMGOLF_CACHE=str(tmp / "cache"), OMP_NUM_THREADS="1", HYDRA_FULL_ERROR="1")
    env.update(WANDB_MODE="offline", WANDB_SILENT="true")
    for var in ("WANDB_DIR", "WANDB_DATA_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR"):
        env[var] = str(tmp / "wandb_home" / var.lower())
    return env


def _run(tmp: Path, *args: str) -> None:
    proc = subprocess.run([sys.executable, *args], cwd=tmp, env=_env(tmp), capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, f"{' '.join(args)} exited {proc.returncode}\n{proc.stderr[-5000:]}"


@pytest.fixture(scope="module")
def sweep(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("wandb_sweep")
    _run(
        tmp,
        *("-m", "paramgolf.cli.train", "-m", "experiment=smoke", "logger=wandb", "seed=1,2"),
        *SHRINK,
        *QUIET,
        "hydra.sweep.dir=outputs/sweep",
    )
    return tmp / "outputs" / "sweep"


def _results(run_dir: Path) -> dict:
    return json.loads((run_dir / "results.json").read_text())


@pytest.mark.parametrize("job, seed", [("0_seed1", 1), ("1_seed2", 2)])
def test_each_seed_is_one_run_in_the_candidates_group(sweep, job, seed):
    r = _results(sweep / job)
    assert r["status"] == "ok" and r["seed"] == seed and r["name"] == CANDIDATE
    run = read_offline_run(sweep / job, wait_s=15)

    assert run.group == CANDIDATE and run.job_type == "train" and run.name == f"{CANDIDATE}-s{seed}"
    assert run.exit_code == 0
    for tag in ("experiment:smoke", "arch:baseline", "quant:int8_zlib", "quant/quantizer:int8_row", "ttt:none"):
        assert tag in run.tags, (tag, run.tags)
    assert not [t for t in run.tags if t.startswith(("hydra", "logger"))]
    # group-by fields: W&B groups runs by config keys, not by tags
    assert run.config["name"] == CANDIDATE and run.config["seed"] == seed
    assert run.config["choices"]["quant"] == "int8_zlib" and run.config["choices"]["data"] == "synthetic"
    assert run.config["train"]["iterations"] == 3  # and the resolved config itself

    for key in SUMMARY_KEYS:
        assert run.summary[key] == pytest.approx(r[key]), key
    assert run.summary["compliance/verdict"] == r["compliance"]["verdict"]
    assert run.summary["compliant"] is r["compliance"]["compliant"] is True

    (artifact,) = run.artifact_details
    assert artifact.type == "model" and artifact.name == artifact_name(f"{CANDIDATE}-s{seed}")
    assert artifact.sizes == {"model.pgart": r["model_bytes"]}


def test_the_seeds_differ_only_by_seed(sweep):
    a, b = (read_offline_run(sweep / job, wait_s=15) for job in ("0_seed1", "1_seed2"))
    assert a.group == b.group and a.name != b.name and sorted(a.tags) == sorted(b.tags)
    same = {k: v for k, v in a.config.items() if k != "seed"}
    assert same == {k: v for k, v in b.config.items() if k != "seed"}


def test_paramgolf_eval_logs_an_eval_run_of_the_same_candidate(sweep):
    src, out = sweep / "0_seed1", sweep.parent / "eval_seed1"  # not under the sweep's runs, read above
    _run(sweep.parents[1], "-m", "paramgolf.cli.eval", str(src), "eval.progress=false", "--out", str(out))
    r = _results(out)
    run = read_offline_run(out, wait_s=15)
    assert run.group == CANDIDATE and run.job_type == "eval" and run.name == f"{CANDIDATE}-s1"
    assert "quant:int8_zlib" in run.tags and run.config["choices"]["eval"] == "standard"
    assert run.summary["val_bpb"] == pytest.approx(r["val_bpb"])
    assert run.summary["artifact_bytes"] == r["artifact_bytes"]
    assert run.artifacts == []  # the artifact it scored is the training run's
