"""`paramgolf-train [overrides]`: compose the config, then run the pipeline (see README)."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from paramgolf.config.compose import CONF_DIR, check_known_keys, setup, to_container

setup()


@hydra.main(config_path=str(CONF_DIR), config_name="config", version_base="1.3")
def _main(cfg: DictConfig) -> int:
    from paramgolf.runner.launch import launch, under_torchrun

    hc = HydraConfig.get()
    if under_torchrun() and hc.mode.name == "MULTIRUN":
        raise SystemExit("error: -m/--multirun under torchrun would run one sweep per rank; "
                         "sweep with `paramgolf-train -m ... train.nproc_per_node=N` instead")
    check_known_keys(cfg)
    c = to_container(cfg)
    run_dir = Path(hc.runtime.output_dir)
    try:
        code = launch(c, run_dir)
    except (ValueError, FileNotFoundError) as exc:
        if hc.mode.name == "MULTIRUN":
            raise
        # A user error (bad data path, vocabulary mismatch…): the message says what to fix.
        where = f" (what was measured is in {run_dir / 'results.json'})" if (run_dir / "results.json").exists() else ""
        print(f"paramgolf-train: error: {exc}{where}", file=sys.stderr)
        sys.exit(2)
    if code and hc.mode.name != "MULTIRUN":
        sys.exit(code)
    if code:
        raise RuntimeError(f"run exited with code {code} (see its results.json)")
    return code


def main() -> None:
    os.environ.setdefault("HYDRA_FULL_ERROR", "0")
    _main()


if __name__ == "__main__":
    main()
