"""Download the challenge's FineWeb shards and tokenizers from the Hugging Face Hub.

Manifest-driven like the challenge's data/cached_challenge_fineweb.py: the dataset repo
holds ``datasets/manifest.json``, which lists each dataset (``fineweb10B_sp1024``...)
with its shard counts (``stats.files_train``, ``stats.files_val``) and tokenizer name,
and each tokenizer with its files (``model_path``, ``vocab_path``, ``path``).
Files land in ``<out>/datasets/<dataset>/`` and ``<out>/tokenizers/``.

Resumable: a file already present (a shard with a valid header and size) is skipped.
Each file is first fetched into the Hub cache and then moved into place atomically,
so an interrupted run never leaves a truncated file under its final name. Like the
official script, local files are hard links to the cache blobs where the disk allows
(no second copy of 20 GB); do not edit them in place.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path, PurePosixPath

from tqdm import tqdm

from paramgolf.data.shards import ShardError, read_shard_header
from paramgolf.errors import UserError

DEFAULT_REPO_ID = "willdepueoai/parameter-golf"
REMOTE_PREFIX = "datasets"


def _hub_download(repo_id: str, remote_path: str, force: bool = False) -> Path:
    """Fetch one file of the dataset repo into the Hub cache; return its local path."""
    from huggingface_hub import hf_hub_download

    remote = PurePosixPath(remote_path)
    subfolder = None if str(remote.parent) == "." else str(remote.parent)
    return Path(
        hf_hub_download(
            repo_id=repo_id, filename=remote.name, subfolder=subfolder, repo_type="dataset", force_download=force
        )
    )


def dataset_name_for_variant(variant: str) -> str:
    """``sp1024`` -> ``fineweb10B_sp1024``; ``byte260`` -> ``fineweb10B_byte260``."""
    if variant == "byte260" or (variant.startswith("sp") and variant[2:].isdigit()):
        return f"fineweb10B_{variant}"
    raise UserError(f"unknown --variant {variant!r}: expected byte260 or sp<VOCAB_SIZE> such as sp1024")


def local_path(out: Path, remote_path: str) -> Path:
    """Where a repo file goes locally: the ``datasets/`` prefix is dropped."""
    parts = PurePosixPath(remote_path).parts
    if parts[:1] == (REMOTE_PREFIX,):
        parts = parts[1:]
    return out.joinpath(*parts)


def _is_complete(path: Path) -> bool:
    if not path.is_file():
        return False
    if path.suffix == ".bin":
        try:
            read_shard_header(path)
        except ShardError:
            return False
    return True


def fetch(repo_id: str, remote_path: str, dest: Path) -> bool:
    """Put ``remote_path`` at ``dest`` unless a complete copy is there; True if downloaded."""
    if _is_complete(dest):
        return False
    # A damaged local copy may be a hard link to a damaged cache blob: fetch afresh.
    cached = _hub_download(repo_id, remote_path, force=dest.exists()).resolve(strict=True)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    os.close(fd)
    try:
        os.unlink(tmp)
        try:
            os.link(cached, tmp)  # no copy when the Hub cache is on the same disk
        except OSError:
            shutil.copyfile(cached, tmp)
        if dest.suffix == ".bin":
            read_shard_header(tmp)  # refuse a corrupt download before it takes the final name
        os.replace(tmp, dest)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return True


def load_manifest(repo_id: str, out: Path) -> dict:
    """The repo's manifest.json (downloaded once, then read from ``out``)."""
    remote = f"{REMOTE_PREFIX}/manifest.json"
    path = local_path(out, remote)
    fetch(repo_id, remote, path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise UserError(f"{path} is not valid JSON ({exc.msg}); delete it and download again") from exc


def plan_files(manifest: dict, variant: str, train_shards: int, with_docs: bool, repo_id: str) -> list[str]:
    """Remote paths to fetch for a variant, following the manifest."""
    name = dataset_name_for_variant(variant)
    entry = next((d for d in manifest.get("datasets", []) if d.get("name") == name), None)
    if entry is None:
        known = [d.get("name") for d in manifest.get("datasets", [])]
        raise UserError(f"dataset {name} is not in the manifest of {repo_id} (it lists {known})")
    stats = entry.get("stats") or {}
    files_train, files_val = int(stats.get("files_train", 0)), int(stats.get("files_val", 0))
    if train_shards < 0:
        raise UserError(f"--train-shards must be >= 0, got {train_shards}")
    if train_shards > files_train:
        raise UserError(f"--train-shards={train_shards} but {name} on {repo_id} has only {files_train} training shards")
    tok_name = entry.get("tokenizer_name")
    tok = next((t for t in manifest.get("tokenizers", []) if t.get("name") == tok_name), None)
    if tok is None:
        raise UserError(f"tokenizer {tok_name!r} of {name} is not in the manifest of {repo_id}")
    tok_files = [str(tok[k]) for k in ("model_path", "vocab_path", "path") if tok.get(k)]
    if not tok_files:
        raise UserError(f"tokenizer {tok_name!r} in the manifest of {repo_id} lists no files")

    prefix = f"{REMOTE_PREFIX}/datasets/{name}"
    files = []
    if with_docs:
        files += [f"{REMOTE_PREFIX}/docs_selected.jsonl", f"{REMOTE_PREFIX}/docs_selected.source_manifest.json"]
    files += [f"{prefix}/fineweb_val_{i:06d}.bin" for i in range(files_val)]
    files += [f"{prefix}/fineweb_train_{i:06d}.bin" for i in range(train_shards)]
    files += [f"{REMOTE_PREFIX}/{p}" for p in tok_files]
    return files


def download(
    variant: str = "sp1024",
    train_shards: int = 10,
    out: str | Path = "data",
    repo_id: str = DEFAULT_REPO_ID,
    with_docs: bool = False,
    progress: bool = True,
) -> dict:
    """Download a variant's val shards, ``train_shards`` train shards and tokenizer; return a summary."""
    out = Path(out).expanduser()
    manifest = load_manifest(repo_id, out)
    files = plan_files(manifest, variant, train_shards, with_docs, repo_id)
    downloaded, skipped = [], []
    for remote in tqdm(files, desc=f"download {variant}", unit="file", disable=not progress):
        dest = local_path(out, remote)
        (downloaded if fetch(repo_id, remote, dest) else skipped).append(str(dest))
    return {
        "dataset_dir": str(local_path(out, f"{REMOTE_PREFIX}/datasets/{dataset_name_for_variant(variant)}")),
        "tokenizers_dir": str(out / "tokenizers"),
        "downloaded": downloaded,
        "skipped": skipped,
    }
