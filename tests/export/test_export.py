"""Record export: the generated self-contained train_gpt.py and the record folder."""

from __future__ import annotations

import ast
import base64
import functools
import json
import lzma
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from clean_env import NOT_THERE, clean_environ, make_clean_env
from hydra.utils import instantiate

from paramgolf.config.compose import compose, to_container
from paramgolf.errors import UserError
from paramgolf.export import bundle
from paramgolf.export.bundle import BundleError, generate_script, module_sources
from paramgolf.export.record import export_record
from paramgolf.export.standalone import build

PRESETS = ["smoke", "baseline", "pr537", "pr549", "pr620", "pr754", "pr1185", "pr1263"]


def _config(*overrides: str) -> dict:
    return to_container(compose(list(overrides)))


def _archive(script: bytes) -> dict[str, str]:
    blob = script.split(b'b85decode("', 1)[1].split(b'")', 1)[0]
    parts = lzma.decompress(base64.b85decode(blob)).decode().split("\n#@")
    return {"#config": parts[0], **dict(p.split("\n", 1) for p in parts[1:])}


def _same(a, b) -> bool:
    if isinstance(a, functools.partial):
        return isinstance(b, functools.partial) and a.func is b.func and _same(a.keywords, b.keywords)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, torch.nn.Module):
        sa, sb = a.state_dict(), b.state_dict()
        return type(a) is type(b) and sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    if hasattr(a, "__dict__") and not isinstance(a, type):
        return type(a) is type(b) and _same(vars(a), vars(b))
    return a == b


@pytest.mark.parametrize("preset", PRESETS)
def test_the_scripts_builder_builds_what_hydra_instantiates(preset):
    c = _config(f"experiment={preset}")
    for key in ("optimizer", "ttt", "eval_cache", "eval"):
        assert _same(build(c[key]), instantiate(c[key], _convert_="all")), key
    for key in ("quantizer", "codec", "calibration"):
        assert _same(build(c["quant"][key]), instantiate(c["quant"][key], _convert_="all")), key
    assert _same(build(c["train"]["schedule"]), instantiate(c["train"]["schedule"], _convert_="all"))
    torch.manual_seed(0)
    ours = build(c["arch"])
    torch.manual_seed(0)
    hydras = instantiate(c["arch"], _convert_="all")
    assert _same(ours, hydras)


def test_same_check_can_fail():
    assert not _same(functools.partial(int, base=2), functools.partial(int, base=3))
    assert not _same(torch.nn.Linear(2, 2), torch.nn.Linear(2, 2))


def test_the_script_holds_only_the_code_its_configuration_runs():
    smoke = module_sources(_config("experiment=smoke"))
    pr549 = module_sources(_config("experiment=pr549"))
    for absent in ("paramgolf.evaluation.ngram", "paramgolf.evaluation.lora_doc", "paramgolf.evaluation.slot",
                   "paramgolf.data.synthetic", "paramgolf.runner.pipeline", "paramgolf.tracking.wandb_logger",
                   "paramgolf.config.schema", "paramgolf.optim.parallel_muon"):  # fmt: skip
        assert absent not in smoke, absent
    assert {"paramgolf.optim.parallel_muon", "paramgolf.quant.gptq", "paramgolf.evaluation.score_first"} <= set(pr549)
    assert "paramgolf.evaluation.ngram" in module_sources(_config("experiment=smoke", "eval_cache=ngram"))
    # Within a kept module only what is reached: the stages module gives the loop and averaging hooks, nothing else.
    stages = ast.parse(smoke["paramgolf.runner.stages"])
    assert [n.name for n in stages.body if isinstance(n, (ast.ClassDef, ast.FunctionDef))] == [
        "_AveragingHook",
        "loop_hook",
    ]
    for name, src in pr549.items():
        tree = ast.parse(src)
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                mods = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
                assert not any(m.split(".")[0] in bundle.FORBIDDEN | {"scipy"} for m in mods), (name, mods)
            if isinstance(node, (ast.FunctionDef, ast.ClassDef)) and node.body:
                first = node.body[0]
                docstring = isinstance(first, ast.Expr) and isinstance(getattr(first.value, "value", None), str)
                assert not docstring, (name, node.name)


def test_the_script_is_deterministic_ascii_and_embeds_the_config():
    c = _config("experiment=smoke")
    a, b = generate_script(c), generate_script(c)
    assert a == b and a.isascii()
    archive = _archive(a)
    embedded = json.loads(archive["#config"])
    assert embedded["arch"] == c["arch"] and "logger" not in embedded and "_target_" not in embedded["data"]
    assert len(generate_script(_config("experiment=smoke", "seed=7"))) != 0
    assert bundle.script_bytes(c) == len(a)


