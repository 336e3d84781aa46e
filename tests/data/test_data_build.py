"""`paramgolf-data build` / `inspect` on a real corpus, and their error messages."""

from __future__ import annotations

import json

import numpy as np
import pytest
from tiny_corpus import TINY_VOCAB, word_docs

from paramgolf.cli.data import main
from paramgolf.data.build import build_dataset
from paramgolf.data.shards import list_shards, read_shard, recorded_max_token_id
from paramgolf.data.tokenizer import file_sha256, load_tokenizer


def _docs(shared_dir, n=None):
    lines = (shared_dir / "data/corpus/enwiki_sample.jsonl").read_text().splitlines()
    return [json.loads(line)["text"] for line in lines[:n]]


def _write_jsonl(path, texts):
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    return path


@pytest.fixture(scope="module")
def enwiki_build(shared_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("enwiki")
    argv = [
        "build",
        "--docs",
        str(shared_dir / "data/corpus/enwiki_sample.jsonl"),
        "--out",
        str(out),
        "--vocab-size",
        "512",
        "--val-docs",
        "3",
        "--shard-tokens",
        "400000",
    ]
    return out, argv


def test_build_enwiki(shared_dir, enwiki_build, capsys):
    out, argv = enwiki_build
    assert main(argv) == 0
    summary = json.loads(capsys.readouterr().out)
    docs = _docs(shared_dir)
    assert (summary["docs_val"], summary["docs_train"]) == (3, len(docs) - 3)
    assert summary["vocab_size"] == 512 and summary["files_train"] >= 3
    sp = load_tokenizer(out / "tokenizer.model")
    assert summary["tokenizer_sha256"] == file_sha256(out / "tokenizer.model")
    val = np.concatenate([read_shard(f) for f in list_shards(out, "val")])
    assert val.tolist() == [t for d in docs[:3] for t in [1] + sp.encode(d)]  # BOS, no EOS
    train = np.concatenate([read_shard(f) for f in list_shards(out, "train")])
    assert len(train) == summary["tokens_train"]
    assert int((train == 1).sum()) == len(docs) - 3 and train[0] == 1
    assert all(len(read_shard(f)) <= 400000 for f in list_shards(out, "train"))
    for f in list_shards(out, "val") + list_shards(out, "train"):  # each header records the shard's max id
        assert recorded_max_token_id(f) == int(read_shard(f).max())


def _hand_bytes(sp, tokens):
    """Byte count written out from the rule, independently of ByteTable."""

    def boundary(i):
        return sp.is_control(i) or sp.is_unknown(i) or sp.is_unused(i)

    total = 0
    for prev, tgt in zip(tokens[:-1], tokens[1:]):
        if boundary(tgt):
            continue
        if sp.is_byte(tgt):
            total += 1
            continue
        piece = sp.id_to_piece(tgt)
        total += len(piece.lstrip("\u2581").encode("utf-8")) if piece.startswith("\u2581") else len(piece.encode())
        total += piece.startswith("\u2581") and not boundary(prev)
    return total


def test_inspect(enwiki_build, capsys):
    out, argv = enwiki_build
    if not (out / "tokenizer.model").exists():
        assert main(argv) == 0
    capsys.readouterr()
    shard = out / "fineweb_val_000000.bin"
    assert main(["inspect", str(shard), "--tokenizer", str(out / "tokenizer.model")]) == 0
    stats = json.loads(capsys.readouterr().out)  # exactly one JSON object
    tokens = read_shard(shard).tolist()
    sp = load_tokenizer(out / "tokenizer.model")
    assert stats["num_tokens"] == len(tokens) and stats["num_docs"] == 3
    assert stats["max_token_id"] == max(tokens) and stats["path"] == str(shard)
    assert stats["num_bytes"] == _hand_bytes(sp, tokens)
    assert stats["bytes_per_token"] == pytest.approx(stats["num_bytes"] / (len(tokens) - 1))
    assert any(sp.is_byte(t) for t in tokens)  # the byte-fallback rule was exercised


def test_tokenizer_sees_training_docs_only(shared_dir, tmp_path):
    special = " ".join(["wobblefrotz"] * 800)
    train = [d[:3000] for d in _docs(shared_dir, 25)]
    docs = _write_jsonl(tmp_path / "docs.jsonl", [special] + train)
    build_dataset(docs, tmp_path / "a", vocab_size=600, val_docs=1)
    sp = load_tokenizer(tmp_path / "a/tokenizer.model")
    piece = "\u2581wobblefrotz"
    assert sp.piece_to_id(piece) == sp.unk_id()  # not in the vocabulary
    # control: the same document in the training split is learned as one piece
    docs = _write_jsonl(tmp_path / "docs2.jsonl", [train[0], special] + train[1:])
    build_dataset(docs, tmp_path / "b", vocab_size=600, val_docs=1)
    sp = load_tokenizer(tmp_path / "b/tokenizer.model")
    assert sp.piece_to_id(piece) != sp.unk_id()


def test_reuse_tokenizer_and_stale_shards(shared_dir, tmp_path):
    tok = shared_dir / "data/tokenizers/fineweb_1024_bpe.model"
    docs = _write_jsonl(tmp_path / "docs.jsonl", [d[:2000] for d in _docs(shared_dir, 6)])
    out = tmp_path / "out"
    out.mkdir()
    (out / "fineweb_train_000099.bin").write_bytes(b"stale")
    summary = build_dataset(docs, out, vocab_size=1024, val_docs=2, tokenizer=tok)
    assert file_sha256(out / "tokenizer.model") == file_sha256(tok)
    assert summary["files_train"] == 1 and not (out / "fineweb_train_000099.bin").exists()
    with pytest.raises(ValueError, match=r"vocab size 1024, but --vocab-size=512"):
        build_dataset(docs, tmp_path / "o2", vocab_size=512, val_docs=2, tokenizer=tok)


def test_build_errors(tmp_path, capsys):
    with pytest.raises(ValueError, match="documents file not found.*nope.jsonl"):
        build_dataset(tmp_path / "nope.jsonl", tmp_path / "o", 512, 1)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "a"}\n{"text": "b"\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:2: not valid JSON"):
        build_dataset(bad, tmp_path / "o", 512, 1)
    bad.write_text('{"text": "a"}\n{"body": "b"}\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:2: expected an object"):
        build_dataset(bad, tmp_path / "o", 512, 1)
    two = _write_jsonl(tmp_path / "two.jsonl", ["a b c", "d e f"])
    with pytest.raises(ValueError, match=r"--val-docs=2 must be between 1 and 1.*2 documents"):
        build_dataset(two, tmp_path / "o", 512, 2)
    # the CLI reports the same errors on stderr with exit status 2
    assert (
        main(["build", "--docs", str(two), "--out", str(tmp_path / "o"), "--vocab-size", "512", "--val-docs", "5"]) == 2
    )
    assert "--val-docs=5" in capsys.readouterr().err


def test_build_refuses_a_file_with_too_few_documents(tmp_path):
    for texts in ([], ["only one"]):
        docs = _write_jsonl(tmp_path / "docs.jsonl", texts)
        with pytest.raises(
            ValueError, match=rf"docs.jsonl has {len(texts)} document\(s\); a build needs at least 2"
        ) as e:
            build_dataset(docs, tmp_path / "o", 512, 1)
        assert "between" not in str(e.value)  # not "--val-docs=1 must be between 1 and -1"
    assert not (tmp_path / "o").exists()


def test_failed_build_leaves_no_tokenizer_and_keeps_an_earlier_build(tmp_path, tiny_tokenizers):
    few = _write_jsonl(tmp_path / "few.jsonl", word_docs(4))  # too little text for 2000 pieces
    out = tmp_path / "out"
    with pytest.raises(ValueError, match=r"has vocab size \d+, but --vocab-size=2000 \(the corpus is too small"):
        build_dataset(few, out, vocab_size=2000, val_docs=1)
    assert list(out.iterdir()) == []  # no tokenizer.model (nor a temporary one) left behind

    build_dataset(_write_jsonl(tmp_path / "docs.jsonl", word_docs(130)), out, vocab_size=TINY_VOCAB, val_docs=10)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    for kwargs in ({"vocab_size": 2000}, {"vocab_size": 512, "tokenizer": tiny_tokenizers[1]}):
        with pytest.raises(ValueError, match=r"has vocab size \d+, but --vocab-size="):
            build_dataset(few, out, val_docs=1, **kwargs)
        assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # the earlier build is intact
