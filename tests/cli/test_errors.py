"""User errors are one-line CLI messages (exit 2); broken invariants are bugs and show their traceback."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import torch

from paramgolf.errors import UserError


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("HYDRA_FULL_ERROR", None)  # the CLIs' default: Hydra's short traceback
    env["OMP_NUM_THREADS"] = "1"
    return env


def _run_patched(tmp_path, patch: str, cli: str, *args: str) -> subprocess.CompletedProcess:
    """Run `cli`'s main in a fresh interpreter after `patch` (Python source) has replaced an internal function."""
    code = textwrap.dedent(patch) + textwrap.dedent(f"""
        import sys
        from {cli} import main
        sys.argv = [{cli!r}, *sys.argv[1:]]
        main(sys.argv[1:]) if {cli!r} != "paramgolf.cli.train" else main()
    """)
    return subprocess.run(
        [sys.executable, "-c", code, *args], cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=300
    )


BUG = "internal bug: a broken invariant"


def _boom(*args, **kwargs):
    raise ValueError(BUG)  # a plain ValueError (torch, numpy, a paramgolf bug), not a UserError


# --- (a) a broken invariant is not reported as a user error -------------------------------------------------


def test_budget_lets_a_bug_through_with_its_traceback(monkeypatch, capsys):
    from paramgolf.cli.budget import main

    monkeypatch.setattr("paramgolf.runner.budget.count_params", _boom)
    with pytest.raises(ValueError, match=BUG):
        main(["experiment=smoke", "logger=none"])
    assert "error:" not in capsys.readouterr().err


def test_eval_lets_a_bug_through(monkeypatch, tmp_path, capsys):
    from paramgolf.cli.eval import main

    monkeypatch.setattr("paramgolf.runner.reevaluate.reevaluate", _boom)
    with pytest.raises(ValueError, match=BUG):
        main([str(tmp_path)])
    assert "error:" not in capsys.readouterr().err


def test_data_lets_a_bug_through(monkeypatch, tmp_path, capsys):
    from paramgolf.cli import data

    monkeypatch.setattr(data, "inspect_shard", _boom)
    with pytest.raises(ValueError, match=BUG):
        data.main(["inspect", str(tmp_path / "x.bin"), "--tokenizer", str(tmp_path / "t.model")])
    assert "error:" not in capsys.readouterr().err


def test_a_component_assert_keeps_its_type_through_hydra_instantiate():
    from paramgolf.runner.build import instantiate_unwrapped

    node = {"_target_": "paramgolf.model.block.Block", "dim": 4, "attn": None, "mlp": None, "scale_where": "sideways"}
    with pytest.raises(AssertionError, match="scale_where"):
        instantiate_unwrapped(node)


@pytest.mark.slow
def test_budget_cli_prints_a_bug_traceback_and_exits_1(tmp_path):
    patch = f"""
        import paramgolf.runner.budget as b
        def boom(*a, **k):
            raise RuntimeError({BUG!r})
        b.count_params = boom
    """
    proc = _run_patched(tmp_path, patch, "paramgolf.cli.budget", "experiment=smoke", "logger=none")
    assert proc.returncode not in (0, 2), proc.stderr[-2000:]
    assert "Traceback (most recent call last)" in proc.stderr and BUG in proc.stderr
    assert "paramgolf-budget: error:" not in proc.stderr


@pytest.mark.slow
def test_train_cli_prints_a_bug_traceback_and_exits_1(tmp_path):
    patch = f"""
        import paramgolf.runner.plan as p
        def boom(*a, **k):
            raise ValueError({BUG!r})
        p.build_plan = boom
    """
    proc = _run_patched(tmp_path, patch, "paramgolf.cli.train", "experiment=smoke", "logger=none")
    assert proc.returncode not in (0, 2), proc.stderr[-2000:]
    assert "Traceback (most recent call last)" in proc.stderr and BUG in proc.stderr
    assert "paramgolf-train: error:" not in proc.stderr


# --- (b) a config mistake is still one line, exit 2 ---------------------------------------------------------


def test_budget_config_mistake_is_one_line_exit_2(capsys):
    from paramgolf.cli.budget import main

    with pytest.raises(SystemExit) as exc:
        main(["experiment=smoke", "logger=none", "eval=sliding", "eval.stride=0"])
    assert exc.value.code == 2 and isinstance(exc.value.__context__, UserError)  # reported as what it is
    err = capsys.readouterr().err
    assert err.startswith("paramgolf-budget: error: ") and "eval.stride=0" in err
    assert err.count("\n") == 1 and "Traceback" not in err


