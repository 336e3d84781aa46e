"""Every codec round-trips, and codec_by_name reads any setting of its codec."""
from __future__ import annotations

import os

import hydra.utils
import pytest

from paramgolf.quant.codecs import CODECS, Codec, Lzma, Raw, Zlib, Zstd, codec_by_name

SAMPLES = [b"", b"x", os.urandom(5000), b"parameter golf " * 2000, bytes(range(256)) * 64]


@pytest.mark.parametrize("codec", [Raw(), Zlib(), Zlib(1), Zstd(), Zstd(3), Lzma(), Lzma(6, False, 3, 0, 2)], ids=repr)
def test_round_trip_and_read_back_by_name(codec):
    assert isinstance(codec, Codec)
    for data in SAMPLES:
        packed = codec.compress(data)
        assert codec.decompress(packed) == data
        assert codec_by_name(codec.name).decompress(packed) == data


@pytest.mark.parametrize("name", ["zlib", "zstd", "lzma"])
def test_redundant_data_shrinks(name):
    data = b"parameter golf " * 2000
    assert len(codec_by_name(name).compress(data)) < len(data) // 20


def test_names_and_errors():
    assert sorted(CODECS) == ["lzma", "raw", "zlib", "zstd"]
    with pytest.raises(ValueError, match="brotli"):
        codec_by_name("brotli")
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
