"""`paramgolf-train [overrides]`: compose the config, check it, then run the pipeline (see README)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.errors import HydraException
from omegaconf import DictConfig
from omegaconf.errors import OmegaConfBaseException

from paramgolf.config.compose import CONF_DIR, check_known_keys, setup, to_container
from paramgolf.errors import UserError

setup()


def _fail(msg: str) -> None:
    print(f"paramgolf-train: error: {msg}", file=sys.stderr)
    sys.exit(2)


@hydra.main(config_path=str(CONF_DIR), config_name="config", version_base="1.3")
def _main(cfg: DictConfig) -> int:
    from paramgolf.runner.launch import launch, under_torchrun
    from paramgolf.runner.plan import build_plan

    hc = HydraConfig.get()
    multirun = hc.mode.name == "MULTIRUN"
    if under_torchrun() and multirun:
        _fail(
            "-m/--multirun under torchrun would run one sweep per rank; "
            "sweep with `paramgolf-train -m ... train.nproc_per_node=N` instead"
        )
    try:
        check_known_keys(cfg)
        c = to_container(cfg)
        world = int(os.environ["WORLD_SIZE"]) if under_torchrun() else int(c["train"]["nproc_per_node"])
        plan = build_plan(c, world)  # every component built and checked before any data is read
    except (UserError, HydraException, OmegaConfBaseException) as exc:  # a config mistake; anything else is a bug
        if multirun:
            raise
        _fail(str(exc))
    run_dir = Path(hc.runtime.output_dir)
    try:
        code = launch(c, run_dir, plan)
    except (UserError, FileNotFoundError) as exc:
        if multirun:
            raise
        # A user error found while running (missing data, vocabulary mismatch…).
        _fail(f"{exc} (results.json: {run_dir / 'results.json'})")
    if code and not multirun:
        sys.exit(code)
    if code:
        raise RuntimeError(f"run exited with code {code} (see its results.json)")
    return code


def main() -> None:
    os.environ.setdefault("HYDRA_FULL_ERROR", "0")
    _main()


if __name__ == "__main__":
    main()
