"""Decompression is bounded (issue 10, item 5): the artifact header records the payload's size, and
no codec produces more than that (or `MAX_PAYLOAD_BYTES` for a version-1 file) before refusing.

The bombs are real streams of zeros, made here: a few KB that would expand to hundreds of MB.
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import textwrap
import zlib
from pathlib import Path

import pytest
import torch

import paramgolf
from paramgolf.quant import artifact
from paramgolf.quant.artifact import (
    FORMAT_VERSION,
    MAGIC,
    ArtifactError,
    build_payload,
    frame_payload,
    pack_artifact,
    read_artifact,
)
from paramgolf.quant.codecs import (
    MAX_PAYLOAD_BYTES,
    Brotli,
    Lzma,
    OversizedPayload,
    Raw,
    SevenZip,
    Zlib,
    Zstd,
    codec_by_name,
)
from paramgolf.quant.schemes import QuantizedTensor, dequantize_state

PACKAGE_ROOT = Path(paramgolf.__file__).resolve().parents[1]
DATA = Path(__file__).parent / "data"
ARCH = {"model_dim": 16, "num_layers": 2, "vocab_size": 40, "nested": {"mlp_mult": 2}}  # as test_quant_artifact
MiB = 1 << 20


def _brotli(*args):
    pytest.importorskip("brotli")
    return Brotli(*args)


# Fast settings to make the bombs with: the reader (codec_by_name) reads any setting of its codec.
FAST = [
    Raw(),
    Zlib(1),
    Zstd(1),
    Lzma(0, extreme=False),
    SevenZip("lzma2", 0),
    SevenZip("ppmd"),
    pytest.param("brotli", id="Brotli(quality=0)"),
]


def _codec(c):
    return _brotli(0) if c == "brotli" else c


@pytest.mark.parametrize("codec", FAST, ids=repr)
def test_no_codec_decompresses_past_its_limit(codec):
    codec = _codec(codec)
    data = bytes(4 * MiB)
    blob = codec.compress(data)
    reader = codec_by_name(codec.name)
    assert reader.decompress(blob, len(data)) == data  # exactly the limit is fine
    for limit in (len(data) - 1, MiB):
        with pytest.raises(OversizedPayload, match=f"^decompresses to more than {limit:,} bytes$"):
            reader.decompress(blob, limit)


@pytest.mark.parametrize("codec", [c for c in FAST if not isinstance(c, Raw)], ids=repr)
def test_a_truncated_stream_is_refused(codec):
    codec = _codec(codec)
    data = os.urandom(1000) * 300
    blob = codec.compress(data)
    with pytest.raises(Exception):  # noqa: B017 - each codec library raises its own error type
        codec_by_name(codec.name).decompress(blob[: len(blob) - 8])


def _zeros_zlib(n: int) -> bytes:
    """zlib of n zero bytes, compressed a chunk at a time (no n-byte buffer)."""
    c, chunk = zlib.compressobj(1), bytes(64 * MiB)
    parts = [c.compress(chunk[: min(len(chunk), n - i)]) for i in range(0, n, len(chunk))]
    return b"".join(parts) + c.flush()


def _frame_v1(compressed: bytes, codec_name: str) -> bytes:
    """A version-1 artifact frame (no recorded payload size), as paramgolf wrote before version 2."""
    name = codec_name.encode()
    head = struct.pack("<6sHB", MAGIC, 1, len(name)) + name + struct.pack("<Q", len(compressed))
    return head + struct.pack("<I", zlib.crc32(compressed, zlib.crc32(head))) + compressed


# (codec, bytes of zeros compressed): 7z refuses on the size its own header records, before
# extracting anything, so its bomb need not be large; raw is as large as its file.
BOMBS = [
    (Zlib(1), 300 * MiB),
    (Zstd(1), 300 * MiB),
    (Lzma(0, extreme=False), 64 * MiB),
    ("brotli", 300 * MiB),
    (SevenZip("lzma2", 0), 8 * MiB),
    (SevenZip("ppmd"), 8 * MiB),
    (Raw(), 8 * MiB),
]


@pytest.mark.parametrize("codec, size", BOMBS, ids=lambda v: repr(v) if not isinstance(v, int) else f"{v >> 20}MiB")
def test_a_bomb_claiming_a_small_payload_is_refused_naming_the_file(codec, size, tmp_path):
    codec = _codec(codec)
    compressed = _zeros_zlib(size) if isinstance(codec, Zlib) else codec.compress(bytes(size))
    path = tmp_path / "bomb.pgart"
    path.write_bytes(frame_payload(compressed, codec.name, MiB))  # valid magic, lengths and crc
    with pytest.raises(ArtifactError) as e:
        read_artifact(path)
    assert str(e.value) == (
        f"{path}: {codec.name} payload decompresses to more than 1,048,576 bytes, what its header announces; "
        f"refused as a decompression bomb (the file is crafted or damaged)"
    )


def test_a_header_announcing_more_than_any_artifact_holds_is_refused_before_decompressing(tmp_path):
    path = tmp_path / "huge.pgart"
    path.write_bytes(frame_payload(Zlib().compress(b"x"), "zlib", MAX_PAYLOAD_BYTES + 1))
    with pytest.raises(ArtifactError, match=f"^{path}: header announces a payload of 268,435,457 bytes"):
        read_artifact(path)


def test_a_payload_shorter_than_its_header_announces_is_refused(tmp_path):
    raw = build_payload({"w": QuantizedTensor("fp32", (4,), "float32", {"w": torch.zeros(4)})}, ARCH)
    path = tmp_path / "short.pgart"
    path.write_bytes(frame_payload(Zstd().compress(raw), "zstd", len(raw) + 1))
    with pytest.raises(ArtifactError, match=f"decompresses to {len(raw):,} bytes, the header announces"):
        read_artifact(path)


def test_a_version_1_bomb_stops_at_the_sane_maximum(tmp_path):
    path = tmp_path / "old_bomb.pgart"
    path.write_bytes(_frame_v1(_zeros_zlib(MAX_PAYLOAD_BYTES + 64 * MiB), "zlib"))
    with pytest.raises(ArtifactError, match="more than 268,435,456 bytes, the most any artifact may hold"):
        read_artifact(path)


MEASURE = """
import json, re, sys, time
from paramgolf.quant.artifact import ArtifactError, read_artifact

