"""Checkpoints and train.resume: atomic files, damaged ones refused, bit-identical continuation."""

from __future__ import annotations

import functools
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from gloo_workers import run_gloo_workers
from safetensors.torch import load_file

from paramgolf.config.compose import compose, to_container
from paramgolf.data.loader import DistributedTokenLoader
from paramgolf.data.shards import write_shard
from paramgolf.errors import UserError
from paramgolf.optim.averaging import EMA
from paramgolf.runner import checkpoint as CK
from paramgolf.runner.build import build_model, build_optimizer_for
from paramgolf.runner.distributed import DistEnv
from paramgolf.runner.stages import _AveragingHook
from paramgolf.runner.train_loop import LoopSettings, Trainer
from paramgolf.tracking.jsonl import read_metrics

CPU = DistEnv(0, 1, 0, torch.device("cpu"))
VOCAB = 61
CONFIG = {"seed": 1, "train": {"iterations": 8, "resume": None, "progress": True}, "arch": {"num_layers": 2}}


def save(run_dir: Path, step: int, keep: int = 2, config=CONFIG, value: float = 0.0) -> CK.Checkpointer:
    saver = CK.Checkpointer(run_dir, CK.CheckpointSettings(every_steps=1, keep=keep), CPU, config, lambda m: None)
    loop = {"step": step, "elapsed_s": float(step), "last_loss": 1.0, "stopped_by": None}
    saver.write(step, float(step), {"model": {"w": torch.full((4,), value)}}, {"loop": loop})
    return saver


def resume(run_dir: Path, config=CONFIG) -> tuple[CK.Resumed, list[str]]:
    said: list[str] = []
    return CK.resume(run_dir, config, CPU, said.append), said


# ---------------------------------------------------------------------------------------------- files


def test_a_checkpoint_round_trips_and_loads_only_tensors_and_containers(tmp_path):
    path = tmp_path / "c.pt"
    payload = {"t": torch.arange(5), "dtype": torch.bfloat16, "nested": {"x": (1, None, "s")}}
    n = CK.write_checkpoint(path, {"step": 3}, payload)
    header, got = CK.read_checkpoint(path)
    assert n == path.stat().st_size and header["step"] == 3 and header["format"] == CK.FORMAT
    assert (
        torch.equal(got["t"], payload["t"]) and got["dtype"] is torch.bfloat16 and got["nested"]["x"] == (1, None, "s")
    )


class Thing:
    """Any class: torch.load(weights_only=True) must refuse to build it."""

    x = 1


def test_an_object_payload_is_refused_even_with_a_valid_checksum(tmp_path):
    path = tmp_path / "c.pt"
    CK.write_checkpoint(path, {"step": 1}, {"obj": Thing()})
    with pytest.raises(CK.CheckpointError, match="does not load"):
        CK.read_checkpoint(path)


