"""Two gloo processes give the same EvalResult as one, for both evaluation methods."""
from __future__ import annotations

import json
import socket
from datetime import timedelta
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from evalkit import CacheAttentionLM, make_byte_table

from paramgolf.evaluation.sliding import evaluate

VOCAB = 16
# 61 sequences of 8 (odd, so the ranks get unequal shares) plus a tail of 3 tokens.
SEQ_LEN, NUM_TOKENS = 8, 61 * 8 + 1 + 3
SETTINGS = {
    "non_overlapping": dict(method="non_overlapping", seq_len=SEQ_LEN, batch_seqs=5),
    "sliding": dict(method="sliding", seq_len=SEQ_LEN, stride=3, batch_seqs=7),
}
COMPARED = ("val_loss", "val_bpb", "num_tokens", "num_bytes", "method", "seq_len", "stride")


def tokens() -> torch.Tensor:
    return torch.randint(0, VOCAB, (NUM_TOKENS,), generator=torch.Generator().manual_seed(0))


def run_all(rank: int, world_size: int) -> dict[str, dict]:
    model, table = CacheAttentionLM(VOCAB), make_byte_table(VOCAB)
    out = {}
    for name, kwargs in SETTINGS.items():
        result = evaluate(model, tokens(), table, device="cpu", rank=rank, world_size=world_size, **kwargs)
        out[name] = {k: getattr(result, k) for k in COMPARED}
    return out


def worker(rank: int, port: int, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2, timeout=timedelta(seconds=60)
    )
    try:
        results = run_all(rank, 2)
        try:  # a rank/world size that disagrees with the process group would double-count shards
            evaluate(CacheAttentionLM(VOCAB), tokens(), make_byte_table(VOCAB), device="cpu", **SETTINGS["sliding"])
            results["mismatch_error"] = None
        except ValueError as err:
            results["mismatch_error"] = str(err)
        Path(out_dir, f"rank{rank}.json").write_text(json.dumps(results))
    finally:
        dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.timeout(120)
def test_two_gloo_ranks_match_one_process(tmp_path):
    mp.spawn(worker, args=(free_port(), str(tmp_path)), nprocs=2, join=True)
    single = run_all(rank=0, world_size=1)
    assert single["non_overlapping"]["num_tokens"] == 61 * SEQ_LEN
    assert single["sliding"]["num_tokens"] == NUM_TOKENS - 1
    for rank in range(2):
        got = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert "world_size=1" in got.pop("mismatch_error")
        for name, expected in single.items():
            for key, value in expected.items():
                if isinstance(value, float):  # float64 sums added in another order
                    assert got[name][key] == pytest.approx(value, rel=1e-12), (rank, name, key)
                else:
                    assert got[name][key] == value, (rank, name, key)
