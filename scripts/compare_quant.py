"""Re-quantize trained runs with several `quant` options and tabulate the round-trip gaps.

For each run directory and each quant option this calls `paramgolf-eval RUN quant=OPTION` (the
run's kept fp32 weights are re-quantized, compressed, read back and scored), then prints per
option the round-trip gap (val_bpb after the round trip minus the run's pre-quant val_bpb) and
the model bytes, per run and as a mean over the runs (e.g. three seeds).

    python scripts/compare_quant.py outputs/runs/*/ --quant int8_rtn int6_rtn int6_gptq_lite int6_gptq
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", type=Path, help="paramgolf-train run directories")
    ap.add_argument("--quant", nargs="+", default=["int8_rtn", "int6_rtn", "int6_gptq_lite", "int6_gptq"])
    ap.add_argument("--override", action="append", default=[], help="extra paramgolf-eval override (repeatable)")
    args = ap.parse_args()

    from paramgolf.runner.reevaluate import reevaluate

    rows: dict[str, list[dict]] = {q: [] for q in args.quant}
    for run in args.runs:
        source = json.loads((run / "results.json").read_text())
        if source.get("pre_quant_val_bpb") is None:
            print(f"{run}: no pre_quant_val_bpb (trained with eval.pre_quant=false); skipped", file=sys.stderr)
            continue
        for q in args.quant:
            out = run / "evals" / f"compare_{q}"
            reevaluate(run, [f"quant={q}", *args.override], out_dir=out)
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
    table = {
        q: {
            "runs": rs,
            "mean_gap_bpb": statistics.fmean(x["gap"] for x in rs) if rs else None,
            "mean_model_bytes": statistics.fmean(x["model_bytes"] for x in rs) if rs else None,
        }
        for q, rs in rows.items()
    }
    print(json.dumps(table, indent=1))
    print(f"\n{'quant':<18}{'mean gap (bpb)':>16}{'mean model bytes':>18}   per run", file=sys.stderr)
    for q, t in table.items():
        if t["runs"]:
            per = ", ".join(f"s{x['seed']}: {x['gap']:+.4f}" for x in t["runs"])
            print(f"{q:<18}{t['mean_gap_bpb']:>+16.4f}{t['mean_model_bytes']:>18,.0f}   {per}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
