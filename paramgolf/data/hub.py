"""Download the challenge's FineWeb shards and tokenizers from the Hugging Face Hub.

Manifest-driven like the challenge's data/cached_challenge_fineweb.py: the dataset repo
holds ``datasets/manifest.json``, which lists each dataset (``fineweb10B_sp1024``...)
with its shard counts (``stats.files_train``, ``stats.files_val``) and tokenizer name,
and each tokenizer with its files (``model_path``, ``vocab_path``, ``path``).
Files land in ``<out>/datasets/<dataset>/`` and ``<out>/tokenizers/``. A dataset entry
with ``val_bytes_glob`` (the CaseOps export) also has a byte sidecar
``fineweb_val_bytes_NNNNNN.bin`` per validation shard, fetched with it.

The published variants live in different repos (``VARIANT_REPOS``): sp1024 and byte260 in
the challenge's, sp4096 and sp8192 in kevclark/parameter-golf, and the CaseOps SP8192
(``sp8192_lossless_caps_caseops_v1_reserved``) in romeerp/parameter-golf-caseops-v1.

Resumable: a file already present (a shard with a valid header and size) is skipped.
Each file is first fetched into the Hub cache and then moved into place atomically,
so an interrupted run never leaves a truncated file under its final name. Like the
official script, local files are hard links to the cache blobs where the disk allows
(no second copy of 20 GB); do not edit them in place.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import tempfile
from pathlib import Path, PurePosixPath

from tqdm import tqdm

from paramgolf.data.caseops import normalize_transform
from paramgolf.data.manifest import write_manifest
from paramgolf.data.shards import ShardError, read_shard_header
from paramgolf.errors import UserError
from paramgolf.fsio import write_atomic

DEFAULT_REPO_ID = "willdepueoai/parameter-golf"
REMOTE_PREFIX = "datasets"
CASEOPS_VARIANT = "sp8192_lossless_caps_caseops_v1_reserved"
VARIANT_REPOS = {
    "sp4096": "kevclark/parameter-golf",
    "sp8192": "kevclark/parameter-golf",
    CASEOPS_VARIANT: "romeerp/parameter-golf-caseops-v1",
}


def repo_for_variant(variant: str, repo_id: str | None = None) -> str:
    """``repo_id`` when given, else the repo that publishes ``variant`` (the challenge's by default)."""
    return repo_id or VARIANT_REPOS.get(variant, DEFAULT_REPO_ID)


_OFFLINE_HINT = (
    "check the network connection (and HF_ENDPOINT or proxy settings), then run the same command again: "
    "files already downloaded are kept"
)


@functools.cache
def _check_reachable(repo_id: str) -> None:
    """One request to the Hub, without retries: an unreachable Hub fails in seconds.

    ``hf_hub_download`` retries a failed connection with back-off (about 25 s) before it
    gives up; asking once first turns "offline" into one clear error. Cached: once per
    process and repo. Skipped when HF_HUB_OFFLINE is set, where only the Hub cache is read.
    """
    from huggingface_hub import constants, get_hf_file_metadata, hf_hub_url
    from huggingface_hub.utils import HfHubHTTPError

    if constants.HF_HUB_OFFLINE:
        return
    url = hf_hub_url(repo_id, f"{REMOTE_PREFIX}/manifest.json", repo_type="dataset")
    try:
        get_hf_file_metadata(url, timeout=constants.HF_HUB_ETAG_TIMEOUT)
    except HfHubHTTPError:
        return  # the Hub answered: hf_hub_download reports what it said
    except Exception as exc:  # refused, no route, DNS, timeout, proxy, TLS: the HTTP client's own types vary
        raise UserError(
            f"cannot reach the Hugging Face Hub at {constants.ENDPOINT} ({_first_line(exc)}); {_OFFLINE_HINT}"
        ) from exc


def _hub_download(repo_id: str, remote_path: str, force: bool = False) -> Path:
    """Fetch one file of the dataset repo into the Hub cache; return its local path."""
    from huggingface_hub import constants, hf_hub_download
    from huggingface_hub.utils import HfHubHTTPError, LocalEntryNotFoundError

    _check_reachable(repo_id)
    remote = PurePosixPath(remote_path)
    subfolder = None if str(remote.parent) == "." else str(remote.parent)
    try:
        return Path(
            hf_hub_download(
                repo_id=repo_id, filename=remote.name, subfolder=subfolder, repo_type="dataset", force_download=force
            )
        )
    except LocalEntryNotFoundError as exc:  # neither the Hub nor its local cache could give the file
        if constants.HF_HUB_OFFLINE:
            raise UserError(
                f"HF_HUB_OFFLINE is set and {remote_path} of {repo_id} is not in the local Hub cache; "
                "unset HF_HUB_OFFLINE to download it"
            ) from exc
        raise UserError(
            f"cannot reach the Hugging Face Hub at {constants.ENDPOINT} for {remote_path} "
            f"({_first_line(exc.__cause__ or exc)}); {_OFFLINE_HINT}"
        ) from exc
    except HfHubHTTPError as exc:
        raise UserError(
            f"the Hugging Face Hub refused {remote_path} of {repo_id} ({_first_line(exc)}); "
            "check --repo-id and your access"
        ) from exc


def _first_line(exc: BaseException) -> str:
    lines = str(exc).splitlines()
    return f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__


def dataset_name_for_variant(variant: str) -> str:
    """``sp1024`` -> ``fineweb10B_sp1024``; ``byte260`` -> ``fineweb10B_byte260``; ``sp8192_<suffix>`` likewise."""
    vocab, sep, suffix = variant.partition("_")
    if variant == "byte260" or (vocab.startswith("sp") and vocab[2:].isdigit() and bool(sep) == bool(suffix)):
        return f"fineweb10B_{variant}"
    raise UserError(
        f"unknown --variant {variant!r}: expected byte260, sp<VOCAB_SIZE> such as sp1024, "
        f"or sp<VOCAB_SIZE>_<suffix> such as {CASEOPS_VARIANT}"
    )


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


MANIFEST_ORIGIN = ".manifest_repo"  # beside the Hub manifest in ``out``: the repo it came from


def load_manifest(repo_id: str, out: Path) -> dict:
    """The repo's manifest.json (downloaded once, then read from ``out``).

    ``out`` keeps one Hub manifest; one of another repo (``.manifest_repo`` says which; none:
    the default repo) is fetched afresh, so variants of several repos can share ``out``.
    """
    remote = f"{REMOTE_PREFIX}/manifest.json"
    path = local_path(out, remote)
    origin = path.with_name(MANIFEST_ORIGIN)
    if path.is_file() and (origin.read_text().strip() if origin.is_file() else DEFAULT_REPO_ID) != repo_id:
        path.unlink()
    fetch(repo_id, remote, path)
    write_atomic(origin, repo_id + "\n")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise UserError(f"{path} is not valid JSON ({exc.msg}); delete it and download again") from exc


def _dataset_entry(manifest: dict, name: str, repo_id: str) -> dict:
    entry = next((d for d in manifest.get("datasets", []) if d.get("name") == name), None)
    if entry is None:
        known = [d.get("name") for d in manifest.get("datasets", [])]
        raise UserError(f"dataset {name} is not in the manifest of {repo_id} (it lists {known})")
    return entry


def _tokenizer_entry(manifest: dict, dataset_entry: dict, repo_id: str) -> dict:
    tok_name = dataset_entry.get("tokenizer_name")
    tok = next((t for t in manifest.get("tokenizers", []) if t.get("name") == tok_name), None)
    if tok is None:
        raise UserError(f"tokenizer {tok_name!r} of {dataset_entry.get('name')} is not in the manifest of {repo_id}")
    return tok


def plan_files(manifest: dict, variant: str, train_shards: int, with_docs: bool, repo_id: str) -> list[str]:
    """Remote paths to fetch for a variant, following the manifest."""
    name = dataset_name_for_variant(variant)
    entry = _dataset_entry(manifest, name, repo_id)
    stats = entry.get("stats") or {}
    files_train, files_val = int(stats.get("files_train", 0)), int(stats.get("files_val", 0))
    if train_shards < 0:
        raise UserError(f"--train-shards must be >= 0, got {train_shards}")
    if train_shards > files_train:
        raise UserError(f"--train-shards={train_shards} but {name} on {repo_id} has only {files_train} training shards")
    tok = _tokenizer_entry(manifest, entry, repo_id)
    tok_files = [str(tok[k]) for k in ("model_path", "vocab_path", "path") if tok.get(k)]
    if not tok_files:
        raise UserError(f"tokenizer {tok['name']!r} in the manifest of {repo_id} lists no files")

    prefix = f"{REMOTE_PREFIX}/datasets/{name}"
    files = []
    if with_docs:
        files += [f"{REMOTE_PREFIX}/docs_selected.jsonl", f"{REMOTE_PREFIX}/docs_selected.source_manifest.json"]
    files += [f"{prefix}/fineweb_val_{i:06d}.bin" for i in range(files_val)]
    if entry.get("val_bytes_glob"):  # the byte sidecars of a transformed (CaseOps) export
        files += [f"{prefix}/fineweb_val_bytes_{i:06d}.bin" for i in range(files_val)]
    files += [f"{prefix}/fineweb_train_{i:06d}.bin" for i in range(train_shards)]
    files += [f"{REMOTE_PREFIX}/{p}" for p in tok_files]
    return files


def download(
    variant: str = "sp1024",
    train_shards: int = 10,
    out: str | Path = "data",
    repo_id: str | None = None,
    with_docs: bool = False,
    progress: bool = True,
) -> dict:
    """Download a variant's val shards (and byte sidecars), ``train_shards`` train shards and tokenizer.

    ``repo_id`` None: the repo that publishes the variant (``VARIANT_REPOS``). Returns a summary.
    """
    out = Path(out).expanduser()
    dataset_name_for_variant(variant)  # a malformed variant fails before any request
    repo_id = repo_for_variant(variant, repo_id)
    manifest = load_manifest(repo_id, out)
    files = plan_files(manifest, variant, train_shards, with_docs, repo_id)
    downloaded, skipped = [], []
    for remote in tqdm(files, desc=f"download {variant}", unit="file", disable=not progress):
        dest = local_path(out, remote)
        (downloaded if fetch(repo_id, remote, dest) else skipped).append(str(dest))
    # Record which tokenizer wrote the shards, so that no other one is used with them.
    name = dataset_name_for_variant(variant)
    dataset_dir = local_path(out, f"{REMOTE_PREFIX}/datasets/{name}")
    tok = _tokenizer_entry(manifest, _dataset_entry(manifest, name, repo_id), repo_id)
    if tok.get("model_path"):  # the SentencePiece model of sp* variants
        transform = normalize_transform(tok.get("text_transform"))
        write_manifest(dataset_dir, local_path(out, f"{REMOTE_PREFIX}/{tok['model_path']}"), transform)
    return {
        "dataset_dir": str(dataset_dir),
        "tokenizers_dir": str(out / "tokenizers"),
        "downloaded": downloaded,
        "skipped": skipped,
    }
