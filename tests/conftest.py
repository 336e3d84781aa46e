"""Shared pytest fixtures."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DIR = Path(os.environ.get("PARAMGOLF_SHARED", REPO_ROOT.parent / "shared"))


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """The challenge data in ../shared; tests that need it skip when it is absent."""
    if not (SHARED_DIR / "data").is_dir():
        pytest.skip(f"../shared data not found at {SHARED_DIR}")
    return SHARED_DIR


@pytest.fixture(autouse=True)
def _isolate_wandb(tmp_path, monkeypatch):
    """W&B writes under the home dir by default; keep every test inside its tmp dir."""
    for var in ("WANDB_DIR", "WANDB_DATA_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR"):
        monkeypatch.setenv(var, str(tmp_path / "wandb_home" / var.lower()))
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