def test_data_missing_file_is_one_line_exit_2(monkeypatch, tmp_path, capsys):
    from paramgolf.cli import data

    missing = tmp_path / "nowhere.bin"

    def not_found(*args, **kwargs):
        raise FileNotFoundError(f"{missing} not found: pass a shard written by paramgolf-data build")

    monkeypatch.setattr(data, "inspect_shard", not_found)
    assert data.main(["inspect", str(missing), "--tokenizer", str(tmp_path / "t.model")]) == 2
    err = capsys.readouterr().err
    assert err == f"paramgolf-data inspect: error: {missing} not found: pass a shard written by paramgolf-data build\n"


@pytest.mark.slow
def test_train_config_mistakes_are_exit_2_without_traceback(tmp_path):
    for bad, key in (
        (["eval=sliding", "eval.stride=0"], "eval.stride=0"),
        (["arch.mlp._target_=paramgolf.model.mlp.NoSuchMLP"], "paramgolf.model.mlp.NoSuchMLP"),
    ):
        proc = subprocess.run(
            [sys.executable, "-m", "paramgolf.cli.train", "experiment=smoke", "logger=none", *bad],
            cwd=tmp_path,
            env=_env(),
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert proc.returncode == 2, (bad, proc.stderr[-2000:])
        assert proc.stderr.startswith("paramgolf-train: error: ") and key in proc.stderr.splitlines()[0]
        assert "Traceback" not in proc.stderr


# --- (c) typical user mistakes raise UserError -------------------------------------------------------------


def test_bad_quant_rule_is_a_user_error():
    from paramgolf.quant.mixed import QuantRule, as_quant_rule

    with pytest.raises(UserError, match="bits=9"):
        QuantRule("matrices", "int", bits=9)
    with pytest.raises(UserError, match="unknown key"):
        as_quant_rule({"name": "matrices", "scheme": "int", "bitz": 6})


def test_bad_eval_stride_is_a_user_error():
    from paramgolf.evaluation.windows import Sliding

    with pytest.raises(UserError, match="eval.stride"):
        Sliding(stride=0)
    with pytest.raises(UserError, match="eval.stride"):
        Sliding(stride=2048, seq_len=1024).bind(1024)


def test_bad_config_through_build_plan_is_a_user_error():
    from paramgolf.config.compose import compose, setup, to_container
    from paramgolf.runner.plan import build_plan

    setup()
    c = to_container(compose(["experiment=smoke", "logger=none", "quant.quantizer.prune_fraction=2"]))
    with pytest.raises(UserError, match="quant.quantizer.prune_fraction"):
        build_plan(c, 1)


def test_corrupt_files_are_user_errors(tmp_path):
    from paramgolf.data.shards import ShardError, read_shard
    from paramgolf.quant.artifact import ArtifactError, read_artifact, unpack_artifact, write_artifact
    from paramgolf.quant.codecs import Zlib
    from paramgolf.quant.mixed import MixedQuantizer

    assert issubclass(ArtifactError, UserError) and issubclass(ShardError, UserError)

    garbage = tmp_path / "model.pgart"
    garbage.write_bytes(b"not an artifact at all" * 4)
    with pytest.raises(UserError, match="not a paramgolf artifact"):
        read_artifact(garbage)

    qstate = MixedQuantizer([{"name": "all", "scheme": "int", "bits": 8}]).quantize({"w": torch.randn(4, 8)})
    good = tmp_path / "good.pgart"
    write_artifact(good, qstate, {}, Zlib())
    data = bytearray(good.read_bytes())
    data[-5] ^= 0xFF  # a flipped bit in the payload
    with pytest.raises(UserError):
        unpack_artifact(bytes(data), "flipped.pgart")

    shard = tmp_path / "fineweb_train_000000.bin"
    shard.write_bytes(b"\x00" * 100)
    with pytest.raises(UserError):
        read_shard(shard)


@pytest.mark.slow
def test_wallclock_cap_zero_means_no_cap_not_an_error(tmp_path):
    """train.max_wallclock_seconds=0 ("no cap") reached the progress bar as max_seconds=0, which refused it."""
    env = {**_env(), "PARAMGOLF_CACHE": str(tmp_path / "cache")}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "paramgolf.cli.train",
            "experiment=smoke",
            "logger=none",
            "train.iterations=2",
            "train.progress=false",
            "eval.progress=false",
            "train.max_wallclock_seconds=0",
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
