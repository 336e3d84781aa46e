"""A record submission from a candidate's runs: `records/track_10min_16mb/<date>_<name>/` as the challenge lays it out.

The folder holds the generated self-contained `train_gpt.py` (paramgolf.export.bundle), `submission.json`
(name, author, github_id, val_bpb / val_loss with their std, per-seed results, bytes, date, blurb,
hardware), a README (what the candidate is, its config, the seeds table, how to run it), each seed's
train log and `requirements.txt`. A candidate that is not compliant, or does not fit the budget, is
refused unless `non_record` is set (and is then marked as a non-record submission).
"""

from __future__ import annotations

import datetime as dt
import json
import re
import shutil
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from paramgolf.errors import UserError
from paramgolf.export.bundle import generate_script
from paramgolf.fsio import write_atomic
from paramgolf.report.compare import find_results

TRACK = "track_10min_16mb"
REQUIREMENTS = ("torch", "numpy", "sentencepiece", "safetensors", "zstandard")
# Keys that may differ between the seeds of one candidate.
PER_SEED_KEYS = ("seed",)


def _load(files: Sequence[Path]) -> list[dict[str, Any]]:
    runs = []
    for f in files:
        try:
            r = json.loads(f.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise UserError(f"{f}: cannot read results.json ({exc})") from exc
        if r.get("status") not in ("ok", "over_budget"):
            raise UserError(f"{f}: the run is {r.get('status')!r}, not finished; export finished runs only")
        r["_file"] = f
        runs.append(r)
    if not runs:
        raise UserError("no results.json under the given paths")
    return runs


def _same_candidate(runs: list[dict[str, Any]]) -> dict[str, Any]:
    names = sorted({r["name"] for r in runs})
    if len(names) > 1:
        raise UserError(f"the runs belong to {len(names)} candidates ({', '.join(names)}); export one at a time")
    first = {k: v for k, v in runs[0]["config"].items() if k not in PER_SEED_KEYS}
    for r in runs[1:]:
        other = {k: v for k, v in r["config"].items() if k not in PER_SEED_KEYS}
        differ = sorted(k for k in set(first) | set(other) if first.get(k) != other.get(k))
        if differ:
            raise UserError(
                f"{r['_file']}: its config differs from {runs[0]['_file']}'s in {', '.join(differ)}; "
                "a record's seeds must share one configuration"
            )
    seeds = [r["seed"] for r in runs]
    if len(set(seeds)) < len(seeds):
        raise UserError(f"seed repeated among the runs ({seeds}); each seed once")
    return runs[0]["config"]


def _problems(runs: list[dict[str, Any]]) -> list[str]:
    """Why these runs are not a record: non-compliant evaluation, over budget."""
    out = []
    for r in runs:
        c = r.get("compliance") or {}
        if c.get("compliant") is not True:
            reasons = "; ".join(c.get("reasons") or []) or f"verdict {c.get('verdict')!r}"
            out.append(f"seed {r['seed']}: evaluation not compliant ({reasons})")
        if r.get("fits") is not True:
            out.append(
                f"seed {r['seed']}: artifact {r.get('artifact_bytes')} bytes over budget {r.get('budget_bytes')}"
            )
    return out


def _mean_std(values: list[float]) -> tuple[float, float | None]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else None)


def _slug(name: str) -> str:
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_")
    if not slug:
        raise UserError(f"--name {name!r}: give a name with letters or digits")
    return slug


def _seed_rows(runs: list[dict[str, Any]], code_bytes: int) -> list[dict[str, Any]]:
    rows = []
    for r in sorted(runs, key=lambda r: r["seed"]):
        model = r.get("model_bytes")
        rows.append(
            {
                "seed": r["seed"],
                "val_bpb": r.get("val_bpb"),
                "val_loss": r.get("val_loss"),
                "steps": r.get("steps"),
                "train_time_s": r.get("train_time_s"),
                "eval_time_s": r.get("eval_time_s"),
                "bytes_model": model,
                "bytes_total": model + code_bytes if model is not None else None,
            }
        )
    return rows


