"""Model bytes and compression time of every codec for one preset's quantized model (default pr754).

The state is the preset's surrogate trained weights (paramgolf-budget's estimate), quantized once
with the preset's quantizer; each codec then compresses the same payload (int8 containers and
bit-packed codes, the smaller kept) and is timed compressing and decompressing it. A codec that
fails (7z/ppmd crashes on some payloads, in its own child process) is listed as failed, with why.

    python scripts/bench_codecs.py                 # pr754
    python scripts/bench_codecs.py experiment=pr537
"""

from __future__ import annotations

import json
import sys
import time


def main() -> None:
    overrides = sys.argv[1:] or ["experiment=pr754"]
    from paramgolf.config.compose import compose, setup, to_container
    from paramgolf.runner.budget import budget_report

    setup()
    c = to_container(compose(overrides))
    t0 = time.perf_counter()
    out = budget_report(c, all_codecs=True)
    print(
        json.dumps(
            {
                "preset": c["name"],
                "quantizer": out["quantizer"],
                "params": out["params"],
                "code_bytes": out["code_bytes"],
                "seconds": round(time.perf_counter() - t0, 1),
                "codecs": out["codecs"],
            },
            indent=1,
        )
    )
    print(f"\n{'codec':<76}{'packing':>8}{'model bytes':>13}{'comp s':>8}{'dec s':>7}", file=sys.stderr)
    for r in out["codecs"]:
        if r["model_bytes"] is None:
            print(f"{r['settings']:<76}  failed: {r['error']}", file=sys.stderr)
            continue
        print(
            f"{r['settings']:<76}{r['packing']:>8}{r['model_bytes']:>13,}{r['compress_s']:>8.2f}"
            f"{r['decompress_s']:>7.2f}",
            file=sys.stderr,
        )
        if r.get("error"):  # the other packing failed
            print(f"{'':<76}  failed: {r['error']}", file=sys.stderr)


if __name__ == "__main__":
    main()
