"""Data samplers: which examples of a finite data set the next training step sees.

A :class:`DataSampler` is pure state plus a pure, jit-able draw::

    sampler = get_sampler("uniform", size=1437, batch_size=128)
    state = sampler.init()
    stats = initial_stats(sampler)
    for k in range(num_steps):
        idx, state = sampler.next_indices(sampler_key(data_seed, k), state, stats)
        ...                       # the train step on x[idx]
        stats = sampler.stats_fn(info) if sampler.stats_fn else info

``stats`` is what the train step of the previous batch reported (``info``: the batch's
``indices``, its per-example ``loss`` at the parameters before the update, the
``grad_norm``, the ``learning_rate``, the ``step`` and ``valid``; at step 0 the same
structure filled with zeros and ``valid = False``).  A sampler that learns from the losses
(LEAD) reads them here, at no extra model call; one that does not (uniform, RS2) ignores
them.  The trainer (``config.train.sampler``, :mod:`samplax.experiment.trainer`) runs the
draw, the gather of the batch and the step in one jitted function and keeps ``(state,
stats)`` in the Orbax checkpoint, so a run killed and resumed draws exactly the indices of
an uninterrupted one.

Baselines here: ``"uniform"`` (i.i.d. indices with replacement), ``"epoch"`` (a fresh
permutation per epoch, drawn in-jit: every example once per epoch), ``"fixed_subset"`` (one
random subset of ``round(fraction * size)`` examples drawn once from ``seed``, then epochs
over it: the static-subset baseline of data-pruning papers).  More samplers register
themselves (:func:`register_sampler`): ``rs2``, ``lead``.
"""
from __future__ import annotations

import inspect
import math
from typing import Any, Callable, Dict, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

#: the data-sampler stream: step k draws with fold_in(fold_in(PRNGKey(data_seed), SAMPLER_STREAM), k)
SAMPLER_STREAM = 0x6473  # "ds"


class DataSampler(NamedTuple):
    """``init() -> state``; ``next_indices(key, state, stats) -> (indices (B,) int32, state)``;
    ``stats_fn(info) -> stats`` (inside the jitted train step; None: stats = info)."""

    name: str
    init: Callable[[], Any]
    next_indices: Callable[[jax.Array, Any, Any], Any]
    options: Dict[str, Any]
    stats_fn: Optional[Callable[[Dict[str, jax.Array]], Any]] = None
    size: int = 0
    batch_size: int = 0


def step_info(batch_size: int, valid: bool = False) -> Dict[str, jax.Array]:
    """The ``info`` a train step reports, zero-filled (``valid`` False: no step yet)."""
    return make_info(jnp.zeros((batch_size,), jnp.int32), jnp.zeros((batch_size,), jnp.float32), valid=valid)


def make_info(indices, loss, grad_norm=0.0, learning_rate=0.0, step=0, valid=True) -> Dict[str, jax.Array]:
    """The ``info`` of a train step, in its fixed dtypes: the batch's ``indices`` and per-example
    ``loss``, the ``grad_norm``, ``learning_rate`` and ``step``, and ``valid``."""
    return dict(indices=jnp.asarray(indices).astype(jnp.int32), loss=jnp.asarray(loss).astype(jnp.float32),
                grad_norm=jnp.asarray(grad_norm, jnp.float32), learning_rate=jnp.asarray(learning_rate, jnp.float32),
                step=jnp.asarray(step).astype(jnp.int32), valid=jnp.asarray(valid))


def stats_of(sampler: "DataSampler", info: Dict[str, jax.Array]):
    """What the sampler's next draw reads: ``stats_fn(info)``, or ``info`` itself."""
    return sampler.stats_fn(info) if sampler.stats_fn is not None else info


def initial_stats(sampler: "DataSampler"):
    """The stats ``next_indices`` sees at step 0: ``stats_fn`` of a zero info (valid False)."""
    return stats_of(sampler, step_info(sampler.batch_size))


def sampler_key(data_seed: int, step) -> jax.Array:
    """The key of step ``step``'s draw: fold_in(fold_in(PRNGKey(data_seed), SAMPLER_STREAM), step)."""
    return jax.random.fold_in(jax.random.fold_in(jax.random.PRNGKey(data_seed), SAMPLER_STREAM), step)


# ---------------------------------------------------------------------------------------
# Registry
# ---------------------------------------------------------------------------------------
SAMPLERS: Dict[str, Callable[..., DataSampler]] = {}


def register_sampler(name: str, factory: Callable[..., DataSampler]) -> Callable[..., DataSampler]:
    """Register ``factory(size, batch_size, **options) -> DataSampler`` as ``name``."""
    SAMPLERS[name] = factory
    return factory


