"""Static import closure and code bytes, on real paramgolf modules and on a fake package."""

from __future__ import annotations

import importlib
import textwrap
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from paramgolf.quant.accounting import code_bytes, import_closure, module_file, roots_from_config

FAKE = {
    "__init__.py": "",
    "a.py": """
        import os, json
        from . import b
        import fakegolf.sub.c as c
        from fakegolf.sub.c import Foo  # a class: counts its module only

        def later():
            from .d import thing  # imports inside functions still count
            return thing
    """,
    "b.py": """
        from typing import TYPE_CHECKING
        from fakegolf.sub import e
        if TYPE_CHECKING:
            from fakegolf import tc_only  # never runs: not counted
        else:
            from fakegolf import runtime_only
    """,
    "sub/__init__.py": "from .. import shared\n",
    "sub/c.py": "class Foo:\n    pass\n",
    "sub/e.py": "X = 1\n",
    "d.py": "thing = 2\n",
    "shared.py": "",
    "runtime_only.py": "",
    "tc_only.py": "",
    "unrelated.py": "from fakegolf import a\n",
    "broken.py": "from ... import nothing\n",
}
EXPECTED = [
    "fakegolf",
    "fakegolf.a",
    "fakegolf.b",
    "fakegolf.d",
    "fakegolf.runtime_only",
    "fakegolf.shared",
    "fakegolf.sub",
    "fakegolf.sub.c",
    "fakegolf.sub.e",
]


@pytest.fixture
def fake_package(tmp_path, monkeypatch) -> Path:
    root = tmp_path / "fakegolf"
    for rel, text in FAKE.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.invalidate_caches()
    return root


def test_fake_package_closure_edges(fake_package):
    closure = import_closure(["fakegolf.a"], package="fakegolf")
    assert closure == EXPECTED  # unrelated, tc_only and broken are out
    sub_e = import_closure(["fakegolf.sub.e"], package="fakegolf")
    assert sub_e == ["fakegolf", "fakegolf.shared", "fakegolf.sub", "fakegolf.sub.e"]


def test_fake_package_bytes_are_deterministic(fake_package):
    expected = sum(module_file(m, "fakegolf").stat().st_size for m in EXPECTED)
    assert code_bytes(["fakegolf.a"], package="fakegolf") == expected
    assert code_bytes(["fakegolf.b", "fakegolf.a", "fakegolf.a"], package="fakegolf") == expected
    (fake_package / "unrelated.py").write_text("# grows, but nobody imports it\n" * 50)
    assert code_bytes(["fakegolf.a"], package="fakegolf") == expected
    (fake_package / "d.py").write_text("thing = 22\n")
    assert code_bytes(["fakegolf.a"], package="fakegolf") == expected + 1


def test_errors(fake_package):
    with pytest.raises(ValueError, match="fakegolf.missing"):
        import_closure(["fakegolf.missing"], package="fakegolf")
    with pytest.raises(ValueError, match="relative import"):
        import_closure(["fakegolf.broken"], package="fakegolf")
    with pytest.raises(ValueError, match="no_such_package"):
        import_closure(["no_such_package.x"], package="no_such_package")


def test_real_paramgolf_closure():
    closure = import_closure(["paramgolf.quant.artifact"])
    assert closure == sorted(closure)
    needed = [
        "paramgolf",
        "paramgolf.quant",
        "paramgolf.quant.artifact",
        "paramgolf.quant.codecs",
        "paramgolf.quant.schemes",
    ]
    assert set(needed) <= set(closure)
    assert "paramgolf.quant.estimate" not in closure and "paramgolf.quant.accounting" not in closure
    assert "paramgolf.quant.artifact" in import_closure(["paramgolf.quant.estimate"])
    files = [module_file(m) for m in closure]
    assert code_bytes(["paramgolf.quant.artifact"]) == sum(f.stat().st_size for f in files)


def test_roots_from_config():
    cfg = {
        "quant": {"_target_": "paramgolf.quant.mixed.MixedQuantizer", "table": []},
        "codecs": [{"_target_": "paramgolf.quant.codecs.Zlib"}, {"_target_": "paramgolf.quant.codecs.Zstd"}],
        "optimizer": {"_target_": "torch.optim.AdamW", "_partial_": True},
        "deep": {"x": [{"y": {"_target_": "paramgolf.quant.artifact.pack_artifact"}}]},
        "pkg_attr": {"_target_": "paramgolf.quant.SomethingExported"},
        "not_a_target": "paramgolf.quant.estimate",
    }
    expected = ["paramgolf.quant", "paramgolf.quant.artifact", "paramgolf.quant.codecs", "paramgolf.quant.mixed"]
    assert roots_from_config(cfg) == expected
    assert roots_from_config(OmegaConf.create(cfg)) == expected
    assert roots_from_config({"a": {"_target_": "torch.nn.Linear"}}) == []
