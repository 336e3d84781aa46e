"""Statistics of one shard under a tokenizer, with the val_bpb byte accounting."""

from __future__ import annotations

from pathlib import Path

import torch

from paramgolf.data.byte_table import build_byte_table
from paramgolf.data.manifest import check_tokenizer
from paramgolf.data.shards import read_shard, sidecar_path
from paramgolf.data.tokenizer import load_tokenizer
from paramgolf.errors import UserError


def inspect_shard(path: str | Path, tokenizer: str | Path) -> dict:
    """Token, byte and document counts of a shard.

    num_bytes sums the byte table over positions 1.. (target token i, previous token i-1), or the
    byte sidecar beside the shard when it has one: exactly the denominator val_bpb uses for this token stream.
    """
    tokens = read_shard(path)
    sp = load_tokenizer(tokenizer)
    check_tokenizer(Path(path).parent, tokenizer)  # the byte counts are only right with the shard's own tokenizer
    largest = int(tokens.max()) if tokens.size else -1
    if largest >= sp.vocab_size():
        raise UserError(
            f"{path} holds token id {largest} but {tokenizer} has only {sp.vocab_size()} pieces; "
            "pass the tokenizer the shard was made with"
        )
    side = sidecar_path(path) if Path(path).name.startswith("fineweb_val_") else None
    sidecar = torch.from_numpy(read_shard(side, mmap=False).astype("int32")) if side and side.is_file() else None
    num_bytes = build_byte_table(sp, sidecar=sidecar).count_stream(tokens)
    scored = max(int(tokens.size) - 1, 0)
    return {
        "path": str(path),
        "tokenizer": str(tokenizer),
        "vocab_size": int(sp.vocab_size()),
        "num_tokens": int(tokens.size),
        "num_scored_tokens": scored,
        "num_bytes": num_bytes,
        "bytes_per_token": num_bytes / scored if scored else 0.0,
        "max_token_id": largest,
        "num_docs": int((tokens == sp.bos_id()).sum()),
    }
