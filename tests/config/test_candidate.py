"""Candidate names: the experiment plus the overrides that change the run; seeds and logistics never do."""

from __future__ import annotations

import functools

import pytest
from hydra import compose as hydra_compose
from hydra import initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from omegaconf import OmegaConf

from paramgolf.config.candidate import (
    MAX_NAME,
    candidate_name,
    chosen_groups,
    defines_candidate,
    group_tags,
    job_candidate,
    saved_groups,
    with_overridden_groups,
)
from paramgolf.config.compose import CONF_DIR, compose, setup


@functools.cache
def _composed(overrides: tuple[str, ...]):
    return compose(list(overrides), return_hydra_config=True)


def name_of(*overrides: str) -> str:
    """The candidate of `paramgolf-train OVERRIDES` (without `name=`), as the job computes it."""
    cfg = _composed(overrides)
    base = _composed(tuple(o for o in overrides if o.startswith("experiment=")))
    return candidate_name(str(cfg.name), overrides, cfg, cfg.hydra.runtime.choices, base, base.hydra.runtime.choices)


@pytest.mark.slow  # composes the config several times (about 1 s each here)
def test_seeds_and_logistics_keep_the_presets_name():
    assert name_of("experiment=pr754") == "pr754"
    assert (
        name_of(
            "experiment=smoke",
            "seed=42",
            "logger.mode=online",
            "train.progress=false",
            "eval.progress=false",
            "train.log_every=1",
            "train.nproc_per_node=2",
            "train.device=cpu",
            "train.compile=false",
            "data.cache_dir=/tmp/elsewhere",
            "budget_check=warn",
        )
        == "smoke"
    )
    assert name_of() == "default"  # no experiment: conf/config.yaml's name


@pytest.mark.slow  # composes the config several times (about 1 s each here)
def test_overrides_that_change_the_run_are_in_the_name_sorted_by_key():
    assert name_of("experiment=pr754", "arch.attention.xsa_last_n=0") == "pr754,arch.attention.xsa_last_n=0"
    a = name_of("experiment=smoke", "train.iterations=50", "quant=int6_rtn", "seed=3")
    b = name_of("experiment=smoke", "quant=int6_rtn", "train.iterations=50")
    assert a == b == "smoke,quant=int6_rtn,train.iterations=50"
    assert name_of("arch=record11") == "default,arch=record11"
    name = name_of("experiment=smoke", "data.val_max_tokens=4096", "train.max_wallclock_seconds=12.5")
    assert name == "smoke,data.val_max_tokens=4096,train.max_wallclock_seconds=12.5"
    assert name_of("experiment=smoke", "quant/codec=zstd") == "smoke,quant.codec=zstd"  # a group's / → .


@pytest.mark.slow  # composes the config several times (about 1 s each here)
def test_an_override_to_the_experiments_own_value_is_the_experiment():
    # pr754 sets xsa_last_n: 4 and smoke trains 200 iterations with int8_zlib
    assert name_of("experiment=pr754", "arch.attention.xsa_last_n=4") == "pr754"
    assert name_of("experiment=smoke", "train.iterations=200", "quant=int8_zlib") == "smoke"


@pytest.mark.slow  # composes the config several times (about 1 s each here)
def test_a_sweep_gives_one_candidate_per_value_and_one_for_all_seeds():
    per_value = {name_of("experiment=smoke", f"train.iterations={n}") for n in (10, 20, 30)}
    assert len(per_value) == 3
    per_seed = {name_of("experiment=smoke", "train.iterations=10", f"seed={s}") for s in (1337, 42, 2025)}
    assert per_seed == {"smoke,train.iterations=10"}


def test_an_explicit_name_wins():
    assert name_of("experiment=pr754", "name=my_idea", "arch.attention.xsa_last_n=0") == "my_idea"


def test_the_name_is_safe_and_bounded():
    cfg = OmegaConf.create({})  # with no base, every override counts: the values are not read
    odd = candidate_name("smoke", ["arch.num_layers='a b/c'"], cfg, {}, None, {})
    assert odd == "smoke,arch.num_layers=_a_b_c_"  # the quotes too
    long = candidate_name("smoke", [f"arch.num_layers={'9' * 200}"], cfg, {}, None, {})
    assert len(long) == MAX_NAME and long.startswith("smoke,arch.num_layers=999")
    other = candidate_name("smoke", [f"arch.num_layers={'9' * 199}8"], cfg, {}, None, {})
    assert other != long  # the hash of the whole name tells them apart


@pytest.mark.parametrize(
    "key, defines",
    [
        ("seed", False),
        ("name", False),
        ("logger", False),
        ("logger.project", False),
        ("hydra.run.dir", False),
        ("train.checkpoint_every", False),
        ("train.resume", False),
        ("data.data_dir", False),
        ("train.iterations", True),
        ("train.autocast", True),  # changes the math
        ("data.val_max_tokens", True),
        ("quant/codec", True),
        ("train.progressive", True),  # only the key itself and what lies below it are excluded
    ],
)
def test_which_keys_define_a_candidate(key, defines):
    assert defines_candidate(key) is defines


@pytest.mark.slow  # composes the config several times (about 1 s each here)
def test_job_candidate_inside_a_hydra_job():
    """What paramgolf-train's job sees: Hydra's task overrides and choices, the app's own Hydra."""
    setup()
    overrides = ["experiment=smoke", "seed=7", "train.iterations=20", "eval=sliding"]
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            cfg = hydra_compose("config", overrides=overrides, return_hydra_config=True)
            HydraConfig.instance().set_config(cfg)
            assert job_candidate(cfg) == "smoke,eval=sliding,train.iterations=20"
            cfg = hydra_compose("config", overrides=["experiment=smoke", "seed=7"], return_hydra_config=True)
            HydraConfig.instance().set_config(cfg)
            assert job_candidate(cfg) == "smoke"
    finally:
        HydraConfig.instance().cfg = None  # leave no job behind for other tests


def test_tags_name_every_chosen_group_but_hydras_and_the_loggers():
    groups = chosen_groups(compose(["experiment=pr754"], return_hydra_config=True).hydra.runtime.choices)
    tags = group_tags(groups)
    for tag in ("experiment:pr754", "arch:record11", "quant/quantizer:int6_gptq_lite", "ttt:score_first"):
        assert tag in tags
    assert not [t for t in tags if t.startswith(("hydra", "logger"))]
    assert "arch/mtp" not in groups  # an empty group


def test_saved_groups_and_an_evaluations_overrides(tmp_path):
    assert saved_groups(tmp_path) == {}
    (tmp_path / ".hydra").mkdir()
    (tmp_path / ".hydra" / "hydra.yaml").write_text(
        "hydra:\n  runtime:\n    choices:\n      eval: standard\n      quant: int8_zlib\n"
        "      quant/codec: zlib\n      hydra/launcher: basic\n      arch/mtp: null\n"
    )
    groups = saved_groups(tmp_path)
    assert groups == {"eval": "standard", "quant": "int8_zlib", "quant/codec": "zlib"}
    after = with_overridden_groups(groups, ["eval=sliding", "quant=int6_rtn", "eval.stride=64"])
    assert after == {"eval": "sliding", "quant": "int6_rtn"}  # the old quant's codec is dropped
    (tmp_path / ".hydra" / "hydra.yaml").write_text("a: &x [1]\nb: *x\n")
    assert saved_groups(tmp_path) == {}  # refused as data: only the tags are lost