def _readme(sub: dict[str, Any], config: dict[str, Any], runs: list[dict[str, Any]], problems: list[str]) -> str:
    groups = []
    for key in ("arch", "optimizer", "ttt", "eval_cache", "eval"):
        node = config.get(key)
        if isinstance(node, dict) and "_target_" in node:
            groups.append(f"- `{key}`: `{node['_target_'].rsplit('.', 1)[-1]}`")
    q = config.get("quant", {})
    groups.append(
        f"- `quant`: `{q.get('quantizer', {}).get('_target_', '?').rsplit('.', 1)[-1]}` + "
        f"`{q.get('codec', {}).get('_target_', '?').rsplit('.', 1)[-1]}`"
    )
    lines = [
        f"# {sub['name']}",
        "",
        sub["blurb"],
        "",
        f"**val_bpb {sub['val_bpb']:.8f}**"
        + (f" ± {sub['val_bpb_std']:.8f}" if sub["val_bpb_std"] else "")
        + f" (mean over {len(runs)} seed{'s' if len(runs) > 1 else ''}); val_loss {sub['val_loss']:.8f}; "
        f"code {sub['bytes_code']:,} bytes; largest artifact {sub['bytes_total']:,} bytes.",
        "",
    ]
    if problems:
        lines += ["**Non-record submission:**", "", *[f"- {p}" for p in problems], ""]
    lines += [
        "## Seeds",
        "",
        "| seed | val_bpb | val_loss | steps | train s | eval s | bytes total |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for s in sub["seed_results"]:
        lines.append(
            f"| {s['seed']} | {s['val_bpb']:.8f} | {s['val_loss']:.8f} | {s['steps']} | "
            f"{(s['train_time_s'] or 0):.1f} | {(s['eval_time_s'] or 0):.1f} | {s['bytes_total']:,} |"
        )
    lines += [
        "",
        "## Configuration",
        "",
        *groups,
        "",
        "The full resolved configuration is embedded in `train_gpt.py` and listed in `config.json`.",
        "",
        "## Run",
        "",
        "```bash",
        "pip install -r requirements.txt",
        "SEED=1337 DATA_PATH=./data/datasets/fineweb10B_sp1024 TOKENIZER_PATH=./data/tokenizers/fineweb_1024_bpe.model \\",
        "  torchrun --standalone --nproc_per_node=8 train_gpt.py",
        "```",
        "",
        "`train_gpt.py` is self-contained (generated by paramgolf-export: only the code this configuration runs,",
        "lzma-compressed behind a small loader); it trains, writes `final_model.pgart`, rebuilds the model from",
        "that file alone and scores it, printing `final val_loss ... val_bpb ...` and writing `results.json`.",
        "",
    ]
    return "\n".join(lines)


def export_record(
    paths: Sequence[Path],
    *,
    name: str,
    author: str,
    github_id: str,
    out_root: Path = Path("records") / TRACK,
    non_record: bool = False,
    blurb: str | None = None,
    date: dt.date | None = None,
) -> Path:
    """Write the record folder for the candidate whose runs are under `paths`; returns the folder."""
    runs = _load(find_results(paths))
    config = _same_candidate(runs)
    problems = _problems(runs)
    if problems and not non_record:
        raise UserError(
            "not a record: " + "; ".join(problems) + " (pass --non-record to export it as a non-record submission)"
        )
    script = generate_script(config)
    code_bytes = len(script)
    rows = _seed_rows(runs, code_bytes)
    bpb_mean, bpb_std = _mean_std([r["val_bpb"] for r in rows])
    loss_mean, loss_std = _mean_std([r["val_loss"] for r in rows])
    date = date or dt.datetime.now(dt.timezone.utc).date()
    devices = sorted({f"{r.get('world_size')}x{r.get('device')}" for r in runs})
    sub = {
        "name": name,
        "author": author,
        "github_id": github_id,
        "date": date.isoformat(),
        "track": "10min_16mb",
        "blurb": blurb or f"paramgolf candidate {runs[0]['name']!r}, {len(runs)} seed(s).",
        "val_bpb": bpb_mean,
        "val_bpb_std": bpb_std,
        "val_loss": loss_mean,
        "val_loss_std": loss_std,
        "bytes_code": code_bytes,
        "bytes_total": max(r["bytes_total"] for r in rows),
        "seeds": [r["seed"] for r in rows],
        "seed_results": rows,
        "hardware": ", ".join(devices),
        "non_record": bool(problems),
        "non_record_reasons": problems,
    }
    folder = Path(out_root) / f"{date.isoformat()}_{_slug(name)}"
    if folder.exists():
        raise UserError(f"{folder} exists already; remove it or choose another --name")
    folder.mkdir(parents=True)
    write_atomic(folder / "train_gpt.py", script)
    write_atomic(folder / "submission.json", json.dumps(sub, indent=2) + "\n")
    write_atomic(folder / "config.json", json.dumps(config, indent=2, sort_keys=True) + "\n")
    write_atomic(folder / "requirements.txt", "\n".join(REQUIREMENTS) + "\n")
    write_atomic(folder / "README.md", _readme(sub, config, runs, problems))
    for r in runs:
        log = Path(r["_file"]).parent / "train.log"
        if log.is_file():
            shutil.copyfile(log, folder / f"train_seed{r['seed']}.log")
    return folder
