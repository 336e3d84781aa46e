"""WandbLogger: a real offline run read back from its .wandb file (with wandb's own reader), and failures that only warn.

The autouse fixture in tests/conftest.py points every WANDB_* dir at tmp_path and sets
WANDB_MODE=offline, so nothing here touches the home dir or the network.
"""

from __future__ import annotations

import sys

import pytest
import wandb
from hydra.utils import instantiate
from wandb_files import read_offline_run  # tests/tracking/wandb_files.py: wandb's own reader of .wandb logs

from paramgolf.tracking.base import LoggerWarning
from paramgolf.tracking.wandb_logger import WandbLogger, artifact_name

CONFIG = {
    "seed": 1337,
    "model": {"n_layer": 4, "d_model": 64},
    "optimizer": {"lr": 0.02, "name": "muon"},
    # Long enough that the run record spans several 32 KiB blocks of the .wandb log.
    "notes": "x" * 40_000,
}


def _start(logger: WandbLogger, run_dir, tags=("ci",)) -> None:
    logger.start(run_dir, CONFIG, run_name="baseline-s1337", group="baseline", job_type="train", tags=list(tags))


def test_offline_run_round_trips_config_history_summary_artifact(tmp_path):
    run_dir = tmp_path / "run"
    model = tmp_path / "final_model.int8.ptz"
    model.write_bytes(b"\x01" * 1234)
    logger = WandbLogger(mode="offline", tags=["sweep"])
    _start(logger, run_dir)
    assert logger.active and logger.active_mode == "offline"
    losses = [4.5, 3.25, 2.75]
    for step, loss in enumerate(losses, start=1):
        logger.log({"train/loss": loss, "train/tokens_per_s": 1000.0 * step}, step=step)
    logger.log({"val/bpb": 1.5, "val/loss": 2.5}, step=3)
    logger.summary({"val_bpb": 1.4321, "artifact_bytes": 1234})
    logger.log_artifact(model, name="baseline-s1337/model", type="model", metadata={"model_bytes": 1234, "path": model})
    logger.finish(exit_code=0)
    assert not logger.active

    wandb_files = list(run_dir.glob("wandb/offline-run-*/run-*.wandb"))
    assert len(wandb_files) == 1
    run = read_offline_run(run_dir, wait_s=10.0)

    assert run.name == "baseline-s1337" and run.group == "baseline" and run.job_type == "train"
    assert run.project == "paramgolf"
    assert sorted(run.tags) == ["ci", "sweep"]
    assert run.config == CONFIG

    train_rows = [row for row in run.history if "train/loss" in row]
    assert [row["_step"] for row in train_rows] == [1, 2, 3]
    assert [row["train/loss"] for row in train_rows] == losses
    assert [row["train/tokens_per_s"] for row in train_rows] == [1000.0, 2000.0, 3000.0]
    # The val metrics logged at step 3 land in the same row as the step-3 train metrics.
    assert train_rows[-1]["val/bpb"] == 1.5 and train_rows[-1]["val/loss"] == 2.5

    assert run.summary["val_bpb"] == 1.4321
    assert run.summary["artifact_bytes"] == 1234
    assert run.summary["train/loss"] == 2.75  # wandb keeps the last logged value

    assert run.artifacts == ["baseline-s1337-model"]
    (artifact,) = run.artifact_details
    assert artifact.type == "model"
    assert artifact.metadata == {"model_bytes": 1234, "path": str(model)}
    assert artifact.sizes == {"final_model.int8.ptz": 1234}
    assert run.exit_code == 0


def test_init_failure_only_warns_and_later_calls_are_noops(tmp_path, monkeypatch):
    def broken_init(*args, **kwargs):
        raise RuntimeError("wandb exploded")

    monkeypatch.setattr(wandb, "init", broken_init)
    logger = WandbLogger(mode="offline")
    with pytest.warns(LoggerWarning, match="wandb exploded"):
        _start(logger, tmp_path / "run")
    assert not logger.active
    model = tmp_path / "m.bin"
    model.write_bytes(b"x")
    logger.log({"train/loss": 1.0}, step=1)
    logger.summary({"val_bpb": 1.0})
    logger.log_artifact(model, "m", "model", {})
    logger.finish(1)
    assert not list((tmp_path / "run").glob("wandb/*/run-*.wandb"))


