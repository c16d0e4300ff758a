"""Devices: the batch mesh, padding to the device count, multi-host start-up.

Samplers never see devices.  The runner builds a one-axis mesh ("batch") over
all devices, pads a chunk of samples to a multiple of the device count, shards
the sample axis with ``NamedSharding`` and asks for replicated outputs, so every
process of a multi-host job can read the (small) results; only process 0 writes.
"""
from __future__ import annotations

from typing import Callable, Optional

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

BATCH_AXIS = "batch"


def maybe_initialize_distributed(enabled: bool, initialize: Optional[Callable[[], None]] = None) -> bool:
    """Call ``jax.distributed.initialize()`` (or ``initialize``) when ``enabled``.

    Must run before anything touches a JAX backend.  Without arguments JAX
    detects the cluster itself (Cloud TPU VM slices, SLURM, Open MPI); for
    other set-ups call ``jax.distributed.initialize(...)`` with explicit
    arguments in a launcher and leave ``distributed`` off (see docs/tpu.md).
    Returns whether it initialised."""
    if not enabled:
        return False
    (initialize or jax.distributed.initialize)()
    return True


def is_writer() -> bool:
    """Only process 0 writes results, plots and checkpoints."""
    return jax.process_index() == 0


def agree_flag(flag: bool) -> bool:
    """Process 0's ``flag`` on every process (identity with one process)."""
    return bool(from_process_zero(np.asarray([int(flag)], np.int32))[0])


def from_process_zero(x: np.ndarray) -> np.ndarray:
    """Process 0's copy of a small host array on every process (identity with one
    process); the broadcast also acts as a barrier."""
    if jax.process_count() == 1:
        return np.asarray(x)
    from jax.experimental import multihost_utils

    return np.asarray(multihost_utils.broadcast_one_to_all(np.asarray(x)))


def batch_mesh(devices=None) -> Mesh:
    """A one-axis mesh over all (global) devices with Auto axis types."""
    devices = jax.devices() if devices is None else devices
    return Mesh(np.asarray(devices), (BATCH_AXIS,), axis_types=(jax.sharding.AxisType.Auto,))


def batch_sharding(mesh: Mesh, ndim: int, axis: int = 0) -> NamedSharding:
    """Shard dimension ``axis`` of an ``ndim``-array over the batch axis."""
    spec = [None] * ndim
    spec[axis] = BATCH_AXIS
    return NamedSharding(mesh, P(*spec))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def padded_chunk(chunk_size: int, n_samples: int, n_devices: int) -> int:
    """Samples per program call: min(chunk_size, n_samples) rounded up to a multiple
    of the device count (the extra samples are computed and dropped)."""
    c = min(chunk_size, n_samples)
    return -(-c // n_devices) * n_devices


def put_global(x: np.ndarray, sharding: NamedSharding) -> jax.Array:
    """A global jax.Array from a host array every process holds in full."""
    x = np.asarray(x)
    return jax.make_array_from_callback(x.shape, sharding, lambda idx: x[idx])


def device_summary() -> dict:
    d = jax.devices()[0]
    return dict(n_devices=jax.device_count(), n_local_devices=jax.local_device_count(),
                n_processes=jax.process_count(), device_kind=d.device_kind, platform=d.platform)