def sampler_options(name: str) -> Dict[str, Any]:
    """The options of sampler ``name`` and their defaults (inspect.Parameter.empty: required)."""
    params = list(inspect.signature(SAMPLERS[name]).parameters.values())[2:]
    return {p.name: p.default for p in params}


def get_sampler(name: str, size: int, batch_size: int, options: Optional[Dict[str, Any]] = None) -> DataSampler:
    """The sampler ``name`` for a data set of ``size`` examples and batches of ``batch_size``.
    ValueError naming the sampler, the option and what is allowed on bad input."""
    if name not in SAMPLERS:
        raise ValueError(f"unknown data sampler {name!r}; allowed: {sorted(SAMPLERS)}")
    options = dict(options or {})
    allowed = sampler_options(name)
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise ValueError(f"data sampler {name!r}: unknown option(s) {unknown}; allowed: {sorted(allowed)}")
    missing = sorted(k for k, v in allowed.items() if v is inspect.Parameter.empty and k not in options)
    if missing:
        raise ValueError(f"data sampler {name!r}: missing option(s) {missing}")
    size, batch_size = _positive_int("size", size), _positive_int("batch_size", batch_size)
    return SAMPLERS[name](size, batch_size, **options)


def _positive_int(name: str, v) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
        raise ValueError(f"{name} must be a positive integer, got {v!r}")
    return int(v)


def check_fraction(sampler: str, fraction) -> float:
    """``fraction`` as a float in (0, 1], else ValueError naming the option."""
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float, np.floating)) or not 0 < fraction <= 1:
        raise ValueError(f"data sampler {sampler!r}: option 'fraction' must be in (0, 1], got {fraction!r}")
    return float(fraction)


def subset_size(size: int, fraction: float) -> int:
    """round(fraction * size), at least 1."""
    return max(1, int(round(fraction * size)))


# ---------------------------------------------------------------------------------------
# A stream of permutations, consumed batch by batch (shared by epoch-like samplers)
# ---------------------------------------------------------------------------------------
def permutation_stream_init(n: int) -> Dict[str, jax.Array]:
    """A stream of permutations of range(n): ``order`` (the current one), ``pos`` (the next
    position), ``epoch``.  ``order`` starts invalid (pos = n): the first draw shuffles."""
    return dict(order=jnp.arange(n, dtype=jnp.int32), pos=jnp.asarray(n, jnp.int32),
                epoch=jnp.asarray(-1, jnp.int32))


def permutation_stream_take(key, stream, batch_size: int, shuffle: Callable[[jax.Array, jax.Array], jax.Array]):
    """Take ``batch_size`` positions from the stream; when the current permutation runs out,
    continue on a fresh one ``shuffle(fold_in(key, epoch), epoch)`` (so a batch may straddle
    epochs, and every element appears exactly once per epoch).

    With ``batch_size <= n`` a batch touches at most two permutations: the next one is drawn
    (under ``lax.cond``, so only when needed; under ``vmap`` the cond becomes a select and it is
    drawn every step) and the batch is gathered in one vectorised step.  Larger batches
    straddle several permutations and go element by element (``lax.scan``)."""
    n = stream["order"].shape[0]
    if batch_size <= n:
        order, pos, epoch = stream["order"], stream["pos"], stream["epoch"]
        need = pos + batch_size > n
        nxt = jax.lax.cond(need, lambda: shuffle(jax.random.fold_in(key, epoch + 1), epoch + 1).astype(order.dtype),
                           lambda: order)
        p = pos + jnp.arange(batch_size, dtype=pos.dtype)
        idx = jnp.where(p < n, order[jnp.minimum(p, n - 1)], nxt[jnp.clip(p - n, 0, n - 1)])
        state = dict(order=jnp.where(need, nxt, order), pos=jnp.where(need, pos + batch_size - n, pos + batch_size),
                     epoch=jnp.where(need, epoch + 1, epoch))
        return idx.astype(jnp.int32), state

    def one(carry, k):
        order, pos, epoch = carry
        new_epoch = pos >= n
        epoch = jnp.where(new_epoch, epoch + 1, epoch)
        order = jax.lax.cond(new_epoch, lambda: shuffle(jax.random.fold_in(k, epoch), epoch).astype(order.dtype),
                             lambda: order)
        pos = jnp.where(new_epoch, 0, pos)
        return (order, pos + 1, epoch), order[pos]

    keys = jnp.broadcast_to(key, (batch_size,) + key.shape)
    (order, pos, epoch), idx = jax.lax.scan(one, (stream["order"], stream["pos"], stream["epoch"]), keys)
    return idx.astype(jnp.int32), dict(order=order, pos=pos, epoch=epoch)


