"""paramgolf-eval's command line (issue 10: its usage named an optional argument as required)."""

from __future__ import annotations

import pytest

from paramgolf.cli.eval import main


def test_without_arguments_only_the_run_directory_is_named_as_required(capsys):
    with pytest.raises(SystemExit) as exit_:
        main([])
    err = capsys.readouterr().err
    assert exit_.value.code == 2
    assert err.strip().splitlines()[-1] == "paramgolf-eval: error: the following arguments are required: RUN_DIR"
    assert "[OVERRIDE ...]" in err  # the overrides are shown as optional, and are


def test_a_missing_run_directory_is_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        main([str(tmp_path / "nowhere"), "eval=sliding"])
    assert exit_.value.code == 2
    assert (
        capsys.readouterr().err.strip() == f"paramgolf-eval: error: run directory {tmp_path / 'nowhere'} does not exist"
    )
