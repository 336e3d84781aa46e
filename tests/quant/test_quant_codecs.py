"""Every codec round-trips, and codec_by_name reads any setting of its codec."""

from __future__ import annotations

import os

import hydra.utils
import pytest

from paramgolf.quant.codecs import CODECS, Brotli, Codec, Lzma, Raw, SevenZip, Zlib, Zstd, codec_by_name

SAMPLES = [b"", b"x", os.urandom(5000), b"parameter golf " * 2000, bytes(range(256)) * 64]


def _brotli(*args):
    pytest.importorskip("brotli")
    return Brotli(*args)


SEVEN = [
    SevenZip(),
    SevenZip("lzma2", 1),
    SevenZip("lzma"),
    SevenZip("ppmd"),
    SevenZip("ppmd", ppmd_order=16, ppmd_mem=24),
    SevenZip("bzip2"),
    SevenZip("deflate"),
    SevenZip(filter="bcj"),
    SevenZip(filter="delta", delta_distance=4),
]


@pytest.mark.parametrize(
    "codec",
    [Raw(), Zlib(), Zlib(1), Zstd(), Zstd(3), Zstd(22), Lzma(), Lzma(6, False, 3, 0, 2), Lzma(9, True)],
    ids=repr,
)
def test_round_trip_and_read_back_by_name(codec):
    assert isinstance(codec, Codec)
    for data in SAMPLES:
        packed = codec.compress(data)
        assert codec.decompress(packed) == data
        assert codec_by_name(codec.name).decompress(packed) == data


@pytest.mark.parametrize("codec", SEVEN, ids=repr)
def test_7z_round_trips_and_reads_back_by_name(codec):
    # Each 7z call is a child process (see test_codec_isolation.py): one payload holding every sample.
    data = b"".join(SAMPLES)
    assert codec_by_name("7z").decompress(codec.compress(data)) == data


def test_7z_round_trips_nothing():
    assert SevenZip().decompress(SevenZip().compress(b"")) == b""


def test_brotli_round_trips():
    for codec in (_brotli(), _brotli(5, 16)):
        for data in SAMPLES:
            assert codec_by_name("brotli").decompress(codec.compress(data)) == data


@pytest.mark.parametrize(
    "bad, match",
    [
        (dict(method="lz4"), "method"),
        (dict(filter="arm"), "filter"),
        (dict(preset=10), "preset"),
        (dict(delta_distance=0), "delta_distance"),
        (dict(ppmd_mem=40), "ppmd_mem"),
    ],
)
def test_7z_settings_are_checked(bad, match):
    with pytest.raises(ValueError, match=f"quant.codec.*{match}"):
        SevenZip(**bad)


def test_7z_is_a_real_archive():
    import io

    import py7zr

    blob = SevenZip("ppmd").compress(b"parameter golf " * 100)
    assert blob[:6] == b"7z\xbc\xaf\x27\x1c"
    with py7zr.SevenZipFile(io.BytesIO(blob)) as z:
        assert z.getnames() == ["model"]


@pytest.mark.parametrize("name", ["zlib", "zstd", "lzma", "7z"])
def test_redundant_data_shrinks(name):
    data = b"parameter golf " * 2000
    assert len(codec_by_name(name).compress(data)) < len(data) // 20


def test_names_and_errors():
    assert sorted(CODECS) == ["7z", "brotli", "brotli_shuffle", "lzma", "pergroup", "raw", "zlib", "zstd"]
    with pytest.raises(ValueError, match="unknown codec 'lz4'"):
        codec_by_name("lz4")
    for bad in (lambda: Zlib(10), lambda: Zstd(0), lambda: Zstd(23), lambda: Lzma(10), lambda: Lzma(lc=9)):
        with pytest.raises(ValueError):
            bad()


def test_hydra_instantiates_each_codec():
    for target, kwargs, cls in [
        ("Zlib", {"level": 6}, Zlib),
        ("Zstd", {"level": 19}, Zstd),
        ("Lzma", {"preset": 7, "extreme": False}, Lzma),
        ("Raw", {}, Raw),
    ]:
        codec = hydra.utils.instantiate({"_target_": f"paramgolf.quant.codecs.{target}", **kwargs})
        assert isinstance(codec, cls)
        for key, value in kwargs.items():
            assert getattr(codec, key) == value


@pytest.mark.parametrize("codec", [SevenZip("ppmd"), SevenZip(filter="delta"), Zstd(22), Lzma(9, True)], ids=repr)
def test_artifacts_written_with_each_codec_read_back_exactly(codec, tmp_path):
    import torch

    from paramgolf.quant.artifact import read_artifact, write_artifact
    from paramgolf.quant.mixed import MixedQuantizer

    state = {"w": torch.randn(64, 48), "g": torch.rand(48)}
    q = MixedQuantizer([{"name": "v", "scheme": "fp32", "ndim": 1}, {"name": "m", "scheme": "int", "bits": 6}])
    qstate = q.quantize(state)
    size = write_artifact(tmp_path / "a.pgart", qstate, {"x": 1}, codec)
    art = read_artifact(tmp_path / "a.pgart")
    assert size == (tmp_path / "a.pgart").stat().st_size and art.arch_config == {"x": 1}
    assert torch.equal(art.state_dict["g"], state["g"])
    assert (art.state_dict["w"] - state["w"]).abs().max() < 0.1


@pytest.mark.slow
def test_budget_all_codecs_lists_every_codec_on_the_same_state(monkeypatch, tmp_path):
    from paramgolf.config.compose import compose, setup, to_container
    from paramgolf.runner.budget import budget_report

    setup()
    c = to_container(compose(["experiment=smoke"]))
    out = budget_report(c, all_codecs=True)
    rows = out["codecs"]
    names = [r["settings"] for r in rows]
    assert len(names) == len(set(names)) >= 10
    assert [r["model_bytes"] for r in rows] == sorted(r["model_bytes"] for r in rows)
    zlib_row = next(r for r in rows if r["settings"] == "Zlib(level=9)")
    # the headline estimate samples rows and extrapolates; the table compresses everything
    assert abs(zlib_row["model_bytes"] - out["estimated_model_bytes"]) / out["estimated_model_bytes"] < 0.01
    assert all(r["artifact_bytes"] == r["model_bytes"] + out["code_bytes"] for r in rows)
    assert rows[-1]["codec"] == "raw"
