"""`paramgolf-budget [overrides]`: parameter count and artifact-size estimate before training."""
from __future__ import annotations

import json
import sys

from paramgolf.config.compose import setup


def budget(overrides: list[str]) -> dict:
    from hydra.utils import instantiate

    from paramgolf.config.compose import compose, to_container
    from paramgolf.quant.accounting import code_bytes
    from paramgolf.quant.estimate import estimate_model_bytes
    from paramgolf.runner.build import build_model, code_roots, count_params

    c = to_container(compose(overrides))
    model = build_model(c["arch"])
    counts = count_params(model)
    code = code_bytes(code_roots(c))
    est = estimate_model_bytes(model.state_dict(), instantiate(c["quant"]["quantizer"]),
                               instantiate(c["quant"]["codec"]), c["arch"], seed=0)
    total = code + est.model_bytes
    out = {
        "name": c["name"],
        "params": counts["params"],
        "params_by_group": {k: v for k, v in counts.items() if k != "params"},
        "code_bytes": code,
        "estimated_model_bytes": est.model_bytes,
        "estimated_artifact_bytes": total,
        "budget_bytes": c["budget_bytes"],
        "fits": total <= c["budget_bytes"],
        "quantizer": c["quant"]["quantizer"]["_target_"].rsplit(".", 1)[-1],
        "codec": c["quant"]["codec"]["_target_"].rsplit(".", 1)[-1],
    }
    if not out["fits"]:
        out["overshoot_bytes"] = total - c["budget_bytes"]
    return out


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
