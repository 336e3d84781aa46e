"""The artifact file: quantized weights + architecture config, compressed, pickle-free.

Layout (little-endian):

    magic      6 bytes   b"PGOLF\x00"
    version    u16       FORMAT_VERSION
    codec      u8 length + ASCII name ("zlib", "zstd", "lzma", "7z", "brotli", "raw")
    length     u64       bytes of the compressed payload
    raw length u64       bytes of the payload decompressed (since version 2)
    crc32      u32       of every header byte before it and of the compressed payload
    payload    codec.compress(safetensors blob)

Version 1 is version 2 without the raw length; readers read both. Decompression stops at the
raw length (version 1: at `MAX_PAYLOAD_BYTES`), so a decompression bomb is refused early.

The safetensors blob holds each record's parts under "<tensor name>/<part>" and,
in its `__metadata__["paramgolf"]`, JSON with the format version, every record's
scheme/shape/dtype/meta/parts (in state-dict order), the architecture config and
the run metadata. Reading never unpickles: safetensors parses a JSON header and
raw little-endian buffers, and the schemes are looked up in a fixed table.

Why the standard safetensors layout is kept (header size measured): docs/artifact-format.md.
"""

from __future__ import annotations

import json
import os
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import safetensors.torch
from torch import Tensor

from paramgolf.errors import UserError
from paramgolf.fsio import write_atomic
from paramgolf.quant.codecs import CODECS, MAX_PAYLOAD_BYTES, Codec, OversizedPayload, codec_by_name
from paramgolf.quant.schemes import QuantizedTensor, dequantize_state, dtype_from_name, dtype_name

MAGIC = b"PGOLF\x00"
FORMAT_VERSION = 2
_PREFIX = struct.Struct("<6sHB")  # magic, version, codec-name length
_TAILS = {  # every version this reader knows: what follows the codec name
    1: struct.Struct("<QI"),  # payload length, crc32
    2: struct.Struct("<QQI"),  # payload length, raw (decompressed) length, crc32
}
SUPPORTED_VERSIONS = tuple(_TAILS)
_META_KEY = "paramgolf"
_WEIGHTS_FORMAT = "paramgolf-weights"
_WEIGHTS_VERSION = 1


class ArtifactError(UserError):
    """An artifact or weights file that cannot be read: damaged, truncated or foreign."""


@dataclass
class LoadedArtifact:
    """What `read_artifact` returns: dequantized weights plus everything stored beside them."""

    state_dict: dict[str, Tensor]
    qstate: dict[str, QuantizedTensor]
    arch_config: dict
    meta: dict
    codec: str
    version: int


def _json_dumps(obj: Any, what: str) -> str:
    try:
        return json.dumps(obj, separators=(",", ":"), sort_keys=False)
    except (TypeError, ValueError) as e:
        raise UserError(f"{what} must be JSON-serialisable (dicts, lists, str, numbers, bools): {e}") from e


def _cpu_contiguous(tensors: dict[str, Tensor]) -> dict[str, Tensor]:
    """Tensors safetensors accepts: on CPU, contiguous, no storage shared between keys."""
    out, seen = {}, set()
    for key, t in tensors.items():
        t = t.detach().to("cpu").contiguous()
        ptr = t.untyped_storage().data_ptr() if t.numel() else None
        if ptr is not None and ptr in seen:
            t = t.clone()  # tied weights: safetensors refuses aliases
        if ptr is not None:
            seen.add(ptr)
        out[key] = t
    return out


def build_payload(qstate: dict[str, QuantizedTensor], arch_config: dict, meta: dict | None = None) -> bytes:
    """The uncompressed safetensors blob of an artifact."""
    records, tensors = {}, {}
    for name, qt in qstate.items():
        dtype_from_name(qt.dtype)  # refuse dtypes the reader could not restore
        parts = list(qt.tensors)
        for part in parts:
            # Slash-free part names make "<name>/<part>" unique: it splits at its last slash.
            if not part or "/" in part:
                raise UserError(f"tensor {name!r}: part name {part!r} must be non-empty and free of '/'")
            tensors[f"{name}/{part}"] = qt.tensors[part]
        records[name] = {
            "scheme": qt.scheme,
            "shape": [int(d) for d in qt.shape],
            "dtype": qt.dtype,
            "meta": dict(qt.meta),
            "parts": parts,
        }
    header = {"format": FORMAT_VERSION, "tensors": records, "arch": arch_config, "meta": meta or {}}
    metadata = {_META_KEY: _json_dumps(header, "artifact arch_config/meta")}
    return safetensors.torch.save(_cpu_contiguous(tensors), metadata=metadata)


def frame_payload(compressed: bytes, codec_name: str, raw_length: int) -> bytes:
    """Header + compressed payload; `raw_length`: the payload's bytes decompressed. The crc covers both."""
    name = codec_name.encode("ascii")
    head = _PREFIX.pack(MAGIC, FORMAT_VERSION, len(name)) + name + struct.pack("<QQ", len(compressed), raw_length)
    crc = zlib.crc32(compressed, zlib.crc32(head))
    return head + struct.pack("<I", crc) + compressed


