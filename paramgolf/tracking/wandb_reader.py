"""Read what an offline W&B run recorded, straight from its `run-<id>.wandb` file.

wandb 0.31 writes offline runs only into this file (no config.yaml, no
wandb-summary.json) and ships no Python reader for it. The file is a LevelDB-style
log of `wandb_internal_pb2.Record` protobufs:

    file   := header block*            header := b":W&B" + uint16 0xBEE1 (LE) + uint8 version
    block  := chunk* zero-padding      32 KiB each, counted from the start of the file
    chunk  := crc32 (uint32 LE, zlib/IEEE over type byte + data, unmasked)
              length (uint16 LE) type (uint8: FULL=1 FIRST=2 MIDDLE=3 LAST=4) data
A chunk never straddles a block; fewer than 7 bytes left in a block are padding.
Checked against files written by wandb-core 0.31.
"""
from __future__ import annotations

import json
import struct
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HEADER_IDENT = b":W&B"
HEADER_MAGIC = 0xBEE1
HEADER = struct.Struct("<4sHB")
CHUNK_HEADER = struct.Struct("<IHB")
BLOCK_SIZE = 32 * 1024
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


class WandbFileError(ValueError):
    """The file is not a readable W&B transaction log."""


def iter_record_bytes(path: str | Path) -> Iterator[bytes]:
    """Serialized Record payloads of a `.wandb` file, in write order.

    A truncated tail (the writer was killed mid-chunk) ends the iteration quietly;
    a checksum mismatch or an impossible chunk sequence raises WandbFileError.
    """
    path = Path(path)
    data = path.read_bytes()
    if len(data) < HEADER.size:
        raise WandbFileError(f"{path}: {len(data)} bytes is too short for a W&B file header")
    ident, magic, _version = HEADER.unpack_from(data, 0)
    if ident != HEADER_IDENT or magic != HEADER_MAGIC:
        raise WandbFileError(f"{path}: header {data[:HEADER.size]!r} is not ':W&B' + 0xBEE1; not a .wandb run file")

    pos = HEADER.size
    pending: list[bytes] | None = None  # parts of a record split over blocks
    while True:
        left_in_block = BLOCK_SIZE - pos % BLOCK_SIZE
        if left_in_block < CHUNK_HEADER.size:
            pos += left_in_block  # block trailer padding
            continue
        if pos + CHUNK_HEADER.size > len(data):
            return
        crc, length, kind = CHUNK_HEADER.unpack_from(data, pos)
        if crc == 0 and length == 0 and kind == 0:
            # Zero padding at the tail of the last, partly written block.
            return
        start = pos + CHUNK_HEADER.size
        end = start + length
        if end > len(data):
            return
        if length > left_in_block - CHUNK_HEADER.size:
            raise WandbFileError(f"{path}: chunk at byte {pos} of length {length} overruns its 32 KiB block")
        payload = data[start:end]
        if zlib.crc32(payload, zlib.crc32(bytes([kind]))) != crc:
            raise WandbFileError(f"{path}: checksum mismatch in chunk at byte {pos}; the file is corrupt")
        pos = end

        if kind == FULL:
            if pending is not None:
                raise WandbFileError(f"{path}: FULL chunk at byte {start - CHUNK_HEADER.size} inside a split record")
            yield payload
        elif kind == FIRST:
            if pending is not None:
                raise WandbFileError(f"{path}: FIRST chunk at byte {start - CHUNK_HEADER.size} inside a split record")
            pending = [payload]
        elif kind in (MIDDLE, LAST):
            if pending is None:
                raise WandbFileError(f"{path}: chunk type {kind} at byte {start - CHUNK_HEADER.size} without a FIRST")
            pending.append(payload)
            if kind == LAST:
                yield b"".join(pending)
                pending = None
        else:
            raise WandbFileError(f"{path}: unknown chunk type {kind} at byte {start - CHUNK_HEADER.size}")


def iter_records(path: str | Path) -> Iterator[Any]:
    """`wandb.proto.wandb_internal_pb2.Record` messages of a `.wandb` file."""
    from wandb.proto import wandb_internal_pb2

    for raw in iter_record_bytes(path):
        record = wandb_internal_pb2.Record()
        record.ParseFromString(raw)
        yield record


@dataclass
class OfflineArtifact:
    """One logged artifact: its name, type, metadata and the file paths inside it."""

    name: str
    type: str
    metadata: dict[str, Any]
    files: list[str]
    sizes: dict[str, int]


