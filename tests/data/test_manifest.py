"""A dataset records which tokenizer wrote its shards, and no other tokenizer is accepted with them."""

from __future__ import annotations

import json
import shutil

import pytest
from tiny_corpus import TINY_VOCAB, word_docs, write_jsonl

from paramgolf.cli.data import main
from paramgolf.data.build import build_dataset
from paramgolf.data.dataset import FineWebData
from paramgolf.data.manifest import MANIFEST_FILENAME, read_manifest
from paramgolf.data.shard_stats import inspect_shard
from paramgolf.data.shards import write_shard
from paramgolf.data.tokenizer import file_sha256, train_sentencepiece
from paramgolf.errors import UserError


@pytest.fixture
def built(tmp_path):
    """A dataset written by `paramgolf-data build` (a tokenizer of TINY_VOCAB pieces trained on it)."""
    docs = write_jsonl(tmp_path / "docs.jsonl", word_docs(130))
    out = tmp_path / "built"
    summary = build_dataset(docs, out, vocab_size=TINY_VOCAB, val_docs=10)
    return out, summary


def test_build_records_its_tokenizer(built, capsys):
    out, summary = built
    manifest = read_manifest(out)
    assert summary["manifest"] == str(out / MANIFEST_FILENAME)
    assert manifest == {
        "tokenizer": "tokenizer.model",
        "tokenizer_sha256": file_sha256(out / "tokenizer.model"),
        "vocab_size": TINY_VOCAB,
    }
    capsys.readouterr()
    FineWebData(str(out), str(out / "tokenizer.model")).resolve()
    assert capsys.readouterr().err == ""  # the right tokenizer: no warning
    copy = out.parent / "elsewhere.model"  # the same bytes under another name are the same tokenizer
    shutil.copyfile(out / "tokenizer.model", copy)
    FineWebData(str(out), str(copy)).resolve()


def test_another_tokenizer_of_the_same_size_is_refused(built, tiny_tokenizers):
    out, _ = built
    other = tiny_tokenizers[1]
    with pytest.raises(UserError, match="tokenizer mismatch") as exc:
        FineWebData(str(out), str(other)).resolve()
    msg = str(exc.value)
    assert str(other) in msg and str(out / MANIFEST_FILENAME) in msg and "data.tokenizer_path" in msg
    assert "\n" not in msg
    # `paramgolf-data inspect` counts bytes with the tokenizer it is given: the same check applies
    with pytest.raises(UserError, match="tokenizer mismatch"):
        inspect_shard(out / "fineweb_val_000000.bin", other)


def test_realistic_tokenizers_of_the_same_size_are_told_apart(shared_dir, tmp_path):
    """The issue's case: shards of one 1024-piece tokenizer read with another 1024-piece one."""
    real = shared_dir / "data/tokenizers/fineweb_1024_bpe.model"
    texts = [json.loads(line)["text"][:3000] for line in (shared_dir / "data/corpus/enwiki_sample.jsonl").open()]
    retrained = train_sentencepiece(texts[20:], 1024, tmp_path / "retrained")
    docs = write_jsonl(tmp_path / "docs.jsonl", texts[:8])
    build_dataset(docs, tmp_path / "out", vocab_size=1024, val_docs=2, tokenizer=real)
    FineWebData(str(tmp_path / "out"), str(real)).resolve()
    with pytest.raises(UserError, match=r"tokenizer mismatch: .*retrained.model"):
        FineWebData(str(tmp_path / "out"), str(retrained)).resolve()


def test_dataset_without_manifest_is_accepted_with_a_warning_until_one_is_written(built, tiny_tokenizers, capsys):
    out, _ = built
    tok = out / "tokenizer.model"
    (out / MANIFEST_FILENAME).unlink()  # as made by older versions
    capsys.readouterr()
    FineWebData(str(out), str(tiny_tokenizers[1])).resolve()
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith(f"warning: {out} has no manifest.json")
    assert f"`paramgolf-data manifest {out} --tokenizer {tiny_tokenizers[1]}`" in line

    assert main(["manifest", str(out), "--tokenizer", str(tok)]) == 0
    assert json.loads(capsys.readouterr().out)["tokenizer_sha256"] == file_sha256(tok)
    with pytest.raises(UserError, match="tokenizer mismatch"):
        FineWebData(str(out), str(tiny_tokenizers[1])).resolve()

    # replacing a manifest that records another tokenizer needs --force
    assert main(["manifest", str(out), "--tokenizer", str(tiny_tokenizers[1])]) == 2
    assert "already records another tokenizer" in capsys.readouterr().err
    assert read_manifest(out)["tokenizer_sha256"] == file_sha256(tok)
    assert main(["manifest", str(out), "--tokenizer", str(tiny_tokenizers[1]), "--force"]) == 0
    assert read_manifest(out)["tokenizer_sha256"] == file_sha256(tiny_tokenizers[1])


def test_manifest_command_refuses_what_cannot_be_right(tmp_path, tiny_tokenizers, capsys):
    tok = tiny_tokenizers[0]
    data = tmp_path / "d"
    assert main(["manifest", str(data), "--tokenizer", str(tok)]) == 2
    assert "no val shards" in capsys.readouterr().err
    write_shard(data / "fineweb_val_000000.bin", [1, 5, 6])
    write_shard(data / "fineweb_train_000000.bin", [1, 5, TINY_VOCAB + 7])  # an id the tokenizer lacks
    assert main(["manifest", str(data), "--tokenizer", str(tok)]) == 2
    err = capsys.readouterr().err
    assert f"token id {TINY_VOCAB + 7}" in err and str(tok) in err and len(err.splitlines()) == 1
    assert not (data / MANIFEST_FILENAME).exists()


def test_damaged_manifest_is_refused(built):
    out, _ = built
    (out / MANIFEST_FILENAME).write_text("{not json")
    with pytest.raises(UserError, match=r"manifest.json is not valid JSON.*paramgolf-data manifest"):
        FineWebData(str(out), str(out / "tokenizer.model")).resolve()
    (out / MANIFEST_FILENAME).write_text('{"tokenizer": "tokenizer.model"}')
    with pytest.raises(UserError, match=r"manifest.json lacks tokenizer_sha256, vocab_size"):
        FineWebData(str(out), str(out / "tokenizer.model")).resolve()
