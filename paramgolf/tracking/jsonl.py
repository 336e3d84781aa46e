"""`metrics.jsonl`: one JSON object per logged step, written whatever the logger plugin is.

Each line is flushed as it is written, so a run that dies keeps everything it
measured up to the crash.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from types import TracebackType
from typing import IO, Any

from paramgolf.errors import UserError
from paramgolf.fsio import to_jsonable


class MetricsJSONL:
    """Appends `{"step": s, "time": unix_s, **metrics}` lines to `path`."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # Append, not truncate: a resumed run continues the same file.
        self._file: IO[str] | None = open(self.path, "a", encoding="utf-8")

    def log(self, metrics: dict[str, float | int], step: int) -> None:
        """Write one line for `step` and flush it to the OS."""
        if self._file is None:
            raise RuntimeError(f"{self.path}: log() called after close()")
        for reserved in ("step", "time"):
            if reserved in metrics:
                raise RuntimeError(f"metric name {reserved!r} is reserved in {self.path}; rename the metric")
        # NaN/inf stay as Python's NaN/Infinity tokens: a diverged loss is worth keeping.
        line = json.dumps({"step": int(step), "time": time.time(), **metrics}, default=to_jsonable)
        self._file.write(line + "\n")
        self._file.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def __enter__(self) -> MetricsJSONL:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """All rows of a `metrics.jsonl`, in file order.

    A half-written last line (the process was killed mid-write) is dropped; a broken
    line anywhere else is corruption and raises ValueError.
    """
    path = Path(path)
    lines = path.read_text(encoding="utf-8").splitlines()
    rows: list[dict[str, Any]] = []
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            if lineno == len(lines):
                break
            raise UserError(f"{path}:{lineno} is not valid JSON ({err.msg}); the metrics file is corrupt") from err
        if not isinstance(row, dict):
            raise UserError(f"{path}:{lineno} holds {type(row).__name__}, expected a JSON object")
        rows.append(row)
    return rows
