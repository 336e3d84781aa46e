"""Shared pytest fixtures."""

from __future__ import annotations

import os
import shutil
import subprocess
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


@pytest.fixture(scope="module")
def one_thread():
    """Tiny matmuls on a shared 2-core box: one intra-op thread is ~100x faster than two contending.
    A module takes it with `pytestmark = pytest.mark.usefixtures("one_thread")`."""
    import torch

    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)


def apt_install_or_skip(package: str, flag: str) -> None:
    """Install Debian's `package` when the environment variable `flag` is 1 (CI): as root, each apt-get
    step capped at 300 s; skip the test, with the reason, when that cannot be done."""
    if os.environ.get(flag) != "1":
        return
    if shutil.which("apt-get") is None or os.geteuid() != 0:
        pytest.skip(f"{flag}=1, but installing Debian's {package} needs apt-get as root")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    for cmd in (["apt-get", "update"], ["apt-get", "install", "-y", "--no-install-recommends", package]):
        try:
            proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
        except subprocess.TimeoutExpired:
            pytest.skip(f"{' '.join(cmd)} took over 300 s (no package mirror reachable?)")
        if proc.returncode != 0:
            pytest.skip(f"{' '.join(cmd)} failed: {(proc.stdout + proc.stderr)[-500:]}")


# The per-group codec needs the lrzip program. Tests that run it take this fixture and skip when it is
# missing; with PARAMGOLF_INSTALL_LRZIP=1 (.ci/run) Debian's package is installed first.
@pytest.fixture(scope="session")
def lrzip() -> str:
    if shutil.which("lrzip") is None:
        apt_install_or_skip("lrzip", "PARAMGOLF_INSTALL_LRZIP")
    found = shutil.which("lrzip")
    if found is None:
        pytest.skip("no lrzip on PATH: apt-get install lrzip (or set PARAMGOLF_INSTALL_LRZIP=1)")
    return found
