"""End to end: paramgolf-train / paramgolf-eval as a user runs them, on the synthetic data."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from paramgolf.tracking.jsonl import read_metrics

pytestmark = pytest.mark.slow

# A shrunken smoke run: the same pipeline, fewer steps.
TINY = [
    "experiment=smoke",
    "logger=none",
    "train.iterations=12",
    "train.progress=false",
    "eval.progress=false",
    "train.log_every=1",
]


def _env(tmp_path: Path, cache: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        PARAMGOLF_CACHE=str(cache), OMP_NUM_THREADS="1", HYDRA_FULL_ERROR="1", WANDB_MODE="offline", WANDB_SILENT="true"
    )
    for var in ("WANDB_DIR", "WANDB_DATA_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR"):
        env[var] = str(tmp_path / "wandb_home" / var.lower())
    return env


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("pgcache")


def train(
    tmp_path: Path,
    cache: Path,
    *overrides: str,
    multirun: bool = False,
    check: bool = True,
    cmd: list[str] | None = None,
    timeout: int = 300,
) -> subprocess.CompletedProcess:
    base = cmd or [sys.executable, "-m", "paramgolf.cli.train"]
    args = base + (["-m"] if multirun else []) + list(overrides)
    proc = subprocess.run(
        args, cwd=tmp_path, env=_env(tmp_path, cache), capture_output=True, text=True, timeout=timeout
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(args)} exited {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    return proc


def run_dirs(tmp_path: Path) -> list[Path]:
    return sorted(p.parent for p in (tmp_path / "outputs").rglob("results.json") if "evals" not in p.parts)


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory, cache) -> Path:
    tmp = tmp_path_factory.mktemp("smoke")
    train(tmp, cache, *TINY, "hydra.run.dir=outputs/runs/one")
    return tmp / "outputs" / "runs" / "one"


def test_smoke_run_writes_the_results_contract(smoke_run):
    r = json.loads((smoke_run / "results.json").read_text())
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
        "schema_version",
        "status",
        "tokenizer_sha256",
        "val_shards_sha256",
        "num_val_tokens",
        "num_val_bytes",
        "eval",
        "compliance",
        "entropy_floor_bpb",
    ):
        assert key in r, key
    assert r["status"] == "ok" and r["steps"] == 12
    assert r["artifact_bytes"] == r["model_bytes"] + r["code_bytes"]
    assert r["model_bytes"] == (smoke_run / "model.pgart").stat().st_size
    assert (smoke_run / "weights.safetensors").is_file() and (smoke_run / ".hydra" / "config.yaml").is_file()
    assert r["eval"]["on"] == "artifact_round_trip" and r["eval"]["num_bytes"] > 0
    # nothing adapts here, so the verdict rests on the count: a single pass over the official range
    assert r["eval"]["num_tokens"] == (r["num_val_tokens"] - 1) // 128 * 128
    assert r["compliance"]["compliant"] is True and r["compliance"]["reasons"] == []
    # a trained model is worse than the source's entropy floor but far better than uniform
    assert (
        r["entropy_floor_bpb"]
        < r["val_bpb"]
        < math.log2(r["config"]["arch"]["vocab_size"]) * r["num_val_tokens"] / r["num_val_bytes"]
    )
    # int8 round trip costs little
    assert abs(r["val_bpb"] - r["pre_quant_val_bpb"]) < 0.05
    losses = [m["train/loss"] for m in read_metrics(smoke_run / "metrics.jsonl") if "train/loss" in m]
    assert len(losses) == 12 and losses[-1] < losses[0]


def test_eval_reproduces_the_headline_from_the_artifact_and_requantizes(smoke_run, tmp_path, cache):
    r = json.loads((smoke_run / "results.json").read_text())
    env = _env(tmp_path, cache)
    same = tmp_path / "same"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "paramgolf.cli.eval",
            str(smoke_run),
            "logger=none",
            "eval.progress=false",
            "--out",
            str(same),
        ],
        check=True,
        env=env,
        cwd=tmp_path,
        capture_output=True,
        timeout=300,
    )
    again = json.loads((same / "results.json").read_text())
    assert again["val_bpb"] == pytest.approx(r["val_bpb"], abs=1e-9)
    assert again["model_bytes"] == r["model_bytes"] and again["requantized"] is False
    zstd = tmp_path / "zstd"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "paramgolf.cli.eval",
            str(smoke_run),
            "quant=int8_zstd",
            "eval.progress=false",
            "--out",
            str(zstd),
        ],
        check=True,
        env=env,
        cwd=tmp_path,
        capture_output=True,
        timeout=300,
    )
    other = json.loads((zstd / "results.json").read_text())
    assert other["requantized"] is True and (zstd / "model.pgart").is_file()
    assert other["model_bytes"] != r["model_bytes"]  # another codec, other bytes…
    assert other["val_bpb"] == pytest.approx(r["val_bpb"], abs=1e-9)  # …same int8 weights, same score
    assert other["steps"] == r["steps"] and other["params"] == r["params"]  # carried over from the run
    refused = subprocess.run(
        [sys.executable, "-m", "paramgolf.cli.eval", str(smoke_run), "arch.num_layers=2"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert refused.returncode == 2 and "would change what was trained" in refused.stderr
    sliding = tmp_path / "sliding"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "paramgolf.cli.eval",
            str(smoke_run),
            "eval=sliding",
            "eval.stride=64",
            "eval.progress=false",
            "--out",
            str(sliding),
        ],
        check=True,
        env=env,
        cwd=tmp_path,
        capture_output=True,
        timeout=300,
    )
    s = json.loads((sliding / "results.json").read_text())
    # sliding scores every token of the split once, the tail included
    assert s["eval"]["num_tokens"] == s["num_val_tokens"] - 1 and s["eval"]["num_bytes"] == s["num_val_bytes"]
    assert s["eval"]["num_tokens"] > r["eval"]["num_tokens"] and s["compliance"]["compliant"]


def test_eval_requantizes_with_full_gptq_calibrated_on_training_batches(smoke_run, tmp_path, cache):
    r = json.loads((smoke_run / "results.json").read_text())
    out = tmp_path / "gptq"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "paramgolf.cli.eval",
            str(smoke_run),
            "quant=int6_gptq",
            "quant.calibration.batches=4",
            "eval.progress=false",
            "--out",
            str(out),
        ],
        check=True,
        env=_env(tmp_path, cache),
        cwd=tmp_path,
        capture_output=True,
        timeout=300,
    )
    g = json.loads((out / "results.json").read_text())
    assert g["requantized"] is True and g["calibration_time_s"] > 0
    assert g["round_trip_gap_bpb"] == pytest.approx(g["val_bpb"] - r["pre_quant_val_bpb"])
    methods = {v["method"] for v in g["quant"]["tensor_info"].values()}
    assert methods == {"gptq"}  # every attention/MLP matrix got its Hessian
    assert g["quant"]["groups"]["attn_mlp"]["schemes"] == ["intn_row6"]


def test_over_budget_is_refused_before_training(tmp_path, cache):
    proc = train(tmp_path, cache, *TINY, "budget_bytes=1000", check=False)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "over budget_bytes=1,000" in proc.stderr and "budget_check=warn" in proc.stderr
    assert "trained" not in proc.stderr and "Traceback" not in proc.stderr
    assert not list((tmp_path / "outputs").rglob("*.safetensors"))  # no step was taken


def test_over_budget_run_with_warn_keeps_its_results_and_exits_nonzero(tmp_path, cache):
    proc = train(tmp_path, cache, *TINY, "train.iterations=2", "budget_bytes=1000", "budget_check=warn", check=False)
    assert proc.returncode == 3, proc.stderr[-3000:]
    assert proc.stderr.index("WARNING: the estimated artifact") < proc.stderr.index("trained 2 steps")
    (run,) = run_dirs(tmp_path)
    r = json.loads((run / "results.json").read_text())
    assert r["status"] == "over_budget" and r["fits"] is False and (run / "model.pgart").is_file()
    assert r["estimated_artifact_bytes"] > 1000
    assert "OVER BUDGET by" in proc.stderr and math.isfinite(r["val_bpb"])
    # the final verdict says the artifact does not fit, not just that evaluation kept the rules
    verdict = next(line for line in proc.stderr.splitlines() if line.startswith("verdict"))
    assert "NOT VALID: over budget by" in verdict


def test_late_failure_still_writes_what_was_measured(tmp_path, cache, monkeypatch):
    """A run that diverges (inf weights) fails at export, after training and the pre-quant eval."""
    from paramgolf.config.compose import compose, to_container
    from paramgolf.runner.pipeline import run

    monkeypatch.setenv("PARAMGOLF_CACHE", str(cache))
    c = to_container(compose([*TINY, "train.iterations=2"]))
    c["optimizer"]["rules"][0]["lr"] = float("inf")  # the tied embedding blows up
    with pytest.raises(ValueError, match="tok_emb"):
        run(c, tmp_path / "run", 0, 1)
    r = json.loads((tmp_path / "run" / "results.json").read_text())
    assert r["status"] == "failed" and r["failed_stage"] == "export"
    assert r["steps"] == 2 and "pre_quant_val_bpb" in r and "tok_emb" in r["error"]


def test_config_mistakes_fail_before_any_work(tmp_path, cache):
    for bad, key in (
        (["eval=sliding", "eval.stride=0"], "eval.stride"),
        (["eval=slidng"], "eval"),
        (["ttt.method=lora"], "ttt"),
        (["train.micro_batches=3"], "micro_batches"),
        (["+train.foo=1"], "train.foo"),
    ):
        proc = train(tmp_path, cache, *TINY, *bad, check=False)
        assert proc.returncode == 2 and key in proc.stderr, (bad, proc.stderr[-2000:])
        assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    # no run directory is left behind, not even an empty one holding only .hydra/
    runs = tmp_path / "outputs" / "runs"
    assert not runs.exists() or not [d for d in runs.rglob("*") if d.is_dir() and d.parent != runs]


def test_two_process_gloo_matches_one_process_and_sweeps(tmp_path, cache, smoke_run):
    """`-m seed=…` with train.nproc_per_node=2: one run dir per seed; seed 1337 matches 1 process."""
    train(tmp_path, cache, *TINY, "train.nproc_per_node=2", "seed=1337,7", multirun=True, timeout=600)
    runs = run_dirs(tmp_path)
    assert len(runs) == 2
    results = {json.loads((d / "results.json").read_text())["seed"]: d for d in runs}
    assert set(results) == {1337, 7}
    two = json.loads((results[1337] / "results.json").read_text())
    one = json.loads((smoke_run / "results.json").read_text())
    assert two["world_size"] == 2 and one["world_size"] == 1
    l2 = [m["train/loss"] for m in read_metrics(results[1337] / "metrics.jsonl") if "train/loss" in m][:5]
    l1 = [m["train/loss"] for m in read_metrics(smoke_run / "metrics.jsonl") if "train/loss" in m][:5]
    assert len(l1) == len(l2) == 5
    for a, b in zip(l1, l2):
        assert abs(a - b) / abs(a) < 1e-4, (l1, l2)
    assert abs(one["val_bpb"] - two["val_bpb"]) < 0.02


def test_torchrun_ranks_share_one_run_dir(tmp_path, cache):
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        "-m",
        "paramgolf.cli.train",
    ]
    train(tmp_path, cache, *TINY, "train.iterations=3", cmd=cmd, timeout=600)
    runs = run_dirs(tmp_path)
    assert len(runs) == 1 and runs[0].name.startswith("torchrun-")
    assert len(list((tmp_path / "outputs").rglob("config.yaml"))) == 1  # only rank 0 wrote .hydra
    r = json.loads((runs[0] / "results.json").read_text())
    assert r["world_size"] == 2 and r["status"] == "ok"


def test_parallel_muon_trains_smoke_under_torchrun_and_matches_one_process_muon(tmp_path, cache):
    """optimizer=parallel_muon, 2 ranks under torchrun (gloo) vs per-matrix Muon on 1 process: same weights."""
    from paramgolf.quant.artifact import load_weights

    opt = ["optimizer=parallel_muon", "optimizer.muon_ns_dtype=float32", "train.iterations=3"]
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        "-m",
        "paramgolf.cli.train",
    ]
    two_dir, one_dir = tmp_path / "two", tmp_path / "one"
    two_dir.mkdir()
    one_dir.mkdir()
    train(two_dir, cache, *TINY, *opt, cmd=cmd, timeout=600)
    train(one_dir, cache, *TINY, *opt, "optimizer/muon=per_matrix", "hydra.run.dir=outputs/runs/one")
    two_run, one_run = run_dirs(two_dir)[0], one_dir / "outputs" / "runs" / "one"
    r = json.loads((two_run / "results.json").read_text())
    assert (
        r["world_size"] == 2
        and r["status"] == "ok"
        and r["config"]["optimizer"]["muon"]["_target_"].endswith("ParallelMuon")
    )
    two, _ = load_weights(two_run / "weights.safetensors")
    one, _ = load_weights(one_run / "weights.safetensors")
    worst = max(float((two[k] - one[k]).norm() / one[k].norm().clamp_min(1e-30)) for k in one)
    assert worst <= 1e-5, worst


def test_budget_estimate_is_within_10_percent_of_the_real_run(smoke_run):
    from paramgolf.config.compose import compose, to_container
    from paramgolf.runner.budget import budget_report

    r = json.loads((smoke_run / "results.json").read_text())
    est = budget_report(to_container(compose(TINY)))
    assert abs(est["estimated_model_bytes"] - r["model_bytes"]) / r["model_bytes"] < 0.10
    assert est["code_bytes"] == r["code_bytes"]  # the same import closure for the budget and the run


def test_wandb_offline_run_records_config_metrics_summary_and_artifact(tmp_path, cache):
    from tracking.wandb_files import read_offline_run  # tests/tracking/wandb_files.py (tests/ is on sys.path)

    train(tmp_path, cache, *[o for o in TINY if not o.startswith("logger=")], "logger=wandb", "train.iterations=3")
    (run,) = run_dirs(tmp_path)
    r = json.loads((run / "results.json").read_text())
    rec = read_offline_run(run, wait_s=15)
    assert rec.config["arch"]["num_layers"] == 4 and rec.config["seed"] == 1337
    losses = [row["train/loss"] for row in rec.history if "train/loss" in row]
    assert len(losses) == 3
    assert rec.summary["val_bpb"] == pytest.approx(r["val_bpb"])
    assert rec.summary["artifact_bytes"] == r["artifact_bytes"]
    # what a user filters valid runs on in the W&B table
    assert rec.summary["fits"] is True and rec.summary["status"] == "ok"
    assert rec.summary["compliant"] is True and rec.summary["valid"] is True
    assert rec.summary["train_time_s"] == pytest.approx(r["train_time_s"])
    assert rec.summary["eval_time_s"] == pytest.approx(r["eval_time_s"])
    assert rec.summary["estimated_artifact_bytes"] == r["estimated_artifact_bytes"] > 0
    assert any("smoke" in name for name in rec.artifacts)
    # the candidate: the preset plus the override that changes the run (TINY's other keys are logistics)
    assert rec.group == "smoke,train.iterations=3" and rec.name == "smoke,train.iterations=3-s1337"
    assert rec.job_type == "train" and "experiment:smoke" in rec.tags and rec.config["choices"]["arch"] == "baseline"
    # W&B keeps its files under the run dir: no copy of the artifact in its home/cache dirs
    home = tmp_path / "wandb_home"
    assert not [p for p in home.rglob("*") if p.is_file() and p.stat().st_size == r["model_bytes"]]


def test_missing_data_is_a_clear_error_that_keeps_a_results_file(tmp_path, cache):
    proc = train(tmp_path, cache, "experiment=baseline", "logger=none", check=False)
    assert proc.returncode == 2
    assert "paramgolf-data download" in proc.stderr and "Traceback" not in proc.stderr
    (run,) = run_dirs(tmp_path)
    r = json.loads((run / "results.json").read_text())
    assert r["status"] == "failed" and r["failed_stage"] == "data"


def test_score_first_ttt_runs_in_the_score_stage_and_passes_the_mechanical_check(tmp_path, cache):
    ttt = ["ttt=score_first", "ttt.chunk_tokens=8192", "ttt.epochs=1", "eval=sliding", "eval.stride=64"]
    train(tmp_path, cache, *TINY, "train.iterations=4", *ttt)
    (run,) = run_dirs(tmp_path)
    r = json.loads((run / "results.json").read_text())
    assert r["eval"]["ttt"] == "score_first" and r["eval"]["method"] == "sliding+score_first+none"
    assert r["eval"]["num_tokens"] == r["num_val_tokens"] - 1  # every target once
    checked = r["compliance"]["checked"]
    assert checked.pop("time_s") > 0
    assert checked == {"causal": True, "normalized": True, "score_first": True, "single_pass": True, "reasons": []}
    assert r["compliance"]["compliant"] is True and math.isfinite(r["val_bpb"])
    assert r["round_trip_gap_bpb"] is None  # pre-quant was scored without TTT: no mixed-method gap


def test_a_published_method_still_runs_and_its_verdict_follows_the_number(smoke_run, tmp_path, cache):
    """slot_published on a trained artifact: scored, flagged by the check, and said so in results and summary."""
    out = tmp_path / "slot"
    proc = subprocess.run(
        [sys.executable, "-m", "paramgolf.cli.eval", str(smoke_run), "eval=sliding", "eval.stride=64"]
        + ["eval.progress=false", "ttt=slot_published", "ttt.steps=2", "--out", str(out)],
        check=True,
        env=_env(tmp_path, cache),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    r = json.loads((out / "results.json").read_text())
    c = r["compliance"]
    assert r["eval"]["ttt"] == "slot_published" and math.isfinite(r["val_bpb"])
    assert c["verdict"] == "non-compliant" and c["causal"] is False and c["score_first"] is False
    assert c["normalized"] is True and c["single_pass"] is True and c["within_budget"] is None  # CPU: unknown
    assert any("position" in reason for reason in c["reasons"])
    assert "NON-COMPLIANT (causal, score_first)" in proc.stderr and "score_first: " in proc.stderr


def test_score_first_ttt_with_the_ngram_cache_runs_on_an_artifact_and_passes_the_check(smoke_run, tmp_path, cache):
    """#1185's combination through paramgolf-eval: the check's probe uses its own small chunks for both."""
    out = tmp_path / "ngram"
    methods = ["ttt=score_first", "ttt.epochs=1", "eval_cache=ngram"]
    chunks = ["ttt.chunk_tokens=16384", "eval_cache.chunk_tokens=16384"]
    subprocess.run(
        [sys.executable, "-m", "paramgolf.cli.eval", str(smoke_run), "eval=sliding", "eval.stride=64"]
        + ["eval.progress=false", *methods, *chunks, "--out", str(out)],
        check=True,
        env=_env(tmp_path, cache),
        cwd=tmp_path,
        capture_output=True,
        timeout=600,
    )
    r = json.loads((out / "results.json").read_text())
    assert r["eval"]["method"] == "sliding+score_first+ngram" and r["eval"]["num_tokens"] == r["num_val_tokens"] - 1
    checked = r["compliance"]["checked"]
    assert {k: checked[k] for k in ("causal", "normalized", "score_first", "single_pass")} == dict.fromkeys(
        ("causal", "normalized", "score_first", "single_pass"), True
    )
    assert r["compliance"]["verdict"] == "compliant" and math.isfinite(r["val_bpb"])
    mismatched = subprocess.run(
        [sys.executable, "-m", "paramgolf.cli.eval", str(smoke_run), *methods, "ttt.chunk_tokens=8192"],
        env=_env(tmp_path, cache),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert mismatched.returncode == 2 and "must agree" in mismatched.stderr and "Traceback" not in mismatched.stderr
