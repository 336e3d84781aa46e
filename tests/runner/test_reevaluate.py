"""paramgolf-eval on run directories as a user hands them over: crafted, mixed, incomplete (issue 10)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from omegaconf import OmegaConf

from paramgolf.config.compose import compose

REPO = Path(__file__).resolve().parents[2]
TINY = ["experiment=smoke", "logger=none", "train.iterations=3", "train.progress=false", "eval.progress=false"]
SECRET = "pg-secret-4f1c9a7e"

pytestmark = pytest.mark.slow


def _env(tmp: Path, cache: Path) -> dict[str, str]:
    env = dict(os.environ, PARAMGOLF_CACHE=str(cache), OMP_NUM_THREADS="1", PG_TEST_SECRET=SECRET)
    env.update(WANDB_MODE="offline", WANDB_SILENT="true", WANDB_DIR=str(tmp / "wandb"))
    env.pop("HYDRA_FULL_ERROR", None)
    return env


def _eval(run: Path, *args: str, cache: Path, script: str = "paramgolf.cli.eval") -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", script] if script.startswith("paramgolf") else [sys.executable, script]
    return subprocess.run(
        [*cmd, str(run), *args],
        cwd=run.parent,
        env=_env(run.parent, cache),
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("pgcache")


@pytest.fixture(scope="module")
def trained(tmp_path_factory, cache) -> Path:
    """One tiny smoke run (3 steps) every test here copies."""
    tmp = tmp_path_factory.mktemp("trained")
    cmd = [sys.executable, "-m", "paramgolf.cli.train", *TINY, "hydra.run.dir=outputs/run"]
    proc = subprocess.run(cmd, cwd=tmp, env=_env(tmp, cache), capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return tmp / "outputs" / "run"


def _copy(run: Path, tmp_path: Path, *drop: str) -> Path:
    dst = tmp_path / "run"
    shutil.copytree(run, dst, ignore=shutil.ignore_patterns("evals"))
    for name in drop:
        (dst / name).unlink()
    return dst


def _results(path: Path) -> dict:
    return json.loads((path / "results.json").read_text())


def _one_line_error(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr[-3000:]
    return proc.stderr


# --- item 4: a run directory someone hands you must not run code ---------------------------------------------------


def _crafted_run(tmp_path: Path, edit) -> Path:
    """A run directory as paramgolf-train writes it (.hydra/, results.json, artifact, weights), its config edited."""
    run = tmp_path / "run"
    (run / ".hydra").mkdir(parents=True)
    cfg = OmegaConf.to_container(compose(TINY), enum_to_str=True)  # unresolved, as Hydra saves it
    edit(cfg)
    (run / ".hydra" / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    (run / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(TINY))
    (run / "results.json").write_text(json.dumps({"status": "ok", "pre_quant_val_bpb": 3.0, "seed": 1337}))
    (run / "model.pgart").write_bytes(b"PGART" + bytes(64))
    (run / "weights.safetensors").write_bytes(bytes(64))
    return run


def _nothing_happened(run: Path, dst: Path) -> None:
    assert not dst.exists()
    assert not (run / "evals").exists()
    for p in run.parent.rglob("*"):
        assert not p.is_file() or SECRET not in p.read_text(errors="replace"), p


def _copyfile(dst):
    src = dst.parent / "run" / ".hydra" / "config.yaml"
    return lambda c: c.update(ttt={"_target_": "shutil.copyfile", "_args_": [str(src), str(dst)]})


def _open(dst):
    return lambda c: c.update(ttt={"_target_": "builtins.open", "file": str(dst), "mode": "w"})


def _touch(dst):
    return lambda c: c["train"].update(averaging={"_target_": "pathlib.Path.touch", "self": str(dst)})


def _env_secret(dst):
    return lambda c: c.update(name="${oc.env:PG_TEST_SECRET}")


@pytest.mark.parametrize("craft", [_copyfile, _open, _touch, _env_secret], ids=["copyfile", "open", "touch", "oc.env"])
@pytest.mark.parametrize("tool", ["paramgolf.cli.eval", "scripts/compare_quant.py"])
def test_a_crafted_run_directory_is_refused_before_anything_runs(tmp_path, cache, craft, tool):
    dst = tmp_path / "written-by-the-config"
    run = _crafted_run(tmp_path, craft(dst))
    args = ["--quant", "int8_zlib"] if tool.startswith("scripts") else []
    proc = _eval(run, *args, cache=cache, script=str(REPO / tool) if tool.startswith("scripts") else tool)
    _nothing_happened(run, dst)
    err = _one_line_error(proc)
    assert str(run / ".hydra" / "config.yaml") in err and "refused" in err


def test_a_crafted_saved_override_is_refused(tmp_path, cache):
    run = _crafted_run(tmp_path, lambda c: None)
    (run / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump([*TINY, "data.cache_dir=${oc.env:PG_TEST_SECRET}"]))
    proc = _eval(run, "data.val_max_tokens=0", cache=cache)  # `data` is recomposed from the saved overrides
    _nothing_happened(run, tmp_path / "none")
    err = _one_line_error(proc)
    assert "overrides.yaml" in err and "oc.env" in err


# --- item 7: a round-trip gap uses one evaluation method on both sides ---------------------------------------------


def test_training_records_how_its_pre_quant_score_was_measured(trained):
    r = _results(trained)
    assert r["pre_quant_eval"] == {k: r["eval"][k] for k in ("method", "seq_len", "stride", "num_tokens", "num_bytes")}
    assert r["round_trip_gap_bpb"] == pytest.approx(r["val_bpb"] - r["pre_quant_val_bpb"])


def test_a_reevaluation_with_the_same_method_reuses_the_runs_pre_quant_score(trained, tmp_path, cache):
    proc = _eval(trained, "--out", str(tmp_path / "same"), cache=cache)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r, src = _results(tmp_path / "same"), _results(trained)
    assert r["pre_quant_val_bpb"] == src["pre_quant_val_bpb"] and "kept weights" not in proc.stderr
    assert r["round_trip_gap_bpb"] == pytest.approx(src["round_trip_gap_bpb"], abs=1e-9)


def test_a_sliding_reevaluation_scores_the_kept_weights_sliding_for_its_gap(trained, tmp_path, cache):
    proc = _eval(trained, "eval=sliding", "eval.stride=64", "--out", str(tmp_path / "sliding"), cache=cache)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r, src = _results(tmp_path / "sliding"), _results(trained)
    assert r["eval"]["method"] == "sliding" and r["pre_quant_eval"]["method"] == "sliding"
    assert r["pre_quant_eval"]["num_tokens"] == r["eval"]["num_tokens"] > src["pre_quant_eval"]["num_tokens"]
    assert r["pre_quant_val_bpb"] != src["pre_quant_val_bpb"]  # scored again, the sliding way
    assert r["round_trip_gap_bpb"] == pytest.approx(r["val_bpb"] - r["pre_quant_val_bpb"])
    assert f"quantization cost {r['round_trip_gap_bpb']:+.4f}" in proc.stderr


def test_without_the_kept_weights_a_mixed_method_gap_is_not_reported(trained, tmp_path, cache):
    run = _copy(trained, tmp_path, "weights.safetensors")
    proc = _eval(run, "eval=sliding", "eval.stride=64", "--out", str(tmp_path / "sliding"), cache=cache)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = _results(tmp_path / "sliding")
    assert r["round_trip_gap_bpb"] is None and r["pre_quant_eval"]["method"] == "non_overlapping"
    assert "round_trip_gap_bpb not reported" in proc.stderr and "weights.safetensors is missing" in proc.stderr
    assert "quantization cost" not in proc.stderr


# --- item 9: the data's vocabulary is checked against the artifact's model -----------------------------------------

SMALL_DATA = ["data.vocab_size=1024", "data.train_docs=2000", "data.val_docs=100"]


def test_data_of_a_larger_vocabulary_gets_trainings_mismatch_message(trained, tmp_path, cache):
    err = _one_line_error(_eval(trained, *SMALL_DATA, "--out", str(tmp_path / "e"), cache=cache))
    assert "vocabulary mismatch: arch.vocab_size=512 is smaller than the 1024 pieces" in err


def test_a_saved_config_describing_another_model_than_the_artifact_is_refused(trained, tmp_path, cache):
    """A run directory mixing two runs (its .hydra from one, its artifact from another) hit an IndexError."""
    run = _copy(trained, tmp_path)
    path = run / ".hydra" / "config.yaml"
    cfg = yaml.safe_load(path.read_text())
    cfg["arch"]["vocab_size"] = 1024
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    err = _one_line_error(_eval(run, *SMALL_DATA, cache=cache))
    assert "arch.vocab_size is 512 in the artifact, 1024 in the config" in err and "mixes two runs" in err


# --- the artifact deleted: re-quantize from the kept weights, or say what results.json says ------------------------


def test_without_the_artifact_a_quant_override_requantizes_the_kept_weights(trained, tmp_path, cache):
    run = _copy(trained, tmp_path, "model.pgart")
    proc = _eval(run, "quant=int8_zlib", "--out", str(tmp_path / "requant"), cache=cache)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = _results(tmp_path / "requant")
    assert r["requantized"] is True and (tmp_path / "requant" / "model.pgart").is_file()
    assert r["val_bpb"] == pytest.approx(_results(trained)["val_bpb"], abs=1e-9)  # the run's own quant again


def test_without_the_artifact_the_error_agrees_with_results_json(trained, tmp_path, cache):
    run = _copy(trained, tmp_path, "model.pgart")
    r = _results(run)
    r.update(status="failed", failed_stage="export", error="RuntimeError: the codec failed")  # as ResultsFile writes it
    (run / "results.json").write_text(json.dumps(r))
    err = _one_line_error(_eval(run, cache=cache))
    assert f"{run / 'model.pgart'} not found" in err
    assert "results.json: status failed at stage export: RuntimeError: the codec failed" in err
    assert f"re-quantize from {run / 'weights.safetensors'}" in err and "quant=int8_zlib" in err


def test_a_saved_online_logger_runs_offline_unless_the_command_line_names_it():
    from paramgolf.runner.reevaluate import offline_unless_asked

    c = {"logger": {"_target_": "paramgolf.tracking.wandb_logger.WandbLogger", "mode": "online"}}
    offline_unless_asked(c, ["eval=sliding"])
    assert c["logger"]["mode"] == "offline"
    c["logger"]["mode"] = "online"
    offline_unless_asked(c, ["logger.mode=online"])
    assert c["logger"]["mode"] == "online"
    none = {"logger": {"_target_": "paramgolf.tracking.base.NullLogger"}}
    offline_unless_asked(none, [])
    assert "mode" not in none["logger"]
