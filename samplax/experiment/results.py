"""The results store of a workdir: ``results.jsonl``, the saved config, the workdir
checks and its lock.

* Each row is appended as one whole line (:func:`samplax.io.append_line`): a crash
  leaves at most one partial *last* line, which :func:`read_rows` ignores.  Lines that
  are not complete rows (unparsable, JSON that is not a row, a row without its metrics)
  are skipped with a warning by :func:`read_results` and not counted as done;
  :func:`compact` rewrites the store
  with exactly one complete row per hash before the next run appends.
* ``config.json`` holds the resolved config of the workdir; a rerun whose
  config differs (outside the fields that only say *how* rows are computed) is
  refused unless the caller asks to start over.
* :func:`check_workdir` refuses a workdir that cannot be one (empty, a file, under a
  file, not writable, an unsupported URI scheme) before anything is written, and
  :class:`WorkdirLock` keeps a second process out of a workdir in use.
"""
from __future__ import annotations

import datetime
import fcntl
import json
import os
import socket
import time
import uuid
from typing import Iterable, Optional

from absl import logging

from samplax import io as sio
from samplax.io import atomic_write_json, json_clean
from samplax.experiment.errors import ConfigError

RESULTS_FILE = "results.jsonl"
CONFIG_FILE = "config.json"
LOCK_FILE = ".lock"
DAMAGED_FILE = "results.damaged.jsonl"  # lines compact() removed from results.jsonl
# What "start over" removes; the cache of reference solutions (and the lock) are kept.
CONFIG_HISTORY_FILE = "config_history.jsonl"  # every config that ran in a (sample) workdir
DERIVED = (RESULTS_FILE, CONFIG_FILE, CONFIG_HISTORY_FILE, DAMAGED_FILE, "results.md", "samples", "plots", "tb", "skipped.json")


class WorkdirConflict(ValueError):
    """The workdir holds results of a different config."""


class WorkdirLocked(WorkdirConflict):
    """Another process holds the workdir's lock; the message starts with ``workdir: ``."""


# ---------------------------------------------------------------------------------------
# results.jsonl
# ---------------------------------------------------------------------------------------
def row_problem(row) -> str:
    """'' for a complete sample/sweep row, else what is wrong with it.

    A complete row is a JSON object with a string ``hash`` and ``metrics`` as an
    object: the runner writes both at once.  A row whose metric is null because its
    samples were non-finite is complete (``metrics`` is an object holding a null); a row
    with ``metrics`` missing or null (a damaged or hand-cut line) is not, and is
    recomputed by the next run."""
    problem = _object_problem(row)
    if problem:
        return problem
    if not isinstance(row.get("hash"), str) or not row["hash"]:
        return "a JSON object without a row hash"
    if not isinstance(row.get("metrics"), dict):
        return f"row {row['hash']} has no metrics (missing or not an object)"
    return ""


def _json_kind(v) -> str:
    if v is None:
        return "null"
    return {list: "a list", str: "a string", bool: "a boolean", int: "a number", float: "a number"}.get(
        type(v), type(v).__name__)


def _object_problem(row) -> str:
    return "" if isinstance(row, dict) else f"valid JSON but not a row ({_json_kind(row)})"


def _scan(data: bytes, where: str, warn: bool = True, rows_only: bool = True):
    """(rows as (row, line bytes) pairs; the lines dropped).  ``rows_only``: complete
    sample/sweep rows (:func:`row_problem`), one per hash, the later row winning; else
    every JSON object line, in order (training logs)."""
    lines = data.split(b"\n")
    tail = lines.pop()  # the bytes after the last newline: b"" unless the last write was cut
    dropped = []
    if tail.strip():
        dropped.append(tail)
        if warn:
            logging.warning("%s: ignoring a truncated last line (%d bytes) left by an interrupted run", where,
                            len(tail))
    rows = {}  # hash (or line number) -> (row, line), in order of first appearance
    for k, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError):
            problem = "unparsable"
        else:
            problem = (row_problem if rows_only else _object_problem)(row)
        if problem:
            dropped.append(line)
            if warn:
                logging.warning("%s: ignoring line %d: %s%s", where, k + 1, problem,
                                "; it is recomputed by the next run" if problem.startswith("row ") else "")
            continue
        key = row["hash"] if rows_only else k
        if key in rows:
            dropped.append(rows[key][1])
            if warn:
                logging.warning("%s: line %d repeats row %s: the later one is kept", where, k + 1, key)
        rows[key] = (row, line)
    return list(rows.values()), dropped


