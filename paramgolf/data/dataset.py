"""Data sources the runner consumes: each resolves to a DatasetInfo (files + tokenizer)."""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from paramgolf.data.loader import load_validation_tokens
from paramgolf.data.shards import ShardError, list_shards, max_token_id
from paramgolf.data.synthetic import INFO_FILENAME, SyntheticSpec, build_synthetic_dataset
from paramgolf.data.build import TOKENIZER_FILENAME
from paramgolf.data.tokenizer import load_tokenizer

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

    def validation_tokens(self, seq_len: int) -> torch.Tensor:
        """Validation tokens (int64), cut to a multiple of seq_len plus one, capped by val_max_tokens."""
        tokens = load_validation_tokens(self.val_files, seq_len)
        if self.val_max_tokens > 0:
            usable = max(self.val_max_tokens // seq_len, 1) * seq_len
            tokens = tokens[: min(usable, tokens.numel() - 1) + 1]
        return tokens


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
        hint = "run `paramgolf-data download --variant sp1024` (or point data.data_dir / data.tokenizer_path at your copy)"
        if not data_dir.is_dir():
            raise ValueError(f"FineWeb data directory not found: {data_dir.resolve()}; {hint}")
        if not tok_path.is_file():
            raise ValueError(f"tokenizer not found: {tok_path.resolve()}; {hint}")
        if self.val_max_tokens < 0:
            raise ValueError(f"data.val_max_tokens must be >= 0, got {self.val_max_tokens}")
        try:
            train, val = list_shards(data_dir, "train"), list_shards(data_dir, "val")
        except ShardError as exc:
            raise ValueError(f"{exc}; {hint}") from exc
        sp = load_tokenizer(tok_path)
        return DatasetInfo(
            name=data_dir.name,
            data_dir=data_dir,
            train_files=train,
            val_files=val,
            tokenizer_path=tok_path,
            tokenizer_vocab_size=int(sp.vocab_size()),
            entropy_bits_per_byte=None,
            val_max_tokens=self.val_max_tokens,
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


def check_vocab(info: DatasetInfo, model_vocab_size: int) -> None:
    """Refuse a model whose vocabulary cannot hold the tokenizer's or the shards' token ids."""
    files = [*info.val_files, *info.train_files]
    largest = max_token_id(files)
    tok = info.tokenizer_vocab_size
    problems = []
    if tok > model_vocab_size:
        problems.append(f"the tokenizer has more pieces ({tok}) than the model vocab_size ({model_vocab_size})")
    if largest >= model_vocab_size:
        problems.append(f"the shards hold token id {largest}, which the model vocab_size ({model_vocab_size}) cannot embed")
    if largest >= tok:
        problems.append(f"the shards hold token id {largest}, outside the tokenizer's {tok} pieces (wrong tokenizer?)")
    if problems:
        raise ValueError(
            "vocabulary mismatch: "
            + "; ".join(problems)
            + f". tokenizer={info.tokenizer_path} (size {tok}), model vocab_size={model_vocab_size}, "
            f"largest token id={largest} in {len(files)} shards under {info.data_dir}. "
            "Set the model's vocab_size to the tokenizer's size or use the matching data."
        )
