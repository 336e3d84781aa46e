"""Manifest-driven download, against a fake Hub repository on disk."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

import paramgolf.data.hub as hub
from paramgolf.cli.data import main
from paramgolf.data.dataset import FineWebData
from paramgolf.data.manifest import read_manifest
from paramgolf.data.shards import ShardError, read_shard, write_shard
from paramgolf.data.tokenizer import file_sha256
from paramgolf.errors import UserError

REPO = "someone/parameter-golf"


@pytest.fixture
def fake_repo(tmp_path, monkeypatch, tiny_tokenizers):
    """A repo tree like willdepueoai/parameter-golf, served by a stand-in for hf_hub_download."""
    root = tmp_path / "repo"
    ds = root / "datasets/datasets/fineweb10B_sp1024"
    for i in range(2):
        write_shard(ds / f"fineweb_val_{i:06d}.bin", [1, 5, 6, i])
    for i in range(3):
        write_shard(ds / f"fineweb_train_{i:06d}.bin", [1, 7, 8, 9, i])
    tok = root / "datasets/tokenizers"
    tok.mkdir(parents=True)
    shutil.copyfile(tiny_tokenizers[0], tok / "fineweb_1024_bpe.model")
    (tok / "fineweb_1024_bpe.vocab").write_text("vocab")
    (root / "datasets/docs_selected.jsonl").write_text('{"text": "x"}\n')
    (root / "datasets/docs_selected.source_manifest.json").write_text("{}")
    manifest = {
        "datasets": [
            {"name": "fineweb10B_sp1024", "tokenizer_name": "sp_bpe_1024", "stats": {"files_train": 3, "files_val": 2}}
        ],
        "tokenizers": [
            {
                "name": "sp_bpe_1024",
                "model_path": "tokenizers/fineweb_1024_bpe.model",
                "vocab_path": "tokenizers/fineweb_1024_bpe.vocab",
            }
        ],
    }
    (root / "datasets/manifest.json").write_text(json.dumps(manifest))
    calls: list[str] = []

    def fake_download(repo_id: str, remote_path: str, force: bool = False) -> Path:
        assert repo_id == REPO
        calls.append(remote_path + (" (forced)" if force else ""))
        path = root / remote_path
        if not path.is_file():
            raise FileNotFoundError(remote_path)
        return path

    monkeypatch.setattr(hub, "_hub_download", fake_download)
    return root, calls


def test_download_and_resume(fake_repo, tmp_path, tiny_tokenizers):
    root, calls = fake_repo
    out = tmp_path / "data"
    summary = hub.download("sp1024", train_shards=2, out=out, repo_id=REPO, progress=False)
    ds = out / "datasets/fineweb10B_sp1024"
    assert summary["dataset_dir"] == str(ds)
    assert sorted(p.name for p in ds.iterdir()) == [
        "fineweb_train_000000.bin",
        "fineweb_train_000001.bin",
        "fineweb_val_000000.bin",
        "fineweb_val_000001.bin",
        "manifest.json",
    ]
    assert read_shard(ds / "fineweb_train_000001.bin").tolist() == [1, 7, 8, 9, 1]
    model = out / "tokenizers/fineweb_1024_bpe.model"
    assert model.read_bytes() == tiny_tokenizers[0].read_bytes()
    assert (out / "tokenizers/fineweb_1024_bpe.vocab").is_file()
    assert (out / "manifest.json").is_file() and not (out / "docs_selected.jsonl").exists()  # the repo's
    assert len(summary["downloaded"]) == 6 and summary["skipped"] == []
    # the dataset's own manifest records the tokenizer that came with it, and no other is accepted
    assert read_manifest(ds) == {"tokenizer": model.name, "tokenizer_sha256": file_sha256(model), "vocab_size": 300}
    FineWebData(str(ds), str(model)).resolve()
    with pytest.raises(UserError, match=r"tokenizer mismatch: .*tok1.model.*fineweb10B_sp1024/manifest.json"):
        FineWebData(str(ds), str(tiny_tokenizers[1])).resolve()

    # a second run downloads nothing
    calls.clear()
    again = hub.download("sp1024", train_shards=2, out=out, repo_id=REPO, progress=False)
    assert calls == [] and again["downloaded"] == [] and len(again["skipped"]) == 6

    # a truncated local shard is fetched afresh; asking for more shards fetches only the new one
    shard = ds / "fineweb_train_000000.bin"
    data = shard.read_bytes()
    shard.unlink()  # (writing in place would also damage the linked source file)
    shard.write_bytes(data[:-2])
    more = hub.download("sp1024", train_shards=3, out=out, repo_id=REPO, progress=False, with_docs=True)
    assert sorted(Path(p).name for p in more["downloaded"]) == [
        "docs_selected.jsonl",
        "docs_selected.source_manifest.json",
        "fineweb_train_000000.bin",
        "fineweb_train_000002.bin",
    ]
    assert read_shard(shard).tolist() == [1, 7, 8, 9, 0]
    assert "datasets/datasets/fineweb10B_sp1024/fineweb_train_000000.bin (forced)" in calls
    assert not list(out.rglob("*.part"))


def test_too_many_shards_and_unknown_variant(fake_repo, tmp_path):
    out = tmp_path / "data"
    with pytest.raises(ValueError, match=r"--train-shards=4 but fineweb10B_sp1024 .* has only 3"):
        hub.download("sp1024", train_shards=4, out=out, repo_id=REPO, progress=False)
    with pytest.raises(ValueError, match="fineweb10B_sp4096 is not in the manifest"):
        hub.download("sp4096", train_shards=1, out=out, repo_id=REPO, progress=False)
    with pytest.raises(ValueError, match="unknown --variant 'gpt2'"):
        hub.download("gpt2", train_shards=1, out=out, repo_id=REPO, progress=False)
    assert not (out / "datasets").exists()


def test_corrupt_download_never_lands(fake_repo, tmp_path):
    root, _ = fake_repo
    bad = root / "datasets/datasets/fineweb10B_sp1024/fineweb_val_000001.bin"
    bad.write_bytes(bad.read_bytes()[:-1])
    out = tmp_path / "data"
    with pytest.raises(ShardError, match="size mismatch"):
        hub.download("sp1024", train_shards=0, out=out, repo_id=REPO, progress=False)
    ds = out / "datasets/fineweb10B_sp1024"
    assert [p.name for p in ds.iterdir()] == ["fineweb_val_000000.bin"]


def test_cli_download(fake_repo, tmp_path, capsys):
    out = tmp_path / "data"
    argv = ["download", "--variant", "sp1024", "--train-shards", "1", "--out", str(out), "--repo-id", REPO]
    assert main(argv) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["downloaded"] == 5 and summary["skipped"] == 0
    assert main(argv[:4] + ["9"] + argv[5:]) == 2
    assert "has only 3 training shards" in capsys.readouterr().err


def _closed_port() -> int:
    """A local TCP port with nothing listening on it (connections are refused at once)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("offline_flag", [False, True])
def test_download_without_a_reachable_hub_says_so_in_one_line(tmp_path, offline_flag):
    """The real CLI and huggingface_hub, in a subprocess, with the Hub out of reach."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    env.update(HF_HOME=str(tmp_path / "hf_home"), HF_ENDPOINT=f"http://127.0.0.1:{_closed_port()}")
    if offline_flag:
        env["HF_HUB_OFFLINE"] = "1"
    out = tmp_path / "data"
    cmd = [sys.executable, "-m", "paramgolf.cli.data", "download", "--train-shards", "1", "--out", str(out)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr
    assert proc.stdout == "" and len(proc.stderr.splitlines()) == 1, proc.stderr  # no retry chatter, no traceback
    if offline_flag:
        assert "HF_HUB_OFFLINE is set" in proc.stderr and "unset HF_HUB_OFFLINE" in proc.stderr
    else:
        assert f"cannot reach the Hugging Face Hub at {env['HF_ENDPOINT']}" in proc.stderr
        assert "check the network connection" in proc.stderr
    assert not out.exists()
