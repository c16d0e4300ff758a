"""Caches shared by every workdir of a user: exact references and compiled programs.

* **References** (the float64 exact PF-ODE solutions behind ``mean_l2``, the exact
  sample sets behind ``sw2``, the digits classifier): content-addressed -- the file
  name is the sha1 of everything the array depends on (problem, prior, seed, sample
  count, t_max, RK4 steps, a user schedule's spec and source digest) -- so any
  workdir reuses them and a changed setting can never pick up a stale one.  Each
  array is stored with a sidecar JSON holding its key and the sha256 of its bytes;
  an array whose bytes do not match (a poisoned or damaged cache) is reported with a
  warning, recomputed and rewritten, never used.
* **Compiled programs**: JAX's persistent compilation cache, switched on by
  :func:`enable_compilation_cache` (called by every entrypoint and by ``run`` /
  ``run_train``) unless the user configured one or set ``SAMPLAX_COMPILATION_CACHE=0``.

The directory is ``$SAMPLAX_CACHE_DIR``, else ``$XDG_CACHE_HOME/samplax``, else
``~/.cache/samplax`` (local or a ``gs://`` URI).
"""
from __future__ import annotations

import hashlib
import io
import json
import os
from typing import Callable

import numpy as np
from absl import logging

from samplax import io as sio
from samplax.experiment.identity import settings_hash

REFERENCE_SUBDIR = "references"


def cache_dir() -> str:
    d = os.environ.get("SAMPLAX_CACHE_DIR")
    if not d:
        base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        d = os.path.join(base, "samplax")
    return os.fspath(sio.as_path(d))


def key_hash(key: dict) -> str:
    """The file name part of a reference: the settings hash of its key, 16 hex digits."""
    return settings_hash(key, digits=16)


def _paths(name: str, key: dict):
    d = sio.as_path(cache_dir()) / REFERENCE_SUBDIR
    stem = f"{name}_{key_hash(key)}"
    return d / (stem + ".npy"), d / (stem + ".json")


def _read(name: str, key: dict):
    """The cached array, or None (absent, or damaged: then a warning)."""
    npy, meta = _paths(name, key)
    if not npy.exists():
        return None
    try:
        data = npy.read_bytes()
        record = json.loads(meta.read_text())
        if record.get("sha256") != hashlib.sha256(data).hexdigest():
            raise ValueError("checksum mismatch")
        return np.load(io.BytesIO(data), allow_pickle=False)
    except (OSError, ValueError) as e:
        logging.warning("reference cache: %s is damaged (%s); recomputing it", npy, e)
        return None


def cached_array(name: str, key: dict, compute: Callable[[], np.ndarray], write: bool = True) -> np.ndarray:
    """The array of ``key`` from the cache, or ``compute()`` (then stored when ``write``)."""
    value = _read(name, key)
    if value is not None:
        return value
    value = np.asarray(compute())
    if write:
        npy, meta = _paths(name, key)
        buf = io.BytesIO()
        np.save(buf, value)
        data = buf.getvalue()
        try:
            sio.atomic_write_bytes(npy, data)  # the array first: a crash before the sidecar leaves a miss
            sio.atomic_write_json(meta, dict(key=key, sha256=hashlib.sha256(data).hexdigest(), name=name,
                                             shape=list(value.shape), dtype=str(value.dtype)))
        except OSError as e:  # a read-only cache costs time, not results
            logging.warning("reference cache: cannot write %s (%s); continuing without caching", npy, e)
    return value


def enable_compilation_cache() -> None:
    """Switch on JAX's persistent compilation cache under the samplax cache directory,
    unless one is configured already or ``SAMPLAX_COMPILATION_CACHE=0``."""
    import jax

    if os.environ.get("SAMPLAX_COMPILATION_CACHE", "1").lower() in ("0", "false", "no"):
        return
    if jax.config.jax_compilation_cache_dir:
        return
    d = os.environ.get("SAMPLAX_COMPILATION_CACHE_DIR") or os.path.join(cache_dir(), "jax")
    jax.config.update("jax_compilation_cache_dir", d)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)


__all__ = ["cache_dir", "cached_array", "enable_compilation_cache", "key_hash"]
