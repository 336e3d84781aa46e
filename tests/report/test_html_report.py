"""paramgolf-compare --html: one self-contained page whose plots draw, rendered in headless Chromium.

The render tests need a Chromium on PATH (Debian: `apt-get install -y chromium`); with
PARAMGOLF_INSTALL_CHROMIUM=1 they install Debian's package themselves (as root), otherwise they
skip and say why. Screenshots are read with the small PNG decoder below (no Pillow needed).
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import struct
import subprocess
import sys
import zlib
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

from paramgolf.cli.compare import main as compare_main
from paramgolf.report.compare import find_results, load_candidates, summarize, table_cells
from paramgolf.report.html import BUDGET_COLOR, MARGIN, WIDTH, color_of, render_html, train_loss_curve
from tests.conftest import apt_install_or_skip

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


# --- hand-made runs ----------------------------------------------------------------------------


def _write_run(root: Path, name: str, seed: int, loss: float, *, model_bytes: int, curve=None) -> Path:
    d = root / f"{name}-{seed}"
    d.mkdir(parents=True)
    r = {
        "status": "ok",
        "name": name,
        "seed": seed,
        "val_loss": loss,
        "val_bpb": loss / 1.5,
        "model_bytes": model_bytes,
        "code_bytes": 1_000_000,
        "artifact_bytes": model_bytes + 1_000_000,
        "budget_bytes": 16_000_000,
        "fits": model_bytes + 1_000_000 <= 16_000_000,
        "train_time_s": 600.0,
        "eval_time_s": 100.0,
        "compliance": {"compliant": True},
    }
    (d / "results.json").write_text(json.dumps(r))
    if curve is not None:
        lines = [json.dumps({"step": s, "time": 0.0, "train/loss": v}) for s, v in curve]
        lines.append(json.dumps({"step": curve[-1][0], "time": 0.0, "val/bpb": r["val_bpb"]}))  # no train/loss
        (d / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    return d


def _curve(start: float, rate: float, steps: int = 12) -> list[tuple[int, float]]:
    return [(s, start * math.exp(-rate * s) + 1.0) for s in range(1, steps + 1)]


@pytest.fixture
def hand_made(tmp_path):
    """Two candidates of three seeds (one seed without metrics.jsonl) and one odd-named single run."""
    root = tmp_path / "runs"
    for seed, loss in ((1, 1.30), (2, 1.32), (3, 1.31)):
        _write_run(root, "base", seed, loss, model_bytes=12_000_000 + seed, curve=_curve(5.0, 0.10 + 0.01 * seed))
    for seed, loss in ((1, 1.25), (2, 1.26), (3, 1.24)):
        curve = _curve(5.0, 0.30 + 0.01 * seed) if seed != 3 else None
        _write_run(root, "wide", seed, loss, model_bytes=6_000_000 + seed, curve=curve)
    _write_run(root, "x&<b>", 7, 1.40, model_bytes=3_000_000, curve=_curve(4.0, 0.2, 5))
    candidates, skipped = load_candidates(find_results([root]))
    rows = summarize(candidates, "base")
    return candidates, rows, render_html(candidates, rows, "base", skipped)


class _Tags(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str]]] = []
        self.cells: list[list[str]] = []
        self._in_td = False

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, {k: v or "" for k, v in attrs}))
        if tag == "tr":
            self.cells.append([])
        self._in_td = tag == "td"
        if self._in_td:
            self.cells[-1].append("")

    def handle_endtag(self, tag):
        self._in_td = self._in_td and tag != "td"

    def handle_data(self, data):
        if self._in_td:
            self.cells[-1][-1] += data


def _parse(page: str) -> _Tags:
    p = _Tags()
    p.feed(page)
    return p


def _marks(page: str, tag: str, cls: str) -> list[dict[str, str]]:
    return [a for t, a in _parse(page).tags if t == tag and cls in a.get("class", "").split()]


def _vertices(d: str) -> list[tuple[float, float]]:
    return [(float(x), float(y)) for x, y in re.findall(r"[ML](-?[\d.]+),(-?[\d.]+)", d)]


# --- the page ----------------------------------------------------------------------------------


def test_the_page_is_self_contained_and_escapes_every_name(hand_made):
    _, _, page = hand_made
    assert page.startswith("<!DOCTYPE html>") and '<meta charset="utf-8">' in page
    for external in ("<script", "<link", "<img", "<iframe", "<object", "src=", "href=", "url(", "@import", "http"):
        assert external not in page.lower(), f"the page holds {external!r}: it would need the network"
    assert "x&<b>" not in page and "<b>" not in page and "x&amp;&lt;b&gt;" in page
    assert {t for t, _ in _parse(page).tags} >= {"table", "svg", "circle", "path", "rect", "line"}


def test_each_plot_draws_one_mark_per_run_where_its_data_says(hand_made):
    candidates, rows, page = hand_made
    runs = [(n, r) for n, c in candidates.items() for r in c.runs]
    colors = color_of(list(candidates))

    dots = _marks(page, "circle", "seed-point")  # val_bpb: one dot per seed, lower bpb lower on the page
    assert sorted((d["data-candidate"], int(d["data-seed"])) for d in dots) == sorted((n, r["seed"]) for n, r in runs)
    bpb = {(n, r["seed"]): r["val_bpb"] for n, r in runs}
    by_height = sorted(dots, key=lambda d: float(d["cy"]))
    assert [bpb[d["data-candidate"], int(d["data-seed"])] for d in by_height] == sorted(bpb.values(), reverse=True)
    assert all(d["fill"] == colors[d["data-candidate"]] for d in dots)
    assert len(_marks(page, "line", "mean-mark")) == len(candidates)

    curves = _marks(page, "path", "loss-curve")  # one line per run with a metrics.jsonl, one vertex per step
    assert sorted((c["data-candidate"], c["data-seed"]) for c in curves) == sorted(
        [("base", "1"), ("base", "2"), ("base", "3"), ("wide", "1"), ("wide", "2"), ("x&<b>", "7")]
    )
    assert all(len(_vertices(c["d"])) == (5 if c["data-candidate"] == "x&<b>" else 12) for c in curves)
    assert all(c["stroke"] == colors[c["data-candidate"]] for c in curves)
    fast, slow = (next(c for c in curves if c["data-candidate"] == n) for n in ("wide", "base"))
    assert _vertices(fast["d"])[-1][1] > _vertices(slow["d"])[-1][1]  # lower final loss: lower on the page
    assert "wide seed 3: no metrics.jsonl in" in page
    assert len(_marks(page, "g", "legend-item")) == len(candidates)

    bars = {b["data-candidate"]: b for b in _marks(page, "rect", "bar-model")}  # the largest seed, to scale
    code = {b["data-candidate"]: b for b in _marks(page, "rect", "bar-code")}
    assert sorted(bars) == sorted(candidates) == sorted(code)
    assert bars["base"]["data-seed"] == "3" and bars["wide"]["data-seed"] == "3"
    px_per_byte = float(bars["base"]["height"]) / 12_000_003
    for name, model in (("wide", 6_000_003), ("x&<b>", 3_000_000)):
        assert float(bars[name]["height"]) == pytest.approx(model * px_per_byte, abs=1.0)
    assert all(float(c["height"]) == pytest.approx(1_000_000 * px_per_byte, abs=1.0) for c in code.values())
    (budget,) = _marks(page, "line", "budget-line")
    bottom = float(bars["base"]["y"]) + float(bars["base"]["height"])
    assert bottom - float(budget["y1"]) == pytest.approx(16_000_000 * px_per_byte, abs=1.0)

    head, body = table_cells(rows, "base")  # the table is the one the terminal gets
    assert [c for c in _parse(page).cells if c] == body
    assert all(f"<th>{h}</th>" in page for h in head if "&" not in h)


def test_train_loss_curve_keeps_the_last_value_per_step_and_skips_non_finite(tmp_path):
    rows = [
        {"step": 1, "train/loss": 5.0},
        {"step": 2, "train/loss": float("nan")},
        {"step": 2, "val/bpb": 3.0},
        {"step": 3, "train/loss": 4.0},
        {"step": 3, "train/loss": 3.5},  # a resumed run logs the step again
    ]
    (tmp_path / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + '\n{"step": 4, "tra')
    assert train_loss_curve(tmp_path) == [(1, 5.0), (3, 3.5)]


def test_the_cli_writes_the_report_and_names_a_path_it_cannot_write(hand_made, tmp_path, capsys):
    out = tmp_path / "reports" / "compare.html"
    compare_main([str(tmp_path / "runs"), "--reference", "base", "--html", str(out)])
    got = capsys.readouterr()
    assert "| wide | 1,2,3 |" in got.out and f"html report: {out.resolve()}" in got.err
    assert out.read_text() == hand_made[2] and not list(out.parent.glob(".*.tmp"))  # written whole, atomically
    (tmp_path / "a_file").write_text("")
    for bad in (tmp_path / "a_file" / "r.html", tmp_path / "reports"):  # under a file; a directory
        with pytest.raises(SystemExit) as exit_:
            compare_main([str(tmp_path / "runs"), "--html", str(bad)])
        err = capsys.readouterr().err
        assert exit_.value.code == 2 and f"--html {bad}: cannot write the report" in err and "Traceback" not in err


# --- rendering in headless Chromium -------------------------------------------------------------


def _find_browser() -> str | None:
    return next((p for p in map(shutil.which, BROWSERS) if p), None)


@pytest.fixture(scope="session")
def chromium() -> str:
    found = _find_browser()
    if found is None:
        apt_install_or_skip("chromium", "PARAMGOLF_INSTALL_CHROMIUM")
        found = _find_browser()
    if found is None:
        pytest.skip(
            f"no {', '.join(BROWSERS)} on PATH: install Debian's package (apt-get install -y chromium), "
            "or set PARAMGOLF_INSTALL_CHROMIUM=1 to let this test install it"
        )
    return found


def _screenshot(browser: str, page: Path, size: tuple[int, int]) -> np.ndarray:
    """Chromium's headless screenshot of `page`, with every host name unresolvable (no network)."""
    png = page.with_suffix(".png")
    cmd = [
        browser,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--hide-scrollbars",
        "--force-device-scale-factor=1",
        "--host-resolver-rules=MAP * ~NOTFOUND",
        f"--user-data-dir={page.parent / 'chromium-profile'}",
        f"--screenshot={png}",
        f"--window-size={size[0]},{size[1]}",
        page.as_uri(),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and png.is_file(), f"{browser} failed ({proc.returncode}): {proc.stderr[-2000:]}"
    return _read_png(png)


def _read_png(path: Path) -> np.ndarray:
    """An 8-bit RGB(A), non-interlaced PNG (what Chromium writes) as an (height, width, 3) uint8 array."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    pos, idat, header = 8, [], None
    while pos < len(data):
        (length,), kind = struct.unpack(">I", data[pos : pos + 4]), data[pos + 4 : pos + 8]
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", data[pos + 8 : pos + 8 + length])
        elif kind == b"IDAT":
            idat.append(data[pos + 8 : pos + 8 + length])
        pos += 12 + length
    width, height, depth, color_type, _, _, interlace = header
    assert depth == 8 and color_type in (2, 6) and interlace == 0, f"{path}: a PNG this decoder does not read {header}"
    bpp, raw = (3 if color_type == 2 else 4), zlib.decompress(b"".join(idat))
    stride = width * bpp
    out, prev = np.zeros((height, stride), dtype=np.int64), np.zeros(stride, dtype=np.int64)
    for y in range(height):
        kind = raw[y * (stride + 1)]
        line = np.frombuffer(raw, np.uint8, stride, y * (stride + 1) + 1).astype(np.int64)
        if kind == 0:  # None
            cur = line
        elif kind == 1:  # Sub: a running sum along each channel
            cur = np.cumsum(line.reshape(width, bpp), axis=0).reshape(-1) % 256
        elif kind == 2:  # Up
            cur = (line + prev) % 256
        else:  # Average, Paeth: each byte needs the decoded byte to its left
            cur_, up = line.tolist(), prev.tolist()
            for i in range(stride):
                a, b, c = (cur_[i - bpp], up[i], up[i - bpp]) if i >= bpp else (0, up[i], 0)
                if kind == 3:
                    pred = (a + b) // 2
                else:
                    p = a + b - c
                    pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                    pred = a if pa <= pb and pa <= pc else (b if pb <= pc else c)
                cur_[i] = (cur_[i] + pred) & 255
            cur = np.array(cur_, dtype=np.int64)
        out[y], prev = cur, cur
    return out.reshape(height, width, bpp)[:, :, :3].astype(np.uint8)


def _rgb(color: str) -> np.ndarray:
    return np.array([int(color[i : i + 2], 16) for i in (1, 3, 5)])


def _near(pixels: np.ndarray, color: str, tol: int = 12) -> np.ndarray:
    return (np.abs(pixels.astype(np.int64) - _rgb(color)) <= tol).all(axis=-1)


def _check_rendered(browser: str, page: str, tmp: Path, candidates: list[str]) -> None:
    """The whole page is not blank, and each plot shows its marks where its SVG puts them."""
    colors = color_of(candidates)
    (tmp / "report.html").write_text(page)
    shot = _screenshot(browser, tmp / "report.html", (1280, 2000))
    ink = (shot < 250).any(axis=-1).mean()
    distinct = len(np.unique(shot.reshape(-1, 3), axis=0))
    assert ink > 0.02 and distinct > 100, f"the screenshot looks blank: {ink:.1%} ink, {distinct} colours"
    for name in candidates:
        assert _near(shot, colors[name], 0).sum() >= 100, f"{name}'s colour {colors[name]} is not on the page"

    # The three SVGs alone, each at a known place (0, 400 i): their coordinates are pixels there.
    style = re.search(r"<style>.*?</style>", page, re.S).group(0)
    ids = ("plot-val-bpb", "plot-train-loss", "plot-bytes")
    svgs = [re.search(rf'<svg id="{i}".*?</svg>', page, re.S).group(0) for i in ids]
    placed = "".join(f'<div style="position:absolute;left:0;top:{400 * k}px">{svg}</div>' for k, svg in enumerate(svgs))
    (tmp / "plots.html").write_text(f"<!DOCTYPE html><html><head>{style}</head><body style='margin:0'>{placed}")
    plots = _screenshot(browser, tmp / "plots.html", (1280, 400 * len(ids)))
    plot = {i: plots[400 * k : 400 * (k + 1)] for k, i in enumerate(ids)}

    img = plot["plot-val-bpb"]
    for d in _marks(page, "circle", "seed-point"):
        x, y = round(float(d["cx"])), round(float(d["cy"]))
        assert _near(img[y - 1 : y + 2, x - 1 : x + 2], d["fill"]).all(), f"no dot at {x},{y} for {d}"
    img = plot["plot-train-loss"]
    axes = img[:, : WIDTH - MARGIN["right"]]
    for c in _marks(page, "path", "loss-curve"):
        hits = [
            _near(axes[round(y) - 3 : round(y) + 4, round(x) - 3 : round(x) + 4], c["stroke"]).any()
            for x, y in _vertices(c["d"])
        ]
        assert sum(hits) >= len(hits) / 2, f"{c['data-candidate']} seed {c['data-seed']}: line drawn at {hits}"
    for name in candidates:
        assert _near(axes, colors[name]).sum() >= 100, f"no training-loss line in {name}'s colour"
    img = plot["plot-bytes"]
    for b in _marks(page, "rect", "bar-model"):
        x, y = int(b["x"]) + int(b["width"]) // 2, int(b["y"]) + int(b["height"]) // 2
        assert _near(img[y, x], b["fill"], 2), f"no bar at {x},{y} for {b}"
    (budget,) = _marks(page, "line", "budget-line")
    row = img[int(budget["y1"]) - 1, int(budget["x1"]) : int(budget["x2"])]
    assert _near(row, BUDGET_COLOR, 40).mean() > 0.5, "the budget line did not draw"


@pytest.mark.slow
def test_the_report_renders_in_headless_chromium(chromium, hand_made, tmp_path):
    candidates, _, page = hand_made
    _check_rendered(chromium, page, tmp_path, list(candidates))


# --- the done-when: a 3-seed smoke sweep of two candidates --------------------------------------

SWEEP = [
    "-m",
    "experiment=smoke",
    "logger=none",
    "train.progress=false",
    "eval.progress=false",
    "train.iterations=10",
    "train.log_every=1",
    "train.batch_tokens=2048",
    "data.val_max_tokens=8192",
    "seed=1,2,3",
]


@pytest.fixture(scope="module")
def smoke_sweep(tmp_path_factory) -> Path:
    """Two candidates, three seeds each, trained for real (about 1.5 min on two busy cores)."""
    root = tmp_path_factory.mktemp("sweep")
    env = dict(os.environ, OMP_NUM_THREADS="1", PARAMGOLF_CACHE=str(root / "cache"))
    for extra in (["name=smoke"], ["name=smoke-d64", "arch.model_dim=64"]):  # named: not the overrides
        proc = subprocess.run(
            [sys.executable, "-m", "paramgolf.cli.train", *SWEEP, *extra],
            cwd=root,
            env=env,
            capture_output=True,
            text=True,
            timeout=900,
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
    return root / "outputs" / "multirun"


def _compare(sweep: Path, out: Path) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "paramgolf.cli.compare", str(sweep), "--reference", "smoke", "--html", str(out)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_a_three_seed_smoke_sweep_of_two_candidates_gives_the_table_and_the_report(smoke_sweep, tmp_path):
    proc = _compare(smoke_sweep, tmp_path / "report.html")
    assert proc.returncode == 0, proc.stderr
    assert re.search(r"^\| smoke \| 1,2,3 \| .* \| \(reference\) \|  \|  \|$", proc.stdout, re.M), proc.stdout
    row = re.search(
        r"^\| smoke-d64 \| 1,2,3 \| .* \| ([+-]\d\.\d{4}) \| ([\d.e-]+) \| ([a-z ]+) \|$", proc.stdout, re.M
    )
    assert row and row.group(3) in ("record", "not significant", "worse"), proc.stdout
    page = (tmp_path / "report.html").read_text()
    assert len(_marks(page, "circle", "seed-point")) == 6 and len(_marks(page, "rect", "bar-model")) == 2
    curves = _marks(page, "path", "loss-curve")
    assert len(curves) == 6 and all(len(_vertices(c["d"])) == 10 for c in curves)
    assert "no metrics.jsonl" not in page and "http" not in page


@pytest.mark.slow
def test_the_smoke_sweeps_report_renders_in_headless_chromium(chromium, smoke_sweep, tmp_path):
    proc = _compare(smoke_sweep, tmp_path / "compare.html")
    assert proc.returncode == 0, proc.stderr
    _check_rendered(chromium, (tmp_path / "compare.html").read_text(), tmp_path, ["smoke", "smoke-d64"])
