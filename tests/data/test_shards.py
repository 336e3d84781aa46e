"""Shard format: round trip, refusals of malformed files, listing."""

from __future__ import annotations

import numpy as np
import pytest

from paramgolf.data.shards import (
    HEADER_BYTES,
    MAX_ID_TAG,
    SHARD_MAGIC,
    SHARD_VERSION,
    ShardError,
    list_shards,
    read_shard,
    read_shard_header,
    recorded_max_token_id,
    write_shard,
)


def test_round_trip_and_layout(tmp_path):
    toks = np.array([1, 0, 65535, 7, 300], dtype=np.int64)
    path = tmp_path / "fineweb_train_000000.bin"
    write_shard(path, toks)
    assert path.stat().st_size == HEADER_BYTES + 2 * len(toks)
    header = np.fromfile(path, dtype="<i4", count=256)
    assert header[:3].tolist() == [SHARD_MAGIC, SHARD_VERSION, len(toks)]
    # slots 3-4 (unused by the official format) record the largest id; the rest stay zero
    assert header[3:5].tolist() == [MAX_ID_TAG, 65535] and not header[5:].any()
    assert read_shard_header(path) == len(toks)
    assert recorded_max_token_id(path) == 65535
    for mmap in (True, False):
        got = read_shard(path, mmap=mmap)
        assert got.dtype == np.uint16
        assert got.tolist() == toks.tolist()
    # no temporary files are left beside the shard
    assert [p.name for p in tmp_path.iterdir()] == [path.name]


def test_write_accepts_lists_and_overwrites(tmp_path):
    path = tmp_path / "s.bin"
    write_shard(path, [5, 6, 7])
    write_shard(path, [9])
    assert read_shard(path).tolist() == [9] and recorded_max_token_id(path) == 9
    write_shard(path, [])
    assert read_shard(path).tolist() == [] and recorded_max_token_id(path) == -1


@pytest.mark.parametrize("bad", [-1, 65536])
def test_write_refuses_out_of_range_ids(tmp_path, bad):
    path = tmp_path / "s.bin"
    with pytest.raises(ShardError, match=str(bad)):
        write_shard(path, [1, bad, 2])
    assert not path.exists()


def _corrupt(path, header_patch=None, size_delta=0):
    data = bytearray(path.read_bytes())
    if header_patch:
        idx, value = header_patch
        data[4 * idx : 4 * idx + 4] = np.array([value], dtype="<i4").tobytes()
    if size_delta < 0:
        data = data[:size_delta]
    else:
        data += b"\0" * size_delta
    path.write_bytes(bytes(data))


@pytest.mark.parametrize(
    "patch, delta, expect",
    [
        ((0, 12345), 0, r"wrong magic.*expected 20240520, found 12345"),
        ((1, 2), 0, r"wrong shard version.*expected 1, found 2"),
        (None, -2, r"expected 1032 bytes, found 1030 bytes"),
        (None, 4, r"expected 1032 bytes, found 1036 bytes"),
        ((2, 5), 0, r"header says 5 tokens.*expected 1034 bytes, found 1032"),
    ],
)
def test_malformed_shards_are_refused(tmp_path, patch, delta, expect):
    path = tmp_path / "fineweb_val_000000.bin"
    write_shard(path, [1, 2, 3, 4])
    _corrupt(path, patch, delta)
    for read in (read_shard_header, read_shard, recorded_max_token_id):
        with pytest.raises(ShardError, match=expect) as info:
            read(path)
        assert str(path) in str(info.value)


def test_file_shorter_than_header(tmp_path):
    path = tmp_path / "tiny.bin"
    path.write_bytes(b"\0" * 100)
    with pytest.raises(ShardError, match=r"100 bytes, shorter than the 1024-byte"):
        read_shard(path)


def test_list_shards_sorted_and_clear_error(tmp_path):
    for i in (2, 0, 1):
        write_shard(tmp_path / f"fineweb_train_{i:06d}.bin", [i])
    write_shard(tmp_path / "fineweb_val_000000.bin", [9])
    files = list_shards(tmp_path, "train")
    assert [f.name for f in files] == [f"fineweb_train_{i:06d}.bin" for i in range(3)]
    assert [recorded_max_token_id(f) for f in files + list_shards(tmp_path, "val")] == [0, 1, 2, 9]
    with pytest.raises(ShardError, match=r"fineweb_test_\*\.bin.*paramgolf-data download") as info:
        list_shards(tmp_path, "test")
    assert str(tmp_path) in str(info.value)
    with pytest.raises(ShardError, match="does not exist"):
        list_shards(tmp_path / "missing", "train")


def _patch_header(path, **slots):
    data = bytearray(path.read_bytes())
    for idx, value in slots.items():
        i = int(idx[1:])
        data[4 * i : 4 * i + 4] = np.array([value], dtype="<i4").tobytes()
    path.write_bytes(bytes(data))


def test_official_shards_record_no_max_and_still_read(tmp_path):
    path = tmp_path / "fineweb_train_000000.bin"
    write_shard(path, [1, 2, 3])
    _patch_header(path, s3=0, s4=0)  # what the official export writes: slots 3.. are zero
    assert recorded_max_token_id(path) is None
    assert read_shard_header(path) == 3 and read_shard(path).tolist() == [1, 2, 3]
    _patch_header(path, s3=12345, s4=7)  # some other use of the slot: not our tag, not trusted
    assert recorded_max_token_id(path) is None


@pytest.mark.parametrize("count_tokens, recorded", [([1, 2], -1), ([1, 2], 65536), ([], 0)])
def test_impossible_recorded_max_is_corruption(tmp_path, count_tokens, recorded):
    path = tmp_path / "fineweb_train_000000.bin"
    write_shard(path, count_tokens)
    _patch_header(path, s4=recorded)
    with pytest.raises(ShardError, match=rf"records max token id {recorded}, impossible.*rebuild"):
        recorded_max_token_id(path)
