"""Synthetic language: decodability, tokenizer round trip, entropy floor, caching."""

from __future__ import annotations

import json
import math
import multiprocessing as mp
import os
from pathlib import Path

import numpy as np
import pytest

import paramgolf.data.synthetic as synth
from paramgolf.data.shards import list_shards, read_shard
from paramgolf.data.synthetic import (
    INFO_FILENAME,
    SyntheticLanguage,
    SyntheticSpec,
    build_synthetic_dataset,
)
from paramgolf.data.tokenizer import load_tokenizer


def iter_docs(spec: SyntheticSpec, split: str, num_docs: int | None = None) -> list[str]:
    """The texts of a split: the same ones the dataset is built from."""
    n = num_docs if num_docs is not None else (spec.train_docs if split == "train" else spec.val_docs)
    return SyntheticLanguage(spec).sample(n, split)[0]


SMALL = SyntheticSpec(
    seed=3, vocab_size=320, lexicon_size=300, train_docs=800, val_docs=120, shard_tokens=20_000, tokenizer_train_docs=0
)


@pytest.fixture(scope="module")
def small_dir(tmp_path_factory):
    return build_synthetic_dataset(SMALL, tmp_path_factory.mktemp("cache"))


def test_layout_and_round_trip(small_dir):
    info = json.loads((small_dir / INFO_FILENAME).read_text())
    assert info["spec"]["seed"] == 3 and info["tokenizer_vocab_size"] == 320
    train, val = list_shards(small_dir, "train"), list_shards(small_dir, "val")
    assert len(train) >= 2 and len(val) >= 1
    sp = load_tokenizer(small_dir / "tokenizer.model")
    assert sp.vocab_size() == 320
    val_texts = list(iter_docs(SMALL, "val"))
    for text in list(iter_docs(SMALL, "train")) + val_texts:
        assert sp.decode(sp.encode(text)) == text
        assert text[0].isupper() and text.endswith(".") and "  " not in text
    # the val shards hold [BOS] + encode(doc) for each document, in order
    expected = [t for text in val_texts for t in [sp.bos_id()] + sp.encode(text)]
    got = np.concatenate([read_shard(f) for f in val])
    assert got.tolist() == expected
    assert sum(len(read_shard(f)) for f in train) == info["tokens_train"]


def test_lexicon_and_parse_invert_sampling():
    lang = SyntheticLanguage(SMALL)
    assert len(set(lang.words)) == SMALL.lexicon_size
    assert all(w.isalpha() and w.islower() and w.isascii() for w in lang.words)
    texts, bits = lang.sample(60, "val")
    assert len(set(texts)) == len(texts)
    for text, b in zip(texts, bits):
        words, seps = lang.parse(text)
        # rebuild the text from the parsed choices: the map choices -> text is inverted
        rebuilt = lang.words[words[0]].capitalize()
        for w, s in zip(words[1:], seps):
            rebuilt += synth._SEPARATORS[s] + (lang.words[w].capitalize() if s == synth.PERIOD else lang.words[w])
        assert rebuilt + "." == text
        assert lang.log2_prob(text) == pytest.approx(b, rel=1e-12)
    with pytest.raises(ValueError):
        lang.parse("Hello world.")
    # sampling is seeded and the val split does not depend on the number of train docs
    assert SyntheticLanguage(SMALL).sample(5, "val")[0] == texts[:5]
    assert list(iter_docs(SMALL, "train", 3)) != texts[:3]


