"""Read runs' `results.json` files together: one row per candidate, seeds aggregated.

A candidate is the runs that share a `name` (the config's `name`, which `name=` overrides). Only
`results.json` files are read (never W&B, which may be offline). Failed or unfinished runs are
listed as skipped; re-evaluations (`paramgolf-eval`'s `evals/`) count only when named explicitly.
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from paramgolf.errors import UserError
from paramgolf.report.stats import Improvement, improvement_test, verdict

RESULTS = "results.json"


def find_results(paths: Iterable[Path]) -> list[Path]:
    """results.json files: a path that is one, a run directory holding one, or a sweep directory above them."""
    found: list[Path] = []
    for p in map(Path, paths):
        if p.is_file():
            found.append(p)
        elif (p / RESULTS).is_file():
            found.append(p / RESULTS)
        elif p.is_dir():
            found += sorted(f for f in p.rglob(RESULTS) if "evals" not in f.relative_to(p).parts)
        else:
            raise UserError(
                f"{p}: no such file or directory (give run directories, sweep directories or results.json files)"
            )
    return sorted(set(found))


@dataclass
class Candidate:
    name: str
    runs: list[dict[str, Any]] = field(default_factory=list)

    def values(self, key: str) -> list[float]:
        return [float(r[key]) for r in self.runs if isinstance(r.get(key), (int, float))]

    @property
    def seeds(self) -> list[int]:
        return sorted(int(r["seed"]) for r in self.runs)

    @property
    def repeated_seeds(self) -> list[int]:
        """Seeds run more than once: re-runs of one seed are not independent samples for the test."""
        seeds = self.seeds
        return sorted({s for s in seeds if seeds.count(s) > 1})

    @property
    def fits(self) -> bool:
        return all(bool(r.get("fits")) for r in self.runs)

    @property
    def compliant(self) -> bool:
        return all(bool((r.get("compliance") or {}).get("compliant")) for r in self.runs)


def load_candidates(files: Sequence[Path]) -> tuple[dict[str, Candidate], list[str]]:
    """Candidates by name from finished runs, and a line for each file skipped (failed, unfinished, unreadable)."""
    candidates: dict[str, Candidate] = {}
    skipped: list[str] = []
    for f in files:
        try:
            r = json.loads(Path(f).read_text())
        except (OSError, json.JSONDecodeError) as exc:
            skipped.append(f"{f}: unreadable ({exc})")
            continue
        if r.get("status") not in ("ok", "over_budget") or not isinstance(r.get("val_loss"), (int, float)):
            skipped.append(
                f"{f}: status {r.get('status')!r}" + (f" at {r['failed_stage']}" if r.get("failed_stage") else "")
            )
            continue
        r["results_file"] = str(f)  # where the run's other files (metrics.jsonl) are, wherever it was moved
        candidates.setdefault(str(r.get("name")), Candidate(str(r.get("name")))).runs.append(r)
    return candidates, skipped


def _mean_std(values: list[float]) -> tuple[float, float | None]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else None)


def summarize(candidates: dict[str, Candidate], reference: str | None = None) -> list[dict[str, Any]]:
    """One row per candidate; against `reference` (a candidate's name), the acceptance test and its verdict."""
    if reference is not None and reference not in candidates:
        raise UserError(
            f"--reference {reference!r} is not a candidate here; candidates: {', '.join(sorted(candidates))}"
        )
    rows = []
    for name, c in sorted(candidates.items()):
        bpb, bpb_std = _mean_std(c.values("val_bpb"))
        loss, loss_std = _mean_std(c.values("val_loss"))
        row: dict[str, Any] = {
            "candidate": name,
            "seeds": c.seeds,
            "val_bpb": bpb,
            "val_bpb_std": bpb_std,
            "val_loss": loss,
            "val_loss_std": loss_std,
            "max_artifact_bytes": max(int(v) for v in c.values("artifact_bytes"))
            if c.values("artifact_bytes")
            else None,
            "all_fit": c.fits,
            "train_time_s": statistics.fmean(c.values("train_time_s")) if c.values("train_time_s") else None,
            "eval_time_s": statistics.fmean(c.values("eval_time_s")) if c.values("eval_time_s") else None,
            "compliant": c.compliant,
            "repeated_seeds": c.repeated_seeds,
        }
        if reference is not None and name != reference:
            test: Improvement = improvement_test(candidates[reference].values("val_loss"), c.values("val_loss"))
            row.update(
                improvement_nats=test.improvement_nats,
                p_value=test.p_value,
                verdict=verdict(test, compliant=c.compliant, fits=c.fits),
            )
        rows.append(row)
    return rows


def _pm(mean: float, std: float | None, digits: int) -> str:
    return f"{mean:.{digits}f}" + (f" ± {std:.{digits}f}" if std is not None and not math.isnan(std) else "")


def table_cells(rows: list[dict[str, Any]], reference: str | None = None) -> tuple[list[str], list[list[str]]]:
    """The table's header and its rows as text cells: what the terminal and the HTML report both show."""
    head = ["candidate", "seeds", "val_bpb", "val_loss", "max artifact bytes", "fits", "train s", "eval s", "compliant"]
    if reference is not None:
        head += [f"Δ nats vs {reference}", "p (≥0.005)", "verdict"]
    body = []
    for r in rows:
        cells = [
            r["candidate"],
            ",".join(map(str, r["seeds"])),
            _pm(r["val_bpb"], r["val_bpb_std"], 4),
            _pm(r["val_loss"], r["val_loss_std"], 4),
            f"{r['max_artifact_bytes']:,}" if r["max_artifact_bytes"] is not None else "?",
            "yes" if r["all_fit"] else "NO",
            f"{r['train_time_s']:.0f}" if r["train_time_s"] is not None else "?",
            f"{r['eval_time_s']:.1f}" if r["eval_time_s"] is not None else "?",
            "yes" if r["compliant"] else "NO",
        ]
        if reference is not None:
            if "verdict" in r:
                p = r["p_value"]
                cells += [f"{r['improvement_nats']:+.4f}", f"{p:.3g}" if p is not None else "—", r["verdict"]]
            else:
                cells += ["(reference)", "", ""]
        body.append(cells)
    return head, body


def format_table(rows: list[dict[str, Any]], reference: str | None = None) -> str:
    """The rows as a Markdown table (readable in a terminal, pastes into a PR)."""
    head, body = table_cells(rows, reference)
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(cells) + " |" for cells in body]
    return "\n".join(lines)
