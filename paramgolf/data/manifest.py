"""A dataset's manifest: which tokenizer wrote its shards.

Shards hold token ids only, so the same shards read with another tokenizer of the same
size give a plausible but wrong val_bpb (the byte count comes from the tokenizer).
Every writer of shards (``paramgolf-data build``, ``paramgolf-data download``, the
synthetic generator) therefore leaves ``manifest.json`` beside them::

    {"tokenizer": "tokenizer.model", "tokenizer_sha256": "...", "vocab_size": 1024}

plus ``"text_transform": "caseops"`` when the text was transformed before tokenizing
(its val_bpb then needs the byte sidecars), and a dataset is resolved only with the tokenizer whose sha256 the manifest records.
Datasets made before manifests existed have none; ``paramgolf-data manifest DIR
--tokenizer PATH`` writes one.

(Not to be confused with the Hub repo's ``manifest.json`` that ``paramgolf.data.hub``
reads: that one lists the datasets available for download.)
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from paramgolf.data.shards import list_shards, recorded_max_token_id
from paramgolf.data.tokenizer import file_sha256, load_tokenizer
from paramgolf.errors import UserError
from paramgolf.fsio import write_atomic

MANIFEST_FILENAME = "manifest.json"
_KEYS = ("tokenizer", "tokenizer_sha256", "vocab_size")


def write_manifest(data_dir: str | Path, tokenizer_path: str | Path, text_transform: str = "none") -> Path:
    """Record ``tokenizer_path`` (and a ``text_transform`` other than none) as what wrote the shards in
    ``data_dir``; return the manifest's path."""
    data_dir, tokenizer_path = Path(data_dir).expanduser(), Path(tokenizer_path).expanduser()
    sp = load_tokenizer(tokenizer_path)
    manifest = {
        "tokenizer": tokenizer_path.name,
        "tokenizer_sha256": file_sha256(tokenizer_path),
        "vocab_size": int(sp.vocab_size()),
    }
    if text_transform != "none":
        manifest["text_transform"] = text_transform
    return write_atomic(data_dir / MANIFEST_FILENAME, json.dumps(manifest, indent=2) + "\n")


def read_manifest(data_dir: str | Path) -> dict | None:
    """The manifest of ``data_dir``, or None when it has none."""
    path = Path(data_dir).expanduser() / MANIFEST_FILENAME
    if not path.is_file():
        return None
    redo = f"rewrite it with `paramgolf-data manifest {path.parent} --tokenizer PATH`"
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"{path} is not valid JSON ({exc}); {redo}") from exc
    missing = [k for k in _KEYS if not isinstance(manifest, dict) or k not in manifest]
    if missing:
        raise UserError(f"{path} lacks {', '.join(missing)}; {redo}")
    return manifest


def check_tokenizer(data_dir: str | Path, tokenizer_path: str | Path) -> None:
    """Refuse a tokenizer other than the one the manifest of ``data_dir`` records.

    A dataset without a manifest (made by older versions) is accepted with a one-line warning on stderr.
    """
    data_dir, tokenizer_path = Path(data_dir).expanduser(), Path(tokenizer_path).expanduser()
    manifest = read_manifest(data_dir)
    if manifest is None:
        if os.environ.get("RANK", "0") == "0":  # once per run, not once per rank
            print(
                f"warning: {data_dir} has no {MANIFEST_FILENAME}, so nothing checks that {tokenizer_path} wrote its "
                f"shards; record it with `paramgolf-data manifest {data_dir} --tokenizer {tokenizer_path}`",
                file=sys.stderr,
                flush=True,
            )
        return
    sha = file_sha256(tokenizer_path)
    if sha != manifest["tokenizer_sha256"]:
        recorded = data_dir / manifest["tokenizer"]  # paramgolf-data build keeps it beside the shards
        raise UserError(
            f"tokenizer mismatch: {tokenizer_path} (sha256 {sha[:12]}) did not write the shards of {data_dir}: "
            f"{data_dir / MANIFEST_FILENAME} records {recorded if recorded.is_file() else manifest['tokenizer']} "
            f"(sha256 {manifest['tokenizer_sha256'][:12]}, {manifest['vocab_size']} pieces); "
            "point data.tokenizer_path at that tokenizer, or rebuild the data with this one"
        )


def record_tokenizer(data_dir: str | Path, tokenizer_path: str | Path, force: bool = False) -> dict:
    """``paramgolf-data manifest``: write the manifest of an existing dataset; return it.

    Refuses a directory without shards, a tokenizer smaller than a token id the shard
    headers record, and (unless ``force``) replacing a manifest that names another tokenizer.
    """
    data_dir, tokenizer_path = Path(data_dir).expanduser(), Path(tokenizer_path).expanduser()
    shards = [*list_shards(data_dir, "val"), *list_shards(data_dir, "train")]
    vocab_size = int(load_tokenizer(tokenizer_path).vocab_size())
    for shard in shards:
        largest = recorded_max_token_id(shard)
        if largest is not None and largest >= vocab_size:
            raise UserError(
                f"{shard} holds token id {largest}, outside the {vocab_size} pieces of {tokenizer_path}: "
                "that tokenizer did not write these shards; pass the one that did"
            )
    old = read_manifest(data_dir)
    if old is not None and old["tokenizer_sha256"] != file_sha256(tokenizer_path) and not force:
        raise UserError(
            f"{data_dir / MANIFEST_FILENAME} already records another tokenizer ({old['tokenizer']}, "
            f"sha256 {old['tokenizer_sha256'][:12]}); pass --force to replace it"
        )
    write_manifest(
        data_dir, tokenizer_path, (old or {}).get("text_transform", "none")
    )  # keeps what the text went through
    return {"manifest": str(data_dir / MANIFEST_FILENAME), **read_manifest(data_dir)}
