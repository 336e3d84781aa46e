"""A run directory's saved config is untrusted: only paramgolf's own components, no resolvers (issue 10, item 4)."""

from __future__ import annotations

import copy

import pytest
import yaml
from omegaconf import OmegaConf

from paramgolf.config.compose import CONF_DIR, compose, to_container
from paramgolf.config.untrusted import component_schemas, load_saved_config, load_saved_overrides
from paramgolf.errors import UserError
from paramgolf.runner.build import build_model


@pytest.fixture(scope="module")
def smoke_config() -> dict:
    return to_container(compose(["experiment=smoke", "logger=none"]))


def _save(tmp_path, cfg) -> str:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


@pytest.mark.parametrize("preset", sorted(p.stem for p in (CONF_DIR / "experiment").glob("*.yaml")))
def test_every_preset_saved_as_hydra_saves_it_loads_with_its_references_resolved(tmp_path, preset):
    cfg = compose([f"experiment={preset}"])
    path = tmp_path / "config.yaml"
    OmegaConf.save(cfg, path)  # what Hydra writes to .hydra/config.yaml: interpolations unresolved
    assert load_saved_config(path) == to_container(cfg)


def test_references_to_other_keys_that_hydra_saves_unresolved_are_resolved(tmp_path):
    path = tmp_path / "config.yaml"
    OmegaConf.save(compose(["experiment=smoke"]), path)
    assert "max_numel: ${quant.keep_float_max_numel}" in path.read_text()
    assert load_saved_config(path)["quant"]["quantizer"]["table"][0]["max_numel"] == 4096


def test_the_allowed_targets_come_from_the_schemas():
    allowed = component_schemas()
    assert set(allowed["quant.codec"]) >= {"paramgolf.quant.codecs.Zlib", "paramgolf.quant.codecs.Zstd"}
    assert set(allowed["train.averaging.ema"]) == {"paramgolf.optim.averaging.EMA"}  # nested default of EMASWA
    assert None in allowed[""] and None in allowed["train"]  # settings schemas without a target


def _ttt(c, node):
    c["ttt"] = node


CRAFTED = {
    "shutil.copyfile with _args_": (
        lambda c, dst: _ttt(c, {"_target_": "shutil.copyfile", "_args_": ["config.yaml", dst]}),
        "ttt._args_",
    ),
    "shutil.copyfile": (
        lambda c, dst: _ttt(c, {"_target_": "shutil.copyfile", "src": "x", "dst": dst}),
        "ttt._target_",
    ),
    "builtins.open": (lambda c, dst: _ttt(c, {"_target_": "builtins.open", "file": dst, "mode": "w"}), "builtins.open"),
    "pathlib.Path.touch": (
        lambda c, dst: c["train"].update(averaging={"_target_": "pathlib.Path.touch", "self": dst}),
        "train.averaging._target_='pathlib.Path.touch'",
    ),
    "a torch function reached through a paramgolf module": (
        lambda c, dst: c["arch"].update(_target_="paramgolf.model.gpt.torch.save"),
        "arch._target_='paramgolf.model.gpt.torch.save'",
    ),
    "a target inside a list": (
        lambda c, dst: c["quant"]["quantizer"]["table"][0].update(_target_="builtins.open"),
        "quant.quantizer.table[0]._target_",
    ),
    "a new top-level node": (lambda c, dst: c.update(evil={"_target_": "builtins.print"}), "evil._target_"),
    "a paramgolf component where it does not belong": (
        lambda c, dst: c.update(ttt="${logger}"),
        "ttt._target_='paramgolf.tracking.base.NullLogger'",
    ),
    "_recursive_": (lambda c, dst: c["eval"].update(_recursive_=False), "eval._recursive_"),
    "oc.env resolver": (lambda c, dst: c.update(name="${oc.env:PG_TEST_SECRET}"), "name = '${oc.env:PG_TEST_SECRET}'"),
    "a resolver inside a string": (lambda c, dst: c.update(name="run-${oc.env:HOME}"), "name"),
    "an unknown key": (lambda c, dst: c["eval"].update(stride_=3), "stride_"),
    "a wrong type": (lambda c, dst: c["train"].update(iterations="many"), "train.iterations"),
}


@pytest.mark.parametrize("case", CRAFTED)
def test_a_crafted_saved_config_is_refused_naming_the_file_and_key(tmp_path, smoke_config, case):
    edit, named = CRAFTED[case]
    dst = tmp_path / "written-by-the-config"
    c = copy.deepcopy(smoke_config)
    edit(c, str(dst))
    path = _save(tmp_path, c)
    with pytest.raises(UserError) as err:
        load_saved_config(path)
    assert str(path) in str(err.value) and named in str(err.value)
    assert not dst.exists()


def test_yaml_aliases_are_refused(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text("a: &x [1, 2]\nb: *x\n")
    with pytest.raises(UserError, match="aliases"):
        load_saved_config(path)


@pytest.mark.parametrize(
    "override",
    ["hydra.run.dir=/tmp/x", "hydra/launcher=submitit_slurm", "+train.foo=1", "++seed=1", "~seed", "name=${oc.env:X}"]
    + ["quant@arch=int8_zlib", "seed"],
)
def test_saved_overrides_outside_the_config_tree_are_refused(tmp_path, override):
    path = tmp_path / "overrides.yaml"
    path.write_text(yaml.safe_dump(["experiment=smoke", override]))
    with pytest.raises(UserError, match="override"):
        load_saved_overrides(path)


def test_plain_saved_overrides_pass(tmp_path):
    ok = ["experiment=smoke", "quant/codec=zstd", "train.iterations=3", "data.data_dir=/data/x", "seed=7"]
    path = tmp_path / "overrides.yaml"
    path.write_text(yaml.safe_dump(ok))
    assert load_saved_overrides(path) == ok


def test_an_artifact_architecture_cannot_reach_other_callables_through_a_paramgolf_module(tmp_path):
    """The artifact's arch config was checked by prefix only: `paramgolf.model.gpt.torch.save` wrote a file."""
    dst = tmp_path / "written-by-the-artifact"
    with pytest.raises(UserError, match="torch.save"):
        build_model({"_target_": "paramgolf.model.gpt.torch.save", "obj": 1, "f": str(dst)})
    assert not dst.exists()
