"""The `eval` config group: how the validation split is cut into scored windows.

`NonOverlapping` is the official evaluation (seq_len chunks, the tail dropped); `Sliding`
scores every token once with up to seq_len of context. Each knows which tokens it reads, how
many targets a single pass scores, and runs itself over the ranks of a process group.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from paramgolf.errors import UserError
from paramgolf.evaluation.bpb import ByteCounter, EvalResult, evaluate_non_overlapping
from paramgolf.evaluation.compliance import RULES
from paramgolf.evaluation.sliding import evaluate_sliding


class NonOverlapping:
    """Official evaluation: consecutive windows of `seq_len` tokens, the split's tail dropped."""

    name = "non_overlapping"
    stride: int | None = None

    def __init__(
        self,
        seq_len: int | None = None,
        batch_tokens: int = 524_288,
        pre_quant: bool = True,
        progress: bool = True,
        compliance: str = "check",
        probe_tokens: int = 1024,
    ) -> None:
        """`seq_len` None: train.seq_len; `batch_tokens`: tokens per forward batch over all ranks (official
        VAL_BATCH_SIZE); `pre_quant`: also score the averaged weights before quantization; `compliance`:
        check (run the legality check on the artifact's model, `paramgolf.evaluation.legality`) or
        declare (trust the components' declarations); `probe_tokens`: the check's prefix of the split."""
        if seq_len is not None and seq_len < 1:
            raise UserError(f"eval.seq_len={seq_len} must be ≥ 1 (or null: train.seq_len)")
        if batch_tokens < 1:
            raise UserError(f"eval.batch_tokens={batch_tokens} must be ≥ 1")
        if compliance not in ("check", "declare"):
            raise UserError(f"eval.compliance={compliance!r} must be check or declare")
        if probe_tokens < 64:
            raise UserError(f"eval.probe_tokens={probe_tokens} must be ≥ 64")
        self.seq_len, self.batch_tokens, self.pre_quant, self.progress = seq_len, batch_tokens, pre_quant, progress
        self.compliance, self.probe_tokens = compliance, probe_tokens

    def bind(self, train_seq_len: int) -> None:
        """Fill in the window length from training when the config left it null."""
        if self.seq_len is None:
            self.seq_len = train_seq_len

    def rules_kept(self) -> dict[str, bool]:
        return dict.fromkeys(RULES, True)  # causal softmax scoring; single pass is counted separately

    def scored_tokens(self, split: Tensor) -> Tensor:
        """The part of the split this method reads: a multiple of seq_len targets plus one."""
        usable = ((split.numel() - 1) // self.seq_len) * self.seq_len
        if usable <= 0:
            raise UserError(
                f"the validation split ({split.numel()} tokens) is shorter than one sequence of "
                f"eval.seq_len={self.seq_len}"
            )
        return split[: usable + 1]

    def expected_scored(self, num_split_tokens: int) -> int:
        """Targets a single pass over the split scores."""
        return ((num_split_tokens - 1) // self.seq_len) * self.seq_len

    _evaluate = staticmethod(evaluate_non_overlapping)

    def _windows(self) -> dict[str, Any]:
        return {}

    def batch_seqs(self, world_size: int) -> int:
        return max(1, self.batch_tokens // (world_size * self.seq_len))

    def __call__(
        self,
        model: nn.Module,
        tokens: Tensor,
        byte_table: ByteCounter,
        *,
        device: torch.device,
        rank: int = 0,
        world_size: int = 1,
        autocast_dtype: torch.dtype | None = None,
        progress: bool = False,
    ) -> EvalResult:
        """Score `tokens` (from `scored_tokens`) over the ranks of the process group."""
        return self._evaluate(
            model,
            tokens,
            byte_table,
            seq_len=self.seq_len,
            **self._windows(),
            batch_seqs=self.batch_seqs(world_size),
            device=device,
            rank=rank,
            world_size=world_size,
            autocast_dtype=autocast_dtype,
            progress=progress,
        )


class Sliding(NonOverlapping):
    """Sliding windows every `stride` tokens; each target scored once, by the window giving it most context."""

    name = "sliding"

    def __init__(
        self,
        stride: int = 64,
        seq_len: int | None = None,
        batch_tokens: int = 524_288,
        pre_quant: bool = True,
        progress: bool = True,
        compliance: str = "check",
        probe_tokens: int = 1024,
    ) -> None:
        super().__init__(seq_len, batch_tokens, pre_quant, progress, compliance, probe_tokens)
        if stride < 1:
            raise UserError(f"eval.stride={stride} must be ≥ 1")
        self.stride = stride

    def bind(self, train_seq_len: int) -> None:
        super().bind(train_seq_len)
        if self.stride > self.seq_len:
            raise UserError(f"eval.stride={self.stride} must be between 1 and the evaluation seq_len ({self.seq_len})")

    def scored_tokens(self, split: Tensor) -> Tensor:
        return split

    def expected_scored(self, num_split_tokens: int) -> int:
        return num_split_tokens - 1

    def _windows(self) -> dict[str, Any]:
        return {"stride": self.stride}

    _evaluate = staticmethod(evaluate_sliding)