def read_rows(path) -> list:
    """Every JSON object line of a JSONL file, in order (the training log uses it too).
    A truncated last line (a crash can only leave the last line incomplete), an
    unparsable line and JSON that is not an object are skipped with a warning naming the
    line."""
    p = sio.as_path(path)
    if not p.exists():
        return []
    return [row for row, _ in _scan(p.read_bytes(), os.fspath(p), rows_only=False)[0]]


def read_results(path) -> list:
    """The complete sample/sweep rows of a results.jsonl, one per hash (a later complete
    row for the same hash wins): also JSON that is not a row and a row without its
    metrics are skipped with a warning naming the line, and not counted as done."""
    p = sio.as_path(path)
    if not p.exists():
        return []
    return [row for row, _ in _scan(p.read_bytes(), os.fspath(p))[0]]


def repair(path) -> int:
    """Cut a partial last line (no trailing newline) off ``path``; returns the bytes removed."""
    n = sio.cut_partial_line(path)
    if n:
        logging.warning("%s: removed a truncated last line (%d bytes)", path, n)
    return n


def compact(path) -> int:
    """Rewrite ``path`` (atomically) with exactly one complete row per hash when it holds
    anything else: a partial, unparsable or incomplete line, or a repeated row (the later
    one is kept).  The dropped lines are added to ``results.damaged.jsonl`` next to it, and
    their number is returned.  Call it only while holding the workdir lock."""
    p = sio.as_path(path)
    if not p.exists():
        return 0
    rows, dropped = _scan(p.read_bytes(), os.fspath(p))
    if not dropped:
        return 0
    damaged = p.parent / DAMAGED_FILE
    old = damaged.read_bytes() if damaged.exists() else b""
    sio.atomic_write_bytes(damaged, old + b"".join(line + b"\n" for line in dropped))
    sio.atomic_write_bytes(p, b"".join(line + b"\n" for _, line in rows))
    logging.warning("%s: rewrote the store with its %d complete rows; %d damaged, incomplete or repeated lines "
                    "moved to %s", p, len(rows), len(dropped), damaged)
    return len(dropped)


def _row_line(row: dict) -> bytes:
    return (json.dumps(json_clean(row), sort_keys=True, allow_nan=False) + "\n").encode("utf-8")


def append_row(path, row: dict) -> None:
    """Append one row as one line (samplax.io.append_line: one write on an O_APPEND
    descriptor, then fsync; an object store rewrites the object)."""
    sio.append_line(path, _row_line(row))


