"""Evaluation-time methods on the current device: seconds per chunk of score-first TTT.

    python scripts/bench_eval_methods.py experiment=smoke --tokens 65536 --chunk-tokens 8192
    python scripts/bench_eval_methods.py experiment=pr549 --tokens 131072   # GPU: the record's model

Scores `--tokens` random tokens through the scoring stream (sliding windows, `eval.stride`) once
with `ttt=none` and once with `ttt=score_first`, on the configured model's initial weights, and
prints one JSON line: tokens, chunks, seconds of each, and TTT's extra seconds per chunk.
"""

from __future__ import annotations

import argparse
import json
import time

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("overrides", nargs="*")
    ap.add_argument("--tokens", type=int, default=65_536)
    ap.add_argument("--chunk-tokens", type=int, default=None, help="default: ttt.chunk_tokens")
    ap.add_argument("--stride", type=int, default=64)
    args = ap.parse_args()

    from paramgolf.config.compose import compose, to_container
    from paramgolf.data.byte_table import ByteTable
    from paramgolf.evaluation.eval_cache import NoEvalCache
    from paramgolf.evaluation.stream import run_stream
    from paramgolf.evaluation.ttt import NoTTT
    from paramgolf.runner.build import build_model, instantiate_unwrapped, prepare_for_device, resolve_autocast
    from paramgolf.runner.distributed import pick_device

    c = to_container(compose([*args.overrides, "ttt=score_first", "logger=none"]))
    device = pick_device(c["train"]["device"], 0)
    autocast = resolve_autocast(c["train"]["autocast"], device)
    torch.manual_seed(c["seed"])
    vocab, seq = c["arch"]["vocab_size"], c["eval"]["seq_len"] or c["train"]["seq_len"]
    tokens = torch.randint(0, vocab, (args.tokens + 1,), generator=torch.Generator().manual_seed(0))
    table = ByteTable(
        torch.ones(vocab, dtype=torch.int16), torch.zeros(vocab, dtype=torch.bool), torch.zeros(vocab, dtype=torch.bool)
    )
    ttt = instantiate_unwrapped(c["ttt"])
    ttt.seq_len = ttt.seq_len or seq
    chunk = args.chunk_tokens or ttt.chunk_tokens
    out = {"device": str(device), "tokens": args.tokens, "seq_len": seq, "stride": args.stride, "chunk_tokens": chunk}
    for name, method in (("none", NoTTT()), ("score_first", ttt)):
        model = prepare_for_device(build_model(c["arch"]), device, c["train"]["bf16_embeddings"])
        if device.type == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        run_stream(
            model,
            tokens,
            table,
            ttt=method,
            eval_cache=NoEvalCache(),
            seq_len=seq,
            stride=args.stride,
            chunk_tokens=chunk,
            batch_seqs=32,
            device=device,
            autocast_dtype=autocast,
        )
        if device.type == "cuda":
            torch.cuda.synchronize()
        out[f"{name}_s"] = round(time.perf_counter() - started, 3)
    chunks = -(-args.tokens // chunk)
    out["chunks"] = chunks
    out["ttt_s_per_chunk"] = round((out["score_first_s"] - out["none_s"]) / max(chunks - 1, 1), 4)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
