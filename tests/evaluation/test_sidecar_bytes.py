"""val_bpb of a CaseOps dataset counts the original text's bytes on every evaluation path (the byte sidecar)."""

from __future__ import annotations

import json
import random

import pytest
import torch

from paramgolf.config.compose import compose, to_container
from paramgolf.data.build import build_dataset
from paramgolf.data.byte_table import ByteTable, SidecarByteTable
from paramgolf.data.dataset import FineWebData
from paramgolf.data.shards import list_shards, sidecar_path, write_shard
from paramgolf.errors import UserError
from paramgolf.evaluation.bpb import evaluate_non_overlapping
from paramgolf.evaluation.eval_cache import NoEvalCache
from paramgolf.evaluation.legality import check_legality
from paramgolf.evaluation.lora_doc import LoRADocTTT
from paramgolf.evaluation.ngram import NGramCache
from paramgolf.evaluation.score_first import ScoreFirstTTT
from paramgolf.evaluation.sliding import evaluate_sliding
from paramgolf.evaluation.slot import SlotCausal
from paramgolf.evaluation.stream import run_stream
from paramgolf.evaluation.ttt import NoTTT
from paramgolf.runner.build import build_model

VOCAB, VAL_DOCS = 512, 4
WORDS = "the quick brown fox jumps over a lazy dog while NASA and iPhone users in Paris read about Café life".split()


def _docs(n: int) -> list[str]:
    rng = random.Random(0)
    styles = [str.lower, str.lower, str.title, str.upper, lambda w: w[0] + w[1:].title()]
    return [
        " ".join(rng.choice(styles)(rng.choice(WORDS)) for _ in range(rng.randint(15, 60))) + f". Ünïcode \ue001 {i}!"
        for i in range(n)
    ]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def caseops_data(tmp_path_factory):
    """A small CaseOps dataset (val shards of 97 tokens, so documents straddle shards) and its val docs."""
    root = tmp_path_factory.mktemp("caseops_eval")
    texts = _docs(80)
    docs = root / "docs.jsonl"
    docs.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    build_dataset(docs, root / "data", 320, VAL_DOCS, shard_tokens=97, transform="caseops")
    info = FineWebData(str(root / "data"), str(root / "data/tokenizer.model")).resolve()
    return info, texts[:VAL_DOCS]


@pytest.fixture(scope="module")
def model():
    c = to_container(compose(["experiment=smoke", "arch.num_layers=2", "arch.model_dim=64"]))
    torch.manual_seed(0)
    return build_model(c["arch"]).double().eval()


def test_the_dataset_resolves_with_its_sidecars_and_their_table(caseops_data):
    info, val_texts = caseops_data
    assert info.text_transform == "caseops" and len(info.val_byte_files) == len(info.val_files) > 1
    table = info.byte_table(VOCAB)
    tokens = info.validation_tokens(1)
    assert isinstance(table, SidecarByteTable) and table.size == VOCAB
    original = sum(len(t.encode("utf-8")) for t in val_texts)
    assert table.count_stream(tokens) == original
    # the tokenizer's tables would charge each case operator its 3 UTF-8 bytes
    assert ByteTable(table.base_bytes, table.has_leading_space, table.is_boundary).count_stream(tokens) > original


def _stream(model, tokens, table, ttt, eval_cache=None, chunk_tokens=64):
    return run_stream(
        model,
        tokens,
        table,
        ttt=ttt,
        eval_cache=eval_cache or NoEvalCache(),
        seq_len=32,
        stride=8,
        chunk_tokens=chunk_tokens,
        batch_seqs=4,
        device="cpu",
    ).result


def test_every_evaluation_path_counts_the_original_bytes(caseops_data, model):
    info, val_texts = caseops_data
    table, tokens = info.byte_table(VOCAB), info.validation_tokens(1)
    original = sum(len(t.encode("utf-8")) for t in val_texts)
    n = tokens.numel()
    results = {
        "non_overlapping": evaluate_non_overlapping(model, tokens, table, seq_len=n - 1, batch_seqs=1, device="cpu"),
        "sliding": evaluate_sliding(model, tokens, table, seq_len=32, stride=8, batch_seqs=4, device="cpu"),
        "stream": _stream(model, tokens, table, NoTTT()),
        "score_first": _stream(model, tokens, table, ScoreFirstTTT(epochs=1, batch_seqs=2, chunk_tokens=64)),
        "lora_doc": _stream(model, tokens, table, LoRADocTTT(chunk_len=16, context_len=48, batch_docs=3)),
        "slot": _stream(model, tokens, table, SlotCausal(steps=1)),
        "ngram": _stream(model, tokens, table, NoTTT(), NGramCache(chunk_tokens=64)),
    }
    assert {k: r.num_bytes for k, r in results.items()} == dict.fromkeys(results, original)
    # non-overlapping windows drop the tail: they count exactly the bytes of the targets they score
    short = evaluate_non_overlapping(model, tokens, table, seq_len=40, batch_seqs=3, device="cpu")
    assert short.num_bytes == int(table.token_bytes[1 : (n - 1) // 40 * 40 + 1].sum()) < original


def test_the_legality_check_runs_on_sidecar_bytes(caseops_data, model):
    info, _ = caseops_data
    table, tokens = info.byte_table(VOCAB), info.validation_tokens(1)
    verdict = check_legality(
        model,
        tokens[:129],
        table,
        lambda: (NoTTT(), NoEvalCache()),
        seq_len=16,
        stride=8,
        chunk_tokens=32,
        vocab_size=VOCAB,
    )
    assert verdict == {"causal": True, "normalized": True, "score_first": True, "single_pass": True, "reasons": []}


def test_a_sidecar_table_needs_positions():
    table = SidecarByteTable(
        torch.ones(4, dtype=torch.int16),
        torch.zeros(4, dtype=torch.bool),
        torch.zeros(4, dtype=torch.bool),
        torch.tensor([0, 5, 6, 7], dtype=torch.int32),
    )
    x, y = torch.tensor([[1, 2]]), torch.tensor([[2, 3]])
    assert table.count(x, y, torch.tensor([[1, 3]])).tolist() == [[5, 7]]
    with pytest.raises(RuntimeError, match="positions"):
        table.count(x, y)
    with pytest.raises(UserError, match="do not belong together"):
        table.count_stream(torch.zeros(5, dtype=torch.long))


def test_broken_sidecars_are_refused(caseops_data, tmp_path):
    info, _ = caseops_data
    data = tmp_path / "data"
    data.mkdir()
    for f in [
        *info.val_files,
        *info.train_files,
        *info.val_byte_files,
        info.tokenizer_path,
        info.data_dir / "manifest.json",
    ]:
        (data / f.name).write_bytes(f.read_bytes())
    source = FineWebData(str(data), str(data / "tokenizer.model"))
    first = list_shards(data, "val")[0]
    write_shard(sidecar_path(first), [0, 1])
    with pytest.raises(UserError, match="has 2 entries but .* tokens"):
        source.resolve()
    for side in data.glob("fineweb_val_bytes_*.bin"):
        side.unlink()
    with pytest.raises(UserError, match="caseops text but no byte sidecars"):
        source.resolve()