def _flatten(row: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in row.items():
        if isinstance(v, dict) and k in ("metrics", "reference"):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[prefix + k] = v
    return out


def load_results(workdir, as_dataframe: Optional[bool] = None):
    """The rows of ``workdir/results.jsonl``, one per settings hash: a pandas DataFrame
    (``metrics`` and ``reference`` flattened to ``metrics.mean_l2`` ...) when pandas is
    installed, else a list of dicts.  ``as_dataframe`` forces either."""
    rows = read_results(sio.as_path(workdir) / RESULTS_FILE)
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
def _as_saved(identity: dict) -> dict:
    """``identity`` as it reads back from config.json (strict JSON: tuples become lists)."""
    return json.loads(json.dumps(json_clean(identity)))


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


def check_saved_config(workdir, identity: dict, kind: Optional[str] = None) -> bool:
    """True if ``workdir`` already holds this config; False if it holds none; raises
    WorkdirConflict (naming the differing fields) if it holds a different one.

    Sample runs accumulate: a sample workdir takes any other sample config (each row's
    hash names all its settings, so the rows stay distinguishable; the configs are kept
    in ``config_history.jsonl``), and only a sweep's workdir refuses it."""
    w = sio.as_path(workdir)
    path = w / CONFIG_FILE
    if not path.exists():
        if (w / RESULTS_FILE).exists():
            raise WorkdirConflict(f"{w} has {RESULTS_FILE} but no {CONFIG_FILE}: not a samplax workdir "
                                  f"of this config; use another workdir or start over (--restart)")
        return False
    try:
        saved = json.loads(path.read_bytes())
        if not isinstance(saved, dict):
            raise ValueError(f"not a JSON object but {type(saved).__name__}")
    except (ValueError, UnicodeDecodeError) as e:
        raise WorkdirConflict(f"{path} is damaged ({e}); use another workdir or start over (--restart)") from None
    if kind == "sample":
        if saved.get("kind") not in (None, "sample"):
            raise WorkdirConflict(f"{w} holds a {saved.get('kind')!r} run; a sample run accumulates only in a "
                                  f"sample workdir. Use another workdir, or start over with --restart.")
        return True
    diffs = config_diff(saved.get("identity"), _as_saved(identity))
    if diffs:
        shown = "; ".join(diffs[:6]) + (f"; and {len(diffs) - 6} more" if len(diffs) > 6 else "")
        raise WorkdirConflict(f"{w} holds results of a different config ({shown}). Use another workdir, "
                              f"or start over with --restart (deletes its results).")
    return True


def save_config(workdir, kind: str, config: dict, identity: dict) -> None:
    """``config.json`` (the latest config) and, when it is new, a line of
    ``config_history.jsonl`` (every config that ran in the workdir)."""
    w = sio.as_path(workdir)
    record = dict(kind=kind, config=config, identity=identity)
    previous = None
    if (w / CONFIG_FILE).exists():
        try:
            previous = json.loads((w / CONFIG_FILE).read_bytes()).get("identity")
        except (ValueError, UnicodeDecodeError, AttributeError):
            previous = None
    clean = _as_saved(identity)
    if previous is None or config_diff(previous, clean):
        sio.append_line(w / CONFIG_HISTORY_FILE, (json.dumps(json_clean(dict(record, time=time.strftime(
            "%Y-%m-%d %H:%M:%S UTC", time.gmtime()))), sort_keys=True) + "\n").encode())
    atomic_write_json(w / CONFIG_FILE, record)


def clear_workdir(workdir, names: Iterable[str] = DERIVED) -> None:
    """Remove the results of a workdir (start over); the reference cache and the lock stay."""
    w = sio.as_path(workdir)
    for name in names:
        sio.remove(w / name)


# ---------------------------------------------------------------------------------------
# The workdir: checks before anything is written, and its lock
# ---------------------------------------------------------------------------------------
def run_releasing_lock(body, *args):
    """``body(*args, holder)``, then release ``holder["lock"]`` -- the WorkdirLock the body
    acquires when it starts writing (after its read-only checks) -- however the body ends."""
    holder = {}
    try:
        return body(*args, holder)
    finally:
        if holder.get("lock") is not None:
            holder["lock"].release()


def open_run(workdir, kind: str, config: dict, identity: dict, restart: bool, derived: Iterable[str]) -> None:
    """The first writes of a run (a training loop, a search), made under the workdir's lock
    that the caller holds: with ``restart`` remove the run's ``derived`` files, else check the
    saved config again (another process may have written one since the read-only check);
    create the workdir; save the config with its identity."""
    wd = sio.as_path(workdir)
    if restart:
        clear_workdir(wd, derived)
    else:
        check_saved_config(str(wd), identity)
    wd.mkdir(parents=True, exist_ok=True)
    save_config(str(wd), kind, config, identity)


def check_workdir(workdir, field: str = "workdir", filesystem: bool = True):
    """The workdir as an ``epath.Path``, or a ConfigError at ``field`` (before anything is
    written) when it cannot be one: not a path, empty, an unsupported URI scheme, and
    with ``filesystem`` (reads only): an existing file, under a file, or (local) in a
    directory this process cannot write.  Processes that write nothing (not process 0 of
    a multi-process run) check the name only."""
    if isinstance(workdir, bytes) or not isinstance(workdir, (str, os.PathLike)):
        raise ConfigError(field, f"must be a path (a string), got {workdir!r} ({type(workdir).__name__}); "
                                 f"allowed: a local directory or gs://bucket/dir")
    s = os.fspath(workdir)
    if not s.strip():
        raise ConfigError(field, "is empty (it would write into the current directory); allowed: a local "
                                 "directory or gs://bucket/dir")
    if "\0" in s:
        raise ConfigError(field, f"{s!r} contains a NUL byte; allowed: a local directory or gs://bucket/dir")
    problem = sio.check_writable_location(s)
    if problem:
        raise ConfigError(field, f"{s!r}: {problem}")
    p = sio.as_path(s)
    if not filesystem:
        return p
    if not sio.is_local(p):
        try:
            if p.exists() and not p.is_dir():
                raise ConfigError(field, f"{s} is a file, not a directory; allowed: a directory")
        except ConfigError:
            raise
        except Exception as e:  # noqa: BLE001  (a backend without credentials, a missing fsspec package ...)
            raise ConfigError(field, f"{s} cannot be reached ({type(e).__name__}: {e})") from None
        return p
    local = os.fspath(p)
    if os.path.exists(local) and not os.path.isdir(local):
        raise ConfigError(field, f"{s} is a file, not a directory; allowed: a directory")
    existing = local
    while not os.path.exists(existing):
        parent = os.path.dirname(existing)
        if parent == existing:
            break
        existing = parent
    if not os.path.isdir(existing):
        raise ConfigError(field, f"{s} is under {existing}, which is a file; allowed: a directory path")
    if not os.access(existing, os.W_OK | os.X_OK) or os.statvfs(existing).f_flag & os.ST_RDONLY:
        what = "is" if existing == local else f"would be created in {existing}, which is"
        raise ConfigError(field, f"{s} {what} not writable by this process; allowed: a writable directory")
    return p


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def _holder_text(info: dict) -> str:
    return (f"pid {info.get('pid', '?')} on {info.get('host', '?')} since {info.get('since', '?')}"
            + (f" (command: {info['command']})" if info.get("command") else ""))


class WorkdirLock:
    """One process at a time in a workdir: ``with WorkdirLock(workdir): ...``.

    Local workdirs: an exclusive ``fcntl.flock`` on ``WORKDIR/.lock``, held until
    :meth:`release` (or the process ends: the kernel drops it on any exit, kill -9
    included, so a crash never leaves a stale lock).  The holder writes its pid, host,
    start time and command into the file; a second process refuses at once with
    :class:`WorkdirLocked` naming them, and writes nothing.  flock is per host: two
    hosts sharing an NFS workdir are not kept apart.

    Object stores (``gs://``...): the lock is the object ``WORKDIR/.lock`` with the
    holder's info, created if absent and deleted on release.  Objects have no atomic
    create-if-absent here, so two processes starting within the store's write latency
    may both proceed (the holder re-reads its token to narrow that window), and a holder
    killed without release leaves the object behind: a later run on the same host takes
    it over when that pid is gone; from another host, delete the object once the holder
    is known to be gone.

    Creates the workdir if needed (its parents included).  ``mode`` forces "flock" or
    "object" (tests); by default it follows the path."""

    def __init__(self, workdir, mode: Optional[str] = None, command: Optional[str] = None):
        self.workdir = sio.as_path(workdir)
        self.path = self.workdir / LOCK_FILE
        self.mode = mode or ("flock" if sio.is_local(self.workdir) else "object")
        self.command = command
        self._fd = None
        self._token = None

    def info(self) -> dict:
        import sys

        cmd = self.command if self.command is not None else " ".join(sys.argv)[:300]
        return dict(pid=os.getpid(), host=socket.gethostname(), since=_now(), command=cmd, token=self._token)

    def _refuse(self, info: Optional[dict]) -> None:
        who = _holder_text(info) if info else "another process (its holder info is not written yet)"
        raise WorkdirLocked(f"workdir: locked by {who} ({self.path}; wait for that run to end, or use another "
                            f"workdir)")

    @staticmethod
    def _parse(data: bytes) -> Optional[dict]:
        try:
            info = json.loads(data)
        except (ValueError, UnicodeDecodeError):
            return None
        return info if isinstance(info, dict) else None

    def acquire(self) -> "WorkdirLock":
        self._token = uuid.uuid4().hex
        if self.mode == "flock":
            os.makedirs(os.fspath(self.workdir), exist_ok=True)
            fd = os.open(os.fspath(self.path), os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                data = os.pread(fd, 65536, 0)
                os.close(fd)
                self._refuse(self._parse(data))
            except BaseException:
                os.close(fd)
                raise
            data = (json.dumps(self.info()) + "\n").encode()
            os.ftruncate(fd, 0)
            os.pwrite(fd, data, 0)
            os.fsync(fd)
            self._fd = fd
            return self
        # an object store
        if self.path.exists():
            info = self._parse(self.path.read_bytes())
            if not (info and info.get("host") == socket.gethostname() and not _pid_alive(info.get("pid"))):
                self._refuse(info)
            logging.warning("%s: taking over the lock of pid %s on this host, which is gone", self.path,
                            info.get("pid"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.path.write_bytes((json.dumps(self.info()) + "\n").encode())
        mine = self._parse(self.path.read_bytes())
        if not mine or mine.get("token") != self._token:  # another process wrote in between
            self._token = None
            self._refuse(mine)
        self._fd = -1
        return self

    def release(self) -> None:
        if self._fd is None:
            return
        if self.mode == "flock":
            os.ftruncate(self._fd, 0)  # a process refused later never reads a finished holder's info
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
        else:
            try:
                info = self._parse(self.path.read_bytes()) if self.path.exists() else None
                if info and info.get("token") == self._token:
                    self.path.unlink()
            except Exception as e:  # noqa: BLE001
                logging.warning("%s: could not remove the lock: %s", self.path, e)
        self._fd = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def __enter__(self) -> "WorkdirLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def workdir_lock(workdir, mode: Optional[str] = None) -> WorkdirLock:
    """``with workdir_lock(workdir):`` -- see :class:`WorkdirLock`."""
    return WorkdirLock(workdir, mode=mode)


def _pid_alive(pid) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
