"""Artifact files: exact round trip, refusal of damaged or foreign files, no pickle anywhere."""

from __future__ import annotations

import functools
import io
import pickle
import struct
import zlib

import hydra.utils
import pytest
import torch

from paramgolf.config.compose import compose, to_container
from paramgolf.quant.artifact import (
    FORMAT_VERSION,
    MAGIC,
    ArtifactError,
    build_payload,
    frame_payload,
    load_weights,
    pack_artifact,
    read_artifact,
    save_weights,
    write_artifact,
)
from paramgolf.quant.codecs import Lzma, Raw, Zlib, Zstd
from paramgolf.quant.schemes import QuantizedTensor, dequantize_state

ARCH = {"model_dim": 16, "num_layers": 2, "vocab_size": 40, "nested": {"mlp_mult": 2}}
META = {"seed": 1, "note": "tiny", "val_loss": 3.5}


def tiny_state() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {
        "tok_emb.weight": torch.randn(40, 16, generator=g),
        "blocks.0.attn.c_q.weight": torch.randn(16, 16, generator=g),
        "blocks.0.attn_scale": torch.rand(16, generator=g),
        "blocks.0.norm.weight": torch.rand(8, generator=g),
        "bank": torch.randn(2, 8, 8, generator=g).bfloat16(),
        "head.weight": torch.randn(40, 16, generator=g).half(),
        "position": torch.arange(5),
    }


@functools.cache
def int8_quantizer(keep_float_max_numel: int):
    """The baseline's int8 preset (quant=int8_zlib) with another small-tensor limit."""
    c = to_container(compose(["quant=int8_zlib", f"quant.keep_float_max_numel={keep_float_max_numel}"]))
    return hydra.utils.instantiate(c["quant"]["quantizer"])


def tiny_qstate() -> dict[str, QuantizedTensor]:
    return int8_quantizer(8).quantize(tiny_state())


def test_pack_is_deterministic_and_has_the_documented_header():
    data = pack_artifact(tiny_qstate(), ARCH, Zlib(), META)
    assert data == pack_artifact(tiny_qstate(), ARCH, Zlib(), META)
    magic, version, n = struct.unpack_from("<6sHB", data)
    assert (magic, version, data[9 : 9 + n]) == (MAGIC, FORMAT_VERSION, b"zlib")
    length, raw_length = struct.unpack_from("<QQ", data, 9 + n)
    assert length == len(data) - (9 + n + 20)
    assert raw_length == len(build_payload(tiny_qstate(), ARCH, META))


@pytest.mark.parametrize("codec", [Zlib(), Zstd(), Lzma(), Raw()], ids=lambda c: c.name)
def test_round_trip_equals_in_memory_dequantization(tmp_path, codec):
    qstate = tiny_qstate()
    path = tmp_path / "sub" / "model.pgolf"
    n = write_artifact(path, qstate, ARCH, codec, META)
    assert n == path.stat().st_size
    assert sorted(p.name for p in path.parent.iterdir()) == ["model.pgolf"]  # no temp file left
    loaded = read_artifact(path)
    expected = dequantize_state(qstate)
    assert list(loaded.state_dict) == list(expected)
    for name, t in expected.items():
        assert loaded.state_dict[name].dtype == t.dtype and torch.equal(loaded.state_dict[name], t), name
    assert loaded.arch_config == ARCH and loaded.meta == META
    assert (loaded.codec, loaded.version) == (codec.name, FORMAT_VERSION)
    for name, qt in qstate.items():
        got = loaded.qstate[name]
        assert (got.scheme, got.shape, got.dtype, got.meta) == (qt.scheme, qt.shape, qt.dtype, qt.meta)
        for part, t in qt.tensors.items():
            assert torch.equal(got.tensors[part], t)


