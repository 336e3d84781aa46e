"""paramgolf.fsio: atomic writes and JSON coercion shared by data and tracking."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import numpy as np
import pytest
import torch

from paramgolf.fsio import to_jsonable, write_atomic
from paramgolf.tracking.jsonl import MetricsJSONL, read_metrics


def test_write_atomic_text_bytes_and_chunks(tmp_path):
    path = tmp_path / "sub" / "f.txt"
    assert write_atomic(path, "héllo\n") == path
    assert path.read_bytes() == "héllo\n".encode()
    write_atomic(path, b"\x00\x01")
    assert path.read_bytes() == b"\x00\x01"
    write_atomic(path, [b"ab", memoryview(b"cd"), bytearray(b"ef")])
    assert path.read_bytes() == b"abcdef"
    assert os.listdir(path.parent) == ["f.txt"]  # no temporary file left behind


def test_write_atomic_fsyncs_only_when_asked(tmp_path, monkeypatch):
    synced = []
    monkeypatch.setattr(os, "fsync", lambda fd: synced.append(fd))
    write_atomic(tmp_path / "a", b"x")
    assert synced == []
    write_atomic(tmp_path / "b", b"x", fsync=True)
    assert len(synced) == 1 and (tmp_path / "b").read_bytes() == b"x"


def test_write_atomic_gives_plain_permissions(tmp_path):
    old = os.umask(0o022)
    try:
        write_atomic(tmp_path / "f", b"x")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "f").stat().st_mode) == 0o644  # mkstemp alone would leave 0600


def test_write_atomic_failure_keeps_the_old_file(tmp_path):
    path = tmp_path / "f"
    path.write_bytes(b"old")

    def chunks():
        yield b"new, half"
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        write_atomic(path, chunks())
    assert path.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["f"]


def test_to_jsonable_converts_paths_and_scalars_recursively():
    value = {
        "p": Path("/a/b"),
        "n": np.int64(3),
        "f": np.float32(0.5),
        "t": torch.tensor(2.5),
        "nested": ({"x": torch.tensor([7])}, [np.bool_(True), None, "s"]),
    }
    assert to_jsonable(value) == {"p": "/a/b", "n": 3, "f": 0.5, "t": 2.5, "nested": [{"x": 7}, [True, None, "s"]]}
    assert type(to_jsonable(np.int64(3))) is int
    assert json.loads(json.dumps({"p": Path("x"), "t": torch.tensor(1)}, default=to_jsonable)) == {"p": "x", "t": 1}


@pytest.mark.parametrize("bad", [object(), torch.zeros(3), np.zeros(2), {1, 2}])
def test_to_jsonable_refuses_what_json_cannot_hold(bad):
    with pytest.raises(TypeError, match="JSON"):
        to_jsonable(bad)


def test_metrics_jsonl_uses_the_shared_coercion(tmp_path):
    path = tmp_path / "metrics.jsonl"
    with MetricsJSONL(path) as m:
        m.log({"a": np.float64(1.5), "b": torch.tensor(3), "where": tmp_path}, step=1)
        with pytest.raises(TypeError, match="not JSON serialisable"):
            m.log({"bad": object()}, step=2)
    (row,) = read_metrics(path)
    assert row["a"] == 1.5 and row["b"] == 3 and row["where"] == str(tmp_path)
