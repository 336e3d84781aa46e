"""The official bytes-per-token accounting behind val_bpb.

For a target token t preceded by token p, the number of UTF-8 bytes it stands for is

    base_bytes[t] + (has_leading_space[t] and not is_boundary[p])

where base_bytes is the length of t's piece without its leading "▁" (1 for a
byte-fallback token, 0 for control/unknown/unused tokens) and is_boundary marks
control/unknown/unused tokens (e.g. BOS), after which a leading "▁" is not counted.
This matches build_sentencepiece_luts and eval_val in the challenge's train_gpt.py.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import sentencepiece as spm
import torch

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

    def count(self, prev_ids: torch.Tensor, tgt_ids: torch.Tensor) -> torch.Tensor:
        """Bytes covered by each target token given the token before it (int64, same shape)."""
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


def _as_long(tokens: torch.Tensor | np.ndarray) -> torch.Tensor:
    if isinstance(tokens, torch.Tensor):
        return tokens.long()
    return torch.from_numpy(np.asarray(tokens).astype(np.int64))


def build_byte_table(sp: spm.SentencePieceProcessor, table_size: int | None = None) -> ByteTable:
    """Byte table for ``sp``, padded to ``table_size`` (the model vocab) with 0-byte boundary ids."""
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
    return ByteTable(torch.from_numpy(base), torch.from_numpy(space), torch.from_numpy(boundary))