def test_every_flipped_header_byte_and_payload_byte_is_refused(tmp_path):
    data = pack_artifact(tiny_qstate(), ARCH, Zlib(), META)
    header_len = 9 + 4 + 20
    positions = list(range(header_len)) + [header_len, header_len + 1, len(data) // 2, len(data) - 1]
    path = tmp_path / "damaged.pgolf"
    for pos in positions:
        for flip in (0x01, 0x80):
            bad = bytearray(data)
            bad[pos] ^= flip
            path.write_bytes(bytes(bad))
            with pytest.raises(ArtifactError, match="damaged.pgolf"):
                read_artifact(path)


def test_truncated_or_extended_files_are_refused(tmp_path):
    data = pack_artifact(tiny_qstate(), ARCH, Zlib(), META)
    path = tmp_path / "cut.pgolf"
    for bad, why in [
        (data[:-1], "truncated"),
        (data[: len(data) // 2], "truncated"),
        (data[:15], "truncated"),
        (data[:3], "too short"),
        (b"", "too short"),
        (data + b"\x00", "trailing"),
    ]:
        path.write_bytes(bad)
        with pytest.raises(ArtifactError, match=why):
            read_artifact(path)


def test_wrong_magic_and_unsupported_version(tmp_path):
    path = tmp_path / "foreign.pt"
    buf = io.BytesIO()
    torch.save({"w": torch.zeros(3)}, buf)
    path.write_bytes(buf.getvalue())
    with pytest.raises(ArtifactError, match="not a paramgolf artifact"):
        read_artifact(path)
    # A well-formed file from a future format version: the crc is right, the version is not.
    raw = build_payload(tiny_qstate(), ARCH)
    payload = Zlib().compress(raw)
    head = struct.pack("<6sHB", MAGIC, 99, 4) + b"zlib" + struct.pack("<QQ", len(payload), len(raw))
    path.write_bytes(head + struct.pack("<I", zlib.crc32(payload, zlib.crc32(head))) + payload)
    with pytest.raises(ArtifactError, match="unsupported artifact format version 99"):
        read_artifact(path)


def test_unknown_scheme_in_a_well_formed_file_is_refused(tmp_path):
    qstate = {"w": QuantizedTensor("int42", (2,), "float32", {"w": torch.zeros(2)})}
    path = tmp_path / "future.pgolf"
    raw = build_payload(qstate, ARCH)
    path.write_bytes(frame_payload(Zlib().compress(raw), "zlib", len(raw)))
    with pytest.raises(ArtifactError, match="int42"):
        read_artifact(path)


def test_reading_never_unpickles(tmp_path, monkeypatch):
    path = tmp_path / "model.pgolf"
    write_artifact(path, tiny_qstate(), ARCH, Zlib(), META)

    def refuse(*args, **kwargs):
        raise AssertionError("pickle used while reading an artifact")

    monkeypatch.setattr(torch, "load", refuse)
    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(pickle, "Unpickler", refuse)
    loaded = read_artifact(path)
    assert torch.equal(loaded.state_dict["position"], torch.arange(5))
    # The payload is a safetensors blob (u64 header length, then JSON), not a pickle or a zip.
    payload = zlib.decompress(path.read_bytes()[9 + 4 + 20 :])
    (n,) = struct.unpack_from("<Q", payload)
    assert payload[8:9] == b"{" and payload[8 + n - 1 : 8 + n].strip() in (b"}", b"")
    assert not payload.startswith((b"\x80", b"PK"))


def test_pack_refuses_what_it_could_not_read_back():
    with pytest.raises(ValueError, match="JSON"):
        pack_artifact(tiny_qstate(), {"bad": object()}, Zlib())

    class Lz4:  # a codec paramgolf cannot read back by name
        name = "lz4"

        def compress(self, data: bytes) -> bytes:
            return data

        def decompress(self, data: bytes) -> bytes:
            return data

    with pytest.raises(ValueError, match="lz4"):
        pack_artifact(tiny_qstate(), ARCH, Lz4())
    bad_part = {"a": QuantizedTensor("fp32", (1,), "float32", {"q/x": torch.zeros(1)})}
    with pytest.raises(ValueError, match="q/x"):
        pack_artifact(bad_part, ARCH, Zlib())


def test_weights_round_trip_keeps_order_dtypes_and_ties(tmp_path, monkeypatch):
    emb = torch.randn(10, 4)
    sd = {
        "z.weight": torch.randn(3, 5).t(),  # non-contiguous
        "tok_emb.weight": emb,
        "lm_head.weight": emb,  # tied: same storage
        "norm": torch.ones(4).bfloat16(),
        "count": torch.tensor([1, 2], dtype=torch.int64),
    }
    path = tmp_path / "final_weights.safetensors"
    n = save_weights(path, sd, {"ema_decay": 0.997, "steps": 10})
    assert n == path.stat().st_size
    monkeypatch.setattr(torch, "load", lambda *a, **k: (_ for _ in ()).throw(AssertionError("pickle")))
    loaded, meta = load_weights(path)
    assert list(loaded) == list(sd) and meta == {"ema_decay": 0.997, "steps": 10}
    for name, t in sd.items():
        assert loaded[name].dtype == t.dtype and torch.equal(loaded[name], t), name


def test_weights_and_artifacts_are_not_confused(tmp_path):
    weights, artifact = tmp_path / "w.safetensors", tmp_path / "a.pgolf"
    save_weights(weights, {"w": torch.zeros(2)})
    write_artifact(artifact, tiny_qstate(), ARCH, Zlib())
    with pytest.raises(ArtifactError, match="a.pgolf"):
        load_weights(artifact)
    with pytest.raises(ArtifactError, match="not a paramgolf artifact"):
        read_artifact(weights)
    weights.write_bytes(weights.read_bytes()[:-3])
    with pytest.raises(ArtifactError, match="w.safetensors"):
        load_weights(weights)
    with pytest.raises(ValueError, match="complex"):
        save_weights(tmp_path / "c.safetensors", {"complex": torch.zeros(2, dtype=torch.complex64)})
