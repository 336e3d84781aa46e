"""7z runs in a child process: a codec that crashes (pyppmd segfaults on some payloads) is a clear
error, and the process that asked for it lives on (issue 10, item 2).

The crashes are real: a child reading address 0, pyppmd 1.3.1 on data it cannot read back, and
`crash_ppmd/sitecustomize.py`, which makes every process's PPMd decoder segfault (on PYTHONPATH).
Tests that would crash the process that runs them if 7z ran in-process run their code in a
subprocess and require it to exit 0.
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import paramgolf
from paramgolf.errors import UserError
from paramgolf.quant.codecs import SevenZip, codec_by_name, run_isolated

PACKAGE_ROOT = Path(paramgolf.__file__).resolve().parents[1]
CRASH_PPMD = Path(__file__).parent / "crash_ppmd"


def _python(code: str, *args: str, crash_ppmd: bool = False, cwd: Path = PACKAGE_ROOT, timeout: int = 600) -> str:
    """Run `code` in a fresh interpreter (with the PPMd-crashing shim if asked); its stdout, once it exited 0."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    if crash_ppmd:
        env["PYTHONPATH"] = os.pathsep.join([str(CRASH_PPMD), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert proc.returncode == 0, f"exited {proc.returncode} (negative: killed by that signal)\n{proc.stderr[-3000:]}"
    return proc.stdout


def test_a_crash_in_the_child_is_a_clear_error_and_the_parent_lives():
    with pytest.raises(UserError, match=r"^probe crashed \(signal SIGSEGV\) reading address 0; try another$"):
        run_isolated(ctypes.string_at, 0, what="probe", action="reading address 0", hint="try another")
    with pytest.raises(UserError, match=r"^probe crashed \(signal SIGKILL\) dying; none$"):
        run_isolated(signal.raise_signal, signal.SIGKILL, what="probe", action="dying", hint="none")
    assert run_isolated(bytes.fromhex, "6869", what="probe", action="decoding", hint="none") == b"hi"


def test_the_childs_errors_come_back_as_errors():
    # A UserError stays one (its message intact); anything else is a RuntimeError naming its type.
    with pytest.raises(UserError, match=r"^unknown codec 'lz4'"):
        run_isolated(codec_by_name, "lz4", what="probe", action="looking up", hint="none")
    with pytest.raises(RuntimeError, match=r"^probe failed decoding: ValueError: non-hexadecimal"):
        run_isolated(bytes.fromhex, "zz", what="probe", action="decoding", hint="none")


def _gaussian_int8(n: int) -> bytes:
    """Bytes like int8-quantized weights: pyppmd 1.3.1 cannot read these back from an order-2, 64 KiB PPMd model."""
    rng = np.random.default_rng(0)
    return np.clip(np.round(rng.standard_normal(n) * 127 / 3), -127, 127).astype(np.int8).tobytes()


def test_the_real_pyppmd_crash_is_a_clear_error(tmp_path):
    """pyppmd 1.3.1 segfaults reading back this PPMd stream (it does so on pr754's 21 MB payload
    with the default order 6 and 2^28 bytes); the process that compresses lives and is told why."""
    (tmp_path / "data.bin").write_bytes(_gaussian_int8(300_000))
    out = _python(
        """
        import sys
        from pathlib import Path
        from paramgolf.errors import UserError
        from paramgolf.quant.codecs import SevenZip
        try:
            SevenZip("ppmd", ppmd_order=2, ppmd_mem=16).compress(Path(sys.argv[1]).read_bytes())
        except UserError as e:
            print(e)
        """,
        str(tmp_path / "data.bin"),
    )
    assert out.strip() == "7z/ppmd crashed (signal SIGSEGV) compressing 300,000 bytes; use quant/codec=lzma or zstd"


def test_every_7z_compression_and_decompression_runs_outside_the_caller(tmp_path):
    """With every PPMd decoder crashing: the read-back check, a plain decompress and the artifact
    reader each report the crash, and the process asking lives on."""
    import torch

    from paramgolf.quant.artifact import write_artifact
    from paramgolf.quant.schemes import QuantizedTensor

    blob = SevenZip("ppmd").compress(b"parameter golf " * 1000)  # this process has no shim
    (tmp_path / "blob.7z").write_bytes(blob)
    qstate = {"w": QuantizedTensor("fp32", (64,), "float32", {"w": torch.arange(64.0)})}
    write_artifact(tmp_path / "model.pgart", qstate, {"x": 1}, SevenZip("ppmd"))
    out = _python(
        """
        import json, sys
        from pathlib import Path
        from paramgolf.errors import UserError
        from paramgolf.quant.artifact import read_artifact
        from paramgolf.quant.codecs import SevenZip
        d, said = Path(sys.argv[1]), {}
        for what, call in [
            ("compress", lambda: SevenZip("ppmd").compress(b"parameter golf " * 1000)),
            ("decompress", lambda: SevenZip().decompress((d / "blob.7z").read_bytes())),
            ("read_artifact", lambda: read_artifact(d / "model.pgart")),
        ]:
            try:
                call()
                said[what] = "no error"
            except UserError as e:
                said[what] = str(e)
        print(json.dumps(said))
        """,
        str(tmp_path),
        crash_ppmd=True,
    )
    said = json.loads(out)
    assert said["compress"].startswith("7z/ppmd crashed (signal SIGSEGV) compressing 15,000 bytes;")
    assert said["decompress"].startswith(f"7z crashed (signal SIGSEGV) decompressing {len(blob):,} bytes;")
    assert said["read_artifact"].startswith(f"{tmp_path / 'model.pgart'}: 7z payload does not decompress: 7z crashed")


def test_the_codec_table_reports_a_crashing_codec_and_goes_on():
    out = _python(
        """
        import json
        import torch
        from paramgolf.quant.codecs import SevenZip, Zlib
        from paramgolf.quant.estimate import codec_table
        from paramgolf.quant.schemes import QuantizedTensor
        qstate = {"w": QuantizedTensor("fp32", (256,), "float32", {"w": torch.arange(256.0)})}
        print(json.dumps(codec_table(qstate, {"x": 1}, [SevenZip("ppmd"), Zlib(9), SevenZip("lzma2")])))
        """,
        crash_ppmd=True,
    )
    rows = {r["settings"]: r for r in json.loads(out)}
    ppmd = rows["SevenZip(method='ppmd', preset=9, filter=None, ppmd_order=6, ppmd_mem=28)"]
    assert ppmd["model_bytes"] is None and "int8: 7z/ppmd crashed (signal SIGSEGV)" in ppmd["error"]
    assert rows["Zlib(level=9)"]["model_bytes"] > 0
    assert rows["SevenZip(method='lzma2', preset=9, filter=None)"]["model_bytes"] > 0
    assert list(rows)[-1] == ppmd["settings"]  # failures sort last


@pytest.mark.slow
def test_bench_codecs_reports_the_crashing_codec_and_lists_the_others(tmp_path):
    out = _python(
        """
        import runpy, sys
        sys.argv = ["scripts/bench_codecs.py", "experiment=smoke"]
        runpy.run_path("scripts/bench_codecs.py", run_name="__main__")
        """,
        crash_ppmd=True,
    )
    rows = json.loads(out)["codecs"]  # the table goes to stderr
    failed = [r for r in rows if r["model_bytes"] is None]
    assert [r["settings"] for r in failed] == [
        "SevenZip(method='ppmd', preset=9, filter=None, ppmd_order=6, ppmd_mem=28)"
    ]
    assert "7z/ppmd crashed (signal SIGSEGV)" in failed[0]["error"]
    assert len(rows) - len(failed) >= 9 and all(r["model_bytes"] > 0 for r in rows if r not in failed)


@pytest.mark.slow
def test_a_run_whose_codec_crashes_at_export_keeps_its_weights_and_says_what_failed(tmp_path):
    from paramgolf.quant.artifact import load_weights
    from paramgolf.runner.stages import ARTIFACT_FILE, WEIGHTS_FILE

    env = dict(os.environ, PARAMGOLF_CACHE=str(tmp_path / "cache"), OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join([str(CRASH_PPMD), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    args = [
        "experiment=smoke",
        "logger=none",
        "train.iterations=3",
        "train.progress=false",
        "eval.progress=false",
        "budget_check=off",  # the estimate before training would compress with 7z/ppmd too
        "quant/codec=7z",
        "quant.codec.method=ppmd",
        "hydra.run.dir=outputs/run",
    ]
    proc = subprocess.run(
        [sys.executable, "-m", "paramgolf.cli.train", *args],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 2, f"exited {proc.returncode}\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    run = tmp_path / "outputs" / "run"
    r = json.loads((run / "results.json").read_text())
    assert (r["status"], r["failed_stage"]) == ("failed", "export")
    assert r["error"].startswith("UserError: 7z/ppmd crashed (signal SIGSEGV) compressing ")
    assert r["error"].endswith("bytes; use quant/codec=lzma or zstd")
    assert "7z/ppmd crashed (signal SIGSEGV)" in proc.stderr and "Traceback" not in proc.stderr
    state, meta = load_weights(run / WEIGHTS_FILE)
    assert state and meta["steps"] == "3"
    assert not (run / ARTIFACT_FILE).exists()
