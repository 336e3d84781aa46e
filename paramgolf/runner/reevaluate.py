"""Evaluate a saved run again, from its artifact alone or after re-quantizing its kept weights."""
from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Sequence

import torch
import yaml
from hydra.utils import instantiate

from paramgolf.config.compose import compose, to_container
from paramgolf.data.byte_table import build_byte_table
from paramgolf.data.tokenizer import file_sha256, files_sha256, load_tokenizer
from paramgolf.quant.artifact import load_weights
from paramgolf.runner import distributed as D
from paramgolf.runner.build import resolve_autocast
from paramgolf.runner.pipeline import ARTIFACT_FILE, WEIGHTS_FILE, eval_settings, export_artifact, finish_from_artifact
from paramgolf.runner.results import ResultsRecorder, git_commit
from paramgolf.tracking.progress import format_summary


def _saved_overrides(run_dir: Path) -> list[str]:
    path = run_dir / ".hydra" / "overrides.yaml"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: {run_dir} is not a paramgolf-train run directory")
    return list(yaml.safe_load(path.read_text()) or [])


def requantizes(overrides: Sequence[str]) -> bool:
    return any(o.lstrip("+~").split("=")[0].split(".")[0] in ("quant",) for o in overrides)


def reevaluate(run_dir: Path, overrides: Sequence[str] = (), out_dir: Path | None = None) -> int:
    """Write `<run_dir>/evals/<time>/results.json`; returns 0, or 3 when over budget."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"run directory {run_dir} does not exist")
    artifact = run_dir / ARTIFACT_FILE
    if not artifact.is_file():
        raise FileNotFoundError(f"{artifact} not found: the run did not get as far as exporting its artifact")
    overrides = list(overrides)
    cfg = compose(_saved_overrides(run_dir) + overrides)
    c = to_container(cfg)
    out_dir = Path(out_dir) if out_dir else run_dir / "evals" / time.strftime("%Y-%m-%d_%H-%M-%S")
    out_dir.mkdir(parents=True, exist_ok=True)
    env = D.init_distributed(0, 1, c["train"]["device"], c["train"]["collective_timeout_s"])
    rec = ResultsRecorder(out_dir)
    rec.update(name=c["name"], seed=c["seed"], budget_bytes=c["budget_bytes"], source_run=str(run_dir),
               overrides=overrides, git_commit=git_commit(), device=str(env.device),
               torch_version=torch.__version__, config=c)
    say = lambda m: print(m, file=sys.stderr, flush=True)  # noqa: E731
    try:
        data = instantiate(c["data"]).resolve()
        sp = load_tokenizer(data.tokenizer_path)
        es = eval_settings(c)
        val_tokens = data.validation_tokens(es["seq_len"])
        byte_table = build_byte_table(sp, table_size=c["arch"]["vocab_size"]).to(env.device)
        rec.update(tokenizer_sha256=file_sha256(data.tokenizer_path), val_shards_sha256=files_sha256(data.val_files),
                   num_val_tokens=int(val_tokens.numel()), entropy_floor_bpb=data.entropy_bits_per_byte)
        if requantizes(overrides):
            weights = run_dir / WEIGHTS_FILE
            state, _ = load_weights(weights)
            artifact = out_dir / ARTIFACT_FILE
            export_artifact(c, state, artifact, meta={"requantized_from": str(weights)})
            say(f"re-quantized {weights} → {artifact}")
        rec.update(requantized=requantizes(overrides))
        measured = finish_from_artifact(c, artifact, val_tokens, byte_table, env,
                                        resolve_autocast(c["train"]["autocast"], env.device), rec,
                                        lambda *a, **k: None, say, step=0)
        rec.write("ok" if measured["fits"] else "over_budget")
        print(format_summary(rec.data), file=sys.stderr)
        say(f"results: {rec.path}")
        return 0 if measured["fits"] else 3
    except BaseException as exc:
        rec.update(error=f"{type(exc).__name__}: {exc}")
        rec.write("failed")
        raise
    finally:
        D.shutdown_distributed()
