"""Byte codecs for the artifact payload: zlib, zstd, lzma and no compression.

Each codec writes a self-describing stream, so `codec_by_name(name)` with default
settings can decompress whatever any setting of that codec compressed.
"""
from __future__ import annotations

import lzma
import zlib
from typing import ClassVar, Protocol, runtime_checkable

import zstandard


@runtime_checkable
class Codec(Protocol):
    """compress/decompress bytes; `name` is what the artifact header records."""

    name: str

    def compress(self, data: bytes) -> bytes: ...

    def decompress(self, data: bytes) -> bytes: ...


class Raw:
    """No compression (for measuring what the codecs buy)."""

    name: ClassVar[str] = "raw"

    def __repr__(self) -> str:
        return "Raw()"

    def compress(self, data: bytes) -> bytes:
        return bytes(data)

    def decompress(self, data: bytes) -> bytes:
        return bytes(data)


class Zlib:
    """DEFLATE via zlib, as in the official baseline (level 9)."""

    name: ClassVar[str] = "zlib"

    def __init__(self, level: int = 9) -> None:
        if not 0 <= level <= 9:
            raise ValueError(f"quant.codec.level for zlib must be in 0..9, got {level}")
        self.level = level

    def __repr__(self) -> str:
        return f"Zlib(level={self.level})"

    def compress(self, data: bytes) -> bytes:
        return zlib.compress(data, self.level)

    def decompress(self, data: bytes) -> bytes:
        return zlib.decompress(data)


class Zstd:
    """Zstandard; levels 20..22 are the 'ultra' levels with the largest windows."""

    name: ClassVar[str] = "zstd"

    def __init__(self, level: int = 22) -> None:
        if not 1 <= level <= 22:
            raise ValueError(f"quant.codec.level for zstd must be in 1..22, got {level}")
        self.level = level

    def __repr__(self) -> str:
        return f"Zstd(level={self.level})"

    def compress(self, data: bytes) -> bytes:
        # The frame records its content size, so decompression needs no size hint.
        cctx = zstandard.ZstdCompressor(level=self.level, write_content_size=True, write_checksum=False)
        return cctx.compress(data)

    def decompress(self, data: bytes) -> bytes:
        return zstandard.ZstdDecompressor().decompress(data)


class Lzma:
    """LZMA1 in the .lzma ('alone') container: 13 header bytes, properties included.

    Defaults are preset 9 + extreme and lc=lp=pb=0. Quantized weights are close to
    i.i.d. bytes, so the previous byte (lc) and the byte position (lp, pb) only
    split the adaptive statistics: on int8 per-row weights lc=lp=pb=0 was 0.06%
    smaller than the stock lc=3/pb=2, and the .lzma container 0.02% smaller than
    .xz (which adds block and index records). The artifact has its own checksum.
    """

    name: ClassVar[str] = "lzma"

    def __init__(self, preset: int = 9, extreme: bool = True, lc: int = 0, lp: int = 0, pb: int = 0) -> None:
        if not 0 <= preset <= 9:
            raise ValueError(f"quant.codec.preset for lzma must be in 0..9, got {preset}")
        for key, value, top in (("lc", lc, 8), ("lp", lp, 4), ("pb", pb, 4)):
            if not 0 <= value <= top:
                raise ValueError(f"quant.codec.{key} for lzma must be in 0..{top}, got {value}")
        self.preset, self.extreme, self.lc, self.lp, self.pb = preset, extreme, lc, lp, pb

    def __repr__(self) -> str:
        return f"Lzma(preset={self.preset}, extreme={self.extreme}, lc={self.lc}, lp={self.lp}, pb={self.pb})"

    def compress(self, data: bytes) -> bytes:
        preset = self.preset | (lzma.PRESET_EXTREME if self.extreme else 0)
        lzma1 = {"id": lzma.FILTER_LZMA1, "preset": preset, "lc": self.lc, "lp": self.lp, "pb": self.pb}
        return lzma.compress(data, format=lzma.FORMAT_ALONE, filters=[lzma1])

    def decompress(self, data: bytes) -> bytes:
        return lzma.decompress(data, format=lzma.FORMAT_ALONE)


CODECS: dict[str, type] = {c.name: c for c in (Raw, Zlib, Zstd, Lzma)}


def codec_by_name(name: str) -> Codec:
    """A default-configured codec for the name an artifact header records."""
    if name not in CODECS:
        raise ValueError(f"unknown codec {name!r}; known codecs: {sorted(CODECS)}")
    return CODECS[name]()
