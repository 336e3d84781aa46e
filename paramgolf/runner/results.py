"""`results.json`: the contract every tool reads. Written atomically, also for failed runs."""
from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

SCHEMA_VERSION = 1
RESULTS_FILE = "results.json"


def git_commit(repo_dir: Path | None = None) -> str | None:
    """The checkout's commit (with '-dirty' when there are uncommitted changes), or None."""
    cwd = repo_dir or Path(__file__).resolve().parents[2]
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True,
                             timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=cwd,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return sha + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


class ResultsRecorder:
    """Accumulates what a run measured; `write()` can be called at any stage."""

    def __init__(self, run_dir: Path, enabled: bool = True):
        self.path = Path(run_dir) / RESULTS_FILE
        self.enabled = enabled
        self.data: dict[str, Any] = {"schema_version": SCHEMA_VERSION, "status": "running"}

    def update(self, **values: Any) -> None:
        self.data.update(values)

    def write(self, status: str | None = None) -> Path:
        if status is not None:
            self.data["status"] = status
        if self.enabled:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_suffix(".json.tmp")
            tmp.write_text(json.dumps(self.data, indent=2, sort_keys=False, default=_jsonable) + "\n")
            os.replace(tmp, self.path)
        return self.path


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "item"):
        return obj.item()
    raise TypeError(f"cannot write {type(obj).__name__} to results.json")


def read_results(run_dir: Path) -> dict[str, Any]:
    path = Path(run_dir) / RESULTS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: is {run_dir} a paramgolf run directory?")
    return json.loads(path.read_text())
