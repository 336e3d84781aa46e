"""`paramgolf-compare RUN_DIRS_OR_SWEEP_DIRS... [--reference NAME] [--json FILE] [--html FILE]`: candidates side by side.

Reads every finished run's `results.json` under the given paths, groups runs by candidate
(the config's `name`), and prints mean ± std of val_bpb and val_loss over the seeds, the largest
artifact and whether every seed fits, times and the compliance verdict. With `--reference`, each
other candidate gets the challenge's acceptance test: a one-sided Welch t-test that its mean
val_loss is at least 0.005 nats below the reference's, p < 0.01, with the verdict "record",
"not significant" or "worse" (a candidate that is non-compliant or over budget is never a record).
`--html FILE` also writes one self-contained page (opens with no network): the table, val_bpb per
seed, every run's training loss from its metrics.jsonl, and artifact bytes against the budget.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(
        prog="paramgolf-compare", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "paths", nargs="+", type=Path, metavar="PATH", help="run directories, sweep directories or results.json"
    )
    p.add_argument("--reference", default=None, metavar="NAME", help="the candidate to test the others against")
    p.add_argument("--json", type=Path, default=None, help="also write the rows as JSON")
    p.add_argument("--html", type=Path, default=None, metavar="FILE", help="also write a self-contained HTML report")
    args = p.parse_args(argv)
    from paramgolf.errors import UserError
    from paramgolf.report.compare import find_results, format_table, load_candidates, summarize

    try:
        files = find_results(args.paths)
        candidates, skipped = load_candidates(files)
        if not candidates:
            raise UserError(f"no finished run (results.json with status ok) under {', '.join(map(str, args.paths))}")
        rows = summarize(candidates, args.reference)
        if args.html:
            from paramgolf.fsio import write_atomic
            from paramgolf.report.html import render_html

            page = render_html(candidates, rows, args.reference, skipped)
            try:
                write_atomic(args.html, page)
            except OSError as exc:
                raise UserError(
                    f"--html {args.html}: cannot write the report ({exc}); give a writable file path"
                ) from exc
    except UserError as exc:
        print(f"paramgolf-compare: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    print(format_table(rows, args.reference))
    for line in skipped:
        print(f"skipped {line}", file=sys.stderr)
    for r in rows:
        if r["repeated_seeds"]:
            seeds = ", ".join(map(str, r["repeated_seeds"]))
            print(
                f"warning: candidate {r['candidate']} ran seed {seeds} more than once: re-runs of one seed "
                "are not independent samples, and they narrow the t-test",
                file=sys.stderr,
            )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")
    if args.html:
        print(f"html report: {args.html.resolve()}", file=sys.stderr)


if __name__ == "__main__":
    main()