# ---------------------------------------------------------------------------------------
# Baselines
# ---------------------------------------------------------------------------------------
def uniform(size: int, batch_size: int) -> DataSampler:
    """I.i.d. indices, uniform over the data set, with replacement."""
    def next_indices(key, state, stats):
        del stats
        return jax.random.randint(key, (batch_size,), 0, size, jnp.int32), state

    return DataSampler("uniform", lambda: dict(draws=jnp.zeros((), jnp.int32)), next_indices, {}, None, size,
                       batch_size)


def epoch(size: int, batch_size: int, seed: int = 0) -> DataSampler:
    """A fresh uniformly random permutation per epoch (from ``fold_in(PRNGKey(seed), epoch)``
    -- the step key is not used, so the order is a function of (seed, epoch) alone), consumed
    batch by batch: every example exactly once per epoch."""
    base = jax.random.PRNGKey(int(seed))

    def shuffle(k, e):
        del k
        return jax.random.permutation(jax.random.fold_in(base, e), size).astype(jnp.int32)

    def next_indices(key, state, stats):
        del stats
        return permutation_stream_take(key, state, batch_size, shuffle)

    return DataSampler("epoch", lambda: permutation_stream_init(size), next_indices, dict(seed=int(seed)), None,
                       size, batch_size)


def fixed_subset(size: int, batch_size: int, fraction: float = 0.1, seed: int = 0) -> DataSampler:
    """One random subset of ``round(fraction * size)`` examples, drawn once from
    ``PRNGKey(seed)`` (without replacement), then epochs over it (a fresh permutation of the
    subset each epoch).  The static-subset baseline of RS2 / data-pruning comparisons."""
    fraction = check_fraction("fixed_subset", fraction)
    m = subset_size(size, fraction)
    base = jax.random.PRNGKey(int(seed))
    subset = np.asarray(jax.random.permutation(jax.random.fold_in(base, 0x5b), size)[:m], np.int32)

    def shuffle(k, e):
        del k
        return jnp.asarray(subset)[jax.random.permutation(jax.random.fold_in(base, e), m)]

    def next_indices(key, state, stats):
        del stats
        return permutation_stream_take(key, state, batch_size, shuffle)

    def init():
        s = permutation_stream_init(m)
        s["order"] = jnp.asarray(subset)
        return s

    return DataSampler("fixed_subset", init, next_indices, dict(fraction=fraction, seed=int(seed), subset_size=m),
                       None, size, batch_size)


register_sampler("uniform", uniform)
register_sampler("epoch", epoch)
register_sampler("fixed_subset", fixed_subset)


# ---------------------------------------------------------------------------------------
# Running a sampler outside the trainer (tests, analyses)
# ---------------------------------------------------------------------------------------
def draw_indices(sampler: DataSampler, data_seed: int, num_steps: int,
                 loss_fn: Optional[Callable[[jax.Array, jax.Array], jax.Array]] = None, state=None,
                 start: int = 0):
    """Indices (num_steps, B) of steps ``start .. start + num_steps - 1`` and the final state,
    with the stats a train step would report when the per-example loss of example i at step
    k is ``loss_fn(indices, k)`` (None: zeros).  One ``lax.scan``."""
    state = sampler.init() if state is None else state

    def body(carry, k):
        st, stats = carry
        idx, st = sampler.next_indices(sampler_key(data_seed, k), st, stats)
        loss = jnp.zeros(idx.shape, jnp.float32) if loss_fn is None else loss_fn(idx, k).astype(jnp.float32)
        stats = stats_of(sampler, make_info(idx, loss, step=k))
        return (st, stats), idx

    steps = jnp.arange(start, start + num_steps, dtype=jnp.int32)
    (state, _), idx = jax.jit(lambda s0, ks: jax.lax.scan(body, (s0, initial_stats(sampler)), ks))(state, steps)
    return np.asarray(idx), state


def steps_for_epochs(size: int, batch_size: int, epochs: float) -> int:
    """The number of steps of ``epochs`` passes over ``size`` examples: ceil(epochs size / B)."""
    return int(math.ceil(epochs * size / batch_size))


__all__ = ["DataSampler", "SAMPLER_STREAM", "SAMPLERS", "register_sampler", "get_sampler", "sampler_options",
           "initial_stats", "step_info", "make_info", "stats_of", "sampler_key", "uniform", "epoch", "fixed_subset",
           "draw_indices",
           "permutation_stream_init", "permutation_stream_take", "check_fraction", "subset_size",
           "steps_for_epochs"]
