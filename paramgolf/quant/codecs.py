"""Byte codecs for the artifact payload: zlib, zstd, lzma, 7z (py7zr), brotli (optionally after a
byte shuffle), per-group lrzip/ZPAQ (`paramgolf.quant.pergroup`) and no compression.

Each codec writes a self-describing stream, so `codec_by_name(name)` with default
settings can decompress whatever any setting of that codec compressed. Decompression
never produces more than `max_size` bytes (a file that would is a decompression bomb),
and 7z runs in a child process, because pyppmd can crash the interpreter (`run_isolated`).
"""

from __future__ import annotations

import io
import lzma
import pickle
import signal
import subprocess
import sys
import zlib
from collections.abc import Callable
from typing import ClassVar, Literal, Protocol, runtime_checkable

import numpy as np
import zstandard

from paramgolf.errors import UserError

# The most any payload may decompress to. The budget is 16,000,000 bytes for code and compressed
# model together, and the largest preset's payload (pr754, bit-packed) is 21 MB uncompressed:
# a stream that expands past 256 MiB is a damaged or crafted file, never a model.
MAX_PAYLOAD_BYTES = 256 << 20
_CHUNK = 1 << 20  # output per step of the streaming decompressors


class OversizedPayload(UserError):
    """A stream that decompresses to more than the caller allows; at most about `max_size` bytes were produced."""

    def __init__(self, max_size: int) -> None:
        super().__init__(f"decompresses to more than {max_size:,} bytes")
        self.max_size = max_size


@runtime_checkable
class Codec(Protocol):
    """compress/decompress bytes; `name` is what the artifact header records.

    `decompress` raises `OversizedPayload` rather than return more than `max_size` bytes.
    """

    name: str

    def compress(self, data: bytes) -> bytes: ...

    def decompress(self, data: bytes, max_size: int = MAX_PAYLOAD_BYTES) -> bytes: ...


def _checked(out: bytes | bytearray, max_size: int, finished: bool) -> bytes:
    """A decompressor's output, refused when over max_size or when its stream did not end."""
    if len(out) > max_size:
        raise OversizedPayload(max_size)
    if not finished:
        raise ValueError("the compressed stream is truncated")
    return bytes(out)


def _drain(
    first: bytes, more: Callable[[], bytes], finished: Callable[[], bool], max_size: int, cut_is_end: bool = False
) -> bytes:
    """Collect a streaming decompressor's output chunk by chunk (`first`, then `more()` until the
    stream ends or yields nothing), stopping as soon as it exceeds max_size: the peak memory is
    max_size plus a chunk, whatever the stream would expand to. `cut_is_end`: the decompressor
    cannot tell a finished stream from a cut one, so running dry counts as finished."""
    chunks, size = [first], len(first)
    while size <= max_size and not finished():
        chunk = more()
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    if size > max_size:
        raise OversizedPayload(max_size)
    return _checked(b"".join(chunks), max_size, cut_is_end or finished())


class Raw:
    """No compression (for measuring what the codecs buy)."""

    name: ClassVar[str] = "raw"

    def __repr__(self) -> str:
        return "Raw()"

    def compress(self, data: bytes) -> bytes:
        return bytes(data)

    def decompress(self, data: bytes, max_size: int = MAX_PAYLOAD_BYTES) -> bytes:
        return _checked(bytes(data), max_size, finished=True)


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

    def decompress(self, data: bytes, max_size: int = MAX_PAYLOAD_BYTES) -> bytes:
        d = zlib.decompressobj()
        first = d.decompress(data, _CHUNK)
        return _drain(first, lambda: d.decompress(d.unconsumed_tail, _CHUNK), lambda: d.eof, max_size)


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

    def decompress(self, data: bytes, max_size: int = MAX_PAYLOAD_BYTES) -> bytes:
        # With the content size in the frame (this codec always writes it), libzstd decodes into a
        # buffer of exactly that size and fails on more. A frame without it is streamed.
        size = zstandard.frame_content_size(data)
        if size > max_size:
            raise OversizedPayload(max_size)
        if size >= 0:
            return zstandard.ZstdDecompressor().decompress(data)
        with zstandard.ZstdDecompressor().stream_reader(data) as reader:
            # The reader does not say whether the frame ended: the artifact's recorded length finds a cut one.
            return _drain(b"", lambda: reader.read(_CHUNK), lambda: False, max_size, cut_is_end=True)


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

    def decompress(self, data: bytes, max_size: int = MAX_PAYLOAD_BYTES) -> bytes:
        d = lzma.LZMADecompressor(format=lzma.FORMAT_ALONE)
        first = d.decompress(data, max_length=_CHUNK)  # the rest of the input waits inside `d`
        return _drain(first, lambda: d.decompress(b"", max_length=_CHUNK), lambda: d.eof, max_size)


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

    def _settings(self) -> dict:
        return dict(
            method=self.method,
            preset=self.preset,
            filter=self.filter,
            delta_distance=self.delta_distance,
            ppmd_order=self.ppmd_order,
            ppmd_mem=self.ppmd_mem,
        )

    def compress(self, data: bytes) -> bytes:
        return run_isolated(
            _7z_compress,
            self._settings(),
            bytes(data),
            what=f"7z/{self.method}",
            action=f"compressing {len(data):,} bytes",
            hint="use quant/codec=lzma or zstd",
        )

    def decompress(self, data: bytes, max_size: int = MAX_PAYLOAD_BYTES) -> bytes:
        return run_isolated(
            _7z_decompress,
            bytes(data),
            max_size,
            what="7z",
            action=f"decompressing {len(data):,} bytes",
            hint="write the artifact with quant/codec=lzma or zstd",
        )


