"""CaseOps: the record's transform, losslessness, original byte counts, and the sidecar of a build."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import sentencepiece as spm
from sentencepiece import sentencepiece_model_pb2 as model_pb2
from tiny_corpus import TINY_VOCAB, word_docs, write_jsonl

from paramgolf.cli.data import main
from paramgolf.data import caseops
from paramgolf.data.build import build_dataset
from paramgolf.data.caseops import ALLCAPS, CAPNEXT, ESC, TITLE, CaseOpsError, decode, encode
from paramgolf.data.shards import list_shards, read_shard, sidecar_path
from paramgolf.data.tokenizer import load_tokenizer, train_sentencepiece
from paramgolf.errors import UserError

T, A, C, E = TITLE, ALLCAPS, CAPNEXT, ESC

TRICKY = [
    "",
    "a",
    "A",
    "I am OK",
    "The NASA Launch",
    "iPhone OpenAI",
    "HTTPServer McDonald's eBay iOS",
    "ABC123DEF x_Y-Z",
    "CAFÉ Éclair naïve ÀB",  # non-ASCII letters end the ASCII run
    "ﬁ Ａ Ｂｃ",  # NFKC would turn these into ASCII; the transform leaves them alone
    f"literal {T}{A}{C}{E} operators, {E}{E} and {T}x",
    "\ue000 and \ue005 are not operators",
    "tab\tnew\nline\r\n  spaces  ",
    "😀 emoji, 中文, عربى",
]


def _show(s: str) -> str:
    return s.replace(T, "<T>").replace(A, "<A>").replace(C, "<C>").replace(E, "<E>")


@pytest.mark.parametrize(
    "text, expected",
    [
        ("The NASA Launch", "<T>the <A>nasa <T>launch"),  # the records' examples
        ("iPhone OpenAI", "i<C>phone <T>open<C>a<C>i"),
        ("lower", "lower"),
        ("A I", "<T>a <T>i"),  # one capital is not ALLCAPS: TITLE
        ("HTTPServer", "<T>h<C>t<C>t<C>p<C>server"),
        ("McDonald", "<T>mc<C>donald"),
        ("CAFÉ", "<A>cafÉ"),
        (f"x{T}y", "x<E><T>y"),
        ("Ab1Cd", "<T>ab1<T>cd"),
    ],
)
def test_encode_follows_the_records_rules(text, expected):
    assert _show(encode(text)) == expected


def test_decode_inverts_encode_on_tricky_and_random_strings():
    rng = random.Random(0)
    alphabet = "aAzZqQ é\u00c9" + T + A + C + E + "\ue000x1_-\n"
    randoms = ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 24))) for _ in range(3000)]
    for s in TRICKY + randoms:
        assert decode(encode(s)) == s, repr(s)


def test_decode_inverts_encode_on_the_enwiki_sample(shared_dir):
    docs = shared_dir / "data/corpus/enwiki_sample.jsonl"
    if not docs.is_file():
        pytest.skip(f"{docs} not found")
    for line in docs.read_text().splitlines():
        text = json.loads(line)["text"]
        assert decode(encode(text)) == text


@pytest.mark.parametrize("bad", [T, f"{T} x", f"a{T}b", f"{C}{C}a", f"{E}", f"{E}a", f"{A}{T}a", f"{C}1", f"{E}{T}{T}"])
def test_decode_refuses_what_encode_never_writes(bad):
    with pytest.raises(CaseOpsError):
        decode(bad)


def test_original_byte_counts_operators_zero_letters_one_rest_utf8():
    assert caseops.original_byte_counts([T, "the", " ", A, "nasa"]) == [0, 3, 1, 0, 4]
    assert caseops.original_byte_counts(["é😀", C + "x"]) == [2 + 4, 1]
    # an escape ends one piece and its literal operator (3 UTF-8 bytes in the text) starts the next
    assert caseops.original_byte_counts(["a" + E, T, "b"]) == [1, 3, 1]
    for s in TRICKY:
        e = encode(s)
        cuts = sorted({0, len(e), *random.Random(len(e)).sample(range(len(e) + 1), min(4, len(e) + 1))})
        parts = [e[a:b] for a, b in zip(cuts, cuts[1:])]
        assert sum(caseops.original_byte_counts(parts)) == len(s.encode("utf-8")), repr(s)


@pytest.fixture(scope="module")
def caseops_tokenizer(tmp_path_factory):
    texts = [encode(s) for s in TRICKY * 20] + [encode("The Quick BROWN fox jumps over the lazy Dog. " * 30)]
    path = tmp_path_factory.mktemp("caseops_tok") / "tok"
    return train_sentencepiece(texts, 400, path, user_defined_symbols=caseops.OPERATORS)


def test_trainer_keeps_the_records_settings_and_the_operators_as_pieces(caseops_tokenizer):
    proto = model_pb2.ModelProto()
    proto.ParseFromString(caseops_tokenizer.read_bytes())
    spec, norm = proto.trainer_spec, proto.normalizer_spec
    assert spec.model_type == model_pb2.TrainerSpec.BPE and spec.vocab_size == 400
    assert abs(spec.character_coverage - 0.999) < 1e-6 and spec.byte_fallback and spec.split_digits
    assert (spec.pad_id, spec.bos_id, spec.eos_id, spec.unk_id) == (0, 1, 2, 3)
    assert norm.name == "nmt_nfkc" and not norm.add_dummy_prefix
    assert list(spec.user_defined_symbols) == list(caseops.OPERATORS)
    sp = load_tokenizer(caseops_tokenizer)
    caseops.check_tokenizer(sp, "test")  # every operator is one piece of its own


def test_token_byte_counts_sum_to_the_original_bytes_even_through_byte_fallback(caseops_tokenizer):
    sp = load_tokenizer(caseops_tokenizer)
    for s in TRICKY[1:]:
        ids, counts = caseops.encode_with_byte_counts(sp, s)
        assert ids == sp.encode(encode(s), out_type=int) and len(counts) == len(ids)
        dropped = len(s.encode()) - len(s.strip(" \t\n\r").encode())  # SentencePiece drops the ends' whitespace
        assert sum(counts) == len(s.encode("utf-8")) - dropped, repr(s)
        for i, c in zip(ids, counts):
            if sp.id_to_piece(i) in caseops.OPERATORS and c == 0:
                continue
            assert c > 0 or sp.is_byte(i), (s, sp.id_to_piece(i))  # only a non-final byte piece covers 0
    ids, counts = caseops.encode_with_byte_counts(sp, "🦀")  # unseen: 4 byte pieces, the last covers the character
    assert [sp.id_to_piece(i) for i in ids] == ["<0xF0>", "<0x9F>", "<0xA6>", "<0x80>"] and counts == [0, 0, 0, 4]


def test_a_tokenizer_without_the_operators_is_refused(tmp_path, tiny_tokenizers):
    plain = tiny_tokenizers[0]
    with pytest.raises(UserError, match="does not hold the CaseOps operator U\\+E001"):
        caseops.check_tokenizer(load_tokenizer(plain), str(plain))
    docs = write_jsonl(tmp_path / "docs.jsonl", _cased_docs(10))
    with pytest.raises(UserError, match="--transform caseops"):
        build_dataset(docs, tmp_path / "out", TINY_VOCAB, 2, tokenizer=plain, transform="caseops")
    with pytest.raises(UserError, match="unknown text transform 'upper'"):
        build_dataset(docs, tmp_path / "out", TINY_VOCAB, 2, tokenizer=plain, transform="upper")
    assert not (tmp_path / "out" / "manifest.json").exists()


@pytest.fixture(scope="module")
def enwiki_caseops(shared_dir, tmp_path_factory):
    """The enwiki sample as a CaseOps dataset, all documents but the last one validation."""
    docs = shared_dir / "data/corpus/enwiki_sample.jsonl"
    if not docs.is_file():
        pytest.skip(f"{docs} not found")
    root = tmp_path_factory.mktemp("enwiki_caseops")
    texts = [json.loads(line)["text"] for line in docs.read_text().splitlines()]
    tok = train_sentencepiece(map(encode, texts[-20:]), 512, root / "tok", user_defined_symbols=caseops.OPERATORS)
    summary = build_dataset(docs, root / "all", 512, len(texts) - 1, tokenizer=tok, transform="caseops")
    return root / "all", summary, texts


def test_every_enwiki_document_s_sidecar_bytes_sum_to_its_utf8_length(enwiki_caseops):
    out, summary, texts = enwiki_caseops
    tokens = np.concatenate([read_shard(f) for f in list_shards(out, "val")])
    side = np.concatenate([read_shard(sidecar_path(f)) for f in list_shards(out, "val")]).astype(np.int64)
    assert len(side) == len(tokens) and summary["text_transform"] == "caseops"
    starts = [*np.flatnonzero(tokens == 1), len(tokens)]
    assert len(starts) - 1 == len(texts) - 1 and (side[tokens == 1] == 0).all()  # BOS covers 0 bytes
    for (a, b), text in zip(zip(starts, starts[1:]), texts):
        assert int(side[a:b].sum()) == len(text.encode("utf-8"))
    assert summary["bytes_val"] == sum(len(t.encode("utf-8")) for t in texts[:-1])
    # the training document has no sidecar, but the same count holds for it
    sp = spm.SentencePieceProcessor(model_file=str(out / "tokenizer.model"))
    assert sum(caseops.encode_with_byte_counts(sp, texts[-1])[1]) == len(texts[-1].encode("utf-8"))
    assert json.loads((out / "manifest.json").read_text())["text_transform"] == "caseops"


def _cased_docs(n: int) -> list[str]:
    """word_docs with words in Title, ALLCAPS and mIxed case, and a literal operator now and then."""
    rng = random.Random(n)
    styles = [str.lower, str.lower, str.title, str.upper, lambda w: w[:-1] + w[-1].upper(), lambda w: w + TITLE]
    return [" ".join(rng.choice(styles)(w) for w in doc.split()) for doc in word_docs(n)]


def test_cli_build_with_caseops_writes_sidecars_beside_each_val_shard(tmp_path, capsys):
    texts = _cased_docs(120)
    docs = write_jsonl(tmp_path / "docs.jsonl", texts)
    out = tmp_path / "out"
    argv = ["build", "--docs", str(docs), "--out", str(out), "--vocab-size", str(TINY_VOCAB), "--val-docs", "12"]
    assert main([*argv, "--shard-tokens", "97", "--transform", "caseops"]) == 0
    summary = json.loads(capsys.readouterr().out)
    val = list_shards(out, "val")
    assert summary["files_val"] == len(val) > 1 and all(sidecar_path(f).is_file() for f in val)
    assert all(len(read_shard(sidecar_path(f))) == len(read_shard(f)) for f in val)
    assert summary["bytes_val"] == sum(len(t.encode()) for t in texts[:12])
    assert not list(out.glob("fineweb_train_bytes_*"))
    # inspect counts a val shard's bytes from its sidecar; a train shard has none, and its tables would be wrong
    assert main(["inspect", str(val[0]), "--tokenizer", str(out / "tokenizer.model")]) == 0
    assert json.loads(capsys.readouterr().out)["num_bytes"] == int(read_shard(sidecar_path(val[0]))[1:].sum())
    assert main(["inspect", str(list_shards(out, "train")[0]), "--tokenizer", str(out / "tokenizer.model")]) == 2
    assert "writes CaseOps text" in capsys.readouterr().err
    # a plain rebuild in the same directory leaves no stale sidecar behind
    assert main(argv) == 0
    assert not list(out.glob("fineweb_val_bytes_*")) and "text_transform" not in json.loads(capsys.readouterr().out)
