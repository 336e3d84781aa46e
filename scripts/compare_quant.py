"""Re-quantize trained runs with several `quant` options and tabulate the round-trip gaps.

For each run directory and each quant option this calls `paramgolf-eval RUN quant=OPTION` (the
run's kept fp32 weights are re-quantized, compressed, read back and scored), then prints per
option the round-trip gap (val_bpb after the round trip minus the run's pre-quant val_bpb) and
the model bytes, per run and as a mean over the runs (e.g. three seeds). Every run directory's saved
config is checked first (paramgolf-eval reads it as untrusted input): a crafted one stops the
script before anything is evaluated.

    python scripts/compare_quant.py outputs/runs/*/ --quant int8_rtn int6_rtn int6_gptq_lite int6_gptq
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

from paramgolf.errors import UserError


def _mean(values: list[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return statistics.fmean(known) if known else None


def _fmt(gap: float | None) -> str:
    return f"{gap:+.4f}" if gap is not None else "n/a"


def compare(runs: list[Path], quant: list[str], extra: list[str]) -> dict[str, list[dict]]:
    """Re-quantize every run with every option. A gap is None when paramgolf-eval could not score
    both sides one way (see paramgolf.runner.reevaluate)."""
    from paramgolf.runner.reevaluate import eval_config, reevaluate

    for run in runs:  # every run directory's saved config is checked before anything is evaluated
        eval_config(run, extra)
    rows: dict[str, list[dict]] = {q: [] for q in quant}
    for run in runs:
        source = json.loads((run / "results.json").read_text())
        if source.get("pre_quant_val_bpb") is None:
            print(f"{run}: no pre_quant_val_bpb (trained with eval.pre_quant=false); skipped", file=sys.stderr)
            continue
        for q in quant:
            out = run / "evals" / f"compare_{q}"
            reevaluate(run, [f"quant={q}", *extra], out_dir=out)
            r = json.loads((out / "results.json").read_text())
            rows[q].append(
                {
                    "run": str(run),
                    "seed": source.get("seed"),
                    "gap": r["round_trip_gap_bpb"],
                    "val_bpb": r["val_bpb"],
                    "model_bytes": r["model_bytes"],
                    "calibration_s": r.get("calibration_time_s"),
                }
            )
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", type=Path, help="paramgolf-train run directories")
    ap.add_argument("--quant", nargs="+", default=["int8_rtn", "int6_rtn", "int6_gptq_lite", "int6_gptq"])
    ap.add_argument("--override", action="append", default=[], help="extra paramgolf-eval override (repeatable)")
    args = ap.parse_args()
    try:
        rows = compare(args.runs, args.quant, args.override)
    except UserError as exc:
        print(f"compare_quant: error: {exc}", file=sys.stderr)
        return 2
    table = {
        q: {
            "runs": rs,
            "mean_gap_bpb": _mean([x["gap"] for x in rs]),
            "mean_model_bytes": _mean([x["model_bytes"] for x in rs]),
        }
        for q, rs in rows.items()
    }
    print(json.dumps(table, indent=1))
    print(f"\n{'quant':<18}{'mean gap (bpb)':>16}{'mean model bytes':>18}   per run", file=sys.stderr)
    for q, t in table.items():
        if t["runs"]:
            per = ", ".join(f"s{x['seed']}: {_fmt(x['gap'])}" for x in t["runs"])
            print(f"{q:<18}{_fmt(t['mean_gap_bpb']):>16}{t['mean_model_bytes']:>18,.0f}   {per}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