def _7z_compress(settings: dict, data: bytes) -> bytes:
    """SevenZip(**settings).compress in the child process (see `run_isolated`)."""
    import py7zr

    codec = SevenZip(**settings)
    buf = io.BytesIO()
    with py7zr.SevenZipFile(buf, "w", filters=codec._filters()) as archive:
        archive.writestr(data, "model")
    blob = buf.getvalue()
    if codec.method == "ppmd":  # pyppmd 1.3 can write PPMd streams it cannot read back: check
        try:
            ok = _7z_decompress(blob, len(data)) == data
        except Exception:  # noqa: BLE001 - any failure to read back means the same thing
            ok = False
        if not ok:
            raise UserError(
                f"7z ppmd (order {codec.ppmd_order}, mem 2^{codec.ppmd_mem}) wrote an archive that "
                f"does not read back (a pyppmd bug on poorly compressible data); raise "
                f"quant.codec.ppmd_mem or use quant.codec.method=lzma2"
            )
    return blob


def _7z_decompress(data: bytes, max_size: int) -> bytes:
    """The one member of a 7z archive, refused before extraction when its recorded size exceeds max_size."""
    import py7zr
    from py7zr.io import BytesIOFactory

    with py7zr.SevenZipFile(io.BytesIO(data), "r", max_extract_size=max_size) as archive:
        members = archive.list()
        names = [m.filename for m in members]
        if names != ["model"]:
            raise UserError(f"7z payload must hold one member 'model', holds {names}")
        if members[0].uncompressed > max_size:
            raise OversizedPayload(max_size)
        factory = BytesIOFactory(limit=max_size + 1)
        archive.extractall(factory=factory)
    out = factory.get("model")
    out.seek(0)
    return _checked(out.read(), max_size, finished=True)


class Brotli:
    """Brotli (optional extra: pip install 'paramgolf[brotli]'); quality 0..11, window 2^lgwin.

    `shuffle` > 1: byte-shuffle with that stride first (`byte_shuffle`, records #1204/#1218), which
    writes a different stream, recorded as codec "brotli_shuffle": b"BSHF" + stride byte + brotli.
    """

    SHUFFLE_MAGIC = b"BSHF"

    def __init__(self, quality: int = 11, lgwin: int = 24, shuffle: int = 1) -> None:
        try:
            import brotli  # noqa: F401
        except ImportError as e:
            raise UserError("quant.codec=brotli needs the brotli package: pip install 'paramgolf[brotli]'") from e
        if not 0 <= quality <= 11:
            raise UserError(f"quant.codec.quality for brotli must be in 0..11, got {quality}")
        if not 10 <= lgwin <= 24:
            raise UserError(f"quant.codec.lgwin for brotli must be in 10..24, got {lgwin}")
        if not 1 <= shuffle <= 255:
            raise UserError(f"quant.codec.shuffle for brotli must be in 1..255 (1: no shuffle), got {shuffle}")
        self.quality, self.lgwin, self.shuffle = quality, lgwin, shuffle
        self.name = "brotli" if shuffle == 1 else "brotli_shuffle"

    def __repr__(self) -> str:
        return f"Brotli(quality={self.quality}, lgwin={self.lgwin}" + (
            f", shuffle={self.shuffle})" if self.shuffle > 1 else ")"
        )

    def compress(self, data: bytes) -> bytes:
        import brotli

        if self.shuffle == 1:
            return brotli.compress(bytes(data), quality=self.quality, lgwin=self.lgwin)
        shuffled = byte_shuffle(data, self.shuffle)
        head = self.SHUFFLE_MAGIC + bytes([self.shuffle])
        return head + brotli.compress(shuffled, quality=self.quality, lgwin=self.lgwin)

    def decompress(self, data: bytes, max_size: int = MAX_PAYLOAD_BYTES) -> bytes:
        import brotli

        stride = 1
        if self.shuffle > 1:  # the stream's own stride, whatever this instance's setting
            head = len(self.SHUFFLE_MAGIC) + 1
            if len(data) < head or data[: head - 1] != self.SHUFFLE_MAGIC or data[head - 1] < 2:
                raise ValueError("not a brotli_shuffle stream (no BSHF header with a stride of 2 or more)")
            stride, data = data[head - 1], data[head:]
        d = brotli.Decompressor()
        first = d.process(data, output_buffer_limit=_CHUNK)  # the rest of the input waits inside `d`
        out = _drain(first, lambda: d.process(b"", output_buffer_limit=_CHUNK), d.is_finished, max_size)
        return out if stride == 1 else byte_unshuffle(out, stride)