def test_a_write_that_fails_midway_leaves_the_previous_checkpoint_intact(tmp_path, monkeypatch):
    path = tmp_path / "checkpoints" / CK.file_name(5, 0)
    CK.write_checkpoint(path, {"step": 5}, {"v": torch.ones(3)})
    before = path.read_bytes()

    def disk_full(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", disk_full)  # the new bytes are in the temporary file, not yet renamed
    with pytest.raises(OSError, match="No space"):
        CK.write_checkpoint(path, {"step": 5}, {"v": torch.zeros(1000)})
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary file left behind
    assert torch.equal(CK.read_checkpoint(path)[1]["v"], torch.ones(3))


def test_a_kill_during_a_write_leaves_a_temporary_file_that_resume_ignores(tmp_path):
    save(tmp_path, 4, value=4.0)
    good = (tmp_path / "checkpoints" / CK.file_name(4, 0)).read_bytes()
    # what a SIGKILL between write and rename leaves: half a file under write_atomic's temporary name
    (tmp_path / "checkpoints" / f".{CK.file_name(8, 0)}.k2j4.tmp").write_bytes(good[: len(good) // 2])
    r, said = resume(tmp_path)
    assert r.step == 4 and torch.equal(r.shared["model"]["w"], torch.full((4,), 4.0))
    assert not any("refusing" in m for m in said)


@pytest.mark.parametrize("damage", ["truncate", "bit_flip", "empty"])
def test_a_damaged_newest_checkpoint_is_refused_by_name_and_the_previous_one_used(tmp_path, damage):
    save(tmp_path, 10, value=10.0)
    save(tmp_path, 20, value=20.0)
    newest = tmp_path / "checkpoints" / CK.file_name(20, 0)
    data = bytearray(newest.read_bytes())
    if damage == "truncate":
        data = data[: len(data) - 100]
    elif damage == "bit_flip":
        data[len(data) // 2] ^= 0x10
    else:
        data = bytearray()
    newest.write_bytes(bytes(data))
    r, said = resume(tmp_path)
    assert r.step == 10 and torch.equal(r.shared["model"]["w"], torch.full((4,), 10.0))
    refused = [m for m in said if "refusing" in m]
    assert len(refused) == 1 and str(newest) in refused[0]
    expected = "not a paramgolf checkpoint" if damage == "empty" else "checksum mismatch"
    assert expected in refused[0] and "previous" in refused[0]
    assert any("resuming from" in m and "step 10" in m for m in said)


def test_no_usable_checkpoint_is_a_user_error_naming_the_run_and_the_way_out(tmp_path):
    save(tmp_path, 10)
    (tmp_path / "checkpoints" / CK.file_name(10, 0)).write_bytes(b"PGCKPT1\nbroken")
    with pytest.raises(UserError, match="none of the 1 checkpoint") as e:
        resume(tmp_path)
    assert str(tmp_path) in str(e.value) and "without train.resume" in str(e.value)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(UserError, match="no checkpoint in"):
        resume(empty)
    with pytest.raises(UserError, match="no such directory"):
        resume(tmp_path / "missing")


def test_resume_takes_the_run_directory_or_its_checkpoints_directory(tmp_path):
    save(tmp_path, 7)
    by_run, by_dir = resume(tmp_path)[0], resume(tmp_path / "checkpoints")[0]
    assert by_run.step == by_dir.step == 7 and by_run.run_dir == by_dir.run_dir == tmp_path


def test_a_config_that_differs_is_refused_listing_the_keys_but_reporting_keys_may_change(tmp_path):
    save(tmp_path, 3)
    changed = json.loads(json.dumps(CONFIG))
    changed["seed"] = 2
    changed["arch"]["num_layers"] = 3
    with pytest.raises(UserError, match="2 key") as e:
        resume(tmp_path, changed)
    assert "seed: 1 → 2" in str(e.value) and "arch.num_layers: 2 → 3" in str(e.value)
    free = json.loads(json.dumps(CONFIG))
    free["train"].update(resume=str(tmp_path), progress=False)
    free["logger"] = {"_target_": "x"}
    assert resume(tmp_path, free)[0].step == 3


def test_a_checkpoint_of_another_world_size_is_refused(tmp_path):
    saver = CK.Checkpointer(tmp_path, CK.CheckpointSettings(every_steps=1), CPU, CONFIG, lambda m: None)
    saver.env = DistEnv(0, 2, 0, torch.device("cpu"))  # as rank 0 of 2 wrote it (no barrier outside a group)
    saver.write(1, 1.0, {"model": {}}, {"loop": {"step": 1, "elapsed_s": 1.0, "last_loss": 1.0, "stopped_by": None}})
    with pytest.raises(UserError, match="written by 2 processes, this run has 1"):
        resume(tmp_path)


def test_only_the_newest_checkpoints_are_kept(tmp_path):
    for step in (1, 2, 3, 4):
        saver = save(tmp_path, step, keep=2)
    assert sorted(CK.list_checkpoints(tmp_path / "checkpoints")) == [3, 4]
    assert saver.last_bytes == (tmp_path / "checkpoints" / CK.file_name(4, 0)).stat().st_size
    CK.remove_checkpoints(tmp_path)
    assert not (tmp_path / "checkpoints").exists()


def test_rng_states_are_restored(tmp_path):
    import random

    state = CK.capture_rng(torch.device("cpu"))
    CK.write_checkpoint(tmp_path / "r.pt", {}, {"rng": state})
    expected = (torch.rand(3), np.random.rand(3), random.random())
    CK.restore_rng(CK.read_checkpoint(tmp_path / "r.pt")[1]["rng"], torch.device("cpu"))
    got = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(got[0], expected[0]) and np.array_equal(got[1], expected[1]) and got[2] == expected[2]


# ---------------------------------------------------------------------------------------------- the train loop


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> list[Path]:
    d = tmp_path_factory.mktemp("shards")
    rng = np.random.default_rng(0)
    files = [d / f"train_{i:06d}.bin" for i in range(2)]
    for f in files:
        write_shard(f, rng.integers(0, VOCAB, 3000))  # shorter than the run: the stream crosses shard ends
    return files


@functools.cache
def tiny_config() -> dict:
    overrides = ["arch.num_layers=2", "arch.model_dim=32", f"arch.vocab_size={VOCAB}", "arch.attention.num_heads=2"]
    return to_container(compose([*overrides, "arch.attention.num_kv_heads=1", "optimizer.muon_ns_dtype=float32"]))


def trainer(files, env: DistEnv, run_dir: Path | None = None, every: int = 0, resumed=None, iterations: int = 8):
    c = tiny_config()
    torch.manual_seed(0)
    model = build_model(c["arch"])
    opt = build_optimizer_for(model, c["optimizer"])
    s = LoopSettings(
        iterations=iterations,
        batch_tokens=512,
        seq_len=32,
        micro_batches=4,
        warmup_steps=0,
        max_wallclock_seconds=None,
        val_every=0,
        log_every=1,
        lr_schedule=lambda step, elapsed: 1.0 - step / (iterations + 1),
    )
    ema = EMA(decay=0.9)
    saver = None
    if every:
        saver = CK.Checkpointer(run_dir, CK.CheckpointSettings(every_steps=every), env, {"seed": 0}, lambda m: None)
    loader = lambda: DistributedTokenLoader(files, env.rank, env.world_size, seed=3)  # noqa: E731
    t = Trainer(model, model, opt, loader, s, env, hooks=[_AveragingHook(ema, model)], checkpointer=saver)
    t.resumed = resumed
    ema.update(model, 0)
    return t, ema


def weights(t: Trainer, ema: EMA) -> dict[str, torch.Tensor]:
    return {**{k: v.clone() for k, v in t.model.state_dict().items()}, **{f"ema.{k}": v for k, v in ema.shadow.items()}}


def assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    assert [k for k in a if not torch.equal(a[k], b[k])] == []


@pytest.mark.slow
def test_resumed_training_is_bit_identical_and_checkpointing_changes_nothing(shards, tmp_path):
    plain, plain_ema = trainer(shards, CPU)
    plain_losses = plain.train().losses
    saved, saved_ema = trainer(shards, CPU, tmp_path, every=3)
    assert saved.train().losses == plain_losses  # writing checkpoints does not touch the math
    assert_same(weights(saved, saved_ema), weights(plain, plain_ema))
    assert sorted(CK.list_checkpoints(tmp_path / "checkpoints")) == [6, 8]  # 8: the end of training
    ended, ended_ema = trainer(shards, CPU, resumed=CK.resume(tmp_path, {"seed": 0}, CPU, lambda m: None))
    summary = ended.train()  # killed after training: nothing left to train, the same weights
    assert (summary.steps, summary.losses, summary.last_loss) == (8, [], plain_losses[-1])
    assert_same(weights(ended, ended_ema), weights(plain, plain_ema))
    for p in CK.list_checkpoints(tmp_path / "checkpoints")[8].values():
        p.unlink()  # as if killed after step 6 (step 7 ran, unsaved)
    resumed = CK.resume(tmp_path, {"seed": 0}, CPU, lambda m: None)
    again, again_ema = trainer(shards, CPU, resumed=resumed)
    summary = again.train()
    assert summary.steps == 8 and summary.losses == plain_losses[6:]
    assert_same(weights(again, again_ema), weights(plain, plain_ema))


def _ranks_resume(rank: int, world_size: int, files: list[Path], run_dir: str) -> dict:
    env = DistEnv(rank, world_size, rank, torch.device("cpu"))
    plain, plain_ema = trainer(files, env)
    losses = plain.train().losses
    saved, _ = trainer(files, env, Path(run_dir), every=5)
    saved.train()
    if rank == 0:
        for p in CK.list_checkpoints(Path(run_dir) / "checkpoints")[8].values():
            p.unlink()
    torch.distributed.barrier()
    resumed = CK.resume(Path(run_dir), {"seed": 0}, env, lambda m: None)
    again, again_ema = trainer(files, env, resumed=resumed)
    again_losses = again.train().losses
    return {
        "losses": (losses, again_losses),
        "plain": weights(plain, plain_ema),
        "resumed": weights(again, again_ema),
        "momentum_slots": len(resumed.own["optimizer"]["muon"]["state"]),
    }


@pytest.mark.slow
def test_two_gloo_ranks_resume_bit_identically_each_with_its_own_optimizer_shard(shards, tmp_path):
    per_rank = run_gloo_workers(_ranks_resume, world_size=2, args=(shards, str(tmp_path)), timeout_s=600)
    for r in per_rank:
        plain, again = r["losses"]
        assert again == plain[5:]
        assert_same(r["resumed"], r["plain"])
    # per-matrix Muon shards its momentum by rank: each rank restored its own half
    total = sum(r["momentum_slots"] for r in per_rank)
    assert all(0 < r["momentum_slots"] < total for r in per_rank)


# ---------------------------------------------------------------------------------------------- end to end

SMOKE = [
    "experiment=smoke",
    "logger=none",
    "train.progress=false",
    "eval.progress=false",
    "train.log_every=1",
    "train.iterations=24",
    "train.schedule.warmdown_iters=10",
    "train.checkpoint_every_steps=8",
]


def _cli(cwd: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "paramgolf.cli.train", *args]


def _env(tmp_path: Path) -> dict[str, str]:
    return dict(os.environ, OMP_NUM_THREADS="1", PARAMGOLF_CACHE=str(tmp_path / "cache"), HYDRA_FULL_ERROR="1")


def _run(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    proc = subprocess.run(_cli(tmp_path, *args), cwd=tmp_path, env=_env(tmp_path), capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-5000:]
    return proc


def _losses(run_dir: Path) -> list[tuple[int, float]]:
    return [(m["step"], m["train/loss"]) for m in read_metrics(run_dir / "metrics.jsonl") if "train/loss" in m]


@pytest.mark.slow
@pytest.mark.timeout(3600)  # three smoke runs of 24 steps: minutes on a loaded 2-core box
def test_a_smoke_run_killed_mid_training_resumes_bit_identical(tmp_path):
    _run(tmp_path, *SMOKE, "hydra.run.dir=outputs/full")
    full = tmp_path / "outputs" / "full"
    assert not (full / "checkpoints").exists()  # a finished run removes its checkpoints

    killed = tmp_path / "outputs" / "killed"
    proc = subprocess.Popen(
        _cli(tmp_path, *SMOKE, "hydra.run.dir=outputs/killed"),
        cwd=tmp_path,
        env=_env(tmp_path),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.monotonic() + 900
    try:
        # killed after the step-16 checkpoint exists, while training goes on: steps past 16 are lost
        while not (killed / "checkpoints" / CK.file_name(16, 0)).is_file():
            assert proc.poll() is None and time.monotonic() < deadline, "the run ended or never checkpointed"
            time.sleep(0.05)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
    assert json.loads((killed / "results.json").read_text())["status"] == "running"
    assert {8, 16} == set(CK.list_checkpoints(killed / "checkpoints"))
    # the newest damaged: the resume refuses it and continues from step 8
    newest = killed / "checkpoints" / CK.file_name(16, 0)
    data = bytearray(newest.read_bytes())
    data[len(data) // 3] ^= 0x01
    newest.write_bytes(bytes(data))

    proc = _run(tmp_path, *SMOKE, f"train.resume={killed}", "hydra.run.dir=outputs/resumed")
    assert f"refusing {newest}: checksum mismatch" in proc.stderr
    assert "resuming from" in proc.stderr and "step 8" in proc.stderr
    resumed = tmp_path / "outputs" / "resumed"
    a, b = (json.loads((d / "results.json").read_text()) for d in (full, resumed))
    assert b["resumed_from"]["step"] == 8 and b["resumed_from"]["run_dir"] == str(killed)
    assert b["status"] == "ok" and b["steps"] == a["steps"] == 24
    assert _losses(resumed) == _losses(full) and len(_losses(full)) == 24
    assert b["val_bpb"] == a["val_bpb"] and b["val_loss"] == a["val_loss"]
    assert b["final_train_loss"] == a["final_train_loss"]
    wa, wb = load_file(full / "weights.safetensors"), load_file(resumed / "weights.safetensors")
    assert_same(wa, wb)
    assert (full / "model.pgart").read_bytes() == (resumed / "model.pgart").read_bytes()

    # a changed config is refused with the key
    bad = subprocess.run(
        _cli(tmp_path, *SMOKE, "seed=7", f"train.resume={killed}"),
        cwd=tmp_path,
        env=_env(tmp_path),
        capture_output=True,
        text=True,
    )
    assert bad.returncode == 2 and "seed: 1337 → 7" in bad.stderr
