"""`paramgolf-budget [overrides]`: parameter count and artifact-size estimate before training."""

from __future__ import annotations

import json
import sys

from paramgolf.config.compose import setup


def budget(overrides: list[str], all_codecs: bool = False) -> dict:
    from paramgolf.config.compose import compose, to_container
    from paramgolf.runner.budget import budget_report

    return budget_report(to_container(compose(overrides)), all_codecs=all_codecs)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if any(a in ("-h", "--help") for a in argv):
        print(
            "usage: paramgolf-budget [--all-codecs] [hydra overrides...]   e.g. paramgolf-budget experiment=baseline\n"
            "prints params, code_bytes and the estimated artifact bytes as JSON; exit 3 when over budget\n"
            "--all-codecs: also the bytes of every codec on the same quantized state (table on stderr)"
        )
        return
    all_codecs = "--all-codecs" in argv
    argv = [a for a in argv if a != "--all-codecs"]
    setup()
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from paramgolf.errors import UserError

    try:
        out = budget(argv, all_codecs=all_codecs)
    except (UserError, FileNotFoundError, HydraException, OmegaConfBaseException) as exc:  # not a bug: one line
        print(f"paramgolf-budget: error: {exc}", file=sys.stderr)
        sys.exit(2)
    print(json.dumps(out, indent=2))
    if all_codecs:
        print(
            f"\n{'codec':<76}{'packing':>8}{'model bytes':>13}{'artifact':>13}{'fits':>6}{'comp s':>8}{'dec s':>7}",
            file=sys.stderr,
        )
        for r in out["codecs"]:
            if r["model_bytes"] is None:
                print(f"{r['settings']:<76}  failed: {r['error']}", file=sys.stderr)
                continue
            print(
                f"{r['settings']:<76}{r['packing']:>8}{r['model_bytes']:>13,}{r['artifact_bytes']:>13,}"
                f"{'yes' if r['fits'] else 'NO':>6}{r['compress_s']:>8.2f}{r['decompress_s']:>7.2f}",
                file=sys.stderr,
            )
    if not out["fits"]:
        print(
            f"paramgolf-budget: OVER BUDGET by {out['overshoot_bytes']:,} bytes: estimated model "
            f"{out['estimated_model_bytes']:,} + code {out['code_bytes']:,} > {out['budget_bytes']:,}",
            file=sys.stderr,
        )
        sys.exit(3)  # like paramgolf-train over budget, so scripts can test it


if __name__ == "__main__":
    main()
