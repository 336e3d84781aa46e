"""Config tree: every option composes and instantiates; schemas catch mistakes at start-up."""

from __future__ import annotations

import dataclasses
import importlib
import inspect
from pathlib import Path

import pytest
import torch
from hydra.errors import ConfigCompositionException, MissingConfigException
from hydra.utils import get_object, instantiate

from paramgolf.config.compose import CONF_DIR, compose, to_container
from paramgolf.config.schema import SCHEMAS
from paramgolf.runner.build import build_model

GROUPS = ["arch", "optimizer", "quant", "ttt", "eval_cache", "eval", "data", "train", "logger", "experiment"]


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


def test_every_group_exists_and_ttt_and_cache_have_none():
    for g in GROUPS:
        assert options(g), g
    assert "none" in options("ttt") and "none" in options("eval_cache")
    cfg = compose([])
    assert instantiate(cfg.ttt).name == "none" and instantiate(cfg.eval_cache).name == "none"
    assert instantiate(cfg.ttt).rules_kept() == {
        "causality": True,
        "normalization": True,
        "score_before_update": True,
        "single_pass": True,
    }
    assert cfg.budget_bytes == 16_000_000 and isinstance(cfg.seed, int)


@pytest.mark.slow
@pytest.mark.parametrize("group", [g for g in GROUPS if g not in ("experiment", "arch")])
def test_every_option_of_every_group_instantiates(group):
    for opt in options(group):
        c = to_container(compose([f"{group}={opt}"]))
        node = c[group]
        for sub in [node, *node.values()]:  # the option, and nested components (quant.codec, train.averaging…)
            if isinstance(sub, dict) and "_target_" in sub:
                built, target = instantiate(sub, _convert_="all"), get_object(sub["_target_"])
                made = built.func if sub.get("_partial_") else type(built)  # a partial, or an instance
                assert made is target or (isinstance(target, type) and issubclass(made, target)), (group, opt)


def test_every_arch_option_builds_a_model():
    for opt in options("arch"):  # at full size on the meta device: presets' layer indices need their depth
        with torch.device("meta"):
            model = build_model(compose([f"arch={opt}"]).arch)
        assert sum(p.numel() for p in model.parameters()) > 0


def test_schema_fields_are_the_targets_keyword_arguments():
    meta = {"_target_", "_partial_"}
    for group, entries in SCHEMAS.items():
        for name, schema in entries:
            fields = {f.name: f for f in dataclasses.fields(schema)}
            if "_target_" not in fields:
                continue
            module, attr = fields["_target_"].default.rsplit(".", 1)
            target = getattr(importlib.import_module(module), attr)
            params = inspect.signature(target).parameters
            assert not any(p.kind == p.VAR_KEYWORD for p in params.values()), f"{target} takes **kwargs"
            unknown = set(fields) - meta - set(params)
            assert not unknown, f"{group}/{name}: {unknown} are not arguments of {target}"


@pytest.mark.parametrize(
    "override, error",
    [
        (["arch.num_layr=3"], ConfigCompositionException),  # misspelt key
        (["arch.num_layers=three"], ConfigCompositionException),  # wrong type
        (["quant=int3_magic"], MissingConfigException),  # unknown option
        (["+arch.n_layr=4"], ValueError),  # '+' adds a key no schema knows
        (["++train.averaging.decay_rate=0.9"], ValueError),
        (["+foo=1"], ValueError),
        (["eval=slidng"], MissingConfigException),  # an unknown option
        (["ttt.method=lora"], ConfigCompositionException),  # ttt has no such key; ttt=lora is no option
        (["ttt=lora"], MissingConfigException),
        (["logger.mode=onlin"], ConfigCompositionException),
    ],
)
def test_mistakes_fail_at_compose_time(override, error):
    with pytest.raises(error):
        compose(override)


def test_unknown_plus_key_error_names_key_and_known_keys():
    with pytest.raises(ValueError, match=r"arch\.n_layr.*num_layers"):
        compose(["+arch.n_layr=4"])


@pytest.mark.slow
def test_every_experiment_preset_composes():
    for opt in options("experiment"):
        cfg = compose([f"experiment={opt}"])
        assert cfg.name == opt
        text = (CONF_DIR / "experiment" / f"{opt}.yaml").read_text()
        assert text.startswith("# @package _global_")
        assert "paramgolf-train" in text or "-m paramgolf.cli.train" in text  # the header is the command


def test_run_outputs_are_ignored_by_git():
    import shutil
    import subprocess

    root = Path(CONF_DIR).parent
    if shutil.which("git") is None or not (root / ".git").exists():
        pytest.skip("not a git checkout")
    for path in ("outputs/runs/2026-01-01/00-00-00/results.json", "multirun/x/model.pgart", ".venv/bin/python"):
        assert subprocess.run(["git", "check-ignore", "-q", path], cwd=root).returncode == 0, path
    assert subprocess.run(["git", "check-ignore", "-q", "paramgolf/runner/pipeline.py"], cwd=root).returncode == 1
