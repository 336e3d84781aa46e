"""The challenge's token shard format.

A shard is a header of 256 little-endian int32 followed by ``count`` little-endian
uint16 tokens. Header slot 0 holds the magic number, slot 1 the version, slot 2 the
token count; the other slots are zero. This is what the official FineWeb export
writes and what ``train_gpt.py`` reads.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Iterable

import numpy as np

SHARD_MAGIC = 20240520
SHARD_VERSION = 1
HEADER_INTS = 256
HEADER_BYTES = HEADER_INTS * 4  # 1024
TOKEN_BYTES = 2
MAX_TOKEN_ID = 2**16 - 1


class ShardError(ValueError):
    """A shard file that does not follow the format (or a request it cannot satisfy)."""


def _default_mode(directory: bool = False) -> int:
    """Permissions a plain open()/mkdir() would give, which mkstemp/mkdtemp do not (0600)."""
    umask = os.umask(0)
    os.umask(umask)
    return (0o777 if directory else 0o666) & ~umask


def publish(tmp: str | Path, dest: str | Path) -> None:
    """Give a finished temporary file or directory normal permissions and its final name, atomically."""
    os.chmod(tmp, _default_mode(directory=Path(tmp).is_dir()))
    os.replace(tmp, dest)


def write_shard(path: str | Path, tokens: Iterable[int] | np.ndarray) -> None:
    """Write ``tokens`` as a shard at ``path``, atomically (temp file + rename)."""
    path = Path(path)
    toks = np.asarray(tokens)
    if toks.ndim != 1:
        raise ShardError(f"{path}: tokens must be a 1-D array, got shape {toks.shape}")
    if toks.size and not np.issubdtype(toks.dtype, np.integer):
        raise ShardError(f"{path}: tokens must be integers, got dtype {toks.dtype}")
    if toks.size >= 2**31:
        raise ShardError(f"{path}: {toks.size} tokens do not fit the int32 count in the header")
    if toks.size:
        lo, hi = int(toks.min()), int(toks.max())
        if lo < 0 or hi > MAX_TOKEN_ID:
            bad = lo if lo < 0 else hi
            raise ShardError(
                f"{path}: token id {bad} cannot be stored as uint16 (allowed 0..{MAX_TOKEN_ID}); "
                "is the tokenizer's vocabulary larger than 65536?"
            )
    header = np.zeros(HEADER_INTS, dtype="<i4")
    header[0], header[1], header[2] = SHARD_MAGIC, SHARD_VERSION, toks.size
    path.parent.mkdir(parents=True, exist_ok=True)
    # A crash mid-write must never leave a truncated shard under the final name.
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(header.tobytes())
            f.write(toks.astype("<u2", copy=False).tobytes())
        publish(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_shard_header(path: str | Path) -> int:
    """Validate the header and file size of a shard; return its token count."""
    path = Path(path)
    if not path.is_file():
        raise ShardError(f"{path}: shard file not found")
    size = path.stat().st_size
    if size < HEADER_BYTES:
        raise ShardError(
            f"{path}: file is {size} bytes, shorter than the {HEADER_BYTES}-byte shard header"
        )
    header = np.fromfile(path, dtype="<i4", count=HEADER_INTS)
    if int(header[0]) != SHARD_MAGIC:
        raise ShardError(f"{path}: wrong magic number: expected {SHARD_MAGIC}, found {int(header[0])}")
    if int(header[1]) != SHARD_VERSION:
        raise ShardError(f"{path}: wrong shard version: expected {SHARD_VERSION}, found {int(header[1])}")
    count = int(header[2])
    if count < 0:
        raise ShardError(f"{path}: negative token count {count} in header")
    expected = HEADER_BYTES + TOKEN_BYTES * count
    if size != expected:
        raise ShardError(
            f"{path}: file size mismatch: header says {count} tokens, so expected "
            f"{expected} bytes, found {size} bytes"
        )
    return count


def read_shard(path: str | Path, mmap: bool = True) -> np.ndarray:
    """Return a shard's tokens as uint16 (a read-only memmap by default)."""
    path = Path(path)
    count = read_shard_header(path)
    if count == 0:
        return np.zeros(0, dtype=np.uint16)  # numpy cannot memory-map zero bytes
    if mmap:
        return np.memmap(path, dtype="<u2", mode="r", offset=HEADER_BYTES, shape=(count,))
    return np.fromfile(path, dtype="<u2", count=count, offset=HEADER_BYTES)


def list_shards(data_dir: str | Path, split: str) -> list[Path]:
    """Sorted ``fineweb_{split}_*.bin`` files in ``data_dir``; error when there are none."""
    data_dir = Path(data_dir).expanduser()
    pattern = f"fineweb_{split}_*.bin"
    files = sorted(data_dir.glob(pattern))
    if not files:
        where = "directory does not exist" if not data_dir.is_dir() else "no file matches"
        raise ShardError(
            f"no {split} shards in {data_dir} (pattern {pattern}: {where}); "
            "run `paramgolf-data download --variant sp1024` or `paramgolf-data build` first"
        )
    return files


def max_token_id(files: Iterable[str | Path]) -> int:
    """Largest token id across shards (-1 when they hold no tokens)."""
    best = -1
    for f in files:
        toks = read_shard(f)
        if toks.size:
            best = max(best, int(toks.max()))
    return best
