"""Byte accounting of val_bpb on the real challenge tokenizers."""

from __future__ import annotations

import json

import pytest
import torch

from paramgolf.data.byte_table import build_byte_table
from paramgolf.data.tokenizer import load_tokenizer

BOS = 1


@pytest.fixture(scope="module")
def sp1024(shared_dir):
    return load_tokenizer(shared_dir / "data/tokenizers/fineweb_1024_bpe.model")


@pytest.fixture(scope="module")
def sp8192(shared_dir):
    return load_tokenizer(shared_dir / "data/tokenizers/fineweb_8192_bpe.model")


def _per_position(sp, ids):
    table = build_byte_table(sp)
    t = torch.tensor(ids)
    return table.count(t[:-1], t[1:]).tolist()


def test_hand_counts_1024(sp1024):
    sp = sp1024
    ids = [BOS] + sp.encode("Hello, world.")
    assert [sp.id_to_piece(i) for i in ids[1:]] == ["H", "ell", "o", ",", "\u2581world", "."]
    # H, ell, o, ",", " world" (5 letters + the space), "."
    assert _per_position(sp, ids) == [1, 3, 1, 1, 6, 1]


def test_boundary_tokens(sp1024):
    sp = sp1024
    world = sp.piece_to_id("\u2581world")
    the = sp.piece_to_id("\u2581the")
    unk = sp.unk_id()
    # After BOS, pad or <unk> the leading space is not counted; BOS itself is 0 bytes.
    ids = [BOS, world, BOS, the, unk, world, 0, world, the]
    assert _per_position(sp, ids) == [5, 0, 3, 0, 5, 0, 5, 4]
    table = build_byte_table(sp)
    assert table.base_bytes.dtype == torch.int16
    assert table.count(torch.tensor([BOS]), torch.tensor([world])).dtype == torch.int64
    # "x€y": € is unknown to the 1024 model and counts 0 bytes.
    ids = [BOS] + sp.encode("x€y")
    assert [sp.id_to_piece(i) for i in ids[1:]] == ["x", "<unk>", "y"]
    assert _per_position(sp, ids) == [1, 0, 1]


def test_table_size_padding(sp1024):
    table = build_byte_table(sp1024, table_size=1030).to("cpu")
    assert table.size == 1030
    assert table.is_boundary[1024:].all() and not table.base_bytes[1024:].any()
    assert not table.has_leading_space[1024:].any()
    assert build_byte_table(sp1024, table_size=10).size == 1024


def test_byte_fallback_8192(sp8192):
    sp = sp8192
    ids = [BOS] + sp.encode("a €")
    assert [sp.id_to_piece(i) for i in ids[1:]] == ["a", "\u2581", "<0xE2>", "<0x82>", "<0xAC>"]
    assert _per_position(sp, ids) == [1, 1, 1, 1, 1]
    table = build_byte_table(sp)
    byte_ids = [i for i in range(sp.vocab_size()) if sp.is_byte(i)]
    assert len(byte_ids) == 256
    assert (table.base_bytes[byte_ids] == 1).all() and not table.has_leading_space[byte_ids].any()


def _texts(shared_dir):
    docs = [json.loads(line)["text"] for line in open(shared_dir / "data/corpus/enwiki_sample.jsonl")]
    # Lines of the first part of each article: many survive normalization unchanged.
    texts = [line.strip() for d in docs for line in d[:3000].split("\n") if line.strip()][:600]
    texts += ["naïve café — 東京 was 42°C, ok?", "Ünïcödé straße ½ ∑ x", "tabs\tand  spaces", "x"]
    return texts


@pytest.mark.parametrize("name", ["fineweb_1024_bpe", "fineweb_8192_bpe"])
def test_bytes_sum_to_utf8_length(shared_dir, name):
    sp = load_tokenizer(shared_dir / f"data/tokenizers/{name}.model")
    table = build_byte_table(sp)
    checked = non_ascii = 0
    stream = [BOS]
    expected_total = 0
    for text in _texts(shared_dir):
        ids = sp.encode(text)
        if sp.decode(ids) != text:
            continue  # normalization changed the text; its bytes are not what is scored
        doc = torch.tensor([BOS] + ids)
        assert int(table.count(doc[:-1], doc[1:]).sum()) == len(text.encode("utf-8")), text[:60]
        stream += ids + [BOS]
        expected_total += len(text.encode("utf-8"))
        checked += 1
        non_ascii += any(ord(c) > 127 for c in text)
    assert checked >= 300 and non_ascii >= 10
    # The same over a concatenated stream [BOS d1 BOS d2 ...] (document ends count 0 bytes).
    assert table.count_stream(torch.tensor(stream)) == expected_total
    assert table.count_stream(torch.tensor(stream), chunk=7) == expected_total
