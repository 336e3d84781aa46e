"""Test helper: what an offline W&B run recorded, read back with wandb's own reader.

wandb 0.31 writes an offline run only into its `run-<id>.wandb` transaction log. The
package reads that log with `wandb leet inspect` (its bundled wandb-core binary):
`--summary --json` prints the run's folded state (config, summary, exit code, ...) and
`--json` prints every record as one JSON object per line. This module only calls those
two commands and picks fields out of their JSON; it does not parse the binary format.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class OfflineArtifact:
    """One logged artifact: its name, type, metadata and the sizes of the files inside it."""

    name: str
    type: str
    metadata: dict[str, Any]
    sizes: dict[str, int]


@dataclass
class OfflineRun:
    """What one offline run recorded."""

    path: Path
    run_id: str
    project: str
    name: str
    group: str
    job_type: str
    tags: list[str]
    config: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)
    artifact_details: list[OfflineArtifact] = field(default_factory=list)
    exit_code: int | None = None  # None: no exit record (killed, or still being written)

    @property
    def artifacts(self) -> list[str]:
        return [a.name for a in self.artifact_details]


def find_wandb_file(run_dir: str | Path) -> Path:
    """The single `run-*.wandb` file under `run_dir` (or `run_dir` itself when it is the file)."""
    run_dir = Path(run_dir)
    if run_dir.is_file():
        return run_dir
    found = sorted(run_dir.glob("**/run-*.wandb"))
    if len(found) != 1:
        raise FileNotFoundError(f"expected one run-*.wandb file under {run_dir}, found {[str(p) for p in found]}")
    return found[0]


def _inspect(path: Path, *flags: str) -> str:
    cmd = [sys.executable, "-m", "wandb", "leet", "inspect", "--json", *flags, str(path)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"`{' '.join(cmd)}` failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc.stdout


def read_state(path: str | Path) -> dict[str, Any]:
    """wandb's folded view of the run: config, summary, exit_code, name, project, tags, state."""
    return json.loads(_inspect(Path(path), "--summary"))


def read_records(path: str | Path) -> list[dict[str, Any]]:
    """Every record of the log, each as wandb prints it (`{"num", "type", <type>: {...}}`)."""
    return [json.loads(line) for line in _inspect(Path(path)).splitlines() if line.strip()]


def read_offline_run(run_dir: str | Path, wait_s: float = 0.0) -> OfflineRun:
    """Config, history rows, final summary and artifacts of the offline run under `run_dir`.

    wandb-core writes the file from its own process and may still be flushing when
    `run.finish()` returns: `wait_s` polls up to that long for the exit record.
    `_wandb` bookkeeping is left out of config and summary; history rows keep `_step`.
    """
    path = find_wandb_file(run_dir)
    deadline = time.monotonic() + wait_s
    state = read_state(path)
    while state.get("exit_code") is None and time.monotonic() < deadline:
        time.sleep(0.2)
        state = read_state(path)
    run = OfflineRun(
        path=path,
        run_id=state.get("run_id", ""),
        project=state.get("project", ""),
        name=state.get("name", ""),
        group="",
        job_type="",
        tags=list(state.get("tags") or []),
        config={k: v for k, v in (state.get("config") or {}).items() if k != "_wandb"},
        summary={k: v for k, v in (state.get("summary") or {}).items() if k != "_wandb"},
        exit_code=state.get("exit_code"),
    )
    for rec in read_records(path):
        kind = rec.get("type")
        body = rec.get(kind) or {}
        if kind == "run":
            run.group, run.job_type = body.get("run_group", ""), body.get("job_type", "")
        elif kind == "history":
            run.history.append(dict(body.get("item") or {}))
        elif kind == "artifact":
            contents = (body.get("manifest") or {}).get("contents") or []
            run.artifact_details.append(
                OfflineArtifact(
                    name=body["name"],
                    type=body.get("type", ""),
                    metadata=json.loads(body["metadata"]) if body.get("metadata") else {},
                    sizes={entry["path"]: int(entry.get("size", 0)) for entry in contents},
                )
            )
    return run