def pack_artifact(
    qstate: dict[str, QuantizedTensor], arch_config: dict, codec: Codec, meta: dict | None = None
) -> bytes:
    """The artifact bytes for quantized weights `qstate` compressed with `codec`."""
    if codec.name not in CODECS:
        raise UserError(f"codec {codec.name!r} cannot be read back; known codecs: {sorted(CODECS)}")
    payload = build_payload(qstate, arch_config, meta)
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise UserError(
            f"the artifact payload is {len(payload):,} bytes uncompressed, over the {MAX_PAYLOAD_BYTES:,} "
            f"a reader accepts (far beyond any model the budget holds): quantize to fewer bits or shrink the model"
        )
    return frame_payload(codec.compress(payload), codec.name, len(payload))


def write_artifact(
    path: str | os.PathLike,
    qstate: dict[str, QuantizedTensor],
    arch_config: dict,
    codec: Codec,
    meta: dict | None = None,
) -> int:
    """Write the artifact atomically (temp file + rename); returns its size in bytes."""
    data = pack_artifact(qstate, arch_config, codec, meta)
    write_atomic(path, data, fsync=True)
    return len(data)


def _split_frame(data: bytes, source: str) -> tuple[str, int, bytes, int | None]:
    """(codec name, version, compressed payload, raw length or None in version 1) after checking
    magic, version, lengths and crc."""
    if len(data) < _PREFIX.size:
        raise ArtifactError(f"{source}: {len(data)} bytes is too short for a paramgolf artifact header")
    magic, version, name_len = _PREFIX.unpack_from(data, 0)
    if magic != MAGIC:
        raise ArtifactError(f"{source}: not a paramgolf artifact (magic {magic!r}, expected {MAGIC!r})")
    if version not in SUPPORTED_VERSIONS:
        raise ArtifactError(
            f"{source}: unsupported artifact format version {version}; this paramgolf reads {SUPPORTED_VERSIONS}"
        )
    tail = _TAILS[version]
    head_len = _PREFIX.size + name_len + tail.size
    if len(data) < head_len:
        raise ArtifactError(f"{source}: truncated header ({len(data)} of {head_len} bytes)")
    length, *raw, crc = tail.unpack_from(data, _PREFIX.size + name_len)
    raw_length = raw[0] if raw else None
    if len(data) != head_len + length:
        what = "truncated" if len(data) < head_len + length else "has trailing bytes"
        raise ArtifactError(
            f"{source}: file {what}: header announces {length} payload bytes, file holds {len(data) - head_len}"
        )
    payload = data[head_len:]
    actual = zlib.crc32(payload, zlib.crc32(data[: head_len - 4]))
    if actual != crc:
        raise ArtifactError(
            f"{source}: checksum mismatch (stored {crc:#010x}, computed {actual:#010x}); the file is damaged"
        )
    try:
        codec_name = data[_PREFIX.size : _PREFIX.size + name_len].decode("ascii")
    except UnicodeDecodeError as e:
        raise ArtifactError(f"{source}: codec name is not ASCII") from e
    if raw_length is not None and raw_length > MAX_PAYLOAD_BYTES:
        raise ArtifactError(
            f"{source}: header announces a payload of {raw_length:,} bytes decompressed, over the "
            f"{MAX_PAYLOAD_BYTES:,} any artifact may hold; the file is crafted or damaged"
        )
    return codec_name, version, payload, raw_length


def _parse_records(header: Any, tensors: dict[str, Tensor], source: str) -> dict[str, QuantizedTensor]:
    records = header.get("tensors") if isinstance(header, dict) else None
    if not isinstance(records, dict):
        raise ArtifactError(f"{source}: metadata has no 'tensors' table")
    qstate, used = {}, set()
    for name, rec in records.items():
        try:
            scheme, shape, dtype, meta, parts = (rec[k] for k in ("scheme", "shape", "dtype", "meta", "parts"))
            if not (isinstance(scheme, str) and isinstance(meta, dict) and isinstance(parts, list)):
                raise TypeError("wrong field types")
            if not all(isinstance(d, int) and d >= 0 for d in shape):
                raise TypeError(f"bad shape {shape!r}")
            dtype_from_name(dtype)
        except (KeyError, TypeError, ValueError) as e:
            raise ArtifactError(f"{source}: bad record for tensor {name!r}: {e}") from e
        stored = {}
        for part in parts:
            key = f"{name}/{part}"
            if key not in tensors:
                raise ArtifactError(f"{source}: tensor {name!r} lacks its part {part!r}")
            stored[part] = tensors[key]
            used.add(key)
        qstate[name] = QuantizedTensor(scheme, tuple(shape), dtype, stored, meta)
    extra = sorted(set(tensors) - used)
    if extra:
        raise ArtifactError(f"{source}: stored tensors {extra[:5]} belong to no record")
    return qstate


