"""The results store of a workdir: ``results.jsonl``, the saved config, atomic files.

* Each row is appended with one ``os.write`` of the whole line on an
  ``O_APPEND`` descriptor, then ``fsync``: a crash leaves at most one partial
  *last* line, which :func:`read_rows` ignores and :func:`repair` cuts off
  before the next append.
* ``config.json`` holds the resolved config of the workdir; a rerun whose
  config differs (outside the fields that only say *how* rows are computed) is
  refused unless the caller asks to start over.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from typing import Callable, Iterable, Optional

import numpy as np
from absl import logging

RESULTS_FILE = "results.jsonl"
CONFIG_FILE = "config.json"
# What "start over" removes; the cache of reference solutions is kept (keyed by content).
DERIVED = (RESULTS_FILE, CONFIG_FILE, "results.md", "samples", "plots", "tb", "skipped.json")


class WorkdirConflict(ValueError):
    """The workdir holds results of a different config."""


# The durable writers live in the lowest layer (samplax.io); re-exported here for the
# experiment layer's callers.
from samplax.io import (atomic_save_npy, atomic_write, atomic_write_bytes, atomic_write_json,  # noqa: E402,F401
                        atomic_write_text, json_clean)


# ---------------------------------------------------------------------------------------
# results.jsonl
# ---------------------------------------------------------------------------------------
def read_rows(path: str) -> list:
    """All complete rows of a results.jsonl; a truncated or unparsable line is skipped
    with a warning (a crash can only leave the last line incomplete)."""
    if not os.path.exists(path):
        return []
    with open(path, "rb") as f:
        data = f.read()
    lines = data.split(b"\n")
    tail = lines.pop()  # the bytes after the last newline: b"" unless the last write was cut
    if tail.strip():
        logging.warning("%s: ignoring a truncated last line (%d bytes) left by an interrupted run", path, len(tail))
    rows = []
    for k, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            logging.warning("%s: ignoring unparsable line %d", path, k + 1)
    return rows


def repair(path: str) -> int:
    """Cut a partial last line (no trailing newline) off ``path``; returns the bytes removed."""
    if not os.path.exists(path):
        return 0
    with open(path, "rb+") as f:
        data = f.read()
        keep = data.rfind(b"\n") + 1
        if keep == len(data):
            return 0
        f.truncate(keep)
        f.flush()
        os.fsync(f.fileno())
    logging.warning("%s: removed a truncated last line (%d bytes)", path, len(data) - keep)
    return len(data) - keep


def append_row(path: str, row: dict) -> None:
    """Append one row as one line: a single write on an O_APPEND descriptor, then fsync."""
    line = (json.dumps(json_clean(row), sort_keys=True, allow_nan=False) + "\n").encode("utf-8")
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        written = os.write(fd, line)
        if written != len(line):  # pragma: no cover (regular files write fully)
            raise OSError(f"short write to {path}: {written} of {len(line)} bytes")
        os.fsync(fd)
    finally:
        os.close(fd)


def _flatten(row: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in row.items():
        if isinstance(v, dict) and k in ("metrics", "reference"):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[prefix + k] = v
    return out


def load_results(workdir: str, as_dataframe: Optional[bool] = None):
    """The rows of ``workdir/results.jsonl``: a pandas DataFrame (``metrics`` and
    ``reference`` flattened to ``metrics.mean_l2`` ...) when pandas is installed,
    else a list of dicts.  ``as_dataframe`` forces either."""
    rows = read_rows(os.path.join(workdir, RESULTS_FILE))
    if as_dataframe is False:
        return rows
    try:
        import pandas as pd
    except ImportError:
        if as_dataframe:
            raise
        return rows
    return pd.DataFrame([_flatten(r) for r in rows])


# ---------------------------------------------------------------------------------------
# saved config
# ---------------------------------------------------------------------------------------
def _unset(v) -> bool:
    return v is None or (isinstance(v, dict) and all(_unset(x) for x in v.values()))


def config_diff(a, b, prefix="config") -> list:
    """Lines naming each dotted field where the saved ``a`` and the current ``b`` differ."""
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b)):
            if _unset(a.get(k)) and _unset(b.get(k)):  # an unset optional field equals an absent one
                continue
            if k not in a:
                out.append(f"{prefix}.{k} (new field, = {b[k]!r})")
            elif k not in b:
                out.append(f"{prefix}.{k} (saved {a[k]!r}, now absent)")
            else:
                out += config_diff(a[k], b[k], f"{prefix}.{k}")
        return out
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        a, b = list(a), list(b)
    return [] if a == b else [f"{prefix}: saved {a!r}, now {b!r}"]


def check_saved_config(workdir: str, identity: dict) -> bool:
    """True if ``workdir`` already holds this config; False if it holds none; raises
    WorkdirConflict (naming the differing fields) if it holds a different one."""
    path = os.path.join(workdir, CONFIG_FILE)
    if not os.path.exists(path):
        if os.path.exists(os.path.join(workdir, RESULTS_FILE)):
            raise WorkdirConflict(f"{workdir} has {RESULTS_FILE} but no {CONFIG_FILE}: not a samplax workdir "
                                  f"of this config; use another workdir or start over (--restart)")
        return False
    with open(path) as f:
        saved = json.load(f)
    diffs = config_diff(saved.get("identity"), json.loads(json.dumps(json_clean(identity))))
    if diffs:
        shown = "; ".join(diffs[:6]) + (f"; and {len(diffs) - 6} more" if len(diffs) > 6 else "")
        raise WorkdirConflict(f"{workdir} holds results of a different config ({shown}). Use another workdir, "
                              f"or start over with --restart (deletes its results).")
    return True


def save_config(workdir: str, kind: str, config: dict, identity: dict) -> None:
    atomic_write_json(os.path.join(workdir, CONFIG_FILE), dict(kind=kind, config=config, identity=identity))


def clear_workdir(workdir: str, names: Iterable[str] = DERIVED) -> None:
    """Remove the results of a workdir (start over); the reference cache stays."""
    for name in names:
        p = os.path.join(workdir, name)
        if os.path.isdir(p):
            shutil.rmtree(p)
        elif os.path.exists(p):
            os.unlink(p)
