"""Dataset sources the runner consumes, and the vocabulary check."""

from __future__ import annotations

import dataclasses
import inspect
import shutil

import numpy as np
import pytest
from hydra.utils import instantiate

from paramgolf.data.dataset import DatasetInfo, FineWebData, SyntheticData, check_token_ids, check_vocab
from paramgolf.data.manifest import read_manifest, write_manifest
from paramgolf.data.shards import HEADER_BYTES, read_shard, recorded_max_token_id, write_shard
from paramgolf.data.synthetic import SyntheticSpec
from paramgolf.data.tokenizer import file_sha256

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
    write_manifest(data, tok)
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
    (data / "fineweb_val_000000.bin").unlink()
    with pytest.raises(ValueError, match=r"no val shards in .*fineweb10B_sp1024") as exc:
        FineWebData(str(data), str(tok)).resolve()
    assert str(exc.value).count("paramgolf-data download") == 1  # the hint, once


def _set_header_slot(path, slot, value):
    """Overwrite one int32 header slot in place (the token body is left as it is)."""
    data = bytearray(path.read_bytes())
    data[4 * slot : 4 * slot + 4] = np.array([value], dtype="<i4").tobytes()
    path.write_bytes(bytes(data))


@pytest.fixture
def header_reads_only(monkeypatch):
    """Fail on any read of shard tokens: only 256-int32 header reads (np.fromfile at offset 0) are allowed."""
    real_fromfile = np.fromfile

    def fromfile(file, dtype=float, count=-1, sep="", offset=0, **kw):
        assert offset == 0 and 0 <= count * np.dtype(dtype).itemsize <= HEADER_BYTES, (
            f"read past the header of {file}: dtype={dtype} count={count} offset={offset}"
        )
        return real_fromfile(file, dtype=dtype, count=count, sep=sep, offset=offset, **kw)

    def memmap(*args, **kwargs):
        raise AssertionError(f"shard tokens were memory-mapped: {args}")

    monkeypatch.setattr(np, "fromfile", fromfile)
    monkeypatch.setattr(np, "memmap", memmap)


def test_tokenizer_larger_than_arch_vocab_size_is_refused(fineweb_dir):
    data, tok = fineweb_dir
    info = FineWebData(str(data), str(tok)).resolve()
    with pytest.raises(ValueError, match=r"arch.vocab_size=1000 is smaller than the 1024 pieces") as exc:
        check_vocab(info, 1000)
    msg = str(exc.value)
    assert "\n" not in msg and str(tok) in msg and "set arch.vocab_size=1024" in msg


def test_check_vocab_reads_headers_only(fineweb_dir, header_reads_only):
    data, tok = fineweb_dir
    check_vocab(FineWebData(str(data), str(tok)).resolve(), 1024)


def test_recorded_out_of_range_id_is_refused_from_the_header_alone(fineweb_dir, header_reads_only):
    data, tok = fineweb_dir
    bad = data / "fineweb_train_000002.bin"
    write_shard(bad, [1, 11, 12])
    # The header claims id 1500 although the body holds none: only a header-based check can find it.
    _set_header_slot(bad, 4, 1500)
    info = FineWebData(str(data), str(tok)).resolve()
    with pytest.raises(ValueError, match=r"token id 1500, which arch.vocab_size=1024 cannot embed") as exc:
        check_vocab(info, 1024)
    assert str(bad) in str(exc.value) and "header" in str(exc.value) and "\n" not in str(exc.value)
    with pytest.raises(ValueError, match=r"token id 1500, outside the 1024 pieces of tokenizer.*data.tokenizer_path"):
        check_vocab(info, 2048)


def test_check_vocab_trusts_the_header_over_the_body(fineweb_dir):
    data, tok = fineweb_dir
    lying = data / "fineweb_train_000002.bin"
    write_shard(lying, [1, 1500])
    _set_header_slot(lying, 4, 12)  # a scan of the body would find 1500
    check_vocab(FineWebData(str(data), str(tok)).resolve(), 1024)


def test_official_shards_rely_on_the_tokenizer_and_val_tokens_are_checked_in_memory(fineweb_dir):
    data, tok = fineweb_dir
    val = data / "fineweb_val_000000.bin"
    write_shard(val, [1, 5, 1500, 6] + list(range(7, 60)))
    for path in [val, *data.glob("fineweb_train_*.bin")]:
        _set_header_slot(path, 3, 0)  # the official export leaves slots 3.. zero: no recorded max
        _set_header_slot(path, 4, 0)
        assert recorded_max_token_id(path) is None
    info = FineWebData(str(data), str(tok)).resolve()
    check_vocab(info, 1024)  # nothing recorded: the 1024-piece tokenizer bounds the ids
    with pytest.raises(ValueError, match=r"arch.vocab_size=1000"):
        check_vocab(info, 1000)  # the tokenizer bound still applies
    tokens = info.validation_tokens(8)
    with pytest.raises(ValueError, match=r"validation split of .* holds token id 1500, which arch.vocab_size=1024"):
        check_token_ids(info, tokens, 1024)
    with pytest.raises(ValueError, match=r"token id 1500, outside the 1024 pieces"):
        check_token_ids(info, tokens.numpy(), 4096)
    check_token_ids(info, tokens[:2], 1024)
    check_token_ids(info, tokens[:0], 1024)
    with pytest.raises(ValueError, match=r"negative token id -3"):
        check_token_ids(info, np.array([1, -3]), 1024)


def test_synthetic_source(tmp_path, monkeypatch):
    monkeypatch.setenv("PARAMGOLF_CACHE", str(tmp_path / "env_cache"))
    source = instantiate({"_target_": "paramgolf.data.dataset.SyntheticData", **TINY, "cache_dir": "/nonexistent"})
    info = source.resolve()
    assert isinstance(info, DatasetInfo)
    assert info.data_dir.parent == tmp_path / "env_cache/synthetic"  # the variable wins over cache_dir
    assert info.tokenizer_vocab_size == 320 and info.tokenizer_path.is_file()
    assert read_manifest(info.data_dir)["tokenizer_sha256"] == file_sha256(info.tokenizer_path)
    assert 0 < info.entropy_bits_per_byte < 8
    assert info.train_files and info.val_files
    for path in [*info.train_files, *info.val_files]:  # paramgolf-built shards record their max id
        assert recorded_max_token_id(path) == int(read_shard(path).max())
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