def unpack_artifact(data: bytes, source: str = "<artifact bytes>") -> LoadedArtifact:
    """Parse, check and dequantize artifact bytes; `source` names them in errors."""
    codec_name, version, compressed, raw_length = _split_frame(data, source)
    try:
        codec = codec_by_name(codec_name)
    except ValueError as e:
        raise ArtifactError(f"{source}: {e}") from e
    limit = MAX_PAYLOAD_BYTES if raw_length is None else raw_length
    try:
        blob = codec.decompress(compressed, limit)
    except OversizedPayload as e:
        announced = "the most any artifact may hold" if raw_length is None else "what its header announces"
        raise ArtifactError(
            f"{source}: {codec_name} payload decompresses to more than {limit:,} bytes, {announced}; "
            f"refused as a decompression bomb (the file is crafted or damaged)"
        ) from e
    except Exception as e:  # each codec library raises its own error type
        raise ArtifactError(f"{source}: {codec_name} payload does not decompress: {e}") from e
    if raw_length is not None and len(blob) != raw_length:
        raise ArtifactError(
            f"{source}: {codec_name} payload decompresses to {len(blob):,} bytes, the header announces "
            f"{raw_length:,}; the file is damaged"
        )
    tensors, header = _parse_safetensors(blob, source)
    if not isinstance(header, dict) or header.get("format") != version:
        found = header.get("format") if isinstance(header, dict) else None
        raise ArtifactError(f"{source}: payload format {found!r} does not match header version {version}")
    arch, meta = header.get("arch"), header.get("meta")
    if not isinstance(arch, dict) or not isinstance(meta, dict):
        raise ArtifactError(f"{source}: metadata lacks the 'arch' or 'meta' object")
    qstate = _parse_records(header, tensors, source)
    try:
        state_dict = dequantize_state(qstate)
    except ValueError as e:
        raise ArtifactError(f"{source}: {e}") from e
    return LoadedArtifact(state_dict, qstate, arch, meta, codec_name, version)


def _parse_safetensors(blob: bytes, source: str) -> tuple[dict[str, Tensor], Any]:
    """Tensors and the parsed paramgolf JSON of a safetensors blob."""
    try:
        tensors = safetensors.torch.load(blob)
        raw_meta = _safetensors_metadata(blob).get(_META_KEY)
        header = json.loads(raw_meta) if raw_meta is not None else None
    except Exception as e:  # safetensors raises its own SafetensorError
        raise ArtifactError(f"{source}: not valid safetensors data: {e}") from e
    if header is None:
        raise ArtifactError(f"{source}: payload has no '{_META_KEY}' metadata")
    return tensors, header


def _safetensors_metadata(blob: bytes) -> dict[str, str]:
    # The format is an 8-byte little-endian header length followed by a JSON header.
    (n,) = struct.unpack_from("<Q", blob, 0)
    header = json.loads(blob[8 : 8 + n])
    meta = header.get("__metadata__") or {}
    if not isinstance(meta, dict):
        raise UserError("__metadata__ is not an object")
    return meta


def read_artifact(path: str | os.PathLike) -> LoadedArtifact:
    """Read, verify and dequantize the artifact at `path`."""
    path = Path(path)
    return unpack_artifact(path.read_bytes(), str(path))


def save_weights(path: str | os.PathLike, state_dict: dict[str, Tensor], meta: dict | None = None) -> int:
    """Keep full-precision weights as a safetensors file (atomic); returns bytes written."""
    for name, t in state_dict.items():
        try:
            dtype_name(t.dtype)
        except ValueError as e:
            raise UserError(f"weight {name!r}: {e}") from e
    # safetensors stores keys sorted; "order" brings the state-dict order back.
    header = {"format": _WEIGHTS_FORMAT, "version": _WEIGHTS_VERSION, "order": list(state_dict), "meta": meta or {}}
    metadata = {_META_KEY: _json_dumps(header, "weights meta")}
    data = safetensors.torch.save(_cpu_contiguous(state_dict), metadata=metadata)
    write_atomic(path, data, fsync=True)
    return len(data)


def load_weights(path: str | os.PathLike) -> tuple[dict[str, Tensor], dict]:
    """(state_dict, meta) from a file written by `save_weights`."""
    path = Path(path)
    tensors, header = _parse_safetensors(path.read_bytes(), str(path))
    if not isinstance(header, dict) or header.get("format") != _WEIGHTS_FORMAT:
        raise ArtifactError(f"{path}: not a paramgolf weights file (use read_artifact for artifacts)")
    if header.get("version") != _WEIGHTS_VERSION:
        raise ArtifactError(f"{path}: unsupported weights format version {header.get('version')!r}")
    order, meta = header.get("order"), header.get("meta")
    if not isinstance(order, list) or sorted(order) != sorted(tensors) or not isinstance(meta, dict):
        raise ArtifactError(f"{path}: weights metadata does not match the stored tensors")
    return {name: tensors[name] for name in order}, meta
