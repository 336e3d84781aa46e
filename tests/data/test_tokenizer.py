"""Tokenizer helpers: loading, hashing, trainer settings, long documents."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
from sentencepiece import sentencepiece_model_pb2 as model_pb2

import paramgolf.data.tokenizer as tokmod
from paramgolf.data.tokenizer import (
    file_sha256,
    files_sha256,
    load_tokenizer,
    split_for_trainer,
    train_sentencepiece,
)


def _short_docs(n=300, seed=0):
    rng = np.random.default_rng(seed)
    letters = list("abcdefghjklmnop")  # no q, u, i, x, z, y: those only appear in the long document
    docs = []
    for _ in range(n):
        words = ["".join(rng.choice(letters, size=rng.integers(1, 6))) for _ in range(40)]
        docs.append(" ".join(words))
    return docs


LONG_DOC = " ".join(["quixzy"] * 1500)  # ~10 KB: above the trainer's sentence limit


def test_load_tokenizer_errors(tmp_path):
    with pytest.raises(ValueError, match="not found.*paramgolf-data download"):
        load_tokenizer(tmp_path / "missing.model")
    bad = tmp_path / "bad.model"
    bad.write_bytes(b"not a model")
    with pytest.raises(ValueError, match="cannot read SentencePiece model.*bad.model"):
        load_tokenizer(bad)


def test_hashes(tmp_path):
    a, b, c, d = (tmp_path / n for n in "abcd")
    a.write_bytes(b"ab")
    b.write_bytes(b"c")
    c.write_bytes(b"a")
    d.write_bytes(b"bc")
    assert file_sha256(a) == hashlib.sha256(b"ab").hexdigest()
    assert files_sha256([a, b]) == files_sha256([a, b])
    assert files_sha256([a, b]) != files_sha256([b, a])  # order matters
    assert files_sha256([a, b]) != files_sha256([c, d])  # so do file boundaries


def test_split_for_trainer_respects_limit_and_characters():
    text = ("héllo wörld " * 50) + "x" * 300 + " €€€€€€€€€€€€€€€€€€€€€€€€€€€€€€€€€€€€€€€€€€€€€€€€€"
    pieces = split_for_trainer(text, max_bytes=64)
    assert all(0 < len(p.encode("utf-8")) <= 64 for p in pieces)
    assert "".join(pieces).replace(" ", "") == text.replace(" ", "")
    assert split_for_trainer("short text", max_bytes=64) == ["short text"]


def test_trainer_settings_and_determinism(tmp_path):
    docs = _short_docs(120)
    m1 = train_sentencepiece(docs, 300, tmp_path / "one")
    m2 = train_sentencepiece(docs, 300, tmp_path / "two")
    assert m1.name == "one.model"
    assert m1.read_bytes() == m2.read_bytes()
    proto = model_pb2.ModelProto()
    proto.ParseFromString(m1.read_bytes())
    t, n = proto.trainer_spec, proto.normalizer_spec
    assert t.model_type == model_pb2.TrainerSpec.BPE
    assert (t.vocab_size, t.byte_fallback, t.split_digits, t.hard_vocab_limit) == (300, True, True, False)
    assert abs(t.character_coverage - 0.999) < 1e-6
    assert (t.pad_id, t.bos_id, t.eos_id, t.unk_id) == (0, 1, 2, 3)
    assert n.name == "nmt_nfkc" and not n.add_dummy_prefix
    sp = load_tokenizer(m1)
    assert sp.vocab_size() == 300 and sp.bos_id() == 1


def test_long_document_is_not_skipped(tmp_path, monkeypatch):
    docs = _short_docs() + [LONG_DOC]
    sp = load_tokenizer(train_sentencepiece(docs, 400, tmp_path / "split"))
    pieces = sp.encode("quixzy", out_type=str)
    assert pieces == ["quixzy"], pieces

    # Control: without the split the trainer drops the long document, and the word
    # (even its letters) is unknown; this shows the assertion above can fail.
    monkeypatch.setattr(tokmod, "split_for_trainer", lambda text, max_bytes=0: [text])
    sp_skip = load_tokenizer(train_sentencepiece(docs, 400, tmp_path / "nosplit"))
    ids = sp_skip.encode("quixzy")
    assert any(sp_skip.is_byte(i) for i in ids)
