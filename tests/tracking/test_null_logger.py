"""NullLogger accepts the whole logger protocol and writes nothing."""

from __future__ import annotations

from paramgolf.tracking.base import Logger, NullLogger


def test_null_logger_accepts_every_call_and_writes_nothing(tmp_path):
    logger = NullLogger()
    assert isinstance(logger, Logger)
    logger.start(tmp_path, {"a": 1}, "cand-s0", "cand", "train", ["t"])
    logger.log({"train/loss": 1.0}, step=1)
    logger.summary({"val_bpb": 1.2})
    logger.log_artifact(tmp_path / "missing.bin", "model", "model", {})
    logger.finish(exit_code=1)
    assert list(tmp_path.iterdir()) == []
