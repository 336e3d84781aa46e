"""`paramgolf-export RUN_DIRS... --name NAME --author A --github-id G`: a record submission folder.

Writes `records/track_10min_16mb/<date>_<NAME>/` (or under --out): the generated self-contained
`train_gpt.py` (only the code the candidate's configuration runs, no paramgolf/Hydra/W&B needed),
`submission.json`, README.md with the seeds table, each seed's train log, config.json and
requirements.txt. A candidate whose evaluation is not compliant, or whose artifact does not fit, is
refused with the reasons unless --non-record is given. `--script-only CONFIG_RUN` prints nothing
but writes the generated script of one run to --out (to inspect or measure it).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(
        prog="paramgolf-export", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("paths", nargs="+", type=Path, metavar="RUN_DIR", help="run or sweep directories of one candidate")
    p.add_argument("--name", required=True, help="the record's name (its folder is <date>_<name>)")
    p.add_argument("--author", required=True)
    p.add_argument("--github-id", required=True)
    p.add_argument("--blurb", default=None, help="one-line description for submission.json")
    p.add_argument("--out", type=Path, default=Path("records") / "track_10min_16mb", help="where the folder goes")
    p.add_argument("--non-record", action="store_true", help="export a non-compliant or over-budget candidate")
    args = p.parse_args(argv)
    from paramgolf.errors import UserError
    from paramgolf.export.record import export_record

    try:
        folder = export_record(
            args.paths,
            name=args.name,
            author=args.author,
            github_id=args.github_id,
            out_root=args.out,
            non_record=args.non_record,
            blurb=args.blurb,
        )
    except UserError as exc:
        print(f"paramgolf-export: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    size = (folder / "train_gpt.py").stat().st_size
    print(f"record: {folder} (train_gpt.py {size:,} bytes)")


if __name__ == "__main__":
    main()
