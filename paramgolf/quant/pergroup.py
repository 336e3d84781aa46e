"""Per-group compression of the artifact payload (record #1855, FRONTIER F10): lrzip/ZPAQ per tensor group.

The int8 code matrices of the safetensors payload are routed into the record's seven groups
(`GROUPS`), each group's layers concatenated in index order. In the `hot` groups each matrix's
rows are reordered along a greedy nearest-neighbour chain under L1 distance from row 0
(`l1_chain`; the permutation is stored as uint16); every matrix is written transposed, so
neighbouring bytes come from similar rows. Each group is compressed by the `lrzip` binary
(`lrzip -z -L 9`: rzip's long-range pass, then ZPAQ), in parallel; the rest of the payload (its
header, scales, float tensors: the blob with the routed byte spans cut out) goes to brotli
quality 11, window 2^24. Decompression puts every span back at its offset: the payload is
reproduced byte for byte. Input that is not a safetensors blob (or routes nothing) is all "rest".

Stream (little-endian): b"PGRP", u8 version, u16 stream count, per stream (u8 kind: 0 brotli,
1 lrzip; u64 raw bytes; u64 stored bytes), then the streams: the JSON manifest (each group's
tensors as [name, begin, end, rows, cols] and whether its rows were sorted), the rest, the
permutations, one stream per group.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import struct
import subprocess
import tempfile
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from paramgolf.errors import UserError
from paramgolf.quant.codecs import MAX_PAYLOAD_BYTES, Brotli, OversizedPayload

# The record's groups, in its order (train_gpt.py of #1855, _GROUP_ORDER / _SIMSORT_KEYS).
GROUPS = ("tok_emb", "attn.c_k", "attn.c_q", "attn.c_v", "attn.proj", "mlp.fc", "mlp.proj")
HOT_GROUPS = ("tok_emb", "attn.c_q", "mlp.fc")
_BLOCK = re.compile(r"blocks\.(\d+)\.(attn\.c_[kqv]|attn\.proj|mlp\.fc|mlp\.proj)\.weight/q")
_EMBEDDING = "tok_emb.weight/q"

MAGIC = b"PGRP"
VERSION = 1
_HEAD = struct.Struct("<4sBH")
_ENTRY = struct.Struct("<BQQ")
_BROTLI, _LRZIP = 0, 1
_INSTALL = "install it: apt-get install lrzip (Debian/Ubuntu) or brew install lrzip (macOS)"


def lrzip_binary() -> str:
    """The `lrzip` executable on PATH, or a UserError saying how to install it."""
    found = shutil.which("lrzip")
    if found is None:
        raise UserError(f"quant.codec=pergroup needs the lrzip program, which is not on PATH; {_INSTALL}")
    return found


def l1_distances(m: torch.Tensor, block: int = 1024) -> torch.Tensor:
    """All pairwise L1 distances between the rows of integer matrix `m`, as float32 (exact: every
    sum stays below 2^24 for int8 rows of up to 65,793 columns); one triangle computed, mirrored."""
    x = m.to(torch.float32)
    n = x.shape[0]
    out = torch.empty(n, n, dtype=torch.float32, device=x.device)
    for i in range(0, n, block):
        d = torch.cdist(x[i : i + block], x[i:], p=1)
        out[i : i + block, i:] = d
        out[i:, i : i + block] = d.T
    return out


def l1_chain(m: torch.Tensor) -> torch.Tensor:
    """Row order of a greedy nearest-neighbour chain under L1 distance, from row 0 (ties: lowest index).

    O(rows² · cols): computed on the GPU when there is one (the distances are exact integers in
    float32, so every device finds the same chain).
    """
    n = m.shape[0]
    dist = l1_distances(m.to("cuda" if torch.cuda.is_available() else "cpu"))
    taken = torch.zeros(n, dtype=torch.bool, device=dist.device)
    order = [0]
    taken[0] = True
    for _ in range(n - 1):
        nxt = int(dist[order[-1]].masked_fill(taken, float("inf")).argmin())
        order.append(nxt)
        taken[nxt] = True
    return torch.tensor(order, dtype=torch.int64)


def _perm_dtype(rows: int) -> np.dtype:
    return np.dtype("<u2") if rows <= 1 << 16 else np.dtype("<u4")


def route(blob: bytes) -> dict[str, list[tuple[str, int, int, int, int]]]:
    """Each group's int8 code matrices in a safetensors blob, as (name, begin, end, rows, cols) with
    absolute byte offsets, layers in index order; {} when the blob is not safetensors."""
    try:
        (n,) = struct.unpack_from("<Q", blob, 0)
        header = json.loads(blob[8 : 8 + n])
        entries = []
        for name, v in header.items():
            if name == "__metadata__" or v["dtype"] != "I8" or len(v["shape"]) != 2:
                continue
            (rows, cols), (begin, end) = v["shape"], v["data_offsets"]
            if int(rows) * int(cols) == end - begin and rows >= 1 and 0 <= begin and 8 + n + end <= len(blob):
                entries.append((name, 8 + n + begin, 8 + n + end, rows, cols))
    except (struct.error, ValueError, TypeError, KeyError, AttributeError):
        return {}
    found: dict[str, list[tuple[int, tuple[str, int, int, int, int]]]] = {}
    for span in entries:
        hit = _BLOCK.fullmatch(span[0])
        if hit or span[0] == _EMBEDDING:
            group, layer = (hit.group(2), int(hit.group(1))) if hit else ("tok_emb", 0)
            found.setdefault(group, []).append((layer, span))
    spans = sorted(s[1:3] for g in found.values() for _, s in g)
    if any(b < a_end for (_, a_end), (b, _) in zip(spans, spans[1:])):
        return {}  # overlapping tensors: not a blob safetensors writes
    return {g: [span for _, span in sorted(found[g])] for g in GROUPS if g in found}


class PerGroup:
    """Per-group lrzip/ZPAQ compression of the payload's code matrices (module docstring).

    `hot`: the groups whose rows are sorted into an L1 chain; `level`: lrzip's -L (1..9);
    `threads`: lrzip's -p (0: lrzip's default, one per CPU; ZPAQ's blocks, and so the bytes,
    depend on it); `lz4_test`: keep lrzip's LZ4 pre-test, which stores a group uncompressed when
    LZ4 cannot shrink it: int6 codes, which ZPAQ shrinks by a third, often fail it (off: -T).
    """

    name = "pergroup"

    def __init__(
        self, hot: Sequence[str] = HOT_GROUPS, level: int = 9, threads: int = 0, lz4_test: bool = False
    ) -> None:
        unknown = sorted(set(hot) - set(GROUPS))
        if unknown:
            raise UserError(f"quant.codec.hot names unknown groups {unknown}; the groups are {list(GROUPS)}")
        if not 1 <= level <= 9:
            raise UserError(f"quant.codec.level for pergroup must be in 1..9, got {level}")
        if threads < 0:
            raise UserError(f"quant.codec.threads for pergroup must be >= 0 (0: lrzip's default), got {threads}")
        self.hot, self.level, self.threads, self.lz4_test = tuple(hot), level, threads, lz4_test
        self._rest = Brotli(quality=11, lgwin=24)

    def __repr__(self) -> str:
        return f"PerGroup(hot={list(self.hot)}, level={self.level}, threads={self.threads}, lz4_test={self.lz4_test})"

    # ------------------------------------------------------------------------------------- compress

    def compress(self, data: bytes) -> bytes:
        lrzip = lrzip_binary()
        data = bytes(data)
        groups = route(data)
        manifest, rest, perms, blobs = [], [], [], []
        pos = 0
        spans = sorted((s for g in groups.values() for s in g), key=lambda s: s[1])
        for _, begin, end, _, _ in spans:
            rest.append(data[pos:begin])
            pos = end
        rest.append(data[pos:])
        for group, tensors in groups.items():
            hot = group in self.hot
            parts = []
            for _, begin, end, rows, cols in tensors:
                m = np.frombuffer(data, dtype=np.int8, count=end - begin, offset=begin).reshape(rows, cols)
                if hot:
                    order = l1_chain(torch.from_numpy(m.copy())).numpy()
                    perms.append(order.astype(_perm_dtype(rows)).tobytes())
                    m = m[order]
                parts.append(np.ascontiguousarray(m.T).tobytes())
            manifest.append({"group": group, "sorted": hot, "tensors": [list(t) for t in tensors]})
            blobs.append(b"".join(parts))
        head = json.dumps({"groups": manifest}, separators=(",", ":")).encode()
        plain = [head, b"".join(rest), b"".join(perms)]
        flags = ("-z", "-L", str(self.level)) + (() if self.lz4_test else ("-T",))
        with ThreadPoolExecutor(max_workers=max(1, len(blobs))) as pool:
            packed = list(pool.map(lambda b: self._lrzip(lrzip, b, *flags), blobs))
        streams = [(_BROTLI, p, self._rest.compress(p)) for p in plain]
        streams += [(_LRZIP, b, c) for b, c in zip(blobs, packed)]
        out = [_HEAD.pack(MAGIC, VERSION, len(streams))]
        out += [_ENTRY.pack(kind, len(raw), len(stored)) for kind, raw, stored in streams]
        return b"".join(out + [stored for _, _, stored in streams])

    def _lrzip(self, lrzip: str, data: bytes, *flags: str) -> bytes:
        """lrzip run on `data` in a temporary directory (at this process's own nice value)."""
        threads = ("-p", str(self.threads)) if self.threads else ()
        with tempfile.TemporaryDirectory(prefix="paramgolf-lrzip-") as tmp:
            src, dst = Path(tmp, "in"), Path(tmp, "out")
            src.write_bytes(data)
            cmd = [lrzip, "-q", "-f", "-N", str(os.nice(0)), *threads, *flags, "-o", str(dst), str(src)]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode != 0 or not dst.exists():
                tail = (proc.stderr or proc.stdout).strip()[-300:]
                raise RuntimeError(f"{' '.join(cmd[:1] + list(flags))} failed (exit {proc.returncode}): {tail}")
            return dst.read_bytes()

    def stream_sizes(self, data: bytes) -> dict[str, dict[str, int]]:
        """Raw and stored bytes of each stream of a pergroup container: the manifest, the brotli'd
        rest, the row permutations, then each lrzip group by name (the export report's `codec_streams`)."""
        streams = _split(bytes(data))
        head = self._rest.decompress(streams[0][2], streams[0][1])
        names = ["manifest", "rest", "permutations"] + [g["group"] for g in json.loads(head)["groups"]]
        return {n: {"raw": raw, "stored": len(stored)} for n, (_, raw, stored) in zip(names, streams)}

    # ----------------------------------------------------------------------------------- decompress

    def decompress(self, data: bytes, max_size: int = MAX_PAYLOAD_BYTES) -> bytes:
        data = bytes(data)
        streams = _split(data)
        if len(streams) < 3 or any(kind != _BROTLI for kind, _, _ in streams[:3]):
            raise ValueError("pergroup stream lacks its manifest, rest and permutation streams")
        total = sum(raw for _, raw, _ in streams[1:2] + streams[3:])
        if total > max_size:
            raise OversizedPayload(max_size)
        head, rest, perms = (self._rest.decompress(s, min(raw, max_size)) for _, raw, s in streams[:3])
        if len(head) != streams[0][1] or len(rest) != streams[1][1] or len(perms) != streams[2][1]:
            raise ValueError("a pergroup brotli stream does not decompress to its recorded length")
        manifest = json.loads(head)["groups"]
        if len(manifest) != len(streams) - 3 or any(kind != _LRZIP for kind, _, _ in streams[3:]):
            raise ValueError("the pergroup manifest does not match its streams")
        lrzip = lrzip_binary() if manifest else ""
        for _, raw, stored in streams[3:]:
            # lrzip 0.6's header: b"LRZI", version 0.6, the u64 size it decompresses to.
            sized = stored[4:6] == b"\x00\x06" and len(stored) >= 14
            if stored[:4] != b"LRZI" or (sized and struct.unpack_from("<Q", stored, 6)[0] != raw):
                raise ValueError("a pergroup group stream is not an lrzip file of its recorded length")
        with ThreadPoolExecutor(max_workers=max(1, len(manifest))) as pool:
            blobs = list(pool.map(lambda s: self._lrzip(lrzip, s[2], "-d"), streams[3:]))
        out = bytearray(total)
        filled, perm_pos = [], 0
        for entry, blob, (_, raw, _) in zip(manifest, blobs, streams[3:]):
            if len(blob) != raw:
                raise ValueError(f"group {entry['group']!r} decompresses to {len(blob)} bytes, not {raw}")
            pos = 0
            for _, begin, end, rows, cols in entry["tensors"]:
                if not (0 <= begin and rows * cols == end - begin and end <= total and pos + end - begin <= raw):
                    raise ValueError(f"bad span in group {entry['group']!r} of the pergroup manifest")
                m = np.frombuffer(blob, dtype=np.int8, count=end - begin, offset=pos).reshape(cols, rows).T
                pos += end - begin
                if entry["sorted"]:
                    width = _perm_dtype(rows)
                    order = np.frombuffer(perms, dtype=width, count=rows, offset=perm_pos).astype(np.int64)
                    perm_pos += rows * width.itemsize
                    if not np.array_equal(np.sort(order), np.arange(rows)):
                        raise ValueError(f"a row order in group {entry['group']!r} is not a permutation")
                    unsorted = np.empty_like(m)
                    unsorted[order] = m
                    m = unsorted
                out[begin:end] = np.ascontiguousarray(m).tobytes()
                filled.append((begin, end))
        pos, cut = 0, 0
        for begin, end in sorted(filled) + [(total, total)]:
            if begin < cut or pos + begin - cut > len(rest):
                raise ValueError("the pergroup manifest's spans overlap or outrun the rest")
            out[cut:begin] = rest[pos : pos + begin - cut]
            pos, cut = pos + begin - cut, end
        if pos != len(rest) or perm_pos != len(perms):
            raise ValueError("the pergroup streams hold bytes their manifest does not place")
        return bytes(out)


def _split(data: bytes) -> list[tuple[int, int, bytes]]:
    """(kind, raw bytes, stored stream) of each stream of a pergroup container."""
    if len(data) < _HEAD.size:
        raise ValueError("too short for a pergroup stream")
    magic, version, count = _HEAD.unpack_from(data, 0)
    if magic != MAGIC or version != VERSION:
        raise ValueError(f"not a pergroup version-{VERSION} stream (magic {magic!r}, version {version})")
    pos = _HEAD.size + count * _ENTRY.size
    if len(data) < pos:
        raise ValueError("the pergroup stream table is truncated")
    out = []
    for i in range(count):
        kind, raw, stored = _ENTRY.unpack_from(data, _HEAD.size + i * _ENTRY.size)
        out.append((kind, raw, data[pos : pos + stored]))
        pos += stored
    if pos != len(data):
        raise ValueError(f"the pergroup stream is {len(data)} bytes, its table announces {pos}")
    return out
