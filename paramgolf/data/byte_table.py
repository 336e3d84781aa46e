"""The official bytes-per-token accounting behind val_bpb.

For a target token t preceded by token p, the number of UTF-8 bytes it stands for is

    base_bytes[t] + (has_leading_space[t] and not is_boundary[p])

where base_bytes is the length of t's piece without its leading "▁" (1 for a
byte-fallback token, 0 for control/unknown/unused tokens) and is_boundary marks
control/unknown/unused tokens (e.g. BOS), after which a leading "▁" is not counted.
This matches build_sentencepiece_luts and eval_val in the challenge's train_gpt.py.

A dataset with byte sidecars (CaseOps) records the count of every validation position
instead; `SidecarByteTable` then reads a target's bytes at its position, ignoring the ids.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import sentencepiece as spm
import torch

from paramgolf.data.caseops import OPERATORS as CASEOPS_OPERATORS
from paramgolf.data.shards import read_shard
from paramgolf.errors import UserError


@dataclass
class ByteTable:
    """Per-token lookup tables for counting the bytes each scored token covers."""

    base_bytes: torch.Tensor  # int16 [V]
    has_leading_space: torch.Tensor  # bool [V]
    is_boundary: torch.Tensor  # bool [V]

    @property
    def size(self) -> int:
        return int(self.base_bytes.numel())

    def to(self, device: torch.device | str) -> ByteTable:
        return ByteTable(
            self.base_bytes.to(device),
            self.has_leading_space.to(device),
            self.is_boundary.to(device),
        )

    def count(
        self, prev_ids: torch.Tensor, tgt_ids: torch.Tensor, positions: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Bytes covered by each target token given the token before it (int64, same shape).

        ``positions`` (the targets' indices in the validation tokens) is what a sidecar reads; unused here.
        """
        prev_ids, tgt_ids = prev_ids.long(), tgt_ids.long()
        n = self.base_bytes[tgt_ids].long()
        return n + (self.has_leading_space[tgt_ids] & ~self.is_boundary[prev_ids]).long()

    def count_stream(self, tokens: torch.Tensor | np.ndarray, chunk: int = 1 << 22) -> int:
        """Total bytes over positions 1.. of a token stream (the val_bpb denominator)."""
        total = 0
        for start in range(1, len(tokens), chunk):
            end = min(start + chunk, len(tokens))
            window = _as_long(tokens[start - 1 : end])  # converts one chunk at a time
            if window.numel() and int(window.max()) >= self.size:
                raise UserError(
                    f"token id {int(window.max())} is outside the byte table (size {self.size}); "
                    "the tokens do not come from this tokenizer"
                )
            total += int(self.count(window[:-1], window[1:]).sum())
        return total


@dataclass
class SidecarByteTable(ByteTable):
    """A byte table whose counts come from the dataset's byte sidecar, by target position.

    ``token_bytes[p]`` is the number of original UTF-8 bytes validation token p stands for;
    the tokenizer's tables stay for the vocabulary size.
    """

    token_bytes: torch.Tensor  # int32 [num_val_tokens]

    def to(self, device: torch.device | str) -> SidecarByteTable:
        t = super().to(device)
        return SidecarByteTable(t.base_bytes, t.has_leading_space, t.is_boundary, self.token_bytes.to(device))

    def count(
        self, prev_ids: torch.Tensor, tgt_ids: torch.Tensor, positions: torch.Tensor | None = None
    ) -> torch.Tensor:
        if positions is None or positions.shape != tgt_ids.shape:
            raise RuntimeError("a sidecar byte count needs the targets' positions, shaped like the targets")
        return self.token_bytes[positions.to(self.token_bytes.device).long()].long()

    def count_stream(self, tokens: torch.Tensor | np.ndarray, chunk: int = 1 << 22) -> int:
        if len(tokens) > self.token_bytes.numel():
            raise UserError(
                f"{len(tokens)} validation tokens but the byte sidecar has {self.token_bytes.numel()} entries; "
                "they do not belong together: rebuild the dataset"
            )
        return int(self.token_bytes[1 : len(tokens)].sum())


def load_sidecar(files: Sequence[str | Path], num_tokens: int) -> torch.Tensor:
    """The byte sidecar shards concatenated (int32), cut to ``num_tokens`` entries."""
    counts = np.concatenate([read_shard(f, mmap=False) for f in files]) if files else np.zeros(0, np.uint16)
    if len(counts) < num_tokens:
        raise UserError(
            f"byte sidecar {[str(f) for f in files]} has {len(counts)} entries for {num_tokens} validation tokens; "
            "rebuild the dataset"
        )
    return torch.from_numpy(counts[:num_tokens].astype(np.int32))


def _as_long(tokens: torch.Tensor | np.ndarray) -> torch.Tensor:
    if isinstance(tokens, torch.Tensor):
        return tokens.long()
    return torch.from_numpy(np.asarray(tokens).astype(np.int64))


def build_byte_table(
    sp: spm.SentencePieceProcessor, table_size: int | None = None, sidecar: torch.Tensor | None = None
) -> ByteTable:
    """Byte table for ``sp``, padded to ``table_size`` (the model vocab) with 0-byte boundary ids.

    ``sidecar``: the dataset's byte count per validation position (a `SidecarByteTable` then counts
    from it). A CaseOps tokenizer needs one: its tables would count each case operator as 3 bytes.
    """
    if sidecar is None and all(sp.piece_to_id(op) != sp.unk_id() for op in CASEOPS_OPERATORS):
        raise UserError(
            "this tokenizer writes CaseOps text, whose original bytes only the dataset's byte sidecars "
            "(fineweb_val_bytes_NNNNNN.bin) know; count val_bpb with DatasetInfo.byte_table, which reads them"
        )
    sp_size = int(sp.vocab_size())
    size = sp_size if table_size is None else max(sp_size, int(table_size))
    base = np.zeros(size, dtype=np.int16)
    space = np.zeros(size, dtype=np.bool_)
    boundary = np.ones(size, dtype=np.bool_)  # ids the tokenizer never emits count as boundaries
    for i in range(sp_size):
        if sp.is_control(i) or sp.is_unknown(i) or sp.is_unused(i):
            continue
        boundary[i] = False
        if sp.is_byte(i):
            base[i] = 1
            continue
        piece = sp.id_to_piece(i)
        if piece.startswith("\u2581"):
            space[i] = True
            piece = piece[1:]
        base[i] = len(piece.encode("utf-8"))
    tables = torch.from_numpy(base), torch.from_numpy(space), torch.from_numpy(boundary)
    return ByteTable(*tables) if sidecar is None else SidecarByteTable(*tables, sidecar)
