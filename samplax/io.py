"""Paths and durable writes, local or in the cloud: the one file layer of samplax.

Every file samplax writes or reads goes through :func:`as_path` (an
``etils.epath.Path``, the path type Orbax uses, so ``gs://bucket/run`` keeps its
scheme all the way to Orbax's own cloud support) and the writers below.  This module
sits below every other samplax layer: it imports nothing of samplax.

Guarantees, by kind of path:

* **local** (a plain path): :func:`atomic_write` writes a temporary file in the
  target's directory, ``fsync``\\ s it, gives it the umask's permissions and
  ``os.replace``\\ s it into place, so a reader sees the old file or the new one,
  never a part.  :func:`append_line` appends one whole line with one ``os.write``
  on an ``O_APPEND`` descriptor and ``fsync``\\ s: a crash leaves at most a partial
  *last* line, which readers ignore and :func:`cut_partial_line` removes.
* **object stores** (``gs://``, ``s3://``, ``az://``, through epath's fsspec or
  tf.io.gfile backend): an object is written whole or not at all, so
  :func:`atomic_write` uploads the finished bytes in one write.  Objects cannot be
  appended to: :func:`append_line` rewrites the whole object (old bytes + the new
  line) in one write -- atomic, O(size) per append, and safe only with a single
  writer, which the workdir lock provides.  There is no ``fsync``; durability is the
  store's.  ``hf://`` (read-only) and unknown schemes are refused by
  :func:`check_writable_location`.
"""
from __future__ import annotations

import io
import json
import math
import os
import tempfile
from typing import Callable, Union

import numpy as np
from etils import epath

PathLike = Union[str, os.PathLike]

# schemes epath can write to (gs/s3/az through fsspec or tf.io.gfile); hf:// is read-only
WRITABLE_SCHEMES = ("gs", "s3", "az")


def scheme(path: PathLike) -> str:
    """"" for a local path, else the URI scheme ("gs", "s3", ...)."""
    s = os.fspath(path)
    return s.split("://", 1)[0].lower() if "://" in s else ""


def is_local(path: PathLike) -> bool:
    return scheme(path) == ""


def as_path(path: PathLike) -> epath.Path:
    """An ``epath.Path``: local paths made absolute, URIs kept as they are (never
    ``os.path.abspath``, which turns ``gs://b/run`` into ``$PWD/gs:/b/run``)."""
    if isinstance(path, epath.Path) and not is_local(path):
        return path
    s = os.fspath(path)
    if not s:
        raise ValueError("empty path")
    return epath.Path(os.path.abspath(s)) if is_local(s) else epath.Path(s)


def check_writable_location(path: PathLike) -> str:
    """'' when samplax can keep its guarantees at ``path``, else what is wrong."""
    s = os.fspath(path)
    if not s or not s.strip():
        return "is empty; give a directory (a local path or gs://bucket/dir)"
    sch = scheme(s)
    if sch and sch not in WRITABLE_SCHEMES:
        return (f"scheme {sch + '://'!r} is not supported for writing (no atomic whole-object writes here); "
                f"allowed: a local path or {', '.join(x + '://' for x in WRITABLE_SCHEMES)}")
    return ""


