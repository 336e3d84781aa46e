"""Token streams for training and the validation token set.

The training stream is the official one: shards read in order, consumed as one long
sequence of tokens that wraps around to the first shard at the end. Each call to
``DistributedTokenLoader.next_batch`` takes ``world_size`` consecutive spans from the
stream and hands span ``rank`` to this process, so a step made of M micro-batches covers
the same M spans whatever the number of processes that share it. The document-packing loader
(one packed row per micro-batch, attention within documents) is paramgolf.data.packing.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from paramgolf.data.shards import ShardError, read_shard, read_shard_header
from paramgolf.errors import UserError


class TokenStream:
    """Shards read one after another as an endless token sequence (memory-mapped)."""

    def __init__(self, files: Sequence[str | Path], start: int = 0):
        self.files = [Path(f) for f in files]
        if not self.files:
            raise ShardError("TokenStream needs at least one shard file, got none")
        if sum(read_shard_header(f) for f in self.files) == 0:
            raise ShardError(f"all {len(self.files)} shards are empty: {[str(f) for f in self.files]}")
        self.file_idx = 0
        self.tokens = read_shard(self.files[0])
        assert 0 <= start <= len(self.tokens), f"start={start} is outside {self.files[0]} ({len(self.tokens)} tokens)"
        self.pos = start

    def _advance_file(self) -> None:
        self.file_idx = (self.file_idx + 1) % len(self.files)
        self.tokens = read_shard(self.files[self.file_idx])
        self.pos = 0

    def take(self, n: int) -> np.ndarray:
        """The next ``n`` tokens as a uint16 array (a copy), crossing shard ends as needed."""
        out = np.empty(n, dtype=np.uint16)
        filled = 0
        while filled < n:
            avail = len(self.tokens) - self.pos
            if avail <= 0:
                self._advance_file()
                continue
            k = min(n - filled, avail)
            out[filled : filled + k] = self.tokens[self.pos : self.pos + k]
            self.pos += k
            filled += k
        return out

    def state_dict(self) -> dict[str, Any]:
        """Where the stream stands: the shard order (names) and the next token's shard and offset."""
        return {"files": [f.name for f in self.files], "file_idx": self.file_idx, "pos": self.pos}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from `state_dict()`'s position; the shards must be the same, in the same order."""
        names = [f.name for f in self.files]
        if list(state["files"]) != names:
            raise UserError(
                f"the saved token stream read shards {list(state['files'])[:3]}… in another order or set than "
                f"this run's {names[:3]}…: resume with the same data and train.loader_seed"
            )
        self.file_idx = int(state["file_idx"])
        self.tokens = read_shard(self.files[self.file_idx])
        self.pos = int(state["pos"])


def shard_order(files: Sequence[str | Path], seed: int) -> tuple[list[Path], int]:
    """Shard order and start offset for a data seed.

    seed 0 is the official order: shards sorted by name, starting at token 0. Any other
    seed permutes the shards with ``numpy.random.default_rng(seed)`` and starts at a
    token offset drawn uniformly inside the first shard of that order.
    """
    ordered = sorted(Path(f) for f in files)
    if seed == 0 or not ordered:
        return ordered, 0
    rng = np.random.default_rng(seed)
    ordered = [ordered[i] for i in rng.permutation(len(ordered))]
    first_len = read_shard_header(ordered[0])
    start = int(rng.integers(0, first_len)) if first_len > 0 else 0
    return ordered, start


class DistributedTokenLoader:
    """Hands each rank its span of the shared token stream, as (inputs, targets)."""

    def __init__(self, files: Sequence[str | Path], rank: int, world_size: int, seed: int = 0):
        assert world_size >= 1 and 0 <= rank < world_size, f"rank={rank} is not valid for world_size={world_size}"
        self.rank = rank
        self.world_size = world_size
        ordered, start = shard_order(files, seed)
        self.stream = TokenStream(ordered, start=start)

    def next_batch(self, micro_tokens: int, seq_len: int) -> tuple[torch.Tensor, torch.Tensor]:
        """x, y of shape [micro_tokens // seq_len, seq_len] (int64, CPU) for this rank.

        Consumes world_size * (micro_tokens + 1) tokens; the +1 lets y be x shifted by one.
        """
        # micro_batch_plan checked train.batch_tokens/micro_batches/seq_len up front.
        assert seq_len > 0 and micro_tokens > 0 and micro_tokens % seq_len == 0, (
            f"micro_tokens={micro_tokens} must be a positive multiple of seq_len={seq_len}"
        )
        span = micro_tokens + 1
        chunk = self.stream.take(span * self.world_size)
        local = torch.from_numpy(chunk[self.rank * span : (self.rank + 1) * span].astype(np.int64))
        return local[:-1].view(-1, seq_len), local[1:].view(-1, seq_len)

    def state_dict(self) -> dict[str, Any]:
        return {"rank": self.rank, "world_size": self.world_size, "stream": self.stream.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if "stream" not in state:
            raise UserError("the saved loader state is not a token stream's: resume with the same loader")
        if (state["rank"], state["world_size"]) != (self.rank, self.world_size):
            raise UserError(
                f"loader state of rank {state['rank']} of {state['world_size']} given to rank {self.rank} "
                f"of {self.world_size}: resume with the same number of processes"
            )
        self.stream.load_state_dict(state["stream"])


def load_validation_tokens(files: Sequence[str | Path], seq_len: int) -> torch.Tensor:
    """All validation shards concatenated and cut to a multiple of seq_len plus one (int64)."""
    if not files:
        raise ShardError("no validation shard files given")
    tokens = np.concatenate([read_shard(f, mmap=False) for f in files])
    usable = ((len(tokens) - 1) // seq_len) * seq_len
    if usable <= 0:
        raise UserError(
            f"validation set of {len(tokens)} tokens in {[str(f) for f in files]} is too short "
            f"for seq_len={seq_len}; need at least {seq_len + 1} tokens"
        )
    return torch.from_numpy(tokens[: usable + 1].astype(np.int64))
