"""val_loss / val_bpb arithmetic and the official non-overlapping evaluation."""

from __future__ import annotations

import math

import pytest
import torch
from evalkit import BigramLM, ByteTable, UniformLM, direct_nll, hand_bytes, make_byte_table

from paramgolf.evaluation.bpb import EvalResult, bpb_from_sums, evaluate_non_overlapping, token_nll
from paramgolf.evaluation.sliding import evaluate_sliding

VOCAB = 16


def test_bpb_from_sums_is_bits_over_bytes():
    assert bpb_from_sums(8 * math.log(2.0), 4) == pytest.approx(2.0, rel=1e-15)
    with pytest.raises(ValueError, match="num_bytes"):
        bpb_from_sums(1.0, 0)


def test_token_nll_is_per_position_cross_entropy_in_float32():
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 5, dtype=torch.bfloat16)
    targets = torch.randint(0, 5, (2, 3))
    nll = token_nll(logits, targets)
    assert nll.shape == (2, 3) and nll.dtype == torch.float32
    expected = -torch.log_softmax(logits.float(), -1).gather(-1, targets[..., None])[..., 0]
    torch.testing.assert_close(nll, expected)


def test_uniform_model_on_hand_made_bytes_gives_exact_loss_and_bpb():
    # Targets 1,2,3,1,0,2 after 0,1,2,3,1,0 decode to 1+2+(3+1)+(1+1)+0+2 = 11 bytes:
    # token 1 after the boundary token 0 gets no space byte; token 3 after 2 and 1 after 3 do.
    table = ByteTable(
        base_bytes=torch.tensor([0, 1, 2, 3], dtype=torch.int16),
        has_leading_space=torch.tensor([False, True, False, True]),
        is_boundary=torch.tensor([True, False, False, False]),
    )
    tokens = torch.tensor([0, 1, 2, 3, 1, 0, 2])
    model = UniformLM(4)
    for result in (
        evaluate_non_overlapping(model, tokens, table, seq_len=3, batch_seqs=1, device="cpu"),
        evaluate_sliding(model, tokens, table, seq_len=3, stride=1, batch_seqs=2, device="cpu"),
    ):
        assert (result.num_tokens, result.num_bytes) == (6, 11)
        assert result.val_loss == pytest.approx(math.log(4), rel=1e-7)
        # ln 4 nats = 2 bits per token, 6 tokens over 11 bytes.
        assert result.val_bpb == pytest.approx(12 / 11, rel=1e-7)


def test_non_overlapping_matches_hand_loop_and_drops_tail():
    seq_len, num_seqs, tail = 8, 5, 6
    tokens = torch.randint(0, VOCAB, (num_seqs * seq_len + 1 + tail,), generator=torch.Generator().manual_seed(1))
    table = make_byte_table(VOCAB)
    model = BigramLM(VOCAB)

    result = evaluate_non_overlapping(model, tokens, table, seq_len=seq_len, batch_seqs=2, device="cpu")

    ids = tokens.tolist()
    nll_sum, num_bytes = 0.0, 0
    for s in range(num_seqs):
        x = ids[s * seq_len : (s + 1) * seq_len]
        y = ids[s * seq_len + 1 : (s + 1) * seq_len + 1]
        nll_sum += sum(direct_nll(model, x, y))
        num_bytes += hand_bytes(table, x, y)
    assert result.num_tokens == num_seqs * seq_len  # the `tail` tokens are not scored
    assert result.num_bytes == num_bytes
    assert result.val_loss == pytest.approx(nll_sum / result.num_tokens, rel=1e-6)
    assert result.val_bpb == pytest.approx(nll_sum / (math.log(2) * num_bytes), rel=1e-6)
    assert (result.method, result.seq_len, result.stride) == ("non_overlapping", seq_len, None)
    assert result.eval_time_s >= 0
    assert EvalResult(**result.to_dict()) == result


