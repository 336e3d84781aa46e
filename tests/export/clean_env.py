"""A venv that has torch, the codecs and the tokenizer (linked from this venv) but not paramgolf, Hydra or W&B."""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
from pathlib import Path

# Top-level names (modules, their .libs and .dist-info) the exported script may use: torch and its own
# dependencies, numpy, sentencepiece, safetensors (the artifact's container) and the codecs.
KEEP = (
    "torch", "torchgen", "functorch", "numpy", "sentencepiece", "safetensors", "zstandard", "brotli", "_brotli",
    "backports", "backports_zstd", "filelock", "fsspec", "jinja2", "markupsafe", "networkx", "sympy", "mpmath",
    "isympy", "typing_extensions", "setuptools", "_distutils_hack", "pkg_resources",
)  # fmt: skip
NOT_THERE = ("paramgolf", "hydra", "omegaconf", "wandb", "tqdm", "scipy")


def _kept(name: str) -> bool:
    stem = name.split("-")[0].split(".")[0].lower()
    return stem in KEEP


def make_clean_env(root: Path) -> Path:
    """The python of a fresh venv at `root` whose site-packages link only the KEEP packages of this one."""
    site = Path(sysconfig.get_paths()["purelib"])
    deps = root / "deps"
    deps.mkdir(parents=True)
    for entry in site.iterdir():
        if _kept(entry.name):
            (deps / entry.name).symlink_to(entry)
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(root / "venv")], check=True)
    python = root / "venv" / "bin" / "python"
    clean_site = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True, capture_output=True, text=True,
    ).stdout.strip()  # fmt: skip
    Path(clean_site, "deps.pth").write_text(f"{deps}\n")
    return python


def clean_environ(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    env.update(extra)
    return env
