"""Sliding-window evaluation: window coverage, agreement with hand loops, the dispatcher."""

from __future__ import annotations

import json
import math

import pytest
import sentencepiece as spm
import torch
from evalkit import BigramLM, CacheAttentionLM, direct_nll, hand_bytes, make_byte_table

from paramgolf.data.byte_table import build_byte_table
from paramgolf.evaluation.bpb import evaluate_non_overlapping
from paramgolf.evaluation.sliding import (
    Window,
    evaluate_sliding,
    num_sliding_windows,
    sliding_windows,
)
from paramgolf.evaluation.windows import NonOverlapping, Sliding

VOCAB = 16


def random_tokens(n: int, seed: int) -> torch.Tensor:
    return torch.randint(0, VOCAB, (n,), generator=torch.Generator().manual_seed(seed))


def test_windows_on_small_cases():
    # 10 targets, windows of 4 every 2: the grid ends exactly at the last token.
    assert sliding_windows(11, 4, 2) == [Window(0, 5, 1), Window(2, 7, 5), Window(4, 9, 7), Window(6, 11, 9)]
    # 11 targets, windows of 4 every 3: one extra window ends at the last token and scores target 11.
    assert sliding_windows(12, 4, 3) == [Window(0, 5, 1), Window(3, 8, 5), Window(6, 11, 8), Window(7, 12, 11)]
    # Fewer targets than seq_len: one short window scores everything.
    assert sliding_windows(3, 8, 2) == [Window(0, 3, 1)]


def test_windows_score_every_target_once_with_the_longest_allowed_context():
    for num_tokens in range(2, 40):
        for seq_len in range(1, 9):
            for stride in range(1, seq_len + 1):
                case = (num_tokens, seq_len, stride)
                windows = sliding_windows(*case)
                assert len(windows) == num_sliding_windows(*case)
                scored = [p for w in windows for p in range(w.score_from, w.end)]
                assert scored == list(range(1, num_tokens)), case
                assert windows[-1].end == num_tokens
                # Allowed forward passes: full windows on the stride grid, plus the one ending at the last token.
                span = min(seq_len, num_tokens - 1) + 1
                allowed = [s for s in range(0, num_tokens, stride) if s + span <= num_tokens]
                allowed.append(num_tokens - span)
                for i, w in enumerate(windows):
                    assert w.end - w.start == span, case
                    assert w.start < w.score_from < w.end, case
                    assert i == 0 or w.end - w.score_from <= stride, case
                    for p in range(w.score_from, w.end):
                        best_start = min(s for s in allowed if p - seq_len <= s < p)
                        assert w.start == best_start, (case, p)
                        context = p - w.start
                        if p <= seq_len:
                            assert context == p, (case, p)
                        else:
                            assert seq_len - stride + 1 <= context <= seq_len, (case, p)


@pytest.mark.parametrize("bad", [0, -1, 9])
def test_invalid_stride_names_eval_stride(bad):
    with pytest.raises(ValueError, match="eval.stride"):
        sliding_windows(100, 8, bad)
    with pytest.raises(ValueError, match="eval.stride"):
        evaluate_sliding(
            BigramLM(VOCAB), torch.arange(20), make_byte_table(VOCAB), seq_len=8, stride=bad, batch_seqs=2, device="cpu"
        )


def test_eval_components_check_their_settings_and_name_their_method():
    model, table, tokens = BigramLM(VOCAB), make_byte_table(VOCAB), random_tokens(33, 0)
    with pytest.raises(ValueError, match="eval.stride"):
        Sliding(stride=0)
    too_wide = Sliding(stride=16)
    with pytest.raises(ValueError, match="eval.stride"):
        too_wide.bind(train_seq_len=8)  # stride beyond the window
    sliding, plain = Sliding(stride=4, batch_tokens=16), NonOverlapping(batch_tokens=16)
    for ev in (sliding, plain):
        ev.bind(train_seq_len=8)
    s, p = sliding(model, tokens, table, device="cpu"), plain(model, plain.scored_tokens(tokens), table, device="cpu")
    assert (s.method, s.stride, p.method, p.stride) == ("sliding", 4, "non_overlapping", None)
    assert s.num_tokens == sliding.expected_scored(33) == 32 and p.num_tokens == plain.expected_scored(33) == 32
    assert plain.expected_scored(35) == 32 and sliding.expected_scored(35) == 34  # the tail: dropped vs scored


