"""`paramgolf-budget [overrides]`: parameter count and artifact-size estimate before training."""
from __future__ import annotations

import json
import sys

from paramgolf.config.compose import setup


def budget(overrides: list[str]) -> dict:
    from paramgolf.config.compose import compose, to_container
    from paramgolf.runner.budget import budget_report
    from paramgolf.runner.validate import validate_config

    c = to_container(compose(overrides))
    validate_config(c, world_size=int(c["train"]["nproc_per_node"]))
    return budget_report(c)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if any(a in ("-h", "--help") for a in argv):
        print("usage: paramgolf-budget [hydra overrides...]   e.g. paramgolf-budget experiment=baseline\n"
              "prints params, code_bytes and the estimated artifact bytes as JSON; exit 3 when over budget")
        return
    setup()
    try:
        out = budget(argv)
    except Exception as exc:  # config errors: print them plainly
        print(f"paramgolf-budget: error: {exc}", file=sys.stderr)
        sys.exit(2)
    print(json.dumps(out, indent=2))
    if not out["fits"]:
        print(f"paramgolf-budget: OVER BUDGET by {out['overshoot_bytes']:,} bytes: estimated model "
              f"{out['estimated_model_bytes']:,} + code {out['code_bytes']:,} > {out['budget_bytes']:,}",
              file=sys.stderr)
        sys.exit(3)  # like paramgolf-train over budget, so scripts can test it


if __name__ == "__main__":
    main()
