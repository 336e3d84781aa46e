"""Data sources the runner consumes: each resolves to a DatasetInfo (files + tokenizer)."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from paramgolf.data.build import TOKENIZER_FILENAME
from paramgolf.data.byte_table import ByteTable, build_byte_table, load_sidecar
from paramgolf.data.loader import load_validation_tokens
from paramgolf.data.manifest import check_tokenizer, read_manifest
from paramgolf.data.shards import list_shards, list_sidecars, read_shard_header, recorded_max_token_id
from paramgolf.data.synthetic import INFO_FILENAME, SyntheticSpec, build_synthetic_dataset
from paramgolf.data.tokenizer import load_tokenizer
from paramgolf.errors import UserError

CACHE_ENV = "PARAMGOLF_CACHE"


@dataclass
class DatasetInfo:
    """Where a dataset's shards and tokenizer are, and what is known about it."""

    name: str
    data_dir: Path
    train_files: list[Path]
    val_files: list[Path]
    tokenizer_path: Path
    tokenizer_vocab_size: int
    entropy_bits_per_byte: float | None  # the source's entropy floor, when known (synthetic)
    val_max_tokens: int = 0  # 0: the whole validation split
    val_byte_files: list[Path] = field(default_factory=list)  # byte sidecars parallel to val_files ([]: none)
    text_transform: str = "none"  # what the text went through before tokenizing (none, caseops)

    def validation_tokens(self, seq_len: int) -> torch.Tensor:
        """Validation tokens (int64), cut to a multiple of seq_len plus one, capped by val_max_tokens."""
        tokens = load_validation_tokens(self.val_files, seq_len)
        if self.val_max_tokens > 0:
            usable = max(self.val_max_tokens // seq_len, 1) * seq_len
            tokens = tokens[: min(usable, tokens.numel() - 1) + 1]
        return tokens

    def byte_table(self, table_size: int | None = None) -> ByteTable:
        """How val_bpb counts bytes: the byte sidecar when the dataset has one, else the tokenizer's tables."""
        sidecar = None
        if self.val_byte_files:
            sidecar = load_sidecar(self.val_byte_files, sum(read_shard_header(f) for f in self.val_files))
        return build_byte_table(load_tokenizer(self.tokenizer_path), table_size, sidecar)


class FineWebData:
    """The challenge's FineWeb shards as downloaded by ``paramgolf-data download``."""

    def __init__(
        self,
        data_dir: str = "data/datasets/fineweb10B_sp1024",
        tokenizer_path: str = "data/tokenizers/fineweb_1024_bpe.model",
        val_max_tokens: int = 0,
    ):
        self.data_dir = data_dir
        self.tokenizer_path = tokenizer_path
        self.val_max_tokens = val_max_tokens

    def resolve(self) -> DatasetInfo:
        data_dir = Path(self.data_dir).expanduser()
        tok_path = Path(self.tokenizer_path).expanduser()
        hint = (
            "run `paramgolf-data download --variant sp1024` (or point data.data_dir / data.tokenizer_path at your copy)"
        )
        if not data_dir.is_dir():
            raise UserError(f"FineWeb data directory not found: {data_dir.resolve()}; {hint}")
        if not tok_path.is_file():
            raise UserError(f"tokenizer not found: {tok_path.resolve()}; {hint}")
        if self.val_max_tokens < 0:
            raise UserError(f"data.val_max_tokens must be >= 0, got {self.val_max_tokens}")
        train, val = list_shards(data_dir, "train"), list_shards(data_dir, "val")  # their errors say what to do
        check_tokenizer(data_dir, tok_path)
        sp = load_tokenizer(tok_path)
        sidecars = list_sidecars(data_dir, val)
        transform = (read_manifest(data_dir) or {}).get("text_transform", "none")
        if transform != "none" and not sidecars:
            raise UserError(
                f"{data_dir} holds {transform} text but no byte sidecars (fineweb_val_bytes_NNNNNN.bin), so val_bpb "
                "cannot count the original bytes; download the variant with its sidecars or rebuild it with "
                f"`paramgolf-data build --transform {transform}`"
            )
        return DatasetInfo(
            name=data_dir.name,
            data_dir=data_dir,
            train_files=train,
            val_files=val,
            tokenizer_path=tok_path,
            tokenizer_vocab_size=int(sp.vocab_size()),
            entropy_bits_per_byte=None,
            val_max_tokens=self.val_max_tokens,
            val_byte_files=sidecars,
            text_transform=transform,
        )


class SyntheticData:
    """The synthetic language of paramgolf.data.synthetic, built once and cached.

    The cache lives in ``cache_dir``, or in ``$PARAMGOLF_CACHE/synthetic`` when that
    variable is set (it wins, so tests and clusters can redirect every cache at once).
    """

    def __init__(
        self,
        seed: int = 0,
        vocab_size: int = 512,
        lexicon_size: int = 1000,
        train_docs: int = 12000,
        val_docs: int = 400,
        zipf_exponent: float = 1.1,
        num_successors: int = 4,
        successor_weight: float = 0.7,
        comma_prob: float = 0.08,
        period_prob: float = 0.15,
        min_sentence_words: int = 3,
        end_prob: float = 0.2,
        shard_tokens: int = 1_000_000,
        tokenizer_train_docs: int = 2000,
        val_max_tokens: int = 0,
        cache_dir: str = "~/.cache/paramgolf/synthetic",
    ):
        self.spec = SyntheticSpec(
            seed=seed,
            vocab_size=vocab_size,
            lexicon_size=lexicon_size,
            train_docs=train_docs,
            val_docs=val_docs,
            zipf_exponent=zipf_exponent,
            num_successors=num_successors,
            successor_weight=successor_weight,
            comma_prob=comma_prob,
            period_prob=period_prob,
            min_sentence_words=min_sentence_words,
            end_prob=end_prob,
            shard_tokens=shard_tokens,
            tokenizer_train_docs=tokenizer_train_docs,
        )
        self.val_max_tokens = val_max_tokens
        self.cache_dir = cache_dir

    def cache_root(self) -> Path:
        env = os.environ.get(CACHE_ENV)
        return Path(env).expanduser() / "synthetic" if env else Path(self.cache_dir).expanduser()

    def resolve(self) -> DatasetInfo:
        data_dir = build_synthetic_dataset(self.spec, self.cache_root())
        info = json.loads((data_dir / INFO_FILENAME).read_text())
        return DatasetInfo(
            name=data_dir.name,
            data_dir=data_dir,
            train_files=list_shards(data_dir, "train"),
            val_files=list_shards(data_dir, "val"),
            tokenizer_path=data_dir / TOKENIZER_FILENAME,
            tokenizer_vocab_size=int(info["tokenizer_vocab_size"]),
            entropy_bits_per_byte=float(info["entropy_bits_per_byte"]),
            val_max_tokens=self.val_max_tokens,
        )


def _id_problem(info: DatasetInfo, vocab_size: int, largest: int, where: str) -> str | None:
    """The one-line complaint about token id ``largest`` found in ``where``, or None when it fits."""
    tok = info.tokenizer_vocab_size
    if largest >= vocab_size:
        return (
            f"vocabulary mismatch: {where} holds token id {largest}, which arch.vocab_size={vocab_size} cannot embed "
            f"(tokenizer {info.tokenizer_path} has {tok} pieces); set arch.vocab_size to the size of the tokenizer "
            "the data was made with, and point data.tokenizer_path at that tokenizer"
        )
    if largest >= tok:
        return (
            f"vocabulary mismatch: {where} holds token id {largest}, outside the {tok} pieces of tokenizer "
            f"{info.tokenizer_path} (arch.vocab_size={vocab_size}); the data was made with another tokenizer: "
            "point data.tokenizer_path at it and set arch.vocab_size to its size"
        )
    return None


def check_vocab(info: DatasetInfo, vocab_size: int) -> None:
    """Refuse an ``arch.vocab_size`` that cannot embed the data's token ids, reading shard headers only.

    The tokenizer that made the shards bounds their ids, so its size must not exceed
    ``vocab_size``. Shards written by paramgolf also record their largest id in the
    header, which is checked too (1 KiB read per shard, never the tokens); downloaded
    shards record none and rely on the tokenizer bound. Tokens already in memory (the
    validation split) can be checked for free with ``check_token_ids``.
    """
    tok = info.tokenizer_vocab_size
    if tok > vocab_size:
        raise UserError(
            f"vocabulary mismatch: arch.vocab_size={vocab_size} is smaller than the {tok} pieces of tokenizer "
            f"{info.tokenizer_path}; set arch.vocab_size={tok} or use data made with a tokenizer of at most "
            f"{vocab_size} pieces"
        )
    for path in [*info.val_files, *info.train_files]:
        largest = recorded_max_token_id(path)
        if largest is not None:
            problem = _id_problem(info, vocab_size, largest, f"shard {path} (max id recorded in its header)")
            if problem:
                raise UserError(problem)


def check_token_ids(
    info: DatasetInfo, tokens: torch.Tensor | np.ndarray, vocab_size: int, what: str = "the validation split"
) -> None:
    """Refuse loaded ``tokens`` holding an id that ``vocab_size`` or the tokenizer lacks.

    Meant for tokens the caller has in memory anyway (the validation split), so the
    check costs one pass over them and no reads.
    """
    if (tokens.numel() if isinstance(tokens, torch.Tensor) else np.size(tokens)) == 0:
        return
    lo, hi = int(tokens.min()), int(tokens.max())
    where = f"{what} of {info.data_dir}"
    if lo < 0:
        raise UserError(f"vocabulary mismatch: {where} holds negative token id {lo}; the data is corrupt: rebuild it")
    problem = _id_problem(info, vocab_size, hi, where)
    if problem:
        raise UserError(problem)
