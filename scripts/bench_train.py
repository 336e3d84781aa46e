"""Training throughput (tokens/s) of a configured model on the current device.

    python scripts/bench_train.py experiment=smoke
    python scripts/bench_train.py experiment=baseline train.batch_tokens=65536 --steps 5

Runs real optimizer steps (forward, backward, Muon/Adam) on random tokens with the same
autocast/compile choices as paramgolf-train, after `--warmup` untimed steps. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import time

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("overrides", nargs="*")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    args = ap.parse_args()

    from paramgolf.config.compose import compose, to_container
    from paramgolf.runner.build import (
        build_model,
        build_optimizer_for,
        count_params,
        prepare_for_device,
        resolve_autocast,
        resolve_compile,
    )
    from paramgolf.runner.distributed import DistEnv, pick_device
    from paramgolf.runner.train_loop import LoopSettings, Trainer

    c = to_container(compose(args.overrides))
    t = c["train"]
    device = pick_device(t["device"], 0)
    torch.manual_seed(0)
    model = prepare_for_device(build_model(c["arch"]), device, t["bf16_embeddings"])
    autocast = resolve_autocast(t["autocast"], device)
    compiled = resolve_compile(t["compile"], device)
    train_model = torch.compile(model, dynamic=False, fullgraph=True) if compiled else model
    opt = build_optimizer_for(model, c["optimizer"])
    vocab, seq = c["arch"]["vocab_size"], t["seq_len"]

    class RandomLoader:
        def next_batch(self, micro_tokens: int, seq_len: int):
            x = torch.randint(0, vocab, (micro_tokens // seq_len, seq_len + 1))
            return x[:, :-1], x[:, 1:]

    settings = LoopSettings(
        iterations=args.steps,
        batch_tokens=t["batch_tokens"],
        seq_len=seq,
        micro_batches=t["micro_batches"],
        warmup_steps=args.warmup,
        max_wallclock_seconds=None,
        val_every=0,
        log_every=1,
    )
    trainer = Trainer(model, train_model, opt, RandomLoader, settings, DistEnv(0, 1, 0, device), autocast)
    t0 = time.perf_counter()
    trainer.warm_up()
    warm_s = time.perf_counter() - t0
    summary = trainer.train()
    print(
        json.dumps(
            {
                "name": c["name"],
                "device": str(device),
                "params": count_params(model)["params"],
                "batch_tokens": t["batch_tokens"],
                "seq_len": seq,
                "micro_batches": t["micro_batches"],
                "autocast": str(autocast),
                "compile": compiled,
                "threads": torch.get_num_threads(),
                "steps": summary.steps,
                "step_s": summary.train_time_s / summary.steps,
                "tokens_per_s": summary.tokens_per_s,
                "warmup_s": warm_s,
            }
        )
    )


if __name__ == "__main__":
    main()