@pytest.mark.parametrize("num_tokens,seq_len,stride,batch_seqs", [(50, 8, 3, 3), (40, 8, 8, 2), (6, 8, 2, 4)])
def test_sliding_matches_hand_loop_over_windows(num_tokens, seq_len, stride, batch_seqs):
    tokens = random_tokens(num_tokens, 1)
    model, table = CacheAttentionLM(VOCAB), make_byte_table(VOCAB)
    result = evaluate_sliding(model, tokens, table, seq_len=seq_len, stride=stride, batch_seqs=batch_seqs, device="cpu")

    ids = tokens.tolist()
    nll_sum, num_bytes = 0.0, 0
    for w in sliding_windows(num_tokens, seq_len, stride):
        skip = w.score_from - w.start - 1
        nll = direct_nll(model, ids[w.start : w.end - 1], ids[w.start + 1 : w.end])
        nll_sum += sum(nll[skip:])
        num_bytes += hand_bytes(table, ids[w.score_from - 1 : w.end - 1], ids[w.score_from : w.end])
    assert result.num_tokens == num_tokens - 1
    assert result.num_bytes == num_bytes
    assert result.val_loss == pytest.approx(nll_sum / (num_tokens - 1), rel=1e-6)
    assert result.val_bpb == pytest.approx(nll_sum / (math.log(2) * num_bytes), rel=1e-6)


def test_context_free_model_scores_each_token_the_same_either_way():
    seq_len, num_seqs, tail = 8, 6, 5
    tokens = random_tokens(num_seqs * seq_len + 1 + tail, 2)
    model, table = BigramLM(VOCAB), make_byte_table(VOCAB)
    ids = tokens.tolist()
    per_token = direct_nll(model, ids[:-1], ids[1:])  # bigram nll of every target 1..N-1
    common = num_seqs * seq_len

    sliding = evaluate_sliding(model, tokens, table, seq_len=seq_len, stride=3, batch_seqs=4, device="cpu")
    plain = evaluate_non_overlapping(model, tokens, table, seq_len=seq_len, batch_seqs=4, device="cpu")
    assert sliding.num_tokens == len(per_token) and plain.num_tokens == common
    assert sliding.val_loss * sliding.num_tokens == pytest.approx(sum(per_token), rel=1e-6)
    assert plain.val_loss * plain.num_tokens == pytest.approx(sum(per_token[:common]), rel=1e-6)

    # On a length of k*seq_len + 1, stride = seq_len is the non-overlapping evaluation, bit for bit.
    exact = tokens[: common + 1]
    sliding = evaluate_sliding(model, exact, table, seq_len=seq_len, stride=seq_len, batch_seqs=4, device="cpu")
    plain = evaluate_non_overlapping(model, exact, table, seq_len=seq_len, batch_seqs=4, device="cpu")
    same = ("val_loss", "val_bpb", "num_tokens", "num_bytes", "seq_len")
    assert {k: getattr(sliding, k) for k in same} == {k: getattr(plain, k) for k in same}


@pytest.mark.slow
def test_more_context_lowers_the_loss_of_a_causal_model():
    # A repeating skewed pattern: the cache model learns its frequencies from the context, so
    # tokens early in a non-overlapping chunk (little context) cost more.
    pattern = torch.tensor([1, 1, 2, 1, 3, 1, 1, 2, 4, 1, 5, 2])
    tokens = pattern.repeat(20)[: 12 * 16 + 1]
    model, table = CacheAttentionLM(VOCAB), make_byte_table(VOCAB)
    plain = evaluate_non_overlapping(model, tokens, table, seq_len=16, batch_seqs=4, device="cpu")
    loss = {
        stride: evaluate_sliding(model, tokens, table, seq_len=16, stride=stride, batch_seqs=4, device="cpu").val_loss
        for stride in (16, 8, 2, 1)
    }
    assert loss[16] == plain.val_loss  # same windows, same tokens
    assert loss[1] < loss[2] < loss[8] < plain.val_loss - 0.1


def test_progress_bar_shows_the_stride(capsys):
    model, table = BigramLM(VOCAB), make_byte_table(VOCAB)
    evaluate_sliding(model, random_tokens(40, 3), table, seq_len=8, stride=4, batch_seqs=2, device="cpu", progress=True)
    assert "eval sliding/4" in capsys.readouterr().err


def test_real_tokenizer_bytes_match_the_byte_stream(shared_dir):
    # Sliding windows must pair every target with its true predecessor, BOS boundaries included.
    sp = spm.SentencePieceProcessor(model_file=str(shared_dir / "data/tokenizers/fineweb_1024_bpe.model"))
    lines = (shared_dir / "data/corpus/enwiki_sample.jsonl").read_text().splitlines()[:3]
    ids: list[int] = []
    for line in lines:
        ids += [sp.bos_id()] + sp.encode(json.loads(line)["text"])[:300]
    tokens, table = torch.tensor(ids, dtype=torch.int32), build_byte_table(sp)
    model = BigramLM(sp.vocab_size())
    result = evaluate_sliding(model, tokens, table, seq_len=64, stride=24, batch_seqs=8, device="cpu")
    assert result.num_tokens == len(ids) - 1
    assert result.num_bytes == table.count_stream(tokens)
