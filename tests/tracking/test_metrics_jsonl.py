"""metrics.jsonl: one flushed line per log call, read back in order."""

from __future__ import annotations

import json
import math

import pytest
import torch

from paramgolf.tracking.jsonl import MetricsJSONL, read_metrics


def test_appends_rows_and_reads_them_back(tmp_path):
    path = tmp_path / "run" / "metrics.jsonl"
    with MetricsJSONL(path) as m:
        m.log({"train/loss": 3.5, "train/tokens_per_s": 1200}, step=1)
        m.log({"val/bpb": 1.25, "val/loss": torch.tensor(2.0)}, step=2)
    rows = read_metrics(path)
    assert [r["step"] for r in rows] == [1, 2]
    assert rows[0]["train/loss"] == 3.5 and rows[0]["train/tokens_per_s"] == 1200
    assert rows[1]["val/bpb"] == 1.25 and rows[1]["val/loss"] == 2.0
    assert all(isinstance(r["time"], float) and r["time"] > 1e9 for r in rows)


def test_each_line_is_flushed_before_close(tmp_path):
    path = tmp_path / "metrics.jsonl"
    m = MetricsJSONL(path)
    m.log({"train/loss": 1.0}, step=0)
    # Another reader (or a crash now) must already see the line.
    assert json.loads(path.read_text().splitlines()[0])["train/loss"] == 1.0
    m.log({"train/loss": float("nan")}, step=1)
    assert len(path.read_text().splitlines()) == 2
    m.close()
    assert math.isnan(read_metrics(path)[1]["train/loss"])


def test_reopening_appends(tmp_path):
    path = tmp_path / "metrics.jsonl"
    with MetricsJSONL(path) as m:
        m.log({"a": 1}, step=0)
    with MetricsJSONL(path) as m:
        m.log({"a": 2}, step=1)
    assert [r["a"] for r in read_metrics(path)] == [1, 2]


def test_truncated_last_line_is_dropped_but_corrupt_middle_raises(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 0, "a": 1}\n{"step": 1, "a"')
    assert read_metrics(path) == [{"step": 0, "a": 1}]
    path.write_text('{"step": 0, "a"\n{"step": 1, "a": 1}\n')
    with pytest.raises(ValueError, match=r"metrics.jsonl:1"):
        read_metrics(path)


def test_reserved_names_and_log_after_close_raise(tmp_path):
    m = MetricsJSONL(tmp_path / "metrics.jsonl")
    with pytest.raises(RuntimeError, match="reserved"):  # metric names come from paramgolf: a bug
        m.log({"step": 3}, step=3)
    m.close()
    with pytest.raises(RuntimeError, match="after close"):
        m.log({"a": 1}, step=0)
