"""`paramgolf-train [overrides]`: compose the config, check it, then run the pipeline (see README)."""

from __future__ import annotations

import contextlib
import difflib
import os
import re
import shutil
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException

from paramgolf.config.compose import CONF_DIR, check_known_keys, compose, setup, to_container, unknown_key_message
from paramgolf.errors import UserError

setup()


def _fail(msg: str, run_dir: Path | None = None) -> None:
    """A user's mistake: one line, exit 2. `run_dir`: removed when it holds nothing but `.hydra/`."""
    if run_dir is not None and run_dir.is_dir() and {p.name for p in run_dir.iterdir()} <= {".hydra"}:
        shutil.rmtree(run_dir, ignore_errors=True)
        with contextlib.suppress(OSError):
            run_dir.parent.rmdir()  # the date directory, when this was its only run
    print(f"paramgolf-train: error: {msg}", file=sys.stderr)
    sys.exit(2)


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# Hydra's own flags that take a value; with any other flag the check below leaves the arguments to Hydra.
_HYDRA_VALUE_FLAGS = {"--cfg", "-c", "--package", "-p", "--info", "-i", "--experimental-rerun"}
_HYDRA_FLAGS = {"-m", "--multirun", "--resolve"}


def _overrides(argv: list[str]) -> list[str] | None:
    """The overrides in `argv`, each sweep cut to its first value; None when Hydra must read argv itself."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    plain, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg in _HYDRA_VALUE_FLAGS:
            skip = True
        elif arg.startswith("-"):
            if arg not in _HYDRA_FLAGS:
                return None
        else:
            plain.append(arg)
    try:
        parsed = OverridesParser.create().parse_overrides(plain)
    except HydraException:
        return None  # Hydra reports its own syntax errors
    out = []
    for o in parsed:
        key = o.get_key_element()
        if key.lstrip("+~").startswith("hydra"):
            continue
        if o.is_sweep_override():
            out.append(f"{key}={next(iter(o.sweep_string_iterator()), '')}")
        elif o.is_delete():
            out.append(o.input_line)
        else:
            out.append(f"{key}={o.get_value_element_as_str()}")
    return out


def _config_error(exc: Exception, overrides: list[str]) -> str:
    """A composition error in one line; an unknown key with the nearest known one."""
    cause = exc.__cause__ or exc
    full_key = getattr(cause, "full_key", None)
    text = str(exc)
    m = re.search(r"Could not override '([^']+)'", text)
    if m and isinstance(cause, (ConfigKeyError, ConfigAttributeError)):
        return _unknown_override(m.group(1), overrides)
    m = re.search(r"Could not find '([^']+)'", text)
    if m:
        group, _, option = m.group(1).rpartition("/")
        found = sorted(f.stem for f in (CONF_DIR / group).glob("*.yaml")) if group else []
        near = difflib.get_close_matches(option, found, n=1)
        hint = f"did you mean '{group}={near[0]}'? " if near else ""
        return f"no option '{option}' in config group '{group}': {hint}options: {', '.join(found) or 'none'}"
    lines = [ln.strip() for ln in str(cause).splitlines() if ln.strip() and not ln.strip().startswith("object_type")]
    msg = "; ".join(ln for ln in lines if not ln.startswith("full_key"))
    return f"{full_key}: {msg}" if full_key and full_key not in msg else msg


def _unknown_override(key: str, overrides: list[str]) -> str:
    others = [o for o in overrides if o.split("=", 1)[0].lstrip("+~") != key]
    parent = key.rpartition(".")[0]
    try:
        node = OmegaConf.select(compose(others), parent) if parent else compose(others)
        known = list(node.keys()) if isinstance(node, DictConfig) else []
    except Exception:  # the rest of the overrides fail too: name the key alone
        known = []
    return unknown_key_message(key, known)


def _check_overrides(argv: list[str]) -> None:
    """Compose the command line's config before Hydra runs: a mistake is one line and exit 2."""
    overrides = _overrides(argv)
    if overrides is None:
        return
    try:
        compose(overrides)
    except UserError as exc:
        _fail(str(exc))
    except (HydraException, OmegaConfBaseException) as exc:
        _fail(_config_error(exc, overrides))


@hydra.main(config_path=str(CONF_DIR), config_name="config", version_base="1.3")
def _main(cfg: DictConfig) -> int:
    from paramgolf.runner.budget import check_budget
    from paramgolf.runner.launch import launch, launcher_ranks, under_torchrun
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
        _name_candidate(cfg, hc)
        c = to_container(cfg)
        ranks = launcher_ranks()  # torchrun, or a submitit job with several tasks
        world = ranks[1] if ranks else int(c["train"]["nproc_per_node"])
        plan = build_plan(c, world)  # every component built and checked before any data is read
        estimate = None if ranks and ranks[0] != 0 else check_budget(plan, c["budget_check"], _say)
    except (UserError, HydraException, OmegaConfBaseException) as exc:  # a config mistake; anything else is a bug
        if multirun:
            raise
        _fail(str(exc), Path(hc.runtime.output_dir))
    run_dir = Path(hc.runtime.output_dir)
    try:
        code = launch(c, run_dir, plan, estimate)
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


def _name_candidate(cfg: DictConfig, hc: DictConfig) -> None:
    """`name` becomes the run's candidate (paramgolf.config.candidate); rank 0 saves it in `.hydra/config.yaml`,
    which Hydra wrote before the job started, so that paramgolf-eval keeps the candidate."""
    from paramgolf.config.candidate import job_candidate
    from paramgolf.fsio import write_atomic

    name = job_candidate(cfg)
    if name == cfg.name:
        return
    cfg.name = name
    if hc.output_subdir is not None:
        write_atomic(Path(hc.runtime.output_dir) / hc.output_subdir / "config.yaml", OmegaConf.to_yaml(cfg))


def main() -> None:
    os.environ.setdefault("HYDRA_FULL_ERROR", "0")
    argv = sys.argv[1:]
    if "--help" in argv or "-h" in argv:
        print(usage())
        return
    if not under_torchrun_rank():
        _check_overrides(argv)
    _main()


def under_torchrun_rank() -> bool:
    """A rank > 0 under torchrun: rank 0 checks the command line for everyone."""
    return os.environ.get("RANK", "0") != "0" and "TORCHELASTIC_RUN_ID" in os.environ


def usage() -> str:
    """`--help`: the groups and their options (`paramgolf-config GROUP` lists each option's keys)."""
    groups = sorted({str(f.parent.relative_to(CONF_DIR)) for f in CONF_DIR.rglob("*.yaml")} - {".", "hydra/launcher"})
    lines = [
        "usage: paramgolf-train [-m] [GROUP=OPTION | KEY=VALUE ...]",
        "",
        "Train, export, round-trip and score one run (README). -m sweeps comma-separated values",
        "(seed=1,2,3); --cfg job prints the composed config; --hydra-help shows Hydra's flags.",
        "",
        "Config groups (GROUP=OPTION; `paramgolf-config GROUP` lists every key with its type and default):",
    ]
    for g in groups:
        lines.append(f"  {g}: {', '.join(sorted(f.stem for f in (CONF_DIR / g).glob('*.yaml')))}")
    lines += [
        "",
        "Examples:",
        "  paramgolf-train experiment=smoke",
        "  paramgolf-train experiment=pr754 seed=42 quant=int8_zstd",
        "  paramgolf-train -m hydra/launcher=paramgolf_local experiment=smoke seed=1,2   # sweep jobs via submitit",
        "  (hydra/launcher: submitit_local, paramgolf_local, slurm_8gpu; README: Ablations and sweeps)",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