def test_rank_shards_partition_the_sequences():
    seq_len = 4
    tokens = torch.randint(0, VOCAB, (7 * seq_len + 1,), generator=torch.Generator().manual_seed(2))
    table, model = make_byte_table(VOCAB), BigramLM(VOCAB)
    full = evaluate_non_overlapping(model, tokens, table, seq_len=seq_len, batch_seqs=3, device="cpu")
    # Without a process group nothing is reduced, so each call returns its own shard.
    shards = [
        evaluate_non_overlapping(
            model, tokens, table, seq_len=seq_len, batch_seqs=3, device="cpu", rank=r, world_size=3
        )
        for r in range(3)
    ]
    assert [s.num_tokens for s in shards] == [2 * seq_len, 2 * seq_len, 3 * seq_len]
    assert sum(s.num_bytes for s in shards) == full.num_bytes
    assert sum(s.val_loss * s.num_tokens for s in shards) == pytest.approx(full.val_loss * full.num_tokens, rel=1e-12)


@pytest.mark.parametrize("was_training", [True, False])
def test_training_mode_is_restored(was_training):
    model = BigramLM(VOCAB).train(was_training)
    seen = []
    model.register_forward_hook(lambda m, i, o: seen.append((m.training, torch.is_inference_mode_enabled())))
    tokens = torch.arange(17) % VOCAB
    evaluate_non_overlapping(model, tokens, make_byte_table(VOCAB), seq_len=4, batch_seqs=2, device="cpu")
    assert seen and all(s == (False, True) for s in seen)
    assert model.training is was_training


def test_bf16_autocast_is_close_to_float32():
    tokens = torch.randint(0, VOCAB, (65,), generator=torch.Generator().manual_seed(3))
    table, model = make_byte_table(VOCAB), torch.nn.Sequential(BigramLM(VOCAB), torch.nn.Linear(VOCAB, VOCAB))
    exact = evaluate_non_overlapping(model, tokens, table, seq_len=8, batch_seqs=4, device="cpu")
    bf16 = evaluate_non_overlapping(
        model, tokens, table, seq_len=8, batch_seqs=4, device="cpu", autocast_dtype=torch.bfloat16
    )
    assert bf16.val_loss != exact.val_loss  # autocast really ran the Linear in bf16
    assert bf16.val_loss == pytest.approx(exact.val_loss, rel=2e-2)


def test_progress_bar_only_on_rank_zero(capsys):
    tokens = torch.arange(33) % VOCAB
    table, model = make_byte_table(VOCAB), BigramLM(VOCAB)
    kwargs = dict(seq_len=4, batch_seqs=2, device="cpu", world_size=2, progress=True)
    evaluate_non_overlapping(model, tokens, table, rank=1, **kwargs)
    assert capsys.readouterr().err == ""
    evaluate_non_overlapping(model, tokens, table, rank=0, **kwargs)
    assert "eval non_overlapping" in capsys.readouterr().err


def test_input_errors_name_what_to_fix():
    table, model = make_byte_table(VOCAB), BigramLM(VOCAB)
    with pytest.raises(ValueError, match="eval.seq_len"):
        evaluate_non_overlapping(model, torch.arange(8), table, seq_len=8, batch_seqs=1, device="cpu")
    with pytest.raises(ValueError, match="eval.batch_seqs"):
        evaluate_non_overlapping(model, torch.arange(9), table, seq_len=4, batch_seqs=0, device="cpu")
    with pytest.raises(AssertionError, match="1-D"):  # paramgolf loads val_tokens: a bug
        evaluate_non_overlapping(model, torch.zeros(2, 9).long(), table, seq_len=4, batch_seqs=1, device="cpu")
    with pytest.raises(AssertionError, match="integer"):
        evaluate_non_overlapping(model, torch.zeros(9), table, seq_len=4, batch_seqs=1, device="cpu")
    with pytest.raises(RuntimeError, match="logits"):  # paramgolf builds the model: a bug
        evaluate_non_overlapping(torch.nn.Identity(), torch.arange(9), table, seq_len=4, batch_seqs=1, device="cpu")
