"""SentencePiece tokenizers: loading, hashing and training with the challenge's settings."""

from __future__ import annotations

import hashlib
import io
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import sentencepiece as spm

from paramgolf.errors import UserError
from paramgolf.fsio import write_atomic

# The SentencePiece trainer silently drops every input "sentence" longer than
# max_sentence_length bytes (default 4192). Whole documents are usually longer, so we
# cut them into chunks of at most CHUNK_BYTES at whitespace (where the BPE
# pre-tokenizer splits anyway) and give the trainer a limit with head-room.
CHUNK_BYTES = 4096
TRAINER_MAX_SENTENCE_BYTES = 8192

_SPACES = (b" ", b"\n", b"\t", b"\r")

# Trainer settings of the challenge's export (data/download_hf_docs_and_tokenize.py).
CHALLENGE_TRAINER_SETTINGS: dict[str, object] = {
    "model_type": "bpe",
    "character_coverage": 0.999,
    "byte_fallback": True,
    "split_digits": True,
    "normalization_rule_name": "nmt_nfkc",
    "add_dummy_prefix": False,
    "pad_id": 0,
    "bos_id": 1,
    "eos_id": 2,
    "unk_id": 3,
    "hard_vocab_limit": False,
}


def load_tokenizer(path: str | Path) -> spm.SentencePieceProcessor:
    """Load a SentencePiece ``.model`` file."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise UserError(
            f"tokenizer model not found: {path} (run `paramgolf-data download --variant sp1024` or pass the right path)"
        )
    sp = spm.SentencePieceProcessor()
    try:
        sp.load(str(path))
    except (OSError, RuntimeError) as exc:
        raise UserError(f"cannot read SentencePiece model {path}: {exc}") from exc
    return sp


def file_sha256(path: str | Path) -> str:
    """Hex SHA-256 of one file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def files_sha256(paths: Iterable[str | Path]) -> str:
    """One hex SHA-256 over several files in the given order (each length-prefixed)."""
    h = hashlib.sha256()
    for path in paths:
        # Length prefixes make the digest depend on where one file ends and the next begins.
        h.update(Path(path).stat().st_size.to_bytes(8, "little"))
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


def split_for_trainer(text: str, max_bytes: int = CHUNK_BYTES) -> list[str]:
    """Cut ``text`` into pieces of at most ``max_bytes`` UTF-8 bytes, at whitespace when possible."""
    data = text.encode("utf-8")
    pieces: list[str] = []
    while len(data) > max_bytes:
        cut = max(data.rfind(sp, 0, max_bytes + 1) for sp in _SPACES)
        if cut <= 0:
            cut = max_bytes
        while cut > 0 and (data[cut] & 0xC0) == 0x80:  # never cut inside a UTF-8 character
            cut -= 1
        pieces.append(data[:cut].decode("utf-8"))
        data = data[cut:].lstrip()
    if data:
        pieces.append(data.decode("utf-8"))
    return pieces


def _trainer_sentences(texts: Iterable[str], max_bytes: int) -> Iterator[str]:
    for text in texts:
        # Same clean-up as the challenge's trainer input; empty lines carry nothing.
        text = text.replace("\x00", " ").strip()
        if text:
            yield from split_for_trainer(text, max_bytes)


def train_sentencepiece(
    texts: Iterable[str],
    vocab_size: int,
    out_prefix: str | Path,
    num_threads: int = 1,
    user_defined_symbols: Sequence[str] = (),
) -> Path:
    """Train a BPE SentencePiece model with the challenge's settings; return ``<out_prefix>.model``.

    Documents are cut below the trainer's sentence limit so that none is skipped.
    One thread keeps the result deterministic. ``user_defined_symbols`` become pieces of
    their own that the text always splits at (the CaseOps operators).
    """
    if vocab_size < 8:
        raise UserError(f"vocab_size={vocab_size} is too small for a SentencePiece BPE model")
    out_prefix = Path(out_prefix)
    out_prefix.parent.mkdir(parents=True, exist_ok=True)
    model_path = out_prefix.with_name(out_prefix.name + ".model")
    proto = io.BytesIO()
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=_trainer_sentences(texts, CHUNK_BYTES),
            model_writer=proto,
            vocab_size=vocab_size,
            max_sentence_length=TRAINER_MAX_SENTENCE_BYTES,
            num_threads=num_threads,
            minloglevel=2,
            **({"user_defined_symbols": list(user_defined_symbols)} if user_defined_symbols else {}),
            **CHALLENGE_TRAINER_SETTINGS,
        )
    except RuntimeError as exc:
        raise UserError(f"SentencePiece training for {model_path} failed: {exc}") from exc
    return write_atomic(model_path, proto.getvalue())
