"""`results.json`: the contract every tool reads, as typed sections (one per pipeline stage).

The file is flat (`val_bpb`, `artifact_bytes`, … at the top level, DESIGN.md); each stage fills
its own section and the file is rewritten after every stage, so a run that dies keeps what it
finished. Fields are slots: a misspelt key is an AttributeError, not a silent new key.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from paramgolf.fsio import to_jsonable, write_atomic

SCHEMA_VERSION = 1
RESULTS_FILE = "results.json"

section = dataclass(slots=True, kw_only=True)


@section
class RunInfo:
    """Who ran what: identifies the run and its environment."""

    name: str
    seed: int
    budget_bytes: int
    run_dir: str | None = None
    git_commit: str | None = None
    world_size: int | None = None
    device: str | None = None
    torch_version: str | None = None
    python: str | None = None
    config: dict[str, Any] | None = None  # the resolved config
    estimated_artifact_bytes: int | None = None  # the budget check's estimate before training (None: off)
    # paramgolf-eval only
    source_run: str | None = None
    source_git_commit: str | None = None
    overrides: list[str] | None = None
    requantized: bool | None = None


@section
class DataInfo:
    dataset: str
    dataset_dir: str
    tokenizer_sha256: str
    val_shards_sha256: str
    num_val_tokens: int  # the whole validation split (after data.val_max_tokens)
    num_val_bytes: int  # its scored bytes (positions 1..)
    entropy_floor_bpb: float | None = None  # synthetic data: the source's entropy rate


@section
class ModelInfo:
    params: int
    params_by_group: dict[str, int]


@section
class TrainInfo:
    steps: int | None = None
    train_time_s: float | None = None
    stopped_by: str | None = None  # iterations | wallclock
    tokens_seen: int | None = None
    train_tokens_per_s: float | None = None
    final_train_loss: float | None = None
    calibration_reserved_s: float | None = None  # wallclock kept for GPTQ calibration
    qat: dict[str, Any] | None = None
    resumed_from: dict[str, Any] | None = None  # train.resume: the run and checkpoint step continued from
    checkpoints: dict[str, Any] | None = None  # checkpoints written: settings, count, bytes, write time


@section
class AveragingInfo:
    averaging: dict[str, Any] | None = None  # method, settings, snapshots, chosen
    pre_averaging_val_bpb: float | None = None
    pre_averaging_val_loss: float | None = None
    pre_quant_val_bpb: float | None = None  # the exported (averaged) weights before quantization
    pre_quant_val_loss: float | None = None
    pre_quant_eval: dict[str, Any] | None = None  # how pre_quant_val_bpb was scored: method, seq_len, stride, tokens


@section
class ExportInfo:
    quant: dict[str, Any]  # packing, per-group bits and bytes, timings
    calibration_time_s: float | None = None
    calibration_within_reserve: bool | None = None  # calibration_time_s <= quant.calibration.reserve_s
    train_plus_calibration_s: float | None = None
    train_plus_calibration_within_cap: bool | None = None


@section
class ArtifactInfo:
    model_bytes: int
    code_bytes: int
    artifact_bytes: int
    fits: bool
    artifact_file: str


@section
class ScoreInfo:
    val_bpb: float  # the headline: the model rebuilt from the artifact
    val_loss: float
    eval_time_s: float
    eval: dict[str, Any]
    compliance: dict[str, Any]
    gap_to_floor_bpb: float | None = None
    round_trip_gap_bpb: float | None = None


SECTIONS = (RunInfo, DataInfo, ModelInfo, TrainInfo, AveragingInfo, ExportInfo, ArtifactInfo, ScoreInfo)


@dataclass(slots=True)
class Results:
    """Everything results.json holds; sections a run did not reach stay None (their keys absent)."""

    run: RunInfo
    status: str = "running"  # running | ok | over_budget | failed
    error: str | None = None
    failed_stage: str | None = None
    data: DataInfo | None = None
    model: ModelInfo | None = None
    train: TrainInfo | None = None
    averaging: AveragingInfo | None = None
    export: ExportInfo | None = None
    artifact: ArtifactInfo | None = None
    score: ScoreInfo | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"schema_version": SCHEMA_VERSION, "status": self.status}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if dataclasses.is_dataclass(value):
                out.update({k.name: getattr(value, k.name) for k in dataclasses.fields(value)})
        if self.error is not None:
            out.update(error=self.error, failed_stage=self.failed_stage)
        return out


class ResultsFile:
    """Writes `Results` to `<dir>/results.json` atomically; `stage()` records a stage's failure."""

    def __init__(self, out_dir: Path, results: Results, enabled: bool = True):
        self.path = Path(out_dir) / RESULTS_FILE
        self.results = results
        self.enabled = enabled

    def write(self, status: str | None = None) -> Path:
        if status is not None:
            self.results.status = status
        if self.enabled:
            text = json.dumps(self.results.to_dict(), indent=2, default=to_jsonable) + "\n"
            write_atomic(self.path, text)
        return self.path

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        """Run one stage: on an exception record it (`failed_stage`, `error`) and re-raise; after it, write."""
        try:
            yield
        except BaseException as exc:
            if self.results.failed_stage is None:
                self.results.error, self.results.failed_stage = f"{type(exc).__name__}: {exc}", name
                self.write("failed")
            raise
        self.write()


def git_commit(repo_dir: Path | None = None) -> str | None:
    """The checkout's commit (with '-dirty' when there are uncommitted changes), or None."""
    cwd = repo_dir or Path(__file__).resolve().parents[2]
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
        return sha + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


def read_results(run_dir: Path) -> dict[str, Any]:
    path = Path(run_dir) / RESULTS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: is {run_dir} a paramgolf run directory?")
    return json.loads(path.read_text())


# Section field names are the file's keys: they must not collide.
_keys = [f.name for s in SECTIONS for f in dataclasses.fields(s)]
assert len(_keys) == len(set(_keys)), "results.json sections repeat a key"
