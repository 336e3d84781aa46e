"""Two gloo processes give the same EvalResult as one, for both evaluation methods."""

from __future__ import annotations

import pytest
import torch
from evalkit import CacheAttentionLM, make_byte_table
from gloo_workers import run_gloo_workers

from paramgolf.evaluation.windows import NonOverlapping, Sliding

VOCAB = 16
# 61 sequences of 8 (odd, so the ranks get unequal shares) plus a tail of 3 tokens.
SEQ_LEN, NUM_TOKENS = 8, 61 * 8 + 1 + 3
SETTINGS = {  # the `eval` group's components, as the runner calls them
    "non_overlapping": NonOverlapping(seq_len=SEQ_LEN, batch_tokens=5 * SEQ_LEN),
    "sliding": Sliding(stride=3, seq_len=SEQ_LEN, batch_tokens=7 * SEQ_LEN),
}
COMPARED = ("val_loss", "val_bpb", "num_tokens", "num_bytes", "method", "seq_len", "stride")


def tokens() -> torch.Tensor:
    return torch.randint(0, VOCAB, (NUM_TOKENS,), generator=torch.Generator().manual_seed(0))


def run_all(rank: int, world_size: int) -> dict[str, dict]:
    model, table = CacheAttentionLM(VOCAB), make_byte_table(VOCAB)
    out = {}
    for name, evaluator in SETTINGS.items():
        result = evaluator(model, tokens(), table, device="cpu", rank=rank, world_size=world_size)
        out[name] = {k: getattr(result, k) for k in COMPARED}
    return out


def _rank_results(rank: int, world_size: int) -> dict:
    results = run_all(rank, world_size)
    try:  # a rank/world size that disagrees with the process group would double-count shards
        SETTINGS["sliding"](CacheAttentionLM(VOCAB), tokens(), make_byte_table(VOCAB), device="cpu")
        results["mismatch_error"] = None
    except RuntimeError as err:  # paramgolf always passes its process group's values: a bug
        results["mismatch_error"] = str(err)
    return results


def test_two_gloo_ranks_match_one_process():
    per_rank = run_gloo_workers(_rank_results, world_size=2)
    single = run_all(rank=0, world_size=1)
    assert single["non_overlapping"]["num_tokens"] == 61 * SEQ_LEN
    assert single["sliding"]["num_tokens"] == NUM_TOKENS - 1
    for rank, got in enumerate(per_rank):
        assert "world_size=1" in got.pop("mismatch_error")
        for name, expected in single.items():
            for key, value in expected.items():
                if isinstance(value, float):  # float64 sums added in another order
                    assert got[name][key] == pytest.approx(value, rel=1e-12), (rank, name, key)
                else:
                    assert got[name][key] == value, (rank, name, key)
