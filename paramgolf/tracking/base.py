"""The logger plugin interface the runner talks to, and the logger that does nothing.

Only rank 0 creates a real logger; every other rank gets `NullLogger`, so the
runner never branches on rank when it logs.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any


class LoggerWarning(RuntimeWarning):
    """A logger failed and turned itself off; the run goes on without it."""


class Logger(ABC):
    """Experiment-tracker plugin: one `start`, many `log`, then `summary`/`log_artifact`, one `finish`.

    Implementations must never raise from these methods once constructed: a tracker
    failing is a warning, never a lost run.
    """

    @abstractmethod
    def start(
        self,
        run_dir: Path,
        config: dict[str, Any],
        run_name: str,
        group: str | None,
        job_type: str,
        tags: list[str],
    ) -> None:
        """Open a run that stores its files under `run_dir` and records the resolved `config`."""

    @abstractmethod
    def log(self, metrics: dict[str, float | int], step: int) -> None:
        """Record scalar metrics (names like `train/loss`) at optimizer step `step`."""

    @abstractmethod
    def summary(self, values: dict[str, Any]) -> None:
        """Set the run's final values (`val_bpb`, `artifact_bytes`, ...)."""

    @abstractmethod
    def log_artifact(self, path: Path, name: str, type: str, metadata: dict[str, Any]) -> None:
        """Attach a file or directory (the compressed model) with its metadata."""

    @abstractmethod
    def finish(self, exit_code: int = 0) -> None:
        """Close the run; a non-zero `exit_code` marks it failed."""


class NullLogger(Logger):
    """Accepts every call and records nothing (tests, `logger=none`, ranks other than 0)."""

    def start(
        self,
        run_dir: Path,
        config: dict[str, Any],
        run_name: str,
        group: str | None,
        job_type: str,
        tags: list[str],
    ) -> None:
        pass

    def log(self, metrics: dict[str, float | int], step: int) -> None:
        pass

    def summary(self, values: dict[str, Any]) -> None:
        pass

    def log_artifact(self, path: Path, name: str, type: str, metadata: dict[str, Any]) -> None:
        pass

    def finish(self, exit_code: int = 0) -> None:
        pass
