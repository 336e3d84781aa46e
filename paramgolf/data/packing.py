"""Document packing (DocumentPackingLoader of PR #1530, in record #1855).

Each micro-batch of a rank is one packed row [1, N] of whole stream tokens plus the document
boundaries in it (`cu_seqlens`, from the BOS tokens, documents longer than `max_doc_len` cut into
pieces), which the model hands to varlen attention (paramgolf.model.varlen) so that no token
attends across a document start.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from paramgolf.data.loader import shard_order
from paramgolf.data.shards import ShardError, read_shard
from paramgolf.errors import UserError
from paramgolf.model.varlen import cu_seqlens_from_bos

_SCAN = 1 << 20  # tokens read at a time when looking for a shard's first BOS


class DocumentPackingLoader:
    """Packed rows with their document boundaries, as (inputs, targets, {"cu_seqlens", "max_seqlen"}).

    Shards are read one after another (the order of `shard_order(files, seed)`; seed 0: sorted, as
    the record reads them), each from its first BOS token. A call takes world_size consecutive spans
    of N+1 tokens from the current shard and hands span `rank` to this process; when the shard has
    too few tokens left for all of them, the rest of it is skipped. After the last shard the first
    comes again. `max_doc_len` (None: the loop's seq_len, as the record) bounds every segment.
    """

    def __init__(
        self,
        files: Sequence[str | Path],
        rank: int,
        world_size: int,
        seed: int = 0,
        bos_id: int = 1,
        max_doc_len: int | None = None,
        cu_bucket: int = 64,
    ):
        """`cu_bucket`: cu_seqlens is padded to a multiple of this many entries (few compiled shapes)."""
        assert world_size >= 1 and 0 <= rank < world_size, f"rank={rank} is not valid for world_size={world_size}"
        if bos_id < 0:
            raise UserError(f"packing loader bos_id={bos_id} must be a token id (≥ 0; the tokenizer's BOS)")
        if max_doc_len is not None and max_doc_len < 1:
            raise UserError(f"packing loader max_doc_len={max_doc_len} must be ≥ 1 (or null: train.seq_len)")
        if cu_bucket < 1:
            raise UserError(f"packing loader cu_bucket={cu_bucket} must be ≥ 1")
        self.rank, self.world_size = rank, world_size
        self.bos_id, self.max_doc_len, self.cu_bucket = bos_id, max_doc_len, cu_bucket
        self.files, start = shard_order(files, seed)
        if not self.files:
            raise ShardError("DocumentPackingLoader needs at least one shard file, got none")
        self._open(0, start)

    def _open(self, file_idx: int, start: int) -> None:
        """Make shard `file_idx` current, its cursor on its first BOS at or after `start` (else at its end)."""
        self.file_idx = file_idx
        self.tokens = read_shard(self.files[file_idx])
        self.cursor = len(self.tokens)
        for lo in range(start, len(self.tokens), _SCAN):
            hits = np.flatnonzero(self.tokens[lo : lo + _SCAN] == self.bos_id)
            if hits.size:
                self.cursor = lo + int(hits[0])
                break

    def next_batch(self, micro_tokens: int, seq_len: int) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any]]:
        """x, y of shape [1, micro_tokens] (int64, CPU) and the model's document arguments.

        cu_seqlens: int32 boundaries of x's segments, padded with micro_tokens to a multiple of
        cu_bucket entries; max_seqlen: max_doc_len (an upper bound, the same every call, as the
        record passes train_seq_len).
        """
        assert micro_tokens > 0 and seq_len > 0, f"micro_tokens={micro_tokens}, seq_len={seq_len} must be positive"
        span = micro_tokens + 1
        need = span * self.world_size
        opened = 0
        while self.cursor + need > len(self.tokens):
            if opened == len(self.files):
                raise UserError(
                    f"no training shard holds {need:,} tokens (world_size × (tokens per micro-batch + 1)) from "
                    f"its first BOS (id {self.bos_id}): lower train.batch_tokens or raise train.micro_batches"
                )
            self._open((self.file_idx + 1) % len(self.files), 0)
            opened += 1
        lo = self.cursor + self.rank * span
        local = torch.from_numpy(self.tokens[lo : lo + span].astype(np.int64))
        self.cursor += need
        x, y = local[:-1], local[1:]
        max_doc_len = self.max_doc_len or seq_len
        cu = cu_seqlens_from_bos(x, self.bos_id, max_doc_len, self.cu_bucket)
        return x[None], y[None], {"cu_seqlens": cu, "max_seqlen": max_doc_len}

    def state_dict(self) -> dict[str, Any]:
        """Where the reading stands: the shard order (names), the current shard and the cursor in it."""
        return {
            "loader": "document_packing",
            "rank": self.rank,
            "world_size": self.world_size,
            "files": [f.name for f in self.files],
            "file_idx": self.file_idx,
            "cursor": self.cursor,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("loader") != "document_packing":
            raise UserError("the saved loader state is not a document-packing loader's: resume with the same loader")
        if (state["rank"], state["world_size"]) != (self.rank, self.world_size):
            raise UserError(
                f"loader state of rank {state['rank']} of {state['world_size']} given to rank {self.rank} "
                f"of {self.world_size}: resume with the same number of processes"
            )
        if list(state["files"]) != [f.name for f in self.files]:
            raise UserError(
                f"the saved loader read shards {list(state['files'])[:3]}… in another order or set than this "
                f"run's {[f.name for f in self.files][:3]}…: resume with the same data and train.loader_seed"
            )
        self._open(int(state["file_idx"]), 0)
        self.cursor = int(state["cursor"])
