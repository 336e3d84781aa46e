"""Training checkpoints: what a killed run needs to continue bit for bit, written so that a kill
never damages the last good one.

A checkpoint of step N is one file per rank, `<run_dir>/checkpoints/step<N>.rank<r>.pt`. Rank 0's
file holds the replicated state (model weights, the train hooks' state: weight averaging, late QAT)
and the run's config; every rank's file holds its own state (the optimizers', which Muon shards by
rank; the token loader's position; the torch, CUDA, numpy and Python RNG states; step, elapsed
train time, last logged loss). A file is

    PGCKPT1\\n   <sha256 of everything after this line, hex>\\n   <header JSON>\\n   <torch.save payload>

written under a temporary name in the same directory, fsynced, renamed over its final name, then
the directory is fsynced. Reading checks the magic and the checksum before anything is parsed, and
loads the payload with `torch.load(weights_only=True)`: tensors and plain containers, never
arbitrary objects. The newest `keep` checkpoints are kept. Resuming takes the newest checkpoint
whose files verify on every rank; each one refused is named with the reason.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
import random
import re
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from paramgolf.errors import UserError
from paramgolf.fsio import to_jsonable, write_atomic
from paramgolf.runner import distributed as D

MAGIC = b"PGCKPT1\n"
FORMAT = 1
CHECKPOINT_DIR = "checkpoints"
_NAME = re.compile(r"^step(\d+)\.rank(\d+)\.pt$")
# Keys a resumed run may change: where it resumes from, how it reports, how it checkpoints.
RESUME_FREE_KEYS = (
    "train.resume",
    "train.progress",
    "train.log_every",
    "train.checkpoint_every_steps",
    "train.checkpoint_every_s",
    "train.checkpoint_keep",
    "train.collective_timeout_s",
    "eval.progress",
    "logger",
)


class CheckpointError(Exception):
    """A checkpoint file that cannot be used: the message names the file and why."""


@dataclass
class CheckpointSettings:
    """When the train loop writes checkpoints (`train.checkpoint_*`); both triggers off: never."""

    every_steps: int = 0  # after every N-th optimizer step (0: off)
    every_s: float | None = None  # after N seconds of training time since the last one (None: off)
    keep: int = 2  # newest checkpoints kept; older ones are deleted once a newer one is complete

    def __post_init__(self) -> None:
        if self.every_steps < 0:
            raise UserError(f"train.checkpoint_every_steps={self.every_steps} must be ≥ 0 (0: off)")
        if self.every_s is not None and self.every_s <= 0:
            raise UserError(f"train.checkpoint_every_s={self.every_s} must be > 0 or null (off)")
        if self.keep < 1:
            raise UserError(f"train.checkpoint_keep={self.keep} must be ≥ 1 (2 lets a damaged newest one fall back)")

    @property
    def enabled(self) -> bool:
        return self.every_steps > 0 or self.every_s is not None


def checkpoint_dir(run_dir: Path) -> Path:
    return Path(run_dir) / CHECKPOINT_DIR


def file_name(step: int, rank: int) -> str:
    return f"step{step:07d}.rank{rank}.pt"


def list_checkpoints(directory: Path) -> dict[int, dict[int, Path]]:
    """{step: {rank: file}} of the checkpoint files in `directory` (temporary files are not listed)."""
    found: dict[int, dict[int, Path]] = {}
    if Path(directory).is_dir():
        for p in Path(directory).iterdir():
            m = _NAME.match(p.name)
            if m:
                found.setdefault(int(m.group(1)), {})[int(m.group(2))] = p
    return found


# ---------------------------------------------------------------------------------------------- one file


def _fsync_dir(directory: Path) -> None:
    """Make a rename in `directory` durable (where the OS lets a directory be opened)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_checkpoint(path: Path, header: Mapping[str, Any], payload: Mapping[str, Any]) -> int:
    """Write one checkpoint file atomically (temporary file, fsync, rename, directory fsync); its bytes."""
    buf = io.BytesIO()
    torch.save(dict(payload), buf)
    head = json.dumps({"format": FORMAT, **header}, default=to_jsonable).encode() + b"\n"
    body = buf.getbuffer()
    digest = hashlib.sha256(head)
    digest.update(body)
    chunks = (MAGIC, digest.hexdigest().encode() + b"\n", head, body)
    write_atomic(path, chunks, fsync=True)
    _fsync_dir(Path(path).parent)
    return sum(len(c) for c in chunks)


