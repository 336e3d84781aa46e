"""Byte codecs for the artifact payload: zlib, zstd, lzma, 7z (py7zr), brotli and no compression.

Each codec writes a self-describing stream, so `codec_by_name(name)` with default
settings can decompress whatever any setting of that codec compressed.
"""

from __future__ import annotations

import io
import lzma
import zlib
from typing import ClassVar, Literal, Protocol, runtime_checkable

import zstandard

from paramgolf.errors import UserError


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
            raise UserError(f"quant.codec.level for zlib must be in 0..9, got {level}")
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
            raise UserError(f"quant.codec.level for zstd must be in 1..22, got {level}")
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
            raise UserError(f"quant.codec.preset for lzma must be in 0..9, got {preset}")
        for key, value, top in (("lc", lc, 8), ("lp", lp, 4), ("pb", pb, 4)):
            if not 0 <= value <= top:
                raise UserError(f"quant.codec.{key} for lzma must be in 0..{top}, got {value}")
        self.preset, self.extreme, self.lc, self.lp, self.pb = preset, extreme, lc, lp, pb

    def __repr__(self) -> str:
        return f"Lzma(preset={self.preset}, extreme={self.extreme}, lc={self.lc}, lp={self.lp}, pb={self.pb})"

    def compress(self, data: bytes) -> bytes:
        preset = self.preset | (lzma.PRESET_EXTREME if self.extreme else 0)
        lzma1 = {"id": lzma.FILTER_LZMA1, "preset": preset, "lc": self.lc, "lp": self.lp, "pb": self.pb}
        return lzma.compress(data, format=lzma.FORMAT_ALONE, filters=[lzma1])

    def decompress(self, data: bytes) -> bytes:
        return lzma.decompress(data, format=lzma.FORMAT_ALONE)


