"""Candidates: the runs of one configuration, told apart only by their seed, share a name.

The name is results.json's `name` and the W&B group. `name=` on the command line sets it; without
it, it is the experiment's name (the preset's `name:`, `default` with no experiment) followed by
the overrides whose value differs from the experiment's, sorted by key, all joined by commas:

    paramgolf-train experiment=pr754 seed=42                 → pr754
    paramgolf-train experiment=pr754 arch.attention.xsa_last_n=4 → pr754,arch.attention.xsa_last_n=4
    paramgolf-train experiment=smoke quant=int6_rtn          → smoke,quant=int6_rtn

Overrides of the keys in `NOT_CANDIDATE` never make another candidate. Characters other than
letters, digits and `. _ = , + ~ -` become `_` (a group's `/` becomes `.`), so the name is safe in
a path, a shell word and W&B; a name longer than `MAX_NAME` keeps its start and a hash of the rest.
"""

from __future__ import annotations

import fnmatch
import hashlib
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

# Keys (and everything below them) whose overrides leave the candidate as it is: the seed, names,
# where things are read or written, what is printed or logged, and how many processes on which
# device compute the same recipe (results.json records device and world_size).
NOT_CANDIDATE = (
    "name",
    "seed",
    "experiment",  # the base the other overrides are compared with
    "logger",
    "hydra",
    "budget_check",
    "train.progress",
    "eval.progress",
    "train.log_every",
    "train.resume",
    "train.checkpoint*",
    "train.nproc_per_node",
    "train.device",
    "train.compile",  # a speed option: never changes the math (DESIGN.md)
    "train.collective_timeout_s",
    "train.expected_steps",  # paramgolf-budget's assumption only
    "data.data_dir",
    "data.tokenizer_path",
    "data.cache_dir",
)
MAX_NAME = 100  # W&B shows about this much; run names add `-s<seed>`
_UNSAFE = re.compile(r"[^A-Za-z0-9._=,+~-]+")
_ABSENT = object()


def defines_candidate(key: str) -> bool:
    """Whether overriding `key` (`train.iterations`, `quant`, `quant/codec`) can make another candidate."""
    key = key.replace("/", ".")
    return not any(fnmatch.fnmatchcase(key, p) or key.startswith(p + ".") for p in NOT_CANDIDATE)


def _parse(overrides: Sequence[str]) -> list[Any]:
    from hydra.core.override_parser.overrides_parser import OverridesParser

    return OverridesParser.create().parse_overrides(list(overrides))


def _value(cfg: DictConfig, key: str) -> Any:
    node = OmegaConf.select(cfg, key, default=_ABSENT, throw_on_missing=False)
    if isinstance(node, (DictConfig, ListConfig)):
        return OmegaConf.to_container(node, resolve=True)
    return node


def _part(key: str, delete: bool, value: Any) -> str:
    key = _UNSAFE.sub("_", key.replace("/", "."))
    return f"~{key}" if delete else f"{key}={_UNSAFE.sub('_', str(value))}"


def candidate_name(
    name: str,
    overrides: Sequence[str],
    cfg: DictConfig,
    choices: Mapping[str, Any],
    base: DictConfig | None,
    base_choices: Mapping[str, Any],
) -> str:
    """`name` followed by the `overrides` (Hydra's strings) that make `cfg`/`choices` differ from the
    experiment's `base`/`base_choices`; `name` itself when `name=` is among the overrides."""
    parsed = _parse(overrides)
    if any(o.key_or_group == "name" for o in parsed):
        return name
    parts = {}
    for o in parsed:
        key = o.key_or_group
        if not defines_candidate(key):
            continue
        group = o.get_key_element().lstrip("+~") if o.package else key
        if group in choices:  # a config group: compare the options chosen
            option = choices[group]
            if base is None or option != base_choices.get(group):
                parts[key] = _part(key, o.is_delete(), option)
        elif base is None or _value(cfg, key) != _value(base, key):
            parts[key] = _part(key, o.is_delete(), o.get_value_element_as_str())
    full = ",".join([name, *(parts[k] for k in sorted(parts))])
    if len(full) <= MAX_NAME:
        return full
    return f"{full[: MAX_NAME - 9]}~{hashlib.sha1(full.encode()).hexdigest()[:8]}"


def job_candidate(cfg: DictConfig) -> str:
    """The candidate of the running Hydra job (inside `@hydra.main`, every sweep job and rank alike)."""
    from hydra.core.hydra_config import HydraConfig

    hc = HydraConfig.get()
    overrides = list(hc.overrides.task)
    parsed = _parse(overrides)
    if not any(defines_candidate(o.key_or_group) for o in parsed):
        return str(cfg.name)  # nothing to compare: skip composing the experiment alone
    experiment = [o.input_line for o in parsed if o.key_or_group == "experiment"]
    base = _compose_with_hydra(experiment)
    return candidate_name(str(cfg.name), overrides, cfg, hc.runtime.choices, base, base.hydra.runtime.choices)


def _compose_with_hydra(overrides: list[str]) -> DictConfig:
    """Compose conf/config.yaml with `overrides` and its `hydra` node, inside or outside a Hydra app."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from paramgolf.config.compose import CONF_DIR

    if GlobalHydra.instance().is_initialized():  # the running app: compose without disturbing it
        return compose("config", overrides=overrides, return_hydra_config=True)
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose("config", overrides=overrides, return_hydra_config=True)


# ---------------------------------------------------------------------------- the groups of a run

_NOT_TAGGED = ("hydra", "logger")  # Hydra's own groups; the logger does not change the run


def chosen_groups(choices: Mapping[str, Any]) -> dict[str, str]:
    """The options chosen for the run's config groups (`{"arch": "record11", "quant/codec": "zstd"}`):
    W&B's tags (`arch:record11`) and group-by fields. Empty groups and Hydra's own are left out."""
    return {
        str(g): str(o)
        for g, o in choices.items()
        if isinstance(o, str) and o and str(g).split("/")[0] not in _NOT_TAGGED
    }


def group_tags(groups: Mapping[str, str]) -> list[str]:
    """`group:option` for each chosen group (W&B tags are at most 64 characters)."""
    return [f"{g}:{o}"[:64] for g, o in groups.items()]


def saved_groups(run_dir: str | Path) -> dict[str, str]:
    """`chosen_groups` of a run from Hydra's record of it (`.hydra/hydra.yaml`); {} when there is none.

    The file is read as data (paramgolf-eval reads run directories it did not write).
    """
    from paramgolf.config.untrusted import _safe_yaml
    from paramgolf.errors import UserError

    path = Path(run_dir) / ".hydra" / "hydra.yaml"
    if not path.is_file():
        return {}
    try:
        raw = _safe_yaml(path)
    except UserError:
        return {}  # only tags are lost
    choices = ((raw or {}).get("hydra") or {}).get("runtime", {}).get("choices") if isinstance(raw, dict) else None
    return chosen_groups(choices) if isinstance(choices, dict) else {}


def with_overridden_groups(groups: Mapping[str, str], overrides: Sequence[str]) -> dict[str, str]:
    """`groups` after the group overrides among `overrides` (`eval=sliding`); a changed group's
    subgroups are dropped (they were the old option's)."""
    out = dict(groups)
    for o in _parse(overrides):
        key = o.key_or_group
        if o.is_delete() or o.package or "." in key or key.split("/")[0] in _NOT_TAGGED:
            continue
        if key in out:
            out = {g: v for g, v in out.items() if not g.startswith(key + "/")}
            out[key] = o.get_value_element_as_str()
    return out
