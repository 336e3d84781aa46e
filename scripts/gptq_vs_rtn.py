"""Layer-output error of full GPTQ vs plain rounding on a briefly trained smoke model.

Trains the smoke model for a few AdamW steps on a fixed Markov-chain token source, collects the
input Hessians of its attention/MLP matrices on calibration batches, quantizes each matrix with
plain rounding (row-max scales) and with GPTQ using the same scales, and prints the ratio of
their output errors ‖X(W − Ŵ)ᵀ‖² measured on held-out batches.

    python scripts/gptq_vs_rtn.py --bits 6 5
"""

from __future__ import annotations

import argparse
import statistics

import torch
from torch import nn


def markov_batches(n: int, b: int, t: int, vocab: int, seed: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    trans = torch.softmax(torch.randn(vocab, vocab, generator=torch.Generator().manual_seed(99)) * 3, dim=-1)
    out = []
    for _ in range(n):
        seq = [torch.randint(0, vocab, (b,), generator=g)]
        for _ in range(t - 1):
            seq.append(torch.multinomial(trans[seq[-1]], 1, generator=g).squeeze(1))
        out.append(torch.stack(seq, dim=1))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bits", type=int, nargs="+", default=[6, 5])
    ap.add_argument("--train-steps", type=int, default=40)
    args = ap.parse_args()

    from paramgolf.config.compose import compose, setup, to_container
    from paramgolf.quant.calibration import collect_hessians
    from paramgolf.quant.gptq import gptq_quantize
    from paramgolf.quant.intn import dequantize_rows, quantize_rows, row_abs_max, row_scales
    from paramgolf.runner.build import build_model

    setup()
    c = to_container(compose(["experiment=smoke"]))
    vocab = c["arch"]["vocab_size"]
    torch.manual_seed(0)
    model = build_model(c["arch"])
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for x in markov_batches(args.train_steps, 8, 65, vocab, seed=1):
        loss = nn.functional.cross_entropy(model(x[:, :-1]).float().reshape(-1, vocab), x[:, 1:].reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
    names = [n for n, p in model.named_parameters() if p.dim() == 2 and (".attn." in n or ".mlp." in n)]
    H = collect_hessians(model, markov_batches(6, 8, 64, vocab, seed=2), param_names=set(names))
    held = collect_hessians(model, markov_batches(3, 8, 64, vocab, seed=3), param_names=set(names))
    params = dict(model.named_parameters())
    for bits in args.bits:
        ratios = []
        for name in names:
            w = params[name].detach().float()
            scale = row_scales(row_abs_max(w), bits)
            q0 = quantize_rows(w, scale, bits)
            q, s, _ = gptq_quantize(w, H[name], bits, quantiles=(1.0,))

            def err(q_, s_):
                d = (w - dequantize_rows(q_, s_)).double()
                return float(torch.einsum("ri,ij,rj->", d, held[name].double(), d))

            ratios.append(err(q, s) / err(q0, scale))
        print(
            f"int{bits}: held-out layer-output error GPTQ / rounding over {len(names)} matrices: "
            f"mean {statistics.fmean(ratios):.3f}, min {min(ratios):.3f}, max {max(ratios):.3f}"
        )


if __name__ == "__main__":
    main()
