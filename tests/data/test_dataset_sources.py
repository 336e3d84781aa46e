"""Dataset sources the runner consumes, and the vocabulary check."""
from __future__ import annotations

import dataclasses
import inspect
import shutil

import pytest
from hydra.utils import instantiate

from paramgolf.data.dataset import DatasetInfo, FineWebData, SyntheticData, check_vocab
from paramgolf.data.shards import write_shard
from paramgolf.data.synthetic import SyntheticSpec

TINY = dict(seed=1, vocab_size=320, lexicon_size=200, train_docs=300, val_docs=40, tokenizer_train_docs=0)


@pytest.fixture
def fineweb_dir(tmp_path, shared_dir):
    data = tmp_path / "datasets/fineweb10B_sp1024"
    write_shard(data / "fineweb_val_000000.bin", [1] + list(range(4, 104)))
    write_shard(data / "fineweb_train_000000.bin", [1, 10, 1023])
    write_shard(data / "fineweb_train_000001.bin", [1, 11, 12])
    tok = tmp_path / "tokenizers/fineweb_1024_bpe.model"
    tok.parent.mkdir()
    shutil.copyfile(shared_dir / "data/tokenizers/fineweb_1024_bpe.model", tok)
    return data, tok


def test_fineweb_resolve(fineweb_dir):
    data, tok = fineweb_dir
    info = FineWebData(str(data), str(tok), val_max_tokens=40).resolve()
    assert info.name == "fineweb10B_sp1024" and info.tokenizer_vocab_size == 1024
    assert [f.name for f in info.train_files] == ["fineweb_train_000000.bin", "fineweb_train_000001.bin"]
    assert len(info.val_files) == 1 and info.entropy_bits_per_byte is None
    assert info.validation_tokens(16).numel() == 33  # 40 tokens -> 2 sequences of 16, plus one
    assert dataclasses.replace(info, val_max_tokens=0).validation_tokens(16).numel() == 97
    check_vocab(info, 1024)


def test_fineweb_errors_say_what_to_do(fineweb_dir, tmp_path):
    data, tok = fineweb_dir
    with pytest.raises(ValueError, match=r"not found: .*missing.*paramgolf-data download --variant sp1024"):
        FineWebData(str(tmp_path / "missing"), str(tok)).resolve()
    with pytest.raises(ValueError, match=r"tokenizer not found.*nope.model.*paramgolf-data download"):
        FineWebData(str(data), str(tmp_path / "nope.model")).resolve()
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match=r"no train shards in .*empty.*paramgolf-data download"):
        FineWebData(str(empty), str(tok)).resolve()


def test_check_vocab_refusals(fineweb_dir):
    data, tok = fineweb_dir
    info = FineWebData(str(data), str(tok)).resolve()
    with pytest.raises(ValueError, match=r"more pieces \(1024\) than the model vocab_size \(1000\)") as exc:
        check_vocab(info, 1000)
    msg = str(exc.value)
    assert "token id 1023" in msg and str(tok) in msg and "3 shards" in msg
    write_shard(data / "fineweb_train_000002.bin", [1, 1500])
    info = FineWebData(str(data), str(tok)).resolve()
    with pytest.raises(ValueError, match=r"token id 1500, which the model vocab_size \(1024\) cannot embed"):
        check_vocab(info, 1024)
    with pytest.raises(ValueError, match=r"token id 1500, outside the tokenizer's 1024 pieces"):
        check_vocab(info, 2048)


def test_synthetic_source(tmp_path, monkeypatch):
    monkeypatch.setenv("PARAMGOLF_CACHE", str(tmp_path / "env_cache"))
    source = instantiate({"_target_": "paramgolf.data.dataset.SyntheticData", **TINY, "cache_dir": "/nonexistent"})
    info = source.resolve()
    assert isinstance(info, DatasetInfo)
    assert info.data_dir.parent == tmp_path / "env_cache/synthetic"  # the variable wins over cache_dir
    assert info.tokenizer_vocab_size == 320 and info.tokenizer_path.is_file()
    assert 0 < info.entropy_bits_per_byte < 8
    assert info.train_files and info.val_files
    check_vocab(info, 320)
    with pytest.raises(ValueError, match="vocabulary mismatch"):
        check_vocab(info, 300)
    monkeypatch.delenv("PARAMGOLF_CACHE")
    info2 = SyntheticData(**TINY, cache_dir=str(tmp_path / "explicit")).resolve()
    assert info2.data_dir.parent == tmp_path / "explicit"
    assert (info2.data_dir / "tokenizer.model").read_bytes() == info.tokenizer_path.read_bytes()


def test_synthetic_source_mirrors_spec_defaults():
    params = inspect.signature(SyntheticData).parameters
    for field in dataclasses.fields(SyntheticSpec):
        assert params[field.name].default == field.default, field.name
        assert params[field.name].annotation == field.type, field.name
