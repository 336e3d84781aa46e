"""`paramgolf-eval RUN_DIR [overrides]`: rebuild the model from the run's artifact and evaluate it.

Overrides of the `quant` group (e.g. `quant=int8_zstd`) re-quantize the run's kept
full-precision weights first (also when the run has no artifact); `eval=sliding` etc. change
the evaluation. The run directory is untrusted: its saved config may name only paramgolf's
own components and no resolvers.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from paramgolf.config.compose import setup


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(
        prog="paramgolf-eval", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("run_dir", type=Path, metavar="RUN_DIR", help="a run directory written by paramgolf-train")
    p.add_argument(
        "overrides",
        nargs="*",
        default=[],  # without a default, argparse lists a '*' positional as required in its error
        metavar="OVERRIDE",
        help="Hydra overrides of eval, quant, ttt, eval_cache, data, budget_bytes, "
        "train.device, train.autocast; e.g. eval=sliding quant=int8_zstd",
    )
    p.add_argument("--out", type=Path, default=None, help="where to write results.json (default RUN_DIR/evals/<time>)")
    args = p.parse_args(argv)
    setup()
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from paramgolf.errors import UserError
    from paramgolf.runner.reevaluate import reevaluate

    try:
        code = reevaluate(args.run_dir, args.overrides, args.out)
    except (FileNotFoundError, UserError, HydraException, OmegaConfBaseException) as exc:  # anything else is a bug
        print(f"paramgolf-eval: error: {exc}", file=sys.stderr)
        sys.exit(2)
    sys.exit(code)


if __name__ == "__main__":
    main()
