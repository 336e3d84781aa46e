"""Small file-system and JSON helpers shared by the package.

* ``write_atomic``: write a file under a temporary name, then rename it, so a crash
  never leaves a half-written file under the final name.
* ``publish``: give a finished temporary file or directory normal permissions and its
  final name (what ``write_atomic`` does last; also used for directories).
* ``to_jsonable``: plain JSON values from Paths, numpy scalars and one-element tensors;
  usable on a whole structure or as ``json.dumps(..., default=to_jsonable)``.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path, PurePath
from typing import Any

Bytes = bytes | bytearray | memoryview


def _default_mode(directory: bool = False) -> int:
    """Permissions a plain open()/mkdir() would give, which mkstemp/mkdtemp do not (0600)."""
    umask = os.umask(0)
    os.umask(umask)
    return (0o777 if directory else 0o666) & ~umask


def publish(tmp: str | Path, dest: str | Path) -> None:
    """Give a finished temporary file or directory normal permissions and its final name, atomically."""
    os.chmod(tmp, _default_mode(directory=Path(tmp).is_dir()))
    os.replace(tmp, dest)


def write_atomic(path: str | Path, data: str | Bytes | Iterable[Bytes], *, fsync: bool = False) -> Path:
    """Write ``data`` to ``path`` through a temporary file in the same directory and a rename.

    ``data`` is text (written as UTF-8), bytes, or an iterable of bytes-like chunks
    written in order (so a large file need not be joined in memory first). The parent
    directory is created. ``fsync=True`` flushes the data to disk before the rename
    (durable across a power cut, not only a crash). Returns ``path``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(data, str):
        chunks: Iterable[Bytes] = (data.encode("utf-8"),)
    elif isinstance(data, (bytes, bytearray, memoryview)):
        chunks = (data,)
    else:
        chunks = data
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            for chunk in chunks:
                f.write(chunk)
            if fsync:
                f.flush()
                os.fsync(f.fileno())
        publish(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def to_jsonable(obj: Any) -> Any:
    """``obj`` with Paths as strings and numpy/torch scalars as Python numbers, recursively.

    Dicts, lists and tuples are walked (tuples become lists); anything else that JSON
    cannot hold raises TypeError, so ``json.dumps(x, default=to_jsonable)`` keeps its
    usual refusal of unknown objects.
    """
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    if isinstance(obj, PurePath):
        return str(obj)
    if isinstance(obj, Mapping):
        return {k: to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if hasattr(obj, "item"):
        try:
            return obj.item()  # numpy scalars, 0-d arrays, one-element tensors
        except (ValueError, RuntimeError) as err:
            raise TypeError(f"{type(obj).__name__} with more than one element is not a JSON scalar") from err
    raise TypeError(f"{obj!r} of type {type(obj).__name__} is not JSON serialisable")
