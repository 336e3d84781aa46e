"""The .wandb block-format reader on hand-built files: split records, padding, corruption."""
from __future__ import annotations

import json
import struct
import time
import zlib

import pytest
from wandb.proto import wandb_internal_pb2 as pb

from paramgolf.tracking.wandb_reader import (
    BLOCK_SIZE,
    WandbFileError,
    iter_record_bytes,
    read_offline_run,
)

FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def _chunk(kind: int, data: bytes) -> bytes:
    crc = zlib.crc32(bytes([kind]) + data)
    return struct.pack("<IHB", crc, len(data), kind) + data


def _write_log(records: list[bytes]) -> bytes:
    """A minimal writer of the same format, used only to feed the reader edge cases."""
    out = bytearray(b":W&B" + struct.pack("<HB", 0xBEE1, 0))
    for data in records:
        first = True
        while True:
            left = BLOCK_SIZE - len(out) % BLOCK_SIZE
            if left < 7:
                out += b"\x00" * left
                continue
            room = left - 7
            part, data = data[:room], data[room:]
            kind = (FULL if not data else FIRST) if first else (LAST if not data else MIDDLE)
            out += _chunk(kind, part)
            first = False
            if not data:
                break
    return bytes(out)


def _history(step: int, loss: float) -> bytes:
    rec = pb.Record()
    for key, value in (("train/loss", loss), ("_step", step)):
        item = rec.history.item.add()
        item.nested_key.append(key)
        item.value_json = json.dumps(value)
    return rec.SerializeToString()


def test_records_split_over_blocks_and_trailer_padding_are_reassembled(tmp_path):
    payloads = [b"a" * 10, b"b" * (BLOCK_SIZE * 2 + 123), b"c" * (BLOCK_SIZE - 7 - 7 - 7 - 10 - 3), b"d" * 5]
    path = tmp_path / "run-x.wandb"
    path.write_bytes(_write_log(payloads))
    assert list(iter_record_bytes(path)) == payloads


def test_read_offline_run_decodes_config_history_summary_and_removals(tmp_path):
    run = pb.Record()
    run.run.run_id, run.run.display_name, run.run.run_group = "abc123", "cand-s1", "cand"
    for key, value in (("_wandb", {}), ("lr", 0.02), ("model", {"n_layer": 9})):
        item = run.run.config.update.add()
        item.key, item.value_json = key, json.dumps(value)
    config = pb.Record()
    item = config.config.update.add()
    item.key, item.value_json = "late", json.dumps("added")
    summary = pb.Record()
    for path_keys, value in ((["val_bpb"], 1.25), (["eval", "tokens"], 99), (["drop"], 1)):
        item = summary.summary.update.add()
        item.nested_key.extend(path_keys)
        item.value_json = json.dumps(value)
    removal = pb.Record()
    removal.summary.remove.add().key = "drop"
    exit_rec = pb.Record()
    exit_rec.exit.exit_code = 7
    records = [run.SerializeToString(), config.SerializeToString(), _history(1, 3.0), _history(2, 2.0)]
    records += [summary.SerializeToString(), removal.SerializeToString(), exit_rec.SerializeToString()]
    (tmp_path / "wandb" / "offline-run-1").mkdir(parents=True)
    (tmp_path / "wandb" / "offline-run-1" / "run-abc123.wandb").write_bytes(_write_log(records))

    result = read_offline_run(tmp_path)
    assert result.run_id == "abc123" and result.name == "cand-s1" and result.group == "cand"
    assert result.config == {"lr": 0.02, "model": {"n_layer": 9}, "late": "added"}
    assert result.history == [{"train/loss": 3.0, "_step": 1}, {"train/loss": 2.0, "_step": 2}]
    assert result.summary == {"val_bpb": 1.25, "eval": {"tokens": 99}}
    assert result.exit_code == 7


def test_truncated_tail_keeps_complete_records(tmp_path):
    data = _write_log([_history(1, 3.0), _history(2, 2.0)])
    path = tmp_path / "run-x.wandb"
    path.write_bytes(data[:-3])  # writer killed inside the last chunk
    rows = read_offline_run(path).history
    assert rows == [{"train/loss": 3.0, "_step": 1}]
    assert read_offline_run(path).exit_code is None


def test_corruption_and_wrong_files_raise(tmp_path):
    data = bytearray(_write_log([_history(1, 3.0)]))
    data[20] ^= 0xFF
    path = tmp_path / "run-x.wandb"
    path.write_bytes(bytes(data))
    with pytest.raises(WandbFileError, match="checksum mismatch"):
        list(iter_record_bytes(path))
    path.write_bytes(b"not a wandb file")
    with pytest.raises(WandbFileError, match="not a .wandb run file"):
        list(iter_record_bytes(path))
    with pytest.raises(FileNotFoundError, match="no run-"):
        read_offline_run(tmp_path / "empty")


def test_wait_polls_for_the_exit_record_then_gives_up(tmp_path):
    path = tmp_path / "run-x.wandb"
    path.write_bytes(_write_log([_history(1, 3.0)]))
    start = time.monotonic()
    run = read_offline_run(path, wait_s=0.2)
    assert time.monotonic() - start >= 0.2
    assert run.exit_code is None and len(run.history) == 1