def test_probabilities_are_normalised():
    lang = SyntheticLanguage(SMALL)
    n = SMALL.lexicon_size
    prev = np.repeat(np.arange(0, n, 37), n)
    nxt = np.tile(np.arange(n), len(prev) // n)
    sums = lang.next_word_probs(prev, nxt).reshape(-1, n).sum(1)
    assert np.allclose(sums, 1.0)
    for k in range(1, 6):
        assert sum(lang.separator_probs(k)) == pytest.approx(1.0)


def test_entropy_floor(small_dir):
    info = json.loads((small_dir / INFO_FILENAME).read_text())
    h = info["entropy_bits_per_byte"]
    assert 0 < h < 8
    assert info["val_bytes"] == info["val_text_bytes"]
    # recompute from the texts alone: every document, minus the last one's unscored end
    lang = SyntheticLanguage(SMALL)
    bits = sum(lang.log2_prob(t) for t in iter_docs(SMALL, "val")) + math.log2(SMALL.end_prob)
    assert bits / info["val_bytes"] == pytest.approx(h, rel=1e-9)

    # token unigram / bigram models fit on the train split do worse than the floor on val
    V = info["tokenizer_vocab_size"]
    train = np.concatenate([read_shard(f) for f in list_shards(small_dir, "train")]).astype(np.int64)
    val = np.concatenate([read_shard(f) for f in list_shards(small_dir, "val")]).astype(np.int64)
    uni = np.bincount(train, minlength=V) + 0.5
    uni_logp = np.log(uni / uni.sum())
    big = np.zeros((V, V)) + 0.05
    np.add.at(big, (train[:-1], train[1:]), 1.0)
    big_logp = np.log(big / big.sum(1, keepdims=True))
    unigram_bpb = -uni_logp[val[1:]].sum() / math.log(2) / info["val_bytes"]
    bigram_bpb = -big_logp[val[:-1], val[1:]].sum() / math.log(2) / info["val_bytes"]
    assert h < bigram_bpb < unigram_bpb


def test_deterministic_and_cached(tmp_path, small_dir, monkeypatch):
    again = build_synthetic_dataset(SMALL, tmp_path / "other")
    assert again.name == small_dir.name
    for name in ["tokenizer.model", "fineweb_val_000000.bin", "fineweb_train_000000.bin"]:
        assert (again / name).read_bytes() == (small_dir / name).read_bytes()
    # a cached dataset is returned without rebuilding
    monkeypatch.setattr(synth, "_build_into", lambda *a: pytest.fail("rebuilt a cached dataset"))
    assert build_synthetic_dataset(SMALL, tmp_path / "other") == again
    other_seed = SyntheticSpec(**{**SMALL.__dict__, "seed": 4})
    assert other_seed.digest() != SMALL.digest()


@pytest.mark.slow
def test_default_spec_size(tmp_path):
    spec = SyntheticSpec()
    info = json.loads((build_synthetic_dataset(spec, tmp_path) / INFO_FILENAME).read_text())
    assert 1_000_000 <= info["tokens_train"] <= 3_000_000
    assert info["files_train"] >= 2 and info["tokenizer_vocab_size"] == 512


def test_invalid_spec():
    with pytest.raises(ValueError, match="end_prob"):
        SyntheticLanguage(SyntheticSpec(end_prob=0.0))


# --- two processes building the same dataset at once ---------------------------

TINY = SyntheticSpec(seed=11, vocab_size=320, lexicon_size=200, train_docs=300, val_docs=40, tokenizer_train_docs=0)


def _build_in_child(cache_root: str, log_dir: str) -> str:
    import paramgolf.data.synthetic as s

    original = s._build_into

    def counting(spec, out_dir):
        Path(log_dir, f"build-{os.getpid()}").write_text(str(out_dir))
        return original(spec, out_dir)

    s._build_into = counting
    return str(s.build_synthetic_dataset(TINY, Path(cache_root)))


@pytest.mark.slow
def test_concurrent_builds_share_one_result(tmp_path):
    cache, logs = tmp_path / "cache", tmp_path / "logs"
    logs.mkdir()
    ctx = mp.get_context("spawn")
    with ctx.Pool(2) as pool:
        results = pool.starmap(_build_in_child, [(str(cache), str(logs))] * 2)
    assert results[0] == results[1]
    assert len(list(logs.iterdir())) == 1  # built exactly once
    out = Path(results[0])
    assert (out / INFO_FILENAME).is_file()
    assert read_shard(out / "fineweb_val_000000.bin")[0] == 1
    # nothing temporary is left behind, only the dataset and its lock file
    assert sorted(p.name for p in cache.iterdir()) == sorted([out.name, out.name + ".lock"])
