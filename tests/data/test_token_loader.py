"""Token streams: wrapping, world-size independence, seeds, validation tokens."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from paramgolf.data.loader import DistributedTokenLoader, TokenStream, load_validation_tokens, shard_order
from paramgolf.data.shards import ShardError, write_shard

SIZES = [1000, 1500, 700]


@pytest.fixture
def files(tmp_path):
    """Three shards whose tokens are their global positions, so spans identify themselves."""
    out, start = [], 0
    for i, n in enumerate(SIZES):
        path = tmp_path / f"fineweb_train_{i:06d}.bin"
        write_shard(path, np.arange(start, start + n))
        out.append(path)
        start += n
    return out


def test_stream_wraps_across_files_and_loops(files):
    stream = TokenStream(files)
    total = sum(SIZES)
    got = np.concatenate([stream.take(n) for n in (900, 200, 1990, 300)])
    expected = np.arange(3390) % total
    assert got.dtype == np.uint16
    assert got.tolist() == expected.tolist()


def test_next_batch_shapes_and_shift(files):
    loader = DistributedTokenLoader(files, rank=0, world_size=1)
    x, y = loader.next_batch(micro_tokens=64, seq_len=16)
    assert x.shape == y.shape == (4, 16) and x.dtype == y.dtype == torch.int64
    assert x.flatten().tolist() == list(range(64))
    assert y.flatten().tolist() == list(range(1, 65))
    with pytest.raises(AssertionError, match="multiple of seq_len"):  # checked up front by micro_batch_plan
        loader.next_batch(micro_tokens=60, seq_len=16)
    with pytest.raises(AssertionError, match="rank=2"):
        DistributedTokenLoader(files, rank=2, world_size=2)


def _step_spans(files, world_size, steps, micro_batches, micro_tokens, seq_len, seed=0):
    """For each step, the token spans of all ranks ordered by their place in the stream."""
    loaders = [DistributedTokenLoader(files, r, world_size, seed) for r in range(world_size)]
    out = []
    for _ in range(steps):
        spans = {}
        for call in range(micro_batches // world_size):
            for r, loader in enumerate(loaders):
                x, y = loader.next_batch(micro_tokens, seq_len)
                spans[call * world_size + r] = x.flatten().tolist() + [int(y.flatten()[-1])]
        out.append([spans[i] for i in sorted(spans)])
    return out


@pytest.mark.parametrize("seed", [0, 7])
def test_global_batch_independent_of_world_size(files, seed):
    # 4 micro-batches of 96 tokens per step, 9 steps: crosses every shard end and wraps around
    reference = _step_spans(files, 1, 9, 4, 96, 32, seed)
    for world in (2, 4):
        assert _step_spans(files, world, 9, 4, 96, 32, seed) == reference
    first = reference[0][0]
    assert first == list(range(first[0], first[0] + 97))  # a span is 97 consecutive tokens


def test_seed_zero_is_official_order(files):
    shuffled = [files[2], files[0], files[1]]
    order, start = shard_order(shuffled, 0)
    assert order == files and start == 0
    x, _ = DistributedTokenLoader(shuffled, 0, 1, seed=0).next_batch(8, 8)
    assert x.flatten().tolist() == list(range(8))


def test_other_seeds_permute_and_offset_deterministically(files):
    a = shard_order(files, 5)
    assert a == shard_order(files, 5)
    assert sorted(a[0]) == files
    orders = {tuple(p.name for p in shard_order(files, s)[0]) for s in range(1, 20)}
    starts = {shard_order(files, s)[1] for s in range(1, 20)}
    assert len(orders) > 1 and len(starts) > 1
    order, start = a
    x, _ = DistributedTokenLoader(files, 0, 1, seed=5).next_batch(8, 8)
    first_file_start = sum(SIZES[: files.index(order[0])])
    assert x.flatten().tolist() == list(range(first_file_start + start, first_file_start + start + 8))


def test_validation_tokens(files):
    val = load_validation_tokens(files, seq_len=128)
    usable = ((sum(SIZES) - 1) // 128) * 128
    assert val.dtype == torch.int64 and val.numel() == usable + 1
    assert val.tolist() == list(range(usable + 1))
    with pytest.raises(ValueError, match="too short for seq_len=4096"):
        load_validation_tokens(files, seq_len=4096)
    with pytest.raises(ShardError):
        load_validation_tokens([], seq_len=8)


def test_empty_shards_refused(tmp_path):
    write_shard(tmp_path / "a.bin", [])
    with pytest.raises(ShardError, match="empty"):
        TokenStream([tmp_path / "a.bin"])