class SevenZip:
    """A real .7z archive (py7zr) holding the payload as one member.

    `method`: lzma2 (preset 0..9), lzma, ppmd (order 2..32, mem 2^mem bytes, 16..31), bzip2 or
    deflate; `filter`: null, bcj (x86 branch converter) or delta (`delta_distance` bytes). The
    archive records its coders and filters, so the default-configured codec reads any of them.
    """

    name: ClassVar[str] = "7z"
    METHODS = ("lzma2", "lzma", "ppmd", "bzip2", "deflate")
    FILTERS = (None, "bcj", "delta")

    def __init__(
        self,
        method: Literal["lzma2", "lzma", "ppmd", "bzip2", "deflate"] = "lzma2",
        preset: int = 9,
        filter: str | None = None,
        delta_distance: int = 1,
        ppmd_order: int = 6,
        ppmd_mem: int = 28,
    ) -> None:
        if method not in self.METHODS:
            raise UserError(f"quant.codec.method for 7z must be one of {', '.join(self.METHODS)}, got {method!r}")
        if filter not in self.FILTERS:
            raise UserError(f"quant.codec.filter for 7z must be null, bcj or delta, got {filter!r}")
        if not 0 <= preset <= 9:
            raise UserError(f"quant.codec.preset for 7z must be in 0..9, got {preset}")
        if not 1 <= delta_distance <= 256:
            raise UserError(f"quant.codec.delta_distance for 7z must be in 1..256, got {delta_distance}")
        if not 2 <= ppmd_order <= 32 or not 16 <= ppmd_mem <= 31:
            raise UserError(
                f"quant.codec.ppmd_order must be in 2..32 and ppmd_mem in 16..31, got {ppmd_order} and {ppmd_mem}"
            )
        self.method, self.preset, self.filter = method, preset, filter
        self.delta_distance, self.ppmd_order, self.ppmd_mem = delta_distance, ppmd_order, ppmd_mem

    def __repr__(self) -> str:
        return (
            f"SevenZip(method={self.method!r}, preset={self.preset}, filter={self.filter!r}"
            + (f", delta_distance={self.delta_distance}" if self.filter == "delta" else "")
            + (f", ppmd_order={self.ppmd_order}, ppmd_mem={self.ppmd_mem}" if self.method == "ppmd" else "")
            + ")"
        )

    def _filters(self) -> list[dict]:
        import py7zr

        chain: list[dict] = []
        if self.filter == "bcj":
            chain.append({"id": py7zr.FILTER_X86})
        elif self.filter == "delta":
            chain.append({"id": py7zr.FILTER_DELTA, "dist": self.delta_distance})
        coder = {
            "lzma2": {"id": py7zr.FILTER_LZMA2, "preset": self.preset},
            "lzma": {"id": py7zr.FILTER_LZMA, "preset": self.preset},
            "ppmd": {"id": py7zr.FILTER_PPMD, "order": self.ppmd_order, "mem": self.ppmd_mem},
            "bzip2": {"id": py7zr.FILTER_BZIP2},
            "deflate": {"id": py7zr.FILTER_DEFLATE},
        }[self.method]
        return chain + [coder]

    def compress(self, data: bytes) -> bytes:
        import py7zr

        buf = io.BytesIO()
        with py7zr.SevenZipFile(buf, "w", filters=self._filters()) as archive:
            archive.writestr(bytes(data), "model")
        blob = buf.getvalue()
        if self.method == "ppmd":  # pyppmd 1.3 can write PPMd streams it cannot read back: check
            try:
                ok = self.decompress(blob) == bytes(data)
            except Exception:  # noqa: BLE001 - any failure to read back means the same thing
                ok = False
            if not ok:
                raise UserError(
                    f"7z ppmd (order {self.ppmd_order}, mem 2^{self.ppmd_mem}) wrote an archive that "
                    f"does not read back (a pyppmd bug on poorly compressible data); raise "
                    f"quant.codec.ppmd_mem or use quant.codec.method=lzma2"
                )
        return blob

    def decompress(self, data: bytes) -> bytes:
        import py7zr
        from py7zr.io import BytesIOFactory

        factory = BytesIOFactory(limit=1 << 34)
        with py7zr.SevenZipFile(io.BytesIO(data), "r") as archive:
            names = archive.getnames()
            if names != ["model"]:
                raise UserError(f"7z payload must hold one member 'model', holds {names}")
            archive.extractall(factory=factory)
        out = factory.get("model")
        out.seek(0)
        return out.read()


class Brotli:
    """Brotli (optional extra: pip install 'paramgolf[brotli]'); quality 0..11, window 2^lgwin."""

    name: ClassVar[str] = "brotli"

    def __init__(self, quality: int = 11, lgwin: int = 24) -> None:
        try:
            import brotli  # noqa: F401
        except ImportError as e:
            raise UserError("quant.codec=brotli needs the brotli package: pip install 'paramgolf[brotli]'") from e
        if not 0 <= quality <= 11:
            raise UserError(f"quant.codec.quality for brotli must be in 0..11, got {quality}")
        if not 10 <= lgwin <= 24:
            raise UserError(f"quant.codec.lgwin for brotli must be in 10..24, got {lgwin}")
        self.quality, self.lgwin = quality, lgwin

    def __repr__(self) -> str:
        return f"Brotli(quality={self.quality}, lgwin={self.lgwin})"

    def compress(self, data: bytes) -> bytes:
        import brotli

        return brotli.compress(bytes(data), quality=self.quality, lgwin=self.lgwin)

    def decompress(self, data: bytes) -> bytes:
        import brotli

        return brotli.decompress(data)


CODECS: dict[str, type] = {c.name: c for c in (Raw, Zlib, Zstd, Lzma, SevenZip, Brotli)}


def codec_by_name(name: str) -> Codec:
    """A default-configured codec for the name an artifact header records."""
    if name not in CODECS:
        raise UserError(f"unknown codec {name!r}; known codecs: {sorted(CODECS)}")
    return CODECS[name]()
