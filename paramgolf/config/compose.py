"""Composing, resolving and checking the Hydra config outside and inside `@hydra.main`."""

from __future__ import annotations

import dataclasses
import difflib
import os
import secrets
import socket
import time
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from paramgolf.config.schema import register_schemas
from paramgolf.errors import UserError

CONF_DIR = Path(__file__).resolve().parents[2] / "conf"
HYDRA_META_KEYS = {"_target_", "_partial_", "_recursive_", "_convert_", "_args_"}


def _torchrun_id() -> str:
    """One id shared by every local rank of a torchrun launch, different for every launch.

    torchrun --standalone gives each launch a fresh TORCHELASTIC_RUN_ID; without it the id is the
    literal "none" for every launch, so the ranks' parent (torchrun's agent) and its start time stand in.
    """
    rid = os.environ["TORCHELASTIC_RUN_ID"]
    if rid and rid != "none":
        return rid
    agent = os.getppid()
    try:  # field 22 of /proc/<pid>/stat: the process's start time in clock ticks since boot
        started = Path(f"/proc/{agent}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        started = "0"
    return f"{socket.gethostname()}-{agent}-{started}"


def _new_dir(base: str, stamp: str) -> str:
    """Create `base/<stamp>-<6 hex>` exclusively (mkdir fails if it exists) and return it.

    Two runs started in the same second get different directories, whatever the clock says.
    """
    for _ in range(100):
        path = Path(base) / f"{stamp}-{secrets.token_hex(3)}"
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            path.mkdir()
        except FileExistsError:
            continue
        return str(path)
    raise RuntimeError(f"could not create a fresh run directory under {base}")


def _run_dir(base: str = "outputs/runs") -> str:
    """The run directory (`hydra.run.dir`): `<base>/<date>/<time>-<suffix>`, created atomically.

    Every rank of one torchrun launch resolves it on its own, so there it is `<base>/torchrun-<id>`
    (rank 0 refuses one that already holds a run, e.g. a reused --rdzv-id).
    """
    if os.environ.get("TORCHELASTIC_RUN_ID") and os.environ.get("PARAMGOLF_WORKER") != "1":
        path = Path(base) / f"torchrun-{_torchrun_id()}"
        if os.environ.get("RANK", "0") == "0" and (path / "results.json").exists():
            raise UserError(f"run directory {path} already holds a run: start torchrun with a fresh --rdzv-id")
        return str(path)
    return _new_dir(base, time.strftime("%Y-%m-%d/%H-%M-%S"))


def _sweep_dir(base: str = "outputs/multirun") -> str:
    """The sweep directory (`hydra.sweep.dir`), created atomically once per sweep.

    The launcher's jobs may resolve it again in other processes (submitit): the first resolution is
    handed down in the environment.
    """
    key = "PARAMGOLF_SWEEP_DIR"
    if not os.environ.get(key):
        os.environ[key] = _new_dir(base, time.strftime("%Y-%m-%d/%H-%M-%S"))
    return os.environ[key]


def launcher_rank() -> int:
    """This process's rank as its launcher set it: torchrun's RANK, a submitit task's global rank, else 0.

    A submitit job with several tasks (`hydra.launcher.tasks_per_node`) runs Hydra's job in every task
    before the runner exports RANK for torch (paramgolf.runner.launch.launcher_ranks).
    """
    if "RANK" in os.environ:
        return int(os.environ["RANK"])
    if os.environ.get("SUBMITIT_EXECUTOR"):
        import submitit

        return submitit.JobEnvironment().global_rank
    return 0


def _output_subdir() -> str | None:
    """Only rank 0 writes `.hydra/` (the ranks of one torchrun launch or submitit job share a run dir)."""
    return ".hydra" if launcher_rank() == 0 else None


def setup() -> None:
    """Register schemas and resolvers; call before Hydra composes anything."""
    register_schemas()
    for name, fn in (("pg_run_dir", _run_dir), ("pg_sweep_dir", _sweep_dir)):
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, fn, use_cache=True)
    if not OmegaConf.has_resolver("pg_output_subdir"):
        OmegaConf.register_new_resolver("pg_output_subdir", _output_subdir)


def compose(overrides: Sequence[str] = (), return_hydra_config: bool = False) -> DictConfig:
    """Compose `conf/config.yaml` with command-line style overrides (no run dir, no job)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    setup()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = hydra_compose("config", overrides=list(overrides), return_hydra_config=return_hydra_config)
    check_known_keys(cfg)
    return cfg


def _known_fields(node: DictConfig) -> set[str] | None:
    typ = OmegaConf.get_type(node)
    if typ is not None and dataclasses.is_dataclass(typ):
        return {f.name for f in dataclasses.fields(typ)}
    return None


def _free_form(node: DictConfig, key: str) -> bool:
    """A field typed as a mapping (e.g. `dict[str, float]` of per-name factors): its keys are the user's."""
    typ = OmegaConf.get_type(node)
    if typ is None or not dataclasses.is_dataclass(typ):
        return False
    hint = next((f.type for f in dataclasses.fields(typ) if f.name == key), None)
    args = [hint, *typing.get_args(hint)]  # Optional[dict[...]] too
    return any(typing.get_origin(a) is dict or a is dict for a in args)


def check_known_keys(cfg: DictConfig, path: str = "") -> None:
    """Reject keys no schema knows, e.g. ones added with `+`/`++` (Hydra accepts those)."""
    if isinstance(cfg, ListConfig):
        for i, item in enumerate(cfg):
            if isinstance(item, (DictConfig, ListConfig)):
                check_known_keys(item, f"{path}[{i}]")
        return
    known = _known_fields(cfg)
    if known is None and path:  # untyped mapping below the root: every key is unknown
        raise UserError(
            f"config key '{path}' is not described by any schema (was it added with '+' or a YAML "
            f"without a schema in its defaults list?). Remove it or add a schema in paramgolf/config/schema.py."
        )
    for key in cfg.keys():
        full = f"{path}.{key}" if path else str(key)
        if known is not None and key not in known and full != "hydra":  # hydra: compose(return_hydra_config=True)
            raise UserError(unknown_key_message(full, known))
        if full == "hydra":
            continue
        child = cfg._get_node(key)
        if isinstance(child, (DictConfig, ListConfig)) and not child._is_none() and not child._is_missing():
            if not _free_form(cfg, key):
                check_known_keys(child, full)


def unknown_key_message(full_key: str, known: set[str] | list[str]) -> str:
    """'unknown config key …', with the nearest known key when one is close."""
    known = sorted(k for k in known if k not in HYDRA_META_KEYS)
    parent, _, key = full_key.rpartition(".")
    near = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
    hint = f"did you mean '{parent + '.' if parent else ''}{near[0]}'?" if near else "check the spelling"
    where = f"`paramgolf-config {parent.split('.')[0]}` lists them" if parent else "see `paramgolf-config`"
    return f"unknown config key '{full_key}': {hint} Known keys: {', '.join(known)} ({where})"


def to_container(cfg: DictConfig) -> dict[str, Any]:
    """Plain, resolved dict (enums as their names): what components and results.json receive."""
    return OmegaConf.to_container(
        cfg,
        resolve=True,
        throw_on_missing=True,  # type: ignore[return-value]
        enum_to_str=True,
    )
