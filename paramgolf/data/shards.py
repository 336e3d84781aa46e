"""The challenge's token shard format.

A shard is a header of 256 little-endian int32 followed by ``count`` little-endian
uint16 tokens. Header slot 0 holds the magic number, slot 1 the version, slot 2 the
token count; the official export leaves the other slots zero, and ``train_gpt.py``
reads only the first three. This is what the official FineWeb export writes.

Shards written by paramgolf also record their largest token id in two unused slots:
slot 3 holds the tag ``MAX_ID_TAG`` and slot 4 the id (-1 for an empty shard). A
vocabulary check then reads 1 KiB per shard instead of the whole file; a shard without
the tag (a downloaded one) records nothing, and its tokenizer bounds its ids.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np

from paramgolf.errors import UserError
from paramgolf.fsio import write_atomic

SHARD_MAGIC = 20240520
SHARD_VERSION = 1
HEADER_INTS = 256
HEADER_BYTES = HEADER_INTS * 4  # 1024
TOKEN_BYTES = 2
MAX_TOKEN_ID = 2**16 - 1
MAX_ID_TAG_SLOT, MAX_ID_SLOT = 3, 4  # unused by the official format
MAX_ID_TAG = 0x50474D58  # b"XMGP" little-endian: "paramgolf recorded the max id"


class ShardError(UserError):
    """A shard file that does not follow the format (or a request it cannot satisfy)."""


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
    largest = -1
    if toks.size:
        lo, largest = int(toks.min()), int(toks.max())
        if lo < 0 or largest > MAX_TOKEN_ID:
            bad = lo if lo < 0 else largest
            raise ShardError(
                f"{path}: token id {bad} cannot be stored as uint16 (allowed 0..{MAX_TOKEN_ID}); "
                "is the tokenizer's vocabulary larger than 65536?"
            )
    header = np.zeros(HEADER_INTS, dtype="<i4")
    header[0], header[1], header[2] = SHARD_MAGIC, SHARD_VERSION, toks.size
    header[MAX_ID_TAG_SLOT], header[MAX_ID_SLOT] = MAX_ID_TAG, largest
    body = np.ascontiguousarray(toks.astype("<u2", copy=False))
    # A crash mid-write must never leave a truncated shard under the final name.
    write_atomic(path, (header.tobytes(), memoryview(body).cast("B")))


def _read_header(path: str | Path) -> tuple[int, np.ndarray]:
    """Validate the header and file size of a shard; return its token count and header."""
    path = Path(path)
    if not path.is_file():
        raise ShardError(f"{path}: shard file not found")
    size = path.stat().st_size
    if size < HEADER_BYTES:
        raise ShardError(f"{path}: file is {size} bytes, shorter than the {HEADER_BYTES}-byte shard header")
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
            f"{path}: file size mismatch: header says {count} tokens, so expected {expected} bytes, found {size} bytes"
        )
    return count, header


def read_shard_header(path: str | Path) -> int:
    """Validate the header and file size of a shard; return its token count."""
    return _read_header(path)[0]


def recorded_max_token_id(path: str | Path) -> int | None:
    """The largest token id a shard's header records (-1: empty shard), None when it records none.

    Reads only the header. Downloaded (official) shards record nothing; shards written
    by ``write_shard`` always do.
    """
    count, header = _read_header(path)
    if int(header[MAX_ID_TAG_SLOT]) != MAX_ID_TAG:
        return None
    largest = int(header[MAX_ID_SLOT])
    if not (largest == -1 if count == 0 else 0 <= largest <= MAX_TOKEN_ID):
        raise ShardError(
            f"{path}: header records max token id {largest}, impossible for a shard of {count} tokens; "
            "the file is corrupt: rebuild it"
        )
    return largest


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
    """Sorted ``fineweb_{split}_NNNNNN.bin`` files in ``data_dir``; error when there are none.

    Byte sidecars (``fineweb_val_bytes_NNNNNN.bin``) match the same glob and are left out.
    """
    data_dir = Path(data_dir).expanduser()
    pattern = f"fineweb_{split}_*.bin"
    files = sorted(f for f in data_dir.glob(pattern) if f.stem[len(f"fineweb_{split}_") :].isdigit())
    if not files:
        where = "directory does not exist" if not data_dir.is_dir() else "no file matches"
        raise ShardError(
            f"no {split} shards in {data_dir} (pattern {pattern}: {where}); "
            "run `paramgolf-data download --variant sp1024` or `paramgolf-data build` first"
        )
    return files


SIDECAR_PREFIX = "fineweb_val_bytes_"


def sidecar_path(val_shard: str | Path) -> Path:
    """The byte sidecar beside a validation shard: ``fineweb_val_NNNNNN.bin`` -> ``fineweb_val_bytes_NNNNNN.bin``.

    A sidecar has the shard format; entry i is the number of original UTF-8 bytes that token i of
    the shard stands for (0 for BOS and for CaseOps operators).
    """
    val_shard = Path(val_shard)
    if not val_shard.name.startswith("fineweb_val_"):
        raise ShardError(
            f"{val_shard} is not a validation shard (fineweb_val_NNNNNN.bin): only those have byte sidecars"
        )
    return val_shard.with_name(SIDECAR_PREFIX + val_shard.name.removeprefix("fineweb_val_"))


def list_sidecars(data_dir: str | Path, val_files: list[Path]) -> list[Path]:
    """The byte sidecars of ``val_files``: one per shard, each as long as its shard; [] when there are none."""
    data_dir = Path(data_dir).expanduser()
    found = sorted(data_dir.glob(f"{SIDECAR_PREFIX}*.bin"))
    if not found:
        return []
    wanted = [sidecar_path(f) for f in val_files]
    if found != wanted:
        missing = sorted(set(wanted) - set(found)) or sorted(set(found) - set(wanted))
        raise ShardError(
            f"{data_dir} has {len(found)} byte sidecar(s) for {len(val_files)} validation shard(s) "
            f"(first mismatch: {missing[0].name}); every fineweb_val_NNNNNN.bin needs its fineweb_val_bytes_NNNNNN.bin: "
            "download or build the dataset again"
        )
    for shard, side in zip(val_files, wanted):
        if read_shard_header(side) != read_shard_header(shard):
            raise ShardError(
                f"byte sidecar {side} has {read_shard_header(side)} entries but {shard} has "
                f"{read_shard_header(shard)} tokens; they were not written together: rebuild the dataset"
            )
    return wanted
