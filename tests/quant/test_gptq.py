"""GPTQ-lite and full GPTQ: never worse than plain rounding where they promise it, and exact plumbing."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from paramgolf.config.compose import compose, to_container
from paramgolf.quant.calibration import collect_hessians, self_generated_batches
from paramgolf.quant.gptq import clip_search, gptq_quantize
from paramgolf.quant.intn import dequantize_rows, quantize_rows, row_abs_max, row_scales
from paramgolf.runner.build import build_model


def outlier_matrix(rows=64, cols=96, seed=0):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(rows, cols, generator=g) * 0.05
    return w + (torch.rand(rows, cols, generator=g) < 0.002) * torch.randn(rows, cols, generator=g)


def rtn(w, bits):
    scale = row_scales(row_abs_max(w), bits)
    return quantize_rows(w, scale, bits), scale


@pytest.mark.parametrize("bits", [6, 5])
def test_clip_search_is_never_worse_than_row_max_rounding(bits):
    w = outlier_matrix()
    q0, s0 = rtn(w, bits)
    mse_rtn = float((w - dequantize_rows(q0, s0)).pow(2).mean())
    q, s, info = clip_search(w, bits)
    assert info["quantile"] in (0.999, 0.9995, 0.9999, 0.99999, 1.0)
    assert info["mse"] <= mse_rtn + 1e-12
    assert float((w - dequantize_rows(q, s)).pow(2).mean()) == pytest.approx(info["mse"], rel=1e-5)
    _, _, per_row = clip_search(w, bits, per_row=True)
    assert per_row["mse"] <= info["mse"] + 1e-12
    assert info["quantile"] < 1.0  # with outliers, clipping beats the row max


def test_gptq_with_a_diagonal_hessian_is_plain_rounding():
    w = outlier_matrix()
    H = torch.diag(torch.rand(w.shape[1]) + 0.5)
    q, s, info = gptq_quantize(w, H, 6, act_order=False, quantiles=(1.0,))
    q0 = quantize_rows(w, row_scales(row_abs_max(w), 6), 6)
    assert torch.equal(q, q0)  # no cross terms: the error feedback never reaches another column


def test_dead_columns_and_act_order_are_handled():
    w = outlier_matrix()
    g = torch.Generator().manual_seed(1)
    x = torch.randn(500, w.shape[1], generator=g) * torch.linspace(0.1, 3, w.shape[1])
    x[:, 5] = 0  # an input that never fires
    H = x.T @ x / 500
    for act_order in (True, False):
        q, s, info = gptq_quantize(w, H, 6, act_order=act_order)
        deq = dequantize_rows(q, s)
        assert torch.isfinite(deq).all() and info["dead_columns"] == 1
        assert torch.all(q[:, 5] == 0)  # the dead input's weights are zeroed
        live = [c for c in range(w.shape[1]) if c != 5]
        # codes stay aligned with the original columns: the reconstruction tracks w column by column
        assert float((deq[:, live] - w[:, live]).pow(2).mean()) < float(w[:, live].pow(2).mean()) * 0.05


def test_shape_mismatch_is_a_clear_error():
    with pytest.raises(AssertionError, match="Hessian of shape"):  # paramgolf collects H: a bug
        gptq_quantize(torch.randn(4, 8), torch.eye(4), 6)


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(6, 4, bias=False)

    def forward(self, x):
        return self.a(x) + self.a(x * 2)  # the same layer runs twice


def test_collect_hessians_matches_hand_computed_and_accumulates_shared_calls():
    m = Tiny()
    batches = [torch.randn(3, 5, 6), torch.randn(2, 5, 6)]
    H = collect_hessians(m, batches)
    want = (
        sum(x.reshape(-1, 6).T @ x.reshape(-1, 6) + (2 * x).reshape(-1, 6).T @ (2 * x).reshape(-1, 6) for x in batches)
        / 2
    )
    assert torch.allclose(H["a.weight"], want, rtol=1e-5, atol=1e-5)
    assert not m.a._forward_hooks  # hooks removed


def _markov_batches(n, b, t, vocab, seed):
    g = torch.Generator().manual_seed(seed)
    trans = torch.softmax(torch.randn(vocab, vocab, generator=torch.Generator().manual_seed(99)) * 3, dim=-1)
    out = []
    for _ in range(n):
        seq = [torch.randint(0, vocab, (b,), generator=g)]
        for _ in range(t - 1):
            seq.append(torch.multinomial(trans[seq[-1]], 1, generator=g).squeeze(1))
        out.append(torch.stack(seq, dim=1))
    return out


@pytest.fixture(scope="module")
def trained_smoke_model():
    c = to_container(compose(["experiment=smoke"]))
    torch.manual_seed(0)
    model = build_model(c["arch"])
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    vocab = c["arch"]["vocab_size"]
    for x in _markov_batches(40, 8, 65, vocab, seed=1):
        loss = nn.functional.cross_entropy(model(x[:, :-1]).float().reshape(-1, vocab), x[:, 1:].reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model, vocab


@pytest.mark.parametrize("bits", [6, 5])
def test_gptq_beats_rounding_on_the_layer_outputs_of_a_trained_model(trained_smoke_model, bits):
    model, vocab = trained_smoke_model
    names = [n for n, p in model.named_parameters() if p.dim() == 2 and (".attn." in n or ".mlp." in n)]
    calib = _markov_batches(6, 8, 64, vocab, seed=2)
    held_out = _markov_batches(3, 8, 64, vocab, seed=3)
    H = collect_hessians(model, calib, param_names=set(names))
    H_test = collect_hessians(model, held_out, param_names=set(names))
    params = dict(model.named_parameters())
    wins = 0
    for name in names:
        w = params[name].detach().float()
        q0, s0 = rtn(w, bits)
        q, s, _ = gptq_quantize(w, H[name], bits, quantiles=(1.0,))  # same scales as RTN: only the rounding differs
        assert torch.equal(s, s0)

        def out_err(Hx, q_, s_):
            d = (w - dequantize_rows(q_, s_)).double()
            return float(torch.einsum("ri,ij,rj->", d, Hx.double(), d))  # ‖X(W − Ŵ)ᵀ‖² / batches

        assert out_err(H[name], q, s) < out_err(H[name], q0, s0), name  # on the calibration activations
        wins += out_err(H_test[name], q, s) < out_err(H_test[name], q0, s0)
    assert wins >= len(names) - 1, (wins, len(names))  # and on held-out activations


def test_self_generated_batches_are_deterministic_tokens_of_the_vocab(trained_smoke_model):
    model, vocab = trained_smoke_model
    a = list(self_generated_batches(model, 5, 12, vocab_size=vocab, seed=4, batch_size=2))
    b = list(self_generated_batches(model, 5, 12, vocab_size=vocab, seed=4, batch_size=2))
    assert [t.shape for t in a] == [(2, 12), (2, 12), (1, 12)]
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert all(int(t.min()) >= 0 and int(t.max()) < vocab for t in a)
