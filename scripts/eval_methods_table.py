"""Score one trained artifact with several evaluation-time methods and print one table.

    paramgolf-train experiment=smoke logger=none
    python scripts/eval_methods_table.py outputs/runs/<date>/<run> --chunk-tokens 8192

Each row is one `paramgolf-eval RUN_DIR ttt=… eval_cache=…` child process (the artifact rebuilt,
the legality check run, then the split scored), timed by its own results.json (`eval_time_s`,
the scoring alone) and measured for peak resident memory by `/usr/bin/time` (the whole child:
loading, the check and scoring). `--chunk-tokens` sets the chunk of score-first TTT and the
n-gram cache (the records' 32,768 would make one or two chunks of a smoke validation split).
Prints a Markdown table; `--json` also writes the rows.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

METHODS = (
    ("none", "none"),
    ("score_first", "none"),
    ("lora_doc", "none"),
    ("lora_doc_published", "none"),
    ("slot_causal", "none"),
    ("slot_published", "none"),
    ("none", "ngram"),
    ("none", "ngram_target_hashed"),
    ("score_first", "ngram"),
)
CHUNKED = {"score_first": "ttt", "ngram": "eval_cache", "ngram_target_hashed": "eval_cache"}


def _row(run_dir: Path, ttt: str, cache: str, extra: list[str], chunk: int | None) -> dict:
    overrides = [f"ttt={ttt}", f"eval_cache={cache}", *extra]
    if chunk:
        overrides += [f"{CHUNKED[m]}.chunk_tokens={chunk}" for m in (ttt, cache) if m in CHUNKED]
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "eval"
        timer = ["/usr/bin/time", "-f", "%M"] if shutil.which("/usr/bin/time") else []
        cmd = [*timer, sys.executable, "-m", "paramgolf.cli.eval", str(run_dir), *overrides, "--out", str(out)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if not (out / "results.json").exists():
            return {"ttt": ttt, "eval_cache": cache, "error": proc.stderr.strip().splitlines()[-1:]}
        r = json.loads((out / "results.json").read_text())
    peak_kb = proc.stderr.strip().splitlines()[-1] if timer else ""
    c = r.get("compliance") or {}
    return {
        "ttt": ttt,
        "eval_cache": cache,
        "val_bpb": r.get("val_bpb"),
        "eval_time_s": r.get("eval_time_s"),
        "peak_rss_mb": int(peak_kb) / 1024 if peak_kb.isdigit() else None,
        "verdict": c.get("verdict"),
        "failed": [k for k in ("causal", "normalized", "score_first", "single_pass") if c.get(k) is False],
        "check_time_s": (c.get("checked") or {}).get("time_s"),
        "first_reason": (c.get("reasons") or [""])[0],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run_dir", type=Path)
    ap.add_argument(
        "overrides",
        nargs="*",
        help="for every row, or METHOD:override for the rows using it, e.g. lora_doc:ttt.chunk_len=64",
    )
    ap.add_argument("--chunk-tokens", type=int, default=None)
    ap.add_argument("--methods", nargs="*", default=None, help="ttt+eval_cache pairs, e.g. score_first+ngram")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_intermixed_args()
    methods = [tuple((m + "+none").split("+")[:2]) for m in args.methods] if args.methods else METHODS
    rows = []
    print("| ttt | eval_cache | val_bpb | eval s | peak RSS MB | verdict (rules failed) |")
    print("|---|---|---|---|---|---|")
    for ttt, cache in methods:
        extra = [o.split(":", 1)[-1] for o in args.overrides if ":" not in o or o.split(":")[0] in (ttt, cache)]
        row = _row(args.run_dir, ttt, cache, extra, args.chunk_tokens)
        rows.append(row)
        if "error" in row:
            print(f"| {ttt} | {cache} | failed: {row['error']} | | | |", flush=True)
            continue
        failed = f" ({', '.join(row['failed'])})" if row["failed"] else ""
        rss = f"{row['peak_rss_mb']:.0f}" if row["peak_rss_mb"] else "?"
        print(
            f"| {ttt} | {cache} | {row['val_bpb']:.5f} | {row['eval_time_s']:.1f} | {rss} | {row['verdict']}{failed} |",
            flush=True,
        )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
