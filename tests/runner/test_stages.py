"""The run as stages: every component built once, the validation split read once, a typed results contract."""

from __future__ import annotations

import collections
import dataclasses
import inspect
import json

import pytest

from paramgolf.config.compose import compose, to_container

TINY = ["experiment=smoke", "logger=none", "train.iterations=2", "train.progress=false", "eval.progress=false"]


@pytest.fixture()
def counted_run(tmp_path, monkeypatch):
    """A tiny in-process run that counts component instantiations, tokenizer loads and validation reads."""
    import paramgolf.data.dataset as dataset
    import paramgolf.runner.build as build

    built: collections.Counter[str] = collections.Counter()
    real_instantiate = build.instantiate

    def counting_instantiate(node, *args, **kwargs):
        if node is not None:  # an unset optional group (train.fused_ce: null) builds nothing
            built[node["_target_"]] += 1
        return real_instantiate(node, *args, **kwargs)

    calls = collections.Counter()
    real_load, real_val = dataset.load_tokenizer, dataset.DatasetInfo.validation_tokens

    def load_tokenizer(path):
        calls["load_tokenizer"] += 1
        return real_load(path)

    def validation_tokens(self, seq_len):
        calls["validation_tokens"] += 1
        return real_val(self, seq_len)

    monkeypatch.setattr(build, "instantiate", counting_instantiate)
    monkeypatch.setattr(dataset, "load_tokenizer", load_tokenizer)
    monkeypatch.setattr(dataset.DatasetInfo, "validation_tokens", validation_tokens)
    from paramgolf.runner.pipeline import run

    c = to_container(compose(TINY))
    assert run(c, tmp_path / "run", 0, 1) == 0
    return c, built, calls, json.loads((tmp_path / "run" / "results.json").read_text())


@pytest.mark.slow
def test_every_component_is_built_once_and_the_validation_split_read_once(counted_run):
    c, built, calls, results = counted_run
    expected = {c[g]["_target_"] for g in ("arch", "optimizer", "eval", "data", "ttt", "eval_cache", "logger")}
    expected |= {
        c["quant"]["quantizer"]["_target_"],
        c["quant"]["codec"]["_target_"],
        c["quant"]["calibration"]["_target_"],
        c["train"]["averaging"]["_target_"],
        c["train"]["schedule"]["_target_"],
    }
    assert expected <= set(built)
    assert {t: n for t, n in built.items() if n != 1 and t != "paramgolf.model.gpt.GPT"} == {}
    # the model: built once for the run, once more from the artifact (the scored model)
    assert built["paramgolf.model.gpt.GPT"] == 2
    assert calls == {"load_tokenizer": 1, "validation_tokens": 1}
    assert results["status"] == "ok" and results["steps"] == 2


def test_run_is_a_short_sequence_of_stages():
    from paramgolf.runner import pipeline

    source = inspect.getsource(pipeline.run)
    assert len(source.splitlines()) <= 60
    stages = [line.split('out.stage("')[1].split('"')[0] for line in source.splitlines() if 'out.stage("' in line]
    assert stages == ["data", "model", "train", "average", "export", "score", "report"]


def test_results_are_a_typed_contract():
    from paramgolf.runner.results import SECTIONS, ArtifactInfo, Results, RunInfo

    res = Results(run=RunInfo(name="x", seed=1, budget_bytes=16_000_000))
    with pytest.raises(AttributeError):
        res.val_bpbb = 1.0  # a misspelt key is an error, not a new key
    res.artifact = ArtifactInfo(model_bytes=10, code_bytes=5, artifact_bytes=15, fits=True, artifact_file="m")
    with pytest.raises(AttributeError):
        res.artifact.model_byte = 3
    data = res.to_dict()
    assert data["status"] == "running" and data["artifact_bytes"] == 15 and "val_bpb" not in data
    keys = [f.name for s in SECTIONS for f in dataclasses.fields(s)]
    for key in (
        "val_bpb",
        "val_loss",
        "pre_quant_val_bpb",
        "artifact_bytes",
        "model_bytes",
        "code_bytes",
        "budget_bytes",
        "params",
        "steps",
        "train_time_s",
        "eval_time_s",
        "config",
        "seed",
        "git_commit",
    ):
        assert key in keys, key  # DESIGN.md's contract


def test_a_failing_stage_is_recorded_with_what_came_before(tmp_path):
    from paramgolf.runner.results import Results, ResultsFile, RunInfo, TrainInfo

    f = ResultsFile(tmp_path, Results(run=RunInfo(name="x", seed=1, budget_bytes=1)))
    with f.stage("train"):
        f.results.train = TrainInfo(steps=7)
    with pytest.raises(RuntimeError), f.stage("export"):
        raise RuntimeError("disk full")
    r = json.loads((tmp_path / "results.json").read_text())
    assert r["status"] == "failed" and r["failed_stage"] == "export" and r["steps"] == 7
    assert r["error"] == "RuntimeError: disk full"
