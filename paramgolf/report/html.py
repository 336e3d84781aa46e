"""`paramgolf-compare --html`: one self-contained page with the compare table and three plots.

The plots are inline SVG drawn here: no script, no stylesheet, font or image from elsewhere, so
the page opens with no network in any browser. They show val_bpb per seed per candidate, every
run's training loss (its `metrics.jsonl`, next to its `results.json`), and each candidate's
largest artifact as code + model bytes stacked against the byte budget.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from html import escape
from pathlib import Path
from typing import Any

from paramgolf.errors import UserError
from paramgolf.report.compare import Candidate, table_cells
from paramgolf.tracking.jsonl import read_metrics

PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf")
BUDGET_COLOR = "#000000"
WIDTH, HEIGHT = 960, 360
MARGIN = {"left": 80, "right": 24, "top": 24, "bottom": 56}
LEGEND_WIDTH = 200  # the loss plot's legend, right of its axes

STYLE = """
body { font-family: system-ui, sans-serif; margin: 24px; color: #222; background: #fff; }
table { border-collapse: collapse; font-size: 14px; }
th, td { border: 1px solid #ccc; padding: 4px 8px; text-align: right; white-space: nowrap; }
th { background: #f2f2f2; } td:first-child, th:first-child { text-align: left; }
td.verdict-record { background: #d9f2d9; font-weight: bold; }
figure { margin: 24px 0; } figcaption { font-size: 13px; color: #555; max-width: 960px; }
svg.plot { max-width: 100%; height: auto; background: #fff; }
svg.plot text { font: 12px sans-serif; fill: #333; }
svg.plot .grid { stroke: #e6e6e6; stroke-width: 1; }
svg.plot .axis { stroke: #333; stroke-width: 1; }
.note { font-size: 13px; color: #8a4b00; }
"""


def color_of(candidates: Sequence[str]) -> dict[str, str]:
    """Each candidate's colour, by its place in name order (the palette repeats past ten)."""
    return {name: PALETTE[i % len(PALETTE)] for i, name in enumerate(sorted(candidates))}


def tint(color: str, amount: float = 0.55) -> str:
    """`color` mixed with white: the code part of a byte bar."""
    rgb = [int(color[i : i + 2], 16) for i in (1, 3, 5)]
    return "#" + "".join(f"{round(c + (255 - c) * amount):02x}" for c in rgb)


def train_loss_curve(run_dir: Path) -> list[tuple[int, float]]:
    """(step, train/loss) from a run's metrics.jsonl, the last value per step (a resumed run repeats steps)."""
    by_step: dict[int, float] = {}
    for row in read_metrics(run_dir / "metrics.jsonl"):
        loss = row.get("train/loss")
        if isinstance(loss, (int, float)) and math.isfinite(loss) and isinstance(row.get("step"), int):
            by_step[row["step"]] = float(loss)
    return sorted(by_step.items())


# --- scales, ticks and axes -------------------------------------------------------------------


@dataclass(frozen=True)
class Scale:
    """Maps data [lo, hi] linearly onto pixels [a, b] (b < a for a y axis)."""

    lo: float
    hi: float
    a: float
    b: float

    def __call__(self, v: float) -> float:
        return self.a + (v - self.lo) / (self.hi - self.lo) * (self.b - self.a)


def padded(values: Sequence[float], pad: float = 0.08) -> tuple[float, float]:
    """[min, max] of `values` widened by `pad` of their span (a single value gets a small span around it)."""
    lo, hi = min(values), max(values)
    span = hi - lo or max(abs(hi) * 0.02, 1e-3)
    return lo - pad * span, hi + pad * span


def ticks(lo: float, hi: float, n: int = 6) -> list[float]:
    """About `n` round values (1, 2, 2.5 or 5 times a power of ten apart) inside [lo, hi]."""
    raw = (hi - lo) / n
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    first = math.ceil(lo / step - 1e-9)
    return [k * step for k in range(first, math.floor(hi / step + 1e-9) + 1)]


def _num(v: float) -> str:
    return f"{v:.6g}"


def _y_axis(y: Scale, x0: float, x1: float, fmt: Callable[[float], str], label: str) -> list[str]:
    out = []
    for t in ticks(y.lo, y.hi):
        py = y(t)
        out.append(f'<line class="grid" x1="{x0}" x2="{x1}" y1="{py:.1f}" y2="{py:.1f}"/>')
        out.append(f'<text x="{x0 - 6}" y="{py + 4:.1f}" text-anchor="end">{escape(fmt(t))}</text>')
    mid = (y.a + y.b) / 2
    out.append(f'<line class="axis" x1="{x0}" x2="{x0}" y1="{y.a}" y2="{y.b}"/>')
    out.append(
        f'<text x="16" y="{mid:.1f}" text-anchor="middle" transform="rotate(-90 16 {mid:.1f})">{escape(label)}</text>'
    )
    return out


def _x_axis(x: Scale, y0: float, label: str) -> list[str]:
    out = [f'<line class="axis" x1="{x.a}" x2="{x.b}" y1="{y0}" y2="{y0}"/>']
    for t in ticks(x.lo, x.hi, 8):
        px = x(t)
        out.append(f'<line class="axis" x1="{px:.1f}" x2="{px:.1f}" y1="{y0}" y2="{y0 + 5}"/>')
        out.append(f'<text x="{px:.1f}" y="{y0 + 18}" text-anchor="middle">{escape(_num(t))}</text>')
    out.append(f'<text x="{(x.a + x.b) / 2:.1f}" y="{HEIGHT - 10}" text-anchor="middle">{escape(label)}</text>')
    return out


def _categories(names: Sequence[str], x0: float, x1: float, y0: float) -> tuple[list[float], float, list[str]]:
    """The centre of each candidate's band on a categorical x axis, the band's width, and the labels."""
    band = (x1 - x0) / len(names)
    centres = [x0 + (i + 0.5) * band for i in range(len(names))]
    out = [f'<line class="axis" x1="{x0}" x2="{x1}" y1="{y0}" y2="{y0}"/>']
    out += [f'<text x="{c:.1f}" y="{y0 + 20}" text-anchor="middle">{escape(n)}</text>' for c, n in zip(centres, names)]
    return centres, band, out


def _svg(plot_id: str, label: str, body: list[str], width: int = WIDTH) -> str:
    head = (
        f'<svg id="{plot_id}" class="plot" width="{width}" height="{HEIGHT}" '
        f'viewBox="0 0 {width} {HEIGHT}" role="img" aria-label="{escape(label)}">'
    )
    return "\n".join([head, *body, "</svg>"])


def _title(text: str) -> str:
    return f"<title>{escape(text)}</title>"


def _data(name: str, seed: Any) -> str:
    return f'data-candidate="{escape(name)}" data-seed="{escape(str(seed))}"'


# --- the three plots ---------------------------------------------------------------------------


def val_bpb_plot(candidates: dict[str, Candidate], colors: dict[str, str]) -> str:
    """One dot per seed in each candidate's column, and a bar at the candidate's mean."""
    names = sorted(candidates)
    x0, x1, top, bottom = MARGIN["left"], WIDTH - MARGIN["right"], MARGIN["top"], HEIGHT - MARGIN["bottom"]
    values = [v for c in candidates.values() for v in c.values("val_bpb")]
    if not values:
        return ""
    y = Scale(*padded(values), bottom, top)
    body = _y_axis(y, x0, x1, _num, "val_bpb (lower is better)")
    centres, band, labels = _categories(names, x0, x1, bottom)
    body += labels
    for name, cx in zip(names, centres):
        runs = sorted(
            (r for r in candidates[name].runs if isinstance(r.get("val_bpb"), (int, float))), key=lambda r: r["seed"]
        )
        if not runs:
            continue
        mean = sum(r["val_bpb"] for r in runs) / len(runs)
        half = min(40.0, band * 0.35)
        body.append(  # under the dots, so no dot is hidden
            f'<line class="mean-mark" data-candidate="{escape(name)}" x1="{cx - half:.1f}" x2="{cx + half:.1f}" '
            f'y1="{y(mean):.1f}" y2="{y(mean):.1f}" stroke="#333" stroke-width="2">'
            f"{_title(f'{name} mean val_bpb {mean:.6f}')}</line>"
        )
        step = min(14.0, band * 0.5 / max(len(runs) - 1, 1))
        for k, r in enumerate(runs):
            px = cx + (k - (len(runs) - 1) / 2) * step
            tip = _title(f"{name} seed {r['seed']}: val_bpb {r['val_bpb']:.6f}")
            body.append(
                f'<circle class="seed-point" {_data(name, r["seed"])} cx="{px:.1f}" cy="{y(r["val_bpb"]):.1f}" r="6" '
                f'fill="{colors[name]}">{tip}</circle>'
            )
    return _svg("plot-val-bpb", "val_bpb per seed per candidate", body)


def train_loss_plot(curves: list[tuple[str, Any, list[tuple[int, float]]]], colors: dict[str, str]) -> str:
    """One line per run (candidate's colour) of train/loss against step, with a legend of candidates."""
    width = WIDTH + LEGEND_WIDTH
    x0, x1, top, bottom = MARGIN["left"], WIDTH - MARGIN["right"], MARGIN["top"], HEIGHT - MARGIN["bottom"]
    steps = [s for _, _, c in curves for s, _ in c]
    losses = [v for _, _, c in curves for _, v in c]
    x = Scale(0, max(steps) or 1, x0, x1)
    y = Scale(*padded(losses, 0.04), bottom, top)
    body = _y_axis(y, x0, x1, _num, "training loss (nats)") + _x_axis(x, bottom, "step")
    for name, seed, curve in curves:
        d = " ".join(f"{'M' if i == 0 else 'L'}{x(s):.1f},{y(v):.1f}" for i, (s, v) in enumerate(curve))
        body.append(
            f'<path class="loss-curve" {_data(name, seed)} d="{d}" fill="none" stroke="{colors[name]}" '
            f'stroke-width="2.5" stroke-linejoin="round">{_title(f"{name} seed {seed}")}</path>'
        )
    for i, name in enumerate(sorted({n for n, _, _ in curves})):
        ly = top + 10 + i * 22
        body.append(
            f'<g class="legend-item" data-candidate="{escape(name)}">'
            f'<line x1="{WIDTH}" x2="{WIDTH + 28}" y1="{ly}" y2="{ly}" stroke="{colors[name]}" stroke-width="4"/>'
            f'<text x="{WIDTH + 36}" y="{ly + 4}">{escape(name)}</text></g>'
        )
    return _svg("plot-train-loss", "training loss per run", body, width)


def bytes_plot(candidates: dict[str, Candidate], colors: dict[str, str]) -> tuple[str, list[str]]:
    """Each candidate's largest artifact, model bytes (full colour) under code bytes (light), and the budget line."""
    names, notes = [], []
    largest: dict[str, dict[str, Any]] = {}
    for name in sorted(candidates):
        runs = [
            r for r in candidates[name].runs if all(isinstance(r.get(k), int) for k in ("model_bytes", "code_bytes"))
        ]
        if runs:
            names.append(name)
            largest[name] = max(runs, key=lambda r: r["model_bytes"] + r["code_bytes"])
        else:
            notes.append(f"{name}: no model_bytes/code_bytes in its results.json, left out of the byte plot")
    if not names:
        return "", notes
    budgets = sorted(
        {int(r["budget_bytes"]) for c in candidates.values() for r in c.runs if isinstance(r.get("budget_bytes"), int)}
    )
    if not budgets:
        notes.append("no budget_bytes in the results.json files: no budget line")
    x0, x1, top, bottom = MARGIN["left"], WIDTH - MARGIN["right"], MARGIN["top"] + 8, HEIGHT - MARGIN["bottom"]
    biggest = max(r["model_bytes"] + r["code_bytes"] for r in largest.values())
    y = Scale(0, max([biggest, *budgets]) * 1.08, bottom, top)
    body = _y_axis(y, x0, x1, lambda v: f"{v / 1e6:g} MB", "artifact bytes")
    centres, band, labels = _categories(names, x0, x1, bottom)
    body += labels
    half = min(40.0, band * 0.3)
    for name, cx in zip(names, centres):
        r = largest[name]
        model, code = r["model_bytes"], r["code_bytes"]
        seed, total = r.get("seed"), model + code
        ym, yc = round(y(model)), round(y(total))
        body.append(
            f'<rect class="bar-model" {_data(name, seed)} x="{round(cx - half)}" y="{ym}" width="{round(2 * half)}" '
            f'height="{round(bottom) - ym}" fill="{colors[name]}">{_title(f"{name} seed {seed}: model {model:,} B")}</rect>'
        )
        body.append(
            f'<rect class="bar-code" {_data(name, seed)} x="{round(cx - half)}" y="{yc}" width="{round(2 * half)}" '
            f'height="{ym - yc}" fill="{tint(colors[name])}">{_title(f"{name} seed {seed}: code {code:,} B")}</rect>'
        )
        share = f" ({total / budgets[-1]:.1%} of budget)" if budgets else ""
        body.append(f'<text x="{cx:.1f}" y="{yc - 22}" text-anchor="middle">{total:,} B{share}</text>')
        body.append(f'<text x="{cx:.1f}" y="{yc - 7}" text-anchor="middle">model {model:,} + code {code:,}</text>')
    for b in budgets:
        yb = round(y(b))
        body.append(
            f'<line class="budget-line" x1="{x0}" x2="{x1}" y1="{yb}" y2="{yb}" stroke="{BUDGET_COLOR}" '
            f'stroke-width="2" stroke-dasharray="10 5">{_title(f"budget {b:,} bytes")}</line>'
        )
        body.append(f'<text x="{x1 - 4}" y="{yb - 6}" text-anchor="end">budget {b:,} B</text>')
    return _svg("plot-bytes", "artifact bytes against the budget", body), notes


# --- the page ----------------------------------------------------------------------------------


def _table(rows: list[dict[str, Any]], reference: str | None) -> str:
    head, body = table_cells(rows, reference)
    out = ['<table id="compare-table">', "<tr>" + "".join(f"<th>{escape(h)}</th>" for h in head) + "</tr>"]
    for cells in body:
        tds = []
        for i, cell in enumerate(cells):
            cls = (
                ' class="verdict-record"' if reference is not None and i == len(cells) - 1 and cell == "record" else ""
            )
            tds.append(f"<td{cls}>{escape(cell)}</td>")
        out.append("<tr>" + "".join(tds) + "</tr>")
    out.append("</table>")
    return "\n".join(out)


def _notes(lines: list[str]) -> str:
    return "".join(f'<p class="note">{escape(line)}</p>\n' for line in lines)


def render_html(
    candidates: dict[str, Candidate],
    rows: list[dict[str, Any]],
    reference: str | None = None,
    skipped: Sequence[str] = (),
) -> str:
    """The whole report as one HTML string: the table `paramgolf-compare` prints, then the three plots."""
    colors = color_of(list(candidates))
    runs = sum(len(c.runs) for c in candidates.values())
    curves, curve_notes = [], []
    for name in sorted(candidates):
        for r in sorted(candidates[name].runs, key=lambda r: r["seed"]):
            run_dir = Path(r["results_file"]).parent
            try:
                curve = train_loss_curve(run_dir)
            except FileNotFoundError:
                curve_notes.append(f"{name} seed {r['seed']}: no metrics.jsonl in {run_dir}")
                continue
            except UserError as exc:
                curve_notes.append(f"{name} seed {r['seed']}: {exc}")
                continue
            if curve:
                curves.append((name, r["seed"], curve))
            else:
                curve_notes.append(f"{name} seed {r['seed']}: no train/loss in {run_dir / 'metrics.jsonl'}")
    bytes_svg, bytes_notes = bytes_plot(candidates, colors)
    against = f"; reference: {reference}" if reference is not None else ""
    parts = [
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">',
        "<title>paramgolf-compare</title>",
        f"<style>{STYLE}</style>\n</head>\n<body>",
        "<h1>paramgolf-compare</h1>",
        f"<p>{len(candidates)} candidate{'s' * (len(candidates) != 1)}, {runs} finished run{'s' * (runs != 1)}"
        f"{escape(against)}. Acceptance test: one-sided Welch "
        "t-test that the candidate's mean val_loss is more than 0.005 nats below the reference's, p &lt; 0.01.</p>",
        _table(rows, reference),
        _notes([f"skipped {s}" for s in skipped]),
        "<figure><h2>val_bpb per seed</h2>",
        val_bpb_plot(candidates, colors),
        "<figcaption>One dot per seed; the bar is the candidate's mean.</figcaption></figure>",
        "<figure><h2>Training loss</h2>",
        train_loss_plot(curves, colors) if curves else "",
        "<figcaption>train/loss from each run's metrics.jsonl, one line per seed, coloured by candidate.</figcaption>",
        _notes(curve_notes),
        "</figure>",
        "<figure><h2>Artifact bytes against the budget</h2>",
        bytes_svg,
        "<figcaption>Each candidate's largest artifact over its seeds: model bytes (full colour) under code bytes "
        "(light), with the byte budget dashed.</figcaption>",
        _notes(bytes_notes),
        "</figure>",
        "</body>\n</html>\n",
    ]
    return "\n".join(p for p in parts if p)
