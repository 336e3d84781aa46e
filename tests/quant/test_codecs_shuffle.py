"""Byte-shuffle + brotli (FRONTIER F9): the record's stride transpose, an exact round trip, its own codec name."""

from __future__ import annotations

import os

import pytest

from paramgolf.quant.codecs import CODECS, OversizedPayload, byte_shuffle, byte_unshuffle, codec_by_name

brotli = pytest.importorskip("brotli")
from paramgolf.quant.codecs import Brotli  # noqa: E402


def test_the_shuffle_is_the_records_stride_transpose():
    # out = b[0::s] + b[1::s] + ...: every word's first byte, then every word's second byte.
    assert byte_shuffle(b"abcdefg", 2) == b"acegbdf"
    assert byte_shuffle(b"abcdefgh", 3) == b"adgbehcf"
    assert byte_shuffle(b"\x01\x00\x02\x00\x03\x00", 2) == b"\x01\x02\x03\x00\x00\x00"  # fp16 low bytes first
    assert byte_unshuffle(b"adgbehcf", 3) == b"abcdefgh"


@pytest.mark.parametrize("stride", [2, 3, 4, 7])
def test_unshuffle_inverts_for_every_length(stride):
    for n in range(0, 3 * stride + 2):  # lengths divisible by the stride and not
        data = os.urandom(n)
        assert len(byte_shuffle(data, stride)) == n
        assert byte_unshuffle(byte_shuffle(data, stride), stride) == data


def test_brotli_shuffle_stream_round_trips_and_reads_back_by_name():
    for stride in (2, 3):
        codec = Brotli(quality=5, shuffle=stride)
        assert codec.name == "brotli_shuffle"
        for data in (b"", b"x", b"abc", os.urandom(5001), bytes(range(256)) * 33):
            blob = codec.compress(data)
            assert blob[:5] == b"BSHF" + bytes([stride])
            assert brotli.decompress(blob[5:]) == byte_shuffle(data, stride)
            assert codec_by_name("brotli_shuffle").decompress(blob) == data


def test_plain_brotli_is_unchanged_and_the_two_streams_are_not_confused():
    data = b"parameter golf " * 100
    assert Brotli().name == "brotli" and Brotli().compress(data) == brotli.compress(data, quality=11, lgwin=24)
    with pytest.raises(ValueError, match="BSHF"):
        codec_by_name("brotli_shuffle").decompress(Brotli().compress(data))
    assert "brotli_shuffle" in CODECS and "pergroup" in CODECS


def test_brotli_shuffle_refuses_past_its_limit_and_bad_strides():
    data = bytes(100_000)
    blob = Brotli(quality=1, shuffle=2).compress(data)
    with pytest.raises(OversizedPayload):
        codec_by_name("brotli_shuffle").decompress(blob, len(data) - 1)
    for bad in (0, 256):
        with pytest.raises(ValueError, match="quant.codec.shuffle"):
            Brotli(shuffle=bad)


def test_the_config_option_composes_to_a_stride_2_shuffle():
    from hydra.utils import instantiate

    from paramgolf.config.compose import compose

    codec = instantiate(compose(["quant/codec=brotli_shuffle"]).quant.codec)
    assert isinstance(codec, Brotli) and codec.shuffle == 2 and codec.quality == 11 and codec.lgwin == 24