def test_a_forbidden_or_unlisted_import_is_refused():
    mod = bundle._Module("paramgolf.fake", False, [])
    with pytest.raises(BundleError, match="hydra"):
        bundle._check_imports(mod, ast.parse("def f():\n    from hydra.utils import instantiate\n").body)
    with pytest.raises(BundleError, match="scipy"):
        bundle._check_imports(mod, ast.parse("import scipy.stats\n").body)
    bundle._check_imports(mod, ast.parse("import torch\nimport json\ndef f():\n    import brotli\n").body)


def _results(tmp: Path, seed: int, *, compliant: bool = True, fits: bool = True, **config_extra) -> Path:
    run = tmp / f"run{seed}"
    run.mkdir()
    c = _config("experiment=smoke", f"seed={seed}")
    c.update(config_extra)
    r = {
        "status": "ok" if fits else "over_budget",
        "name": "smoke",
        "seed": seed,
        "config": c,
        "val_bpb": 0.8 + seed * 1e-3,
        "val_loss": 1.2 + seed * 1e-3,
        "model_bytes": 400_000,
        "artifact_bytes": 450_000,
        "budget_bytes": 16_000_000,
        "fits": fits,
        "steps": 200,
        "train_time_s": 10.0,
        "eval_time_s": 1.0,
        "world_size": 1,
        "device": "cpu",
        "compliance": {"compliant": compliant, "verdict": "compliant" if compliant else "non-compliant",
                       "reasons": [] if compliant else ["causal: the score at position 3 changed"]},
    }  # fmt: skip
    (run / "results.json").write_text(json.dumps(r))
    (run / "train.log").write_text(f"log of seed {seed}\n")
    return run


def test_the_record_folder_has_the_challenges_layout(tmp_path):
    runs = [_results(tmp_path, s) for s in (1, 2, 3)]
    folder = export_record(runs, name="Smoke Test", author="A", github_id="a", out_root=tmp_path / "records")
    assert folder.name.endswith("_Smoke_Test")
    assert {p.name for p in folder.iterdir()} == {
        "train_gpt.py", "submission.json", "README.md", "requirements.txt", "config.json",
        "train_seed1.log", "train_seed2.log", "train_seed3.log",
    }  # fmt: skip
    sub = json.loads((folder / "submission.json").read_text())
    assert sub["bytes_code"] == (folder / "train_gpt.py").stat().st_size
    assert sub["val_bpb"] == pytest.approx(0.802) and sub["val_bpb_std"] == pytest.approx(0.001)
    assert [s["seed"] for s in sub["seed_results"]] == [1, 2, 3] and sub["non_record"] is False
    assert sub["bytes_total"] == 400_000 + sub["bytes_code"]
    readme = (folder / "README.md").read_text()
    assert "| 3 | 0.80300000 |" in readme and "torchrun" in readme
    assert "torch" in (folder / "requirements.txt").read_text().split()


def test_the_export_refuses_a_non_record_unless_asked(tmp_path):
    runs = [_results(tmp_path, 1, compliant=False), _results(tmp_path, 2, fits=False)]
    with pytest.raises(UserError, match=r"not a record: seed 1: evaluation not compliant \(causal.*seed 2: artifact"):
        export_record(runs, name="x", author="a", github_id="a", out_root=tmp_path / "r")
    folder = export_record(runs, name="x", author="a", github_id="a", out_root=tmp_path / "r", non_record=True)
    sub = json.loads((folder / "submission.json").read_text())
    assert sub["non_record"] is True and len(sub["non_record_reasons"]) == 2
    assert "Non-record submission" in (folder / "README.md").read_text()


def test_the_export_refuses_seeds_of_different_configurations(tmp_path):
    a = _results(tmp_path, 1)
    b = _results(tmp_path, 2, budget_bytes=1)
    with pytest.raises(UserError, match="differs .* in budget_bytes"):
        export_record([a, b], name="x", author="a", github_id="a", out_root=tmp_path / "r")


