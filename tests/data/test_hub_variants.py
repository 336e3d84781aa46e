"""The published SP4096/SP8192 and CaseOps variants: their repos, file plans and byte sidecars (fake Hub on disk)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

import paramgolf.data.hub as hub
from paramgolf.data.dataset import FineWebData
from paramgolf.data.manifest import read_manifest
from paramgolf.data.shards import write_shard
from paramgolf.errors import UserError

CASEOPS = "sp8192_lossless_caps_caseops_v1_reserved"


def test_variant_names_and_their_repos():
    assert hub.dataset_name_for_variant("sp8192") == "fineweb10B_sp8192"
    assert hub.dataset_name_for_variant(CASEOPS) == f"fineweb10B_{CASEOPS}"
    for bad in ("sp", "sp_x", "spx_caseops", "sp8192_", "gpt2"):
        with pytest.raises(UserError, match="unknown --variant"):
            hub.dataset_name_for_variant(bad)
    assert hub.repo_for_variant("sp1024") == "willdepueoai/parameter-golf"
    assert hub.repo_for_variant("sp4096") == hub.repo_for_variant("sp8192") == "kevclark/parameter-golf"
    assert hub.repo_for_variant(CASEOPS) == "romeerp/parameter-golf-caseops-v1"
    assert hub.repo_for_variant(CASEOPS, "me/mirror") == "me/mirror"


def _caseops_manifest(files_val: int, files_train: int) -> dict:
    """The shape of romeerp/parameter-golf-caseops-v1's datasets/manifest.json."""
    return {
        "datasets": [
            {
                "name": f"fineweb10B_{CASEOPS}",
                "tokenizer_name": "sp_bpe_8192_lossless_caps_caseops_v1_reserved",
                "stats": {"files_train": files_train, "files_val": files_val},
                "val_bytes_glob": "fineweb_val_bytes_*.bin",
            }
        ],
        "tokenizers": [
            {
                "name": "sp_bpe_8192_lossless_caps_caseops_v1_reserved",
                "model_path": "tokenizers/fineweb_8192_bpe_lossless_caps_caseops_v1_reserved.model",
                "vocab_path": "tokenizers/fineweb_8192_bpe_lossless_caps_caseops_v1_reserved.vocab",
                "text_transform": "lossless_caps_caseops_v1",
            }
        ],
    }


def test_the_caseops_plan_fetches_a_sidecar_per_val_shard():
    files = hub.plan_files(_caseops_manifest(2, 80), CASEOPS, 3, False, "romeerp/parameter-golf-caseops-v1")
    prefix = f"datasets/datasets/fineweb10B_{CASEOPS}"
    assert files == [
        f"{prefix}/fineweb_val_000000.bin",
        f"{prefix}/fineweb_val_000001.bin",
        f"{prefix}/fineweb_val_bytes_000000.bin",
        f"{prefix}/fineweb_val_bytes_000001.bin",
        f"{prefix}/fineweb_train_000000.bin",
        f"{prefix}/fineweb_train_000001.bin",
        f"{prefix}/fineweb_train_000002.bin",
        "datasets/tokenizers/fineweb_8192_bpe_lossless_caps_caseops_v1_reserved.model",
        "datasets/tokenizers/fineweb_8192_bpe_lossless_caps_caseops_v1_reserved.vocab",
    ]


@pytest.fixture
def fake_hub(tmp_path, monkeypatch, tiny_tokenizers):
    """Two repos on disk: the CaseOps one (tokenizer with the operators) and a kevclark-like sp8192 one."""
    from paramgolf.data import caseops
    from paramgolf.data.tokenizer import train_sentencepiece

    repos = {}
    root = tmp_path / "romeerp"
    ds = root / f"datasets/datasets/fineweb10B_{CASEOPS}"
    write_shard(ds / "fineweb_val_000000.bin", [1, 5, 6, 7])
    write_shard(ds / "fineweb_val_bytes_000000.bin", [0, 1, 3, 2])
    write_shard(ds / "fineweb_train_000000.bin", [1, 8, 9])
    tok = root / "datasets/tokenizers"
    texts = [caseops.encode("The Quick BROWN fox jumps over the lazy dog " * 20)] * 5
    model = train_sentencepiece(texts, 300, tmp_path / "caseops_tok", user_defined_symbols=caseops.OPERATORS)
    tok.mkdir(parents=True)
    shutil.copyfile(model, tok / "fineweb_8192_bpe_lossless_caps_caseops_v1_reserved.model")
    (tok / "fineweb_8192_bpe_lossless_caps_caseops_v1_reserved.vocab").write_text("vocab")
    (root / "datasets/manifest.json").write_text(json.dumps(_caseops_manifest(1, 1)))
    repos["romeerp/parameter-golf-caseops-v1"] = root

    root = tmp_path / "kevclark"
    ds = root / "datasets/datasets/fineweb10B_sp8192"
    write_shard(ds / "fineweb_val_000000.bin", [1, 5, 6, 7])
    (root / "datasets/tokenizers").mkdir(parents=True)
    shutil.copyfile(tiny_tokenizers[0], root / "datasets/tokenizers/fineweb_8192_bpe.model")
    manifest = {
        "datasets": [
            {"name": "fineweb10B_sp8192", "tokenizer_name": "sp8192", "stats": {"files_train": 0, "files_val": 1}}
        ],
        "tokenizers": [{"name": "sp8192", "model_path": "tokenizers/fineweb_8192_bpe.model"}],
    }
    (root / "datasets/manifest.json").write_text(json.dumps(manifest))
    repos["kevclark/parameter-golf"] = root
    calls: list[tuple[str, str]] = []

    def fake_download(repo_id: str, remote_path: str, force: bool = False) -> Path:
        calls.append((repo_id, remote_path))
        path = repos[repo_id] / remote_path
        if not path.is_file():
            raise FileNotFoundError(remote_path)
        return path

    monkeypatch.setattr(hub, "_hub_download", fake_download)
    return calls


def test_download_caseops_and_sp8192_into_one_directory(fake_hub, tmp_path):
    out = tmp_path / "data"
    summary = hub.download(CASEOPS, train_shards=1, out=out, progress=False)  # the repo follows the variant
    ds = Path(summary["dataset_dir"])
    assert {r for r, _ in fake_hub} == {"romeerp/parameter-golf-caseops-v1"}
    assert (ds / "fineweb_val_bytes_000000.bin").is_file()
    assert read_manifest(ds)["text_transform"] == "caseops"
    model = out / "tokenizers/fineweb_8192_bpe_lossless_caps_caseops_v1_reserved.model"
    info = FineWebData(str(ds), str(model)).resolve()
    assert info.text_transform == "caseops" and [f.name for f in info.val_byte_files] == [
        "fineweb_val_bytes_000000.bin"
    ]
    assert info.byte_table().count_stream(info.validation_tokens(1)) == 1 + 3 + 2

    # another repo's variant into the same directory: its own manifest is fetched, not the cached one
    fake_hub.clear()
    sp8192 = hub.download("sp8192", train_shards=0, out=out, progress=False)
    assert fake_hub[0] == ("kevclark/parameter-golf", "datasets/manifest.json")
    assert "text_transform" not in read_manifest(sp8192["dataset_dir"])
    # and back: the CaseOps files are all there, only the manifest is fetched again
    fake_hub.clear()
    again = hub.download(CASEOPS, train_shards=1, out=out, progress=False)
    assert fake_hub == [("romeerp/parameter-golf-caseops-v1", "datasets/manifest.json")] and not again["downloaded"]