def byte_shuffle(data: bytes, stride: int) -> bytes:
    """Byte 0 of every `stride`-byte word, then byte 1, ...: data[0::stride] + data[1::stride] + ...

    For int8 codes beside fp16 scales, stride 2 puts the scales' low and high bytes in separate runs.
    """
    a = np.frombuffer(data, dtype=np.uint8)
    return b"".join(a[k::stride].tobytes() for k in range(stride))


def byte_unshuffle(data: bytes, stride: int) -> bytes:
    """The inverse of `byte_shuffle`: lane k holds ceil((n - k) / stride) bytes."""
    a = np.frombuffer(data, dtype=np.uint8)
    out = np.empty_like(a)
    start = 0
    for k in range(stride):
        lane = out[k::stride]
        lane[:] = a[start : start + len(lane)]
        start += len(lane)
    return out.tobytes()


# ---------------------------------------------------------------------------------------------- isolation

# The child reads (sys.path, pickled call) on stdin and answers on stdout with one status byte:
# 0 + the result, 1 + a UserError's message, 2 + the limit an OversizedPayload hit, 3 + any other error.
_CHILD = """
import pickle, sys
path, call = pickle.load(sys.stdin.buffer)
sys.path[:] = path
from paramgolf.quant.codecs import _serve
_serve(call)
"""


def _serve(call: bytes) -> None:
    fn, args = pickle.loads(call)
    try:
        reply = b"0" + fn(*args)
    except OversizedPayload as e:
        reply = b"2" + str(e.max_size).encode()
    except UserError as e:
        reply = b"1" + str(e).encode()
    except Exception as e:  # noqa: BLE001 - every failure goes back to the parent, which raises it
        reply = b"3" + f"{type(e).__name__}: {e}".encode()
    sys.stdout.buffer.write(reply)
    sys.stdout.flush()


def run_isolated(fn: Callable[..., bytes], *args, what: str, action: str, hint: str) -> bytes:
    """`fn(*args)` in a fresh Python process, so that a C extension crashing there cannot take the run with it.

    `fn` is a module-level function returning bytes; `args` are picklable. The child's UserError
    (`OversizedPayload` included) is raised again here, any other exception as a RuntimeError, and
    a crash becomes a UserError: "<what> crashed (signal SIGSEGV) <action>; <hint>".
    """
    request = pickle.dumps((sys.path, pickle.dumps((fn, args))))
    proc = subprocess.run([sys.executable, "-c", _CHILD], input=request, capture_output=True)
    if proc.returncode < 0:
        try:
            sig = signal.Signals(-proc.returncode).name
        except ValueError:
            sig = str(-proc.returncode)
        raise UserError(f"{what} crashed (signal {sig}) {action}; {hint}")
    status, body = proc.stdout[:1], proc.stdout[1:]
    if proc.returncode != 0 or status not in (b"0", b"1", b"2", b"3"):
        last = proc.stderr.decode(errors="replace").strip().splitlines()[-1:] or ["no output"]
        raise RuntimeError(f"{what} child process exited with code {proc.returncode} {action}: {last[0]}")
    if status == b"0":
        return body
    if status == b"2":
        raise OversizedPayload(int(body))
    text = body.decode(errors="replace")
    raise UserError(text) if status == b"1" else RuntimeError(f"{what} failed {action}: {text}")


def _pergroup() -> Codec:
    from paramgolf.quant.pergroup import PerGroup  # it builds on Brotli above

    return PerGroup()


# Every name an artifact header may record, and the default-configured codec that reads it.
CODECS: dict[str, Callable[[], Codec]] = {
    "raw": Raw,
    "zlib": Zlib,
    "zstd": Zstd,
    "lzma": Lzma,
    "7z": SevenZip,
    "brotli": Brotli,
    "brotli_shuffle": lambda: Brotli(shuffle=2),
    "pergroup": _pergroup,
}


def codec_by_name(name: str) -> Codec:
    """A default-configured codec for the name an artifact header records."""
    if name not in CODECS:
        raise UserError(f"unknown codec {name!r}; known codecs: {sorted(CODECS)}")
    return CODECS[name]()
