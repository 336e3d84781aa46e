"""Composing, resolving and checking the Hydra config outside and inside `@hydra.main`."""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from paramgolf.config.schema import register_schemas
from paramgolf.errors import UserError

CONF_DIR = Path(__file__).resolve().parents[2] / "conf"
HYDRA_META_KEYS = {"_target_", "_partial_", "_recursive_", "_convert_", "_args_"}


def _run_id() -> str:
    """One id for every rank of a launch: torchrun's TORCHELASTIC_RUN_ID, else a timestamp."""
    rid = os.environ.get("TORCHELASTIC_RUN_ID")
    if rid and os.environ.get("PARAMGOLF_WORKER") != "1":
        return f"torchrun-{rid}"
    return time.strftime("%Y-%m-%d/%H-%M-%S")


def _output_subdir() -> str | None:
    """Only rank 0 writes `.hydra/` (ranks of one torchrun launch share a run dir)."""
    return ".hydra" if os.environ.get("RANK", "0") == "0" else None


def setup() -> None:
    """Register schemas and resolvers; call before Hydra composes anything."""
    register_schemas()
    if not OmegaConf.has_resolver("pg_run_id"):
        OmegaConf.register_new_resolver("pg_run_id", _run_id, use_cache=True)
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
        if known is not None and key not in known and path != "hydra":
            raise UserError(
                f"unknown config key '{full}' (not in schema {OmegaConf.get_type(cfg).__name__}); "
                f"check the spelling. Known keys: {sorted(k for k in known if k not in HYDRA_META_KEYS)}"
            )
        if full == "hydra":
            continue
        child = cfg._get_node(key)
        if isinstance(child, (DictConfig, ListConfig)) and not child._is_none() and not child._is_missing():
            check_known_keys(child, full)


def to_container(cfg: DictConfig) -> dict[str, Any]:
    """Plain, resolved dict (enums as their names): what components and results.json receive."""
    return OmegaConf.to_container(
        cfg,
        resolve=True,
        throw_on_missing=True,  # type: ignore[return-value]
        enum_to_str=True,
    )