@dataclass
class OfflineRun:
    """What one offline run recorded, rebuilt from its `.wandb` file."""

    path: Path
    run_id: str
    project: str
    name: str
    group: str
    job_type: str
    tags: list[str]
    config: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)
    artifacts: list[str] = field(default_factory=list)
    artifact_details: list[OfflineArtifact] = field(default_factory=list)
    exit_code: int | None = None  # None: the run never finished (killed, still running)


def _item_path(item: Any) -> list[str]:
    """An update item names its key either flat (`key`) or as a path (`nested_key`)."""
    return [item.key] if item.key else list(item.nested_key)


def _set_path(target: dict[str, Any], path: list[str], value: Any) -> None:
    for key in path[:-1]:
        child = target.get(key)
        if not isinstance(child, dict):
            child = target[key] = {}
        target = child
    target[path[-1]] = value


def _del_path(target: dict[str, Any], path: list[str]) -> None:
    for key in path[:-1]:
        target = target.get(key)
        if not isinstance(target, dict):
            return
    target.pop(path[-1], None)


def _apply_updates(target: dict[str, Any], updates: Any, removes: Any = ()) -> None:
    for item in updates:
        _set_path(target, _item_path(item), json.loads(item.value_json))
    for item in removes:
        _del_path(target, _item_path(item))


def find_wandb_file(run_dir: str | Path) -> Path:
    """The single `run-*.wandb` file under `run_dir` (a run dir, its `wandb/` dir, or the file itself)."""
    run_dir = Path(run_dir)
    if run_dir.is_file():
        return run_dir
    found = sorted(run_dir.glob("**/run-*.wandb"))
    if not found:
        raise FileNotFoundError(
            f"no run-*.wandb file under {run_dir}; did the W&B logger start (mode offline/online, no warning)?"
        )
    if len(found) > 1:
        listing = ", ".join(str(p) for p in found)
        raise ValueError(f"{len(found)} .wandb files under {run_dir} ({listing}); pass one file explicitly")
    return found[0]


def read_offline_run(run_dir: str | Path, wait_s: float = 0.0) -> OfflineRun:
    """Config, history rows, final summary and artifacts of the offline run under `run_dir`.

    wandb-core writes the file from its own process and may still be flushing the
    last records when `run.finish()` returns: `wait_s` polls up to that long for the
    exit record. Internal `_wandb` bookkeeping keys are dropped from config and
    summary; history rows keep `_step`, `_runtime` and `_timestamp`.
    """
    path = find_wandb_file(run_dir)
    deadline = time.monotonic() + wait_s
    while True:
        run = _parse_run(path) if path.stat().st_size >= HEADER.size else None
        if (run is not None and run.exit_code is not None) or time.monotonic() >= deadline:
            return run if run is not None else _parse_run(path)
        time.sleep(0.02)


def _parse_run(path: Path) -> OfflineRun:
    """One pass over the file as it is now."""
    run = OfflineRun(path=path, run_id="", project="", name="", group="", job_type="", tags=[])
    for record in iter_records(path):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            r = record.run
            run.run_id, run.project, run.name = r.run_id, r.project, r.display_name
            run.group, run.job_type, run.tags = r.run_group, r.job_type, list(r.tags)
            _apply_updates(run.config, r.config.update, r.config.remove)
            _apply_updates(run.summary, r.summary.update, r.summary.remove)
        elif kind == "config":
            _apply_updates(run.config, record.config.update, record.config.remove)
        elif kind == "history":
            row: dict[str, Any] = {}
            _apply_updates(row, record.history.item)
            run.history.append(row)
        elif kind == "summary":
            _apply_updates(run.summary, record.summary.update, record.summary.remove)
        elif kind == "artifact":
            a = record.artifact
            files = [entry.path for entry in a.manifest.contents]
            run.artifacts.append(a.name)
            run.artifact_details.append(
                OfflineArtifact(
                    name=a.name,
                    type=a.type,
                    metadata=json.loads(a.metadata) if a.metadata else {},
                    files=files,
                    sizes={entry.path: entry.size for entry in a.manifest.contents},
                )
            )
        elif kind == "exit":
            run.exit_code = record.exit.exit_code
    run.config.pop("_wandb", None)
    run.summary.pop("_wandb", None)
    return run
