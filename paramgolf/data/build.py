"""Build a challenge-format dataset (tokenizer + shards) from a JSONL file of documents.

Layout follows the official export: the first K documents are the validation split,
the rest the training split; every document is written as [BOS] + encode(text) with
no EOS, and each split is cut into shards of at most ``shard_tokens`` tokens.

With ``transform="caseops"`` the text goes through ``paramgolf.data.caseops.encode`` first,
the tokenizer keeps the four operators as pieces of their own, and each validation shard
gets a byte sidecar ``fineweb_val_bytes_NNNNNN.bin`` (the original bytes of every token).
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np
import sentencepiece as spm

from paramgolf.data import caseops
from paramgolf.data.byte_table import build_byte_table
from paramgolf.data.manifest import MANIFEST_FILENAME, write_manifest
from paramgolf.data.shards import MAX_TOKEN_ID, ShardError, list_shards, read_shard, sidecar_path, write_shard
from paramgolf.data.tokenizer import file_sha256, load_tokenizer, train_sentencepiece
from paramgolf.errors import UserError

DEFAULT_SHARD_TOKENS = 10**8  # the official export's shard size
TOKENIZER_FILENAME = "tokenizer.model"


def iter_docs(path: str | Path) -> Iterator[str]:
    """The ``text`` field of each line of a JSONL file, streamed."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise UserError(f"documents file not found: {path}")
    with path.open("r", encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise UserError(f"{path}:{lineno}: not valid JSON ({exc.msg})") from exc
            if not isinstance(record, dict) or not isinstance(record.get("text"), str):
                raise UserError(f'{path}:{lineno}: expected an object with a string "text" field')
            yield record["text"]


def _encoded(sp: spm.SentencePieceProcessor, texts: Iterable[str], batch: int = 1024) -> Iterator[list[int]]:
    """Token ids of each text, encoded in batches (SentencePiece batches use several threads)."""
    it = iter(texts)
    while chunk := list(itertools.islice(it, batch)):
        yield from sp.encode(chunk, out_type=int)


def _encoded_with_bytes(sp: spm.SentencePieceProcessor, texts: Iterable[str], batch: int = 256) -> Iterator:
    """(token ids, original bytes per token) of each text's CaseOps form, encoded in batches."""
    it = iter(texts)
    while chunk := list(itertools.islice(it, batch)):
        yield from caseops.encode_batch_with_byte_counts(sp, chunk)


def export_split(
    out_dir: Path,
    split: str,
    docs_tokens: Iterable[Sequence[int]],
    bos_id: int,
    shard_tokens: int,
    docs_bytes: Iterable[Sequence[int]] | None = None,
) -> dict[str, int]:
    """Write [BOS]+tokens of each document to ``fineweb_{split}_NNNNNN.bin`` shards; return counts.

    ``docs_bytes`` (parallel to ``docs_tokens``): the original bytes of each token, written as a
    byte sidecar beside every shard, BOS counting 0.
    """
    if shard_tokens <= 0:
        raise UserError(f"shard_tokens must be positive, got {shard_tokens}")
    with_bytes = docs_bytes is not None
    buf = np.empty(shard_tokens, dtype=np.uint16)
    side = np.empty(shard_tokens if with_bytes else 0, dtype=np.uint16)
    stats = {"docs": 0, "tokens": 0, "files": 0}
    fill = 0

    def flush() -> None:
        nonlocal fill
        if fill:
            shard = out_dir / f"fineweb_{split}_{stats['files']:06d}.bin"
            write_shard(shard, buf[:fill])
            if with_bytes:
                write_shard(sidecar_path(shard), side[:fill])
            stats["files"] += 1
            fill = 0

    docs = zip(docs_tokens, docs_bytes, strict=True) if with_bytes else ((t, None) for t in docs_tokens)
    for toks, nbytes in docs:
        doc = np.concatenate([[bos_id], np.asarray(toks, dtype=np.int64)])
        if doc.min() < 0 or doc.max() > MAX_TOKEN_ID:
            bad = int(doc.min()) if doc.min() < 0 else int(doc.max())
            raise ShardError(f"token id {bad} of a {split} document does not fit the uint16 shards")
        if with_bytes:
            doc_bytes = np.concatenate([[0], caseops.as_uint16(nbytes, f"a {split} document")])
            if len(doc_bytes) != len(doc):
                raise ShardError(f"a {split} document has {len(doc)} tokens but {len(doc_bytes)} byte counts")
        stats["docs"] += 1
        stats["tokens"] += len(doc)
        pos = 0
        while pos < len(doc):  # documents may straddle shard boundaries, like the official export
            k = min(shard_tokens - fill, len(doc) - pos)
            buf[fill : fill + k] = doc[pos : pos + k]
            if with_bytes:
                side[fill : fill + k] = doc_bytes[pos : pos + k]
            fill, pos = fill + k, pos + k
            if fill == shard_tokens:
                flush()
    flush()
    return stats


def clear_shards(out_dir: Path) -> None:
    """Remove old shards so that a rebuild never mixes with a previous one."""
    for pattern in ("fineweb_train_*.bin", "fineweb_val_*.bin"):
        for stale in out_dir.glob(pattern):
            stale.unlink()


def build_dataset(
    docs_path: str | Path,
    out_dir: str | Path,
    vocab_size: int,
    val_docs: int,
    tokenizer: str | Path | None = None,
    shard_tokens: int = DEFAULT_SHARD_TOKENS,
    tokenizer_train_docs: int | None = None,
    transform: str = "none",
) -> dict:
    """Train (or reuse) a tokenizer on the training documents and write val/train shards.

    The documents file is streamed, so it may be larger than memory; the tokenizer
    trainer holds its input in memory, so ``tokenizer_train_docs`` can cap it.
    ``transform``: none, or caseops (the text is case-encoded; val shards get byte sidecars).
    Returns a JSON-able summary of what was written.
    """
    out_dir = Path(out_dir).expanduser()
    transform = caseops.normalize_transform(transform)
    is_caseops = transform == caseops.NAME
    num_docs = sum(1 for _ in iter_docs(docs_path))  # also checks every line before any work
    if num_docs < 2:
        raise UserError(
            f"{docs_path} has {num_docs} document(s); a build needs at least 2: "
            "--val-docs=K of them for the validation split and the rest for training"
        )
    if not 0 < val_docs < num_docs:
        raise UserError(
            f"--val-docs={val_docs} must be between 1 and {num_docs - 1}: "
            f"{docs_path} has {num_docs} documents and the rest are the training split"
        )
    out_dir.mkdir(parents=True, exist_ok=True)
    model_path = out_dir / TOKENIZER_FILENAME
    # The tokenizer takes its final name only once it is known to fit, so a failed build
    # leaves the directory as it was (an earlier build's tokenizer and shards included).
    with tempfile.TemporaryDirectory(prefix=".tokenizer.", dir=out_dir) as tmp:
        if tokenizer is None:
            # Only training documents shape the tokenizer, so validation stays unseen.
            stop = None if not tokenizer_train_docs else val_docs + tokenizer_train_docs
            train_texts = itertools.islice(iter_docs(docs_path), val_docs, stop)
            if is_caseops:
                train_texts = map(caseops.encode, train_texts)
            symbols = caseops.OPERATORS if is_caseops else ()
            candidate = train_sentencepiece(
                train_texts, vocab_size, Path(tmp) / "tokenizer", user_defined_symbols=symbols
            )
        else:
            candidate = Path(tokenizer).expanduser()
        sp = load_tokenizer(candidate)  # fails early on a missing or unreadable model
        if is_caseops:
            caseops.check_tokenizer(sp, str(candidate))
        if int(sp.vocab_size()) != vocab_size:
            what, hint = (
                (f"the tokenizer trained on {docs_path}", "the corpus is too small for that many pieces")
                if tokenizer is None
                else (f"tokenizer {candidate}", "pass the matching --vocab-size")
            )
            raise UserError(f"{what} has vocab size {sp.vocab_size()}, but --vocab-size={vocab_size} ({hint})")
        (out_dir / MANIFEST_FILENAME).unlink(missing_ok=True)  # from here on the old shards are going
        if candidate.resolve() != model_path.resolve():
            if tokenizer is not None:  # copy beside the target first, so that the final name appears atomically
                candidate = Path(shutil.copyfile(candidate, Path(tmp) / TOKENIZER_FILENAME))
            os.replace(candidate, model_path)

    clear_shards(out_dir)
    bos = int(sp.bos_id())
    val_texts = itertools.islice(iter_docs(docs_path), val_docs)
    train_texts = itertools.islice(iter_docs(docs_path), val_docs, None)
    if is_caseops:
        # One pass over the documents feeds both iterables in step (tee buffers one item).
        ids, counts = itertools.tee(_encoded_with_bytes(sp, val_texts))
        val = export_split(out_dir, "val", (i for i, _ in ids), bos, shard_tokens, docs_bytes=(c for _, c in counts))
        train = export_split(out_dir, "train", _encoded(sp, map(caseops.encode, train_texts)), bos, shard_tokens)
        val_shards = list_shards(out_dir, "val")
        bytes_val = sum(int(read_shard(sidecar_path(f)).sum(dtype=np.int64)) for f in val_shards)
    else:
        val = export_split(out_dir, "val", _encoded(sp, val_texts), bos, shard_tokens)
        train = export_split(out_dir, "train", _encoded(sp, train_texts), bos, shard_tokens)
        val_stream = np.concatenate([read_shard(f) for f in list_shards(out_dir, "val")])
        bytes_val = build_byte_table(sp).count_stream(val_stream)
    manifest = write_manifest(out_dir, model_path, transform)  # last: the shards and their tokenizer are complete
    return {
        "out_dir": str(out_dir),
        "tokenizer": str(model_path),
        "tokenizer_sha256": file_sha256(model_path),
        "vocab_size": int(sp.vocab_size()),
        "shard_tokens": shard_tokens,
        "docs_val": val["docs"],
        "docs_train": train["docs"],
        "tokens_val": val["tokens"],
        "tokens_train": train["tokens"],
        "files_val": val["files"],
        "files_train": train["files"],
        "bytes_val": bytes_val,
        **({"text_transform": transform} if is_caseops else {}),
        "manifest": str(manifest),
    }