def _umask() -> int:
    """The process umask (read from /proc where possible: setting it to read it is racy)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write(path: PathLike, write: Callable[[str], None], suffix: str = "") -> epath.Path:
    """Call ``write(tmp_path)`` on a local temporary file and move the result to ``path``
    whole; on any error ``path`` is untouched and the temporary file removed.

    Local: the temporary file sits next to ``path`` (``os.replace`` is atomic there),
    is fsynced and gets the umask's permissions.  Object stores: it is uploaded in one
    whole-object write.  The temporary name ends with ``".tmp" + suffix``, so writers
    that append their own extension unless it is already there (np.savez with
    suffix=".npz", matplotlib with ".png") write to the file that is moved."""
    target = as_path(path)
    local = is_local(target)
    if local:
        d = os.path.dirname(os.fspath(target))
        os.makedirs(d, exist_ok=True)
    else:
        target.parent.mkdir(parents=True, exist_ok=True)
        d = None
    fd, tmp = tempfile.mkstemp(dir=d, prefix="." + target.name + ".", suffix=".tmp" + suffix)
    os.close(fd)
    try:
        write(tmp)
        if local:
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
            os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600
            os.replace(tmp, os.fspath(target))
        else:
            with open(tmp, "rb") as f:
                target.write_bytes(f.read())
            os.unlink(tmp)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return target


def atomic_write_bytes(path: PathLike, data: bytes) -> epath.Path:
    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            f.write(data)
    return atomic_write(path, write)


def atomic_write_text(path: PathLike, text: str) -> epath.Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def json_clean(obj):
    """NaN/inf -> None (strict JSON); numpy scalars and arrays -> Python."""
    if isinstance(obj, dict):
        return {str(k): json_clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_clean(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return json_clean(obj.tolist())
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        v = float(obj)
        return v if math.isfinite(v) else None
    return obj


def atomic_write_json(path: PathLike, obj) -> epath.Path:
    return atomic_write_text(path, json.dumps(json_clean(obj), indent=1, sort_keys=True, allow_nan=False) + "\n")


def atomic_save_npy(path: PathLike, array) -> epath.Path:
    buf = io.BytesIO()
    np.save(buf, np.asarray(array))
    return atomic_write_bytes(path, buf.getvalue())


def load_npy(path: PathLike) -> np.ndarray:
    with as_path(path).open("rb") as f:
        return np.load(io.BytesIO(f.read()), allow_pickle=False)


def read_bytes(path: PathLike) -> bytes:
    return as_path(path).read_bytes()


def exists(path: PathLike) -> bool:
    return as_path(path).exists()


def append_line(path: PathLike, line: bytes) -> None:
    """Append one whole line (bytes ending in a newline) to ``path``; see the module
    docstring for what each kind of path guarantees."""
    if not line.endswith(b"\n"):
        raise ValueError("append_line: a line must end with a newline")
    target = as_path(path)
    if is_local(target):
        fd = os.open(os.fspath(target), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
        try:
            written = os.write(fd, line)
            if written != len(line):  # pragma: no cover (regular files write fully)
                raise OSError(f"short write to {target}: {written} of {len(line)} bytes")
            os.fsync(fd)
        finally:
            os.close(fd)
        return
    old = target.read_bytes() if target.exists() else b""
    keep = old[: old.rfind(b"\n") + 1]  # never glue a line onto a partial one
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(keep + line)


def cut_partial_line(path: PathLike) -> int:
    """Cut a partial last line (no trailing newline) off ``path``; the bytes removed."""
    target = as_path(path)
    if not target.exists():
        return 0
    if is_local(target):
        with open(os.fspath(target), "rb+") as f:
            data = f.read()
            keep = data.rfind(b"\n") + 1
            if keep == len(data):
                return 0
            f.truncate(keep)
            f.flush()
            os.fsync(f.fileno())
        return len(data) - keep
    data = target.read_bytes()
    keep = data.rfind(b"\n") + 1
    if keep == len(data):
        return 0
    target.write_bytes(data[:keep])
    return len(data) - keep


def remove(path: PathLike) -> None:
    """Remove a file or a directory tree if it exists."""
    p = as_path(path)
    if p.is_dir():
        p.rmtree()
    elif p.exists():
        p.unlink()


__all__ = ["as_path", "is_local", "scheme", "check_writable_location", "atomic_write", "atomic_write_bytes",
           "atomic_write_text", "atomic_write_json", "atomic_save_npy", "load_npy", "read_bytes", "exists",
           "append_line", "cut_partial_line", "remove", "json_clean", "WRITABLE_SCHEMES"]