def read_checkpoint(path: Path, map_location: Any = "cpu") -> tuple[dict[str, Any], dict[str, Any]]:
    """(header, payload) of a checkpoint file; CheckpointError when it is missing, damaged or not one."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot be read ({exc.strerror or exc})") from exc
    if not data.startswith(MAGIC):
        raise CheckpointError(f"{path}: not a paramgolf checkpoint (it does not start with {MAGIC!r})")
    start = len(MAGIC)
    end = data.find(b"\n", start)
    stored = data[start:end].decode("ascii", "replace") if end > 0 else ""
    body = memoryview(data)[end + 1 :] if end > 0 else memoryview(b"")
    actual = hashlib.sha256(body).hexdigest()
    if actual != stored:
        raise CheckpointError(
            f"{path}: checksum mismatch (sha256 of its {len(body):,} bytes is {actual[:16]}…, "
            f"the file says {stored[:16] or 'nothing'}…): it is truncated or damaged"
        )
    head_end = data.find(b"\n", end + 1)
    try:
        header = json.loads(data[end + 1 : head_end])
        if header.get("format") != FORMAT:
            raise CheckpointError(f"{path}: checkpoint format {header.get('format')!r}, this paramgolf reads {FORMAT}")
        payload = torch.load(io.BytesIO(data[head_end + 1 :]), map_location=map_location, weights_only=True)
    except (ValueError, RuntimeError, EOFError, OSError, pickle.UnpicklingError) as exc:
        raise CheckpointError(f"{path}: its checksum holds but it does not load ({type(exc).__name__}: {exc})") from exc
    return header, payload


# ---------------------------------------------------------------------------------------------- RNG


def capture_rng(device: torch.device) -> dict[str, Any]:
    """Every RNG a training step could draw from: torch (CPU and this rank's GPU), numpy, Python."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)),
        "python": random.getstate(),
    }
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def restore_rng(state: Mapping[str, Any], device: torch.device) -> None:
    torch.set_rng_state(state["torch"].cpu())
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.cpu().numpy().astype(np.uint32), pos, has_gauss, cached))
    random.setstate(state["python"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"].cpu(), device)


# ---------------------------------------------------------------------------------------------- writing


def _stateful_hooks(hooks: list[Any]) -> dict[str, Any]:
    """The train hooks with state (weight averaging, late QAT), by position and class."""
    return {f"{i}:{type(h).__name__}": h for i, h in enumerate(hooks) if hasattr(h, "state_dict")}


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


@dataclass
class Checkpointer:
    """Writes the train loop's checkpoints into `<run_dir>/checkpoints` on every rank, keeps the newest.

    `due(step, elapsed_s)` and `save(...)` are called by every rank at the same steps (`save` ends in
    a barrier, so a checkpoint is complete on every rank before rank 0 deletes an older one).
    """

    run_dir: Path
    settings: CheckpointSettings
    env: D.DistEnv
    config: dict[str, Any]  # the run's resolved config: a resume must match it
    say: Callable[[str], None] = _stderr
    written: int = 0
    write_time_s: float = 0.0  # every save, wall-clock; not counted as training time
    last_step: int | None = None
    last_bytes: int | None = None  # the newest checkpoint, all ranks' files
    _last_elapsed_s: float = field(default=0.0, repr=False)

    @property
    def directory(self) -> Path:
        return checkpoint_dir(self.run_dir)

    def start(self, elapsed_s: float) -> None:
        """The time trigger counts from here (the start of training, or the resumed checkpoint)."""
        self._last_elapsed_s = elapsed_s

    def due(self, step: int, elapsed_s: float) -> bool:
        s = self.settings
        if s.every_steps > 0 and step % s.every_steps == 0:
            return True
        if s.every_s is None:
            return False
        late = elapsed_s - self._last_elapsed_s >= s.every_s
        if self.env.distributed:  # per-rank clocks differ: every rank must agree on checkpointing
            late = D.all_reduce_scalar(float(late), self.env.device, "max") > 0
        return late

    def save(self, trainer: Any, loader: Any, step: int, elapsed_s: float, last_loss: float, stopped_by: str | None):
        """Checkpoint a Trainer after `step`; `stopped_by` marks the checkpoint written when training ended."""
        shared = {}
        if self.env.is_main:  # replicated on every rank: rank 0's copy is the one saved
            hooks = _stateful_hooks(trainer.hooks)
            shared = {"model": trainer.model.state_dict(), "hooks": {k: h.state_dict() for k, h in hooks.items()}}
        own = {
            "optimizer": trainer.opt.state_dict(),
            "loader": loader.state_dict(),
            "rng": capture_rng(self.env.device),
            "loop": {"step": step, "elapsed_s": elapsed_s, "last_loss": last_loss, "stopped_by": stopped_by},
        }
        self.write(step, elapsed_s, shared, own)

    def write(self, step: int, elapsed_s: float, shared: Mapping[str, Any], own: Mapping[str, Any]) -> None:
        """Write this rank's file of step `step` (rank 0's also holds `shared` and the config)."""
        started = time.perf_counter()
        env = self.env
        header: dict[str, Any] = {"step": step, "rank": env.rank, "world_size": env.world_size, "time": time.time()}
        payload: dict[str, Any] = {"own": dict(own)}
        if env.is_main:
            header["config"] = self.config
            payload["shared"] = dict(shared)
        write_checkpoint(self.directory / file_name(step, env.rank), header, payload)
        D.barrier()
        self._last_elapsed_s = elapsed_s
        self.written += 1
        self.last_step = step
        if env.is_main:
            files = list_checkpoints(self.directory)
            self.last_bytes = sum(p.stat().st_size for p in files.get(step, {}).values())
            for old in sorted(files)[: -self.settings.keep]:
                for p in files[old].values():
                    p.unlink(missing_ok=True)
        took = time.perf_counter() - started
        self.write_time_s += took
        if env.is_main:
            self.say(f"checkpoint: step {step} → {self.directory} ({self.last_bytes:,} bytes, {took:.2f}s)")

    def describe(self) -> dict[str, Any]:
        """What results.json records (`checkpoints`)."""
        s = self.settings
        return {
            "dir": str(self.directory),
            "every_steps": s.every_steps,
            "every_s": s.every_s,
            "keep": s.keep,
            "written": self.written,
            "last_step": self.last_step,
            "last_bytes": self.last_bytes,
            "write_time_s": self.write_time_s,
        }


def remove_checkpoints(run_dir: Path) -> None:
    """Delete a finished run's checkpoints (a run that completed has nothing left to resume)."""
    directory = checkpoint_dir(run_dir)
    for files in list_checkpoints(directory).values():
        for p in files.values():
            p.unlink(missing_ok=True)
    try:
        directory.rmdir()
    except OSError:
        pass  # absent, or it holds something that is not ours


# ---------------------------------------------------------------------------------------------- resuming


@dataclass
class Resumed:
    """A checkpoint chosen to resume from, loaded onto this rank's device."""

    run_dir: Path  # the run that wrote it
    step: int
    files: list[Path]  # the files this rank read (rank 0's first)
    shared: dict[str, Any]  # rank 0's: model, hooks
    own: dict[str, Any]  # this rank's: optimizer, loader, rng, loop

    def restore(self, trainer: Any, loader: Any) -> dict[str, Any]:
        """Load it into a Trainer's model, hooks and optimizers, its loader and the RNGs; the loop state."""
        trainer.model.load_state_dict(self.shared["model"], strict=True)
        hooks, saved = _stateful_hooks(trainer.hooks), self.shared["hooks"]
        if sorted(hooks) != sorted(saved):
            raise UserError(f"the checkpoint's train hooks {sorted(saved)} are not this run's {sorted(hooks)}")
        for k, h in hooks.items():
            h.load_state_dict(saved[k])
        trainer.opt.load_state_dict(self.own["optimizer"])
        loader.load_state_dict(self.own["loader"])
        restore_rng(self.own["rng"], trainer.env.device)
        return self.own["loop"]

    def describe(self) -> dict[str, Any]:
        """What results.json records (`resumed_from`)."""
        loop = self.own["loop"]
        return {
            "run_dir": str(self.run_dir),
            "step": self.step,
            "train_time_s": loop["elapsed_s"],
            "checkpoint": str(self.files[0]),
        }


def _flat(d: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(d, Mapping):
        return {prefix: d}
    out: dict[str, Any] = {}
    for k, v in d.items():
        out.update(_flat(v, f"{prefix}.{k}" if prefix else str(k)))
    if not d and prefix:
        out[prefix] = {}
    return out


def config_differences(saved: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
    """`key: saved → current` for each dotted key whose value differs, ignoring RESUME_FREE_KEYS."""
    a, b = (_flat(json.loads(json.dumps(c, default=to_jsonable))) for c in (saved, current))
    free = lambda k: any(k == f or k.startswith(f + ".") for f in RESUME_FREE_KEYS)  # noqa: E731
    keys = sorted(k for k in set(a) | set(b) if not free(k) and a.get(k, "<absent>") != b.get(k, "<absent>"))
    return [f"{k}: {a.get(k, '<absent>')!r} → {b.get(k, '<absent>')!r}" for k in keys]


def _check_header(path: Path, header: Mapping[str, Any], step: int, env: D.DistEnv) -> None:
    if header.get("world_size") != env.world_size:
        raise UserError(
            f"{path} was written by {header.get('world_size')} processes, this run has {env.world_size}: "
            f"resume with the same number (train.nproc_per_node / torchrun --nproc-per-node)"
        )
    if header.get("step") != step:
        raise CheckpointError(f"{path}: its header says step {header.get('step')}, its name step {step}")


def resume(
    run_dir: Path, config: Mapping[str, Any], env: D.DistEnv, say: Callable[[str], None] | None = None
) -> Resumed:
    """Load the newest checkpoint of `run_dir` (a run directory or its `checkpoints/`) that is whole on
    every rank; refuse a config that differs from the checkpoint's outside RESUME_FREE_KEYS.

    Every rank calls it; rank 0's file (model, config) is read by all of them, then their own.
    """
    say = say or _stderr
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UserError(f"train.resume={run_dir}: no such directory (give the run directory of the run to continue)")
    if run_dir.name == CHECKPOINT_DIR:
        run_dir = run_dir.parent
    directory = checkpoint_dir(run_dir)
    found = list_checkpoints(directory)
    if not found:
        raise UserError(
            f"train.resume={run_dir}: no checkpoint in {directory} (a run writes them when "
            f"train.checkpoint_every_steps or train.checkpoint_every_s is set, and removes them once it finishes)"
        )
    ranks = [0] if env.rank == 0 else [0, env.rank]  # rank 0's file first: every rank needs its model
    for step in sorted(found, reverse=True):
        files = [found[step].get(r) for r in ranks]
        shared = own = None
        try:
            for rank, path in zip(ranks, files):
                if path is None:
                    raise CheckpointError(
                        f"{directory / file_name(step, rank)}: missing (the run was killed before every rank wrote it)"
                    )
                header, payload = read_checkpoint(path, map_location=env.device)
                _check_header(path, header, step, env)
                if rank == 0:
                    diffs = config_differences(header.get("config") or {}, config)
                    if diffs:
                        raise UserError(
                            f"train.resume={run_dir}: this run's config differs from the checkpoint's in "
                            f"{len(diffs)} key(s): {'; '.join(diffs)}. Resume with the original config (only "
                            f"{', '.join(RESUME_FREE_KEYS)} may change)"
                        )
                    shared = payload["shared"]
                if rank == env.rank:
                    own = payload["own"]
        except CheckpointError as exc:
            say(f"checkpoint: refusing {exc}; trying the previous one")
        whole = D.all_reduce_scalar(float(own is not None), env.device, "sum") == env.world_size
        if whole:
            say(f"resuming from {directory} step {step} (train time {own['loop']['elapsed_s']:.1f}s)")
            return Resumed(run_dir, step, [p for p in files if p is not None], shared, own)
        if own is not None:
            say(f"checkpoint: step {step} is incomplete on another rank; trying the previous one")
    raise UserError(
        f"train.resume={run_dir}: none of the {len(found)} checkpoint(s) in {directory} is usable (see the "
        f"reasons above): start the run afresh without train.resume"
    )