def status_kib(key):
    return int(re.search(key + r":\\s+(\\d+) kB", open("/proc/self/status").read()).group(1))

open("/proc/self/clear_refs", "w").write("5")  # reset the peak (VmHWM) to the current RSS
before, t = status_kib("VmRSS"), time.perf_counter()
try:
    read_artifact(sys.argv[1])
    said = "read"
except ArtifactError as e:
    said = str(e)
seconds = time.perf_counter() - t
print(json.dumps({"said": said, "seconds": seconds, "peak_growth_mib": (status_kib("VmHWM") - before) / 1024}))
"""


@pytest.fixture(scope="module")
def gib_of_zeros_zlib() -> bytes:
    return _zeros_zlib(1 << 30)


@pytest.mark.slow
@pytest.mark.parametrize("version", [1, 2])
def test_a_gib_bomb_is_refused_without_allocating_it(version, gib_of_zeros_zlib, tmp_path):
    """The issue's bomb (zlib of zeros, valid header), 1 GiB: the reader's peak memory grows by
    about its limit (the 1 MiB recorded; version 1: the 256 MiB maximum), not by the bomb's size."""
    if not Path("/proc/self/clear_refs").exists():
        pytest.skip("needs Linux's /proc/self/clear_refs to measure the peak memory of a read")
    compressed = gib_of_zeros_zlib
    path = tmp_path / "bomb.pgart"
    path.write_bytes(_frame_v1(compressed, "zlib") if version == 1 else frame_payload(compressed, "zlib", MiB))
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(MEASURE), str(path)],
        cwd=PACKAGE_ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = json.loads(proc.stdout)
    print(
        f"v{version}: {len(compressed):,}-byte bomb refused in {r['seconds']:.2f}s, peak +{r['peak_growth_mib']:.0f} MiB"
    )
    assert "refused as a decompression bomb" in r["said"]
    limit_mib = (MAX_PAYLOAD_BYTES if version == 1 else MiB) / MiB
    assert r["peak_growth_mib"] < limit_mib + 64  # never the GiB the stream expands to


@pytest.mark.parametrize("path", sorted(DATA.glob("v1_*.pgart")), ids=lambda p: p.stem)
def test_version_1_artifacts_still_read(path):
    """Files written by paramgolf before version 2 (tests/quant/data, from test_quant_artifact's tiny state)."""
    from test_quant_artifact import META, tiny_qstate  # tests/quant is on sys.path, as for every test module

    if "brotli" in path.stem:
        pytest.importorskip("brotli")
    loaded = read_artifact(path)
    assert loaded.version == 1 and loaded.arch_config == ARCH and loaded.meta == META
    for name, t in dequantize_state(tiny_qstate()).items():
        assert torch.equal(loaded.state_dict[name], t), name


def test_new_artifacts_record_their_payload_size():
    qstate = {"w": QuantizedTensor("fp32", (4,), "float32", {"w": torch.zeros(4)})}
    data = pack_artifact(qstate, ARCH, Zlib())
    assert struct.unpack_from("<H", data, 6)[0] == FORMAT_VERSION == 2
    (raw_length,) = struct.unpack_from("<Q", data, 9 + 4 + 8)
    assert raw_length == len(build_payload(qstate, ARCH))


def test_the_writer_refuses_a_payload_no_reader_would_accept(monkeypatch):
    qstate = {"w": QuantizedTensor("fp32", (1024,), "float32", {"w": torch.zeros(1024)})}
    monkeypatch.setattr(artifact, "MAX_PAYLOAD_BYTES", 1000)
    with pytest.raises(ValueError, match=r"payload is [\d,]+ bytes uncompressed, over the 1,000 a reader accepts"):
        pack_artifact(qstate, ARCH, Zlib())
