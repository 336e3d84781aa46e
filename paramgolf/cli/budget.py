"""`paramgolf-budget [overrides]`: parameter count and artifact-size estimate before training."""
from __future__ import annotations

import json
import sys

from paramgolf.config.compose import setup


def budget(overrides: list[str]) -> dict:
    from paramgolf.config.compose import compose, to_container
    from paramgolf.runner.budget import budget_report

    return budget_report(to_container(compose(overrides)))


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if any(a in ("-h", "--help") for a in argv):
        print("usage: paramgolf-budget [hydra overrides...]   e.g. paramgolf-budget experiment=baseline")
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


if __name__ == "__main__":
    main()