def test_missing_wandb_package_only_warns(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # makes `import wandb` raise ImportError
    logger = WandbLogger()
    with pytest.warns(LoggerWarning, match="import"):
        _start(logger, tmp_path / "run")
    assert not logger.active
    logger.log({"train/loss": 1.0}, step=1)


class _FailingRun:
    """Stands in for a wandb Run whose service died mid-run."""

    def __init__(self) -> None:
        self.calls = 0

    def log(self, *args, **kwargs):
        self.calls += 1
        raise ConnectionError("service gone")


def test_exception_inside_a_call_turns_the_logger_off():
    logger = WandbLogger()
    fake = _FailingRun()
    logger.run = fake
    with pytest.warns(LoggerWarning, match="log failed.*service gone"):
        logger.log({"train/loss": 1.0}, step=1)
    assert not logger.active
    logger.log({"train/loss": 1.0}, step=2)
    logger.finish()
    assert fake.calls == 1


def test_online_failure_falls_back_to_a_fresh_offline_run(tmp_path, monkeypatch):
    real_init = wandb.init
    calls: list[dict] = []

    def flaky_init(*args, **kwargs):
        calls.append(kwargs)
        if len(calls) == 1:
            raise wandb.errors.CommError("Run initialization has timed out after 15.0 sec.")
        return real_init(*args, **kwargs)

    monkeypatch.setattr(wandb, "init", flaky_init)
    logger = WandbLogger(mode="online", init_timeout_s=15.0)
    with pytest.warns(LoggerWarning, match="falling back to offline"):
        _start(logger, tmp_path / "run")
    assert [c["mode"] for c in calls] == ["online", "offline"]
    assert calls[0]["settings"].init_timeout == 15.0
    assert "id" not in calls[1]
    assert logger.active and logger.active_mode == "offline"
    logger.log({"train/loss": 2.0}, step=1)
    logger.finish(exit_code=0)
    run = read_offline_run(tmp_path / "run", wait_s=10.0)
    assert [row["train/loss"] for row in run.history] == [2.0]


def test_hydra_instantiates_it_and_bad_mode_is_a_config_error():
    logger = instantiate({"_target_": "paramgolf.tracking.wandb_logger.WandbLogger", "mode": "disabled", "tags": ["a"]})
    assert isinstance(logger, WandbLogger) and logger.mode == "disabled" and logger.tags == ["a"]
    with pytest.raises(ValueError, match="logger.mode='onlin'"):
        WandbLogger(mode="onlin")


def test_artifact_name_is_sanitised():
    assert artifact_name("pr754/seed 1:model") == "pr754-seed-1-model"
    with pytest.raises(ValueError):
        artifact_name("///")


FALLBACK = """
import sys
from pathlib import Path
from paramgolf.tracking.wandb_logger import WandbLogger
logger = WandbLogger(mode="online", init_timeout_s=3.0)
logger.start(Path(sys.argv[1]), {"a": 1}, run_name="x-s1", group="x", job_type="train", tags=[])
logger.log({"train/loss": 1.0}, step=1)
logger.finish()
print("=== OUR LAST LINE ===", file=sys.stderr, flush=True)
"""


@pytest.mark.slow
def test_real_online_failure_leaves_one_offline_run_and_no_late_output(tmp_path):
    """A real unreachable server (a closed local port): one offline run dir, nothing printed after ours."""
    import os
    import subprocess

    env = dict(os.environ, WANDB_API_KEY="a" * 40, WANDB_BASE_URL="http://127.0.0.1:9")
    env.pop("WANDB_MODE", None)
    env.pop("WANDB_SILENT", None)
    proc = subprocess.run(
        [sys.executable, "-c", FALLBACK, str(tmp_path / "run")],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,  # wandb prints to both
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert "falling back to offline" in proc.stdout
    assert proc.stdout.rstrip().splitlines()[-1] == "=== OUR LAST LINE ===", proc.stdout[-1500:]
    runs = sorted(p.name for p in (tmp_path / "run" / "wandb").iterdir() if p.is_dir() and not p.is_symlink())
    assert len(runs) == 1 and runs[0].startswith("offline-run-"), runs