@pytest.mark.slow
def test_the_exported_script_reproduces_the_run_in_a_venv_without_paramgolf(tmp_path):
    """Train a short smoke run with paramgolf, export it, run train_gpt.py where paramgolf is not installed."""
    run = tmp_path / "run"
    overrides = ["experiment=smoke", "logger=none", "train.progress=false", "train.log_every=1",
                 "train.iterations=12", "train.schedule.warmdown_iters=6", f"hydra.run.dir={run}"]  # fmt: skip
    env = clean_environ(OMP_NUM_THREADS="1", PATH="/usr/bin:/bin", HOME=str(Path.home()))
    env["PATH"] = f"{Path(sys.executable).parent}:{env['PATH']}"
    subprocess.run([sys.executable, "-m", "paramgolf.cli.train", *overrides], check=True, env=env, timeout=1200)
    res = json.loads((run / "results.json").read_text())
    folder = export_record([run], name="smoke", author="a", github_id="a", out_root=tmp_path / "records")
    assert res["code_bytes"] == (folder / "train_gpt.py").stat().st_size  # the run counted the script it ships

    python = make_clean_env(tmp_path / "clean")
    probe = f"import importlib.util as u; print([m for m in {NOT_THERE!r} if u.find_spec(m)])"
    out = subprocess.run([str(python), "-I", "-c", probe], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"  # paramgolf, Hydra, W&B… are not importable there

    work = tmp_path / "work"
    work.mkdir()
    script_env = clean_environ(OMP_NUM_THREADS="1", DATA_PATH=res["dataset_dir"])
    proc = subprocess.run(
        [str(python), "-I", str(folder / "train_gpt.py")],
        cwd=work, env=script_env, capture_output=True, text=True, timeout=1200,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads((work / "results.json").read_text())
    losses = [json.loads(line)["train/loss"] for line in (run / "metrics.jsonl").read_text().splitlines()
              if "train/loss" in line]  # fmt: skip
    assert got["losses"] == losses and len(losses) == 12
    assert got["val_bpb"] == res["val_bpb"] and got["val_loss"] == res["val_loss"]  # bit for bit
    assert got["model_bytes"] == res["model_bytes"] and got["code_bytes"] == res["code_bytes"]
    assert (work / "final_model.pgart").read_bytes() == (run / "model.pgart").read_bytes()
    assert f"val_bpb:{res['val_bpb']:.8f}" in proc.stdout


@pytest.mark.parametrize("preset", ["smoke", "pr549", "pr1185"])
def test_the_scripts_modules_compute_what_paramgolfs_do(tmp_path, preset):
    """Load the generated script's modules (stripped, shaken, locals renamed) and run its model and quantizer."""
    c = _config(f"experiment={preset}", "arch.model_dim=128", "arch.vocab_size=128")
    script = generate_script(c).decode().replace('if __name__=="__main__"', "if False")
    probe = (
        "\nimport torch,sys\nfrom paramgolf.export.standalone import build\n"
        "assert not hasattr(sys.modules['paramgolf.export.standalone'], '__file__')\n"
        "torch.manual_seed(0)\nm=build(C['arch'])\nx=torch.randint(0,128,(2,16),generator=torch.Generator().manual_seed(1))\n"
        "q=build(C['quant']['quantizer']).quantize({k:v.detach() for k,v in m.state_dict().items()})\n"
        f"torch.save({{'sd':m.state_dict(),'y':m(x),'q':{{k:v.tensors for k,v in q.items()}}}}, {str(tmp_path / 'out.pt')!r})\n"
    )
    (tmp_path / "probe.py").write_text(script + probe)
    subprocess.run([sys.executable, str(tmp_path / "probe.py")], check=True, timeout=300)
    got = torch.load(tmp_path / "out.pt", weights_only=False)
    torch.manual_seed(0)
    model = instantiate(c["arch"], _convert_="all")
    x = torch.randint(0, 128, (2, 16), generator=torch.Generator().manual_seed(1))
    quantized = instantiate(c["quant"]["quantizer"], _convert_="all").quantize(
        {k: v.detach() for k, v in model.state_dict().items()}
    )
    assert _same(got["sd"], model.state_dict())
    assert torch.equal(got["y"], model(x))
    assert got["q"].keys() == quantized.keys()
    for k, v in quantized.items():
        assert _same(got["q"][k], v.tensors), k


SHORTEN_CASES = """
import math
TOTAL = 10

def closures(values, scale=2):
    counter = 0
    def bump(step):
        nonlocal counter
        counter += step
        return counter
    doubled = [value * scale for value in values]
    squares = {item: item ** 2 for item in doubled}
    lookup = lambda key, default=0: squares.get(key, default)
    for element in values:
        bump(element)
    return counter, doubled, lookup(doubled[0]), sorted(squares)

def uses_global(amount):
    global TOTAL
    previous = TOTAL
    TOTAL = TOTAL + amount
    return previous, TOTAL, math.sqrt(TOTAL)

def with_class(width):
    class Box:
        size = width
        def area(self, height=3):
            return self.size * height
    result = Box().area(height=width)
    try:
        raise KeyError(result)
    except KeyError as problem:
        caught = problem.args[0]
    return result, caught

def kwargs_pass(first, *rest, key=1, **extra):
    combined = first + sum(rest) + key + sum(extra.values())
    return combined
"""


def test_shortened_locals_compute_the_same():
    tree = ast.parse(SHORTEN_CASES)
    bundle._shorten_locals(tree)
    short = ast.unparse(tree)
    assert "counter" not in short.split("def bump")[0] or "nonlocal" in short  # the outer locals are renamed
    assert "doubled" not in short and "previous" not in short  # renamed
    assert "TOTAL" in short and "def kwargs_pass(first, *rest, key=1, **extra)" in short  # kept
    results = []
    for src in (SHORTEN_CASES, short):
        ns: dict = {}
        exec(compile(src, "<case>", "exec"), ns)
        results.append(
            (ns["closures"]([1, 2, 3]), ns["uses_global"](5), ns["with_class"](4), ns["kwargs_pass"](1, 2, key=3, x=4))
        )
    assert results[0] == results[1]
