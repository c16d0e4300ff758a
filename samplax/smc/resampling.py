"""Resampling schemes on log-weights and the effective sample size.

Every scheme is a pure function ``(key, log_weights, n) -> ancestors`` with
``log_weights`` of shape ``(N,)`` (unnormalised, ``-inf`` allowed for zero weight)
and ``ancestors`` an ``int32`` array of shape ``(n,)``.  Each is *unbiased*: the
offspring count ``c_i = #{k : ancestors[k] = i}`` has ``E[c_i] = n w_i`` with
``w = softmax(log_weights)`` (Douc, Cappé & Moulines 2005, "Comparison of
resampling schemes for particle filtering").

The sampling itself is blackjax's (``blackjax.smc.resampling``, on normalised
weights).  Our wrapper adds what blackjax does not do:

* log-weights in, normalised with a max-shift (``softmax``), so weights around
  ``exp(-1e4)`` work;
* a repair of zero-weight picks: blackjax's ``searchsorted`` on a rounded
  cumulative sum can land on a particle of weight exactly 0 (a ``-inf``
  log-weight) when ``u`` is 0 or beyond the rounded total; we move such a pick to
  the nearest particle of positive weight below it (above it for leading zeros),
  which is where exact arithmetic would have put it;
* validation: outside ``jit`` a bad shape/dtype, ``n < 1``, a NaN or all ``-inf``
  log-weights raise ``ValueError`` naming the argument.  Inside ``jit`` nothing
  can raise: invalid log-weights (any NaN or ``+inf``, or all ``-inf``) give the
  identity ancestors ``arange(n) % N``, and :func:`log_weights_valid` is the flag the
  SMC driver reports (``SMCInfo.valid``).
"""
from __future__ import annotations

from typing import Callable, Dict

import jax
import jax.numpy as jnp
import numpy as np


def _blackjax(name: str) -> Callable:
    """blackjax's scheme ``name``, imported on first use: importing blackjax initialises JAX's
    backend, which must not happen at ``import samplax`` (``jax.distributed.initialize`` has to
    come first in multi-process runs)."""
    from blackjax.smc import resampling as bj
    return getattr(bj, name)
from jax.scipy.special import logsumexp

Array = jax.Array
ResampleFn = Callable[[Array, Array, int], Array]

__all__ = [
    "multinomial", "stratified", "systematic", "residual", "RESAMPLING", "get_resampling",
    "log_ess", "ess", "log_weights_valid", "normalise_log_weights",
]


def _concrete(x):
    """The value of ``x`` as numpy when it is concrete, else None (inside jit/vmap)."""
    try:
        return np.asarray(x)
    except (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError):
        return None


def check_log_weights(log_weights, name: str = "log_weights") -> None:
    """Shape/dtype check (always) and value check (only when concrete) -> ValueError."""
    shape = getattr(log_weights, "shape", None)
    dtype = getattr(log_weights, "dtype", None)
    if shape is None or len(shape) != 1 or shape[0] < 1:
        raise ValueError(f"{name} must be a 1-D array of shape (N,) with N >= 1, got shape {shape}")
    if not jnp.issubdtype(dtype, jnp.floating):
        raise ValueError(f"{name} must have a floating dtype, got {dtype}")
    value = _concrete(log_weights)
    if value is not None:
        if np.isnan(value).any() or np.isposinf(value).any():
            raise ValueError(f"{name} contains NaN or +inf at indices "
                             f"{np.flatnonzero(np.isnan(value) | np.isposinf(value))[:10].tolist()}")
        if np.isneginf(value).all():
            raise ValueError(f"{name} are all -inf (every weight is zero): nothing to resample")


def _check_n(n) -> int:
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"n (number of ancestors) must be a positive Python int, got {n!r}")
    return int(n)


def log_weights_valid(log_weights: Array) -> Array:
    """True when the log-weights define a distribution: no NaN, no +inf, not all -inf."""
    no_bad = ~jnp.any(jnp.isnan(log_weights) | (log_weights == jnp.inf))
    return no_bad & jnp.any(jnp.isfinite(log_weights))


def normalise_log_weights(log_weights: Array) -> Array:
    """``log_weights - logsumexp(log_weights)`` (log of the normalised weights)."""
    return log_weights - logsumexp(log_weights)


def log_ess(log_weights: Array) -> Array:
    """log ESS = 2 logsumexp(l) - logsumexp(2 l), ESS = (sum w)^2 / sum w^2
    (Kong, Liu & Wong 1994; Doucet & Johansen 2009, Sec. 3).  Shift-invariant, so
    stable for log-weights of any magnitude; ``-inf`` entries contribute 0.  This is
    blackjax's ``blackjax.smc.ess.log_ess`` formula; we re-state it to give all
    ``-inf`` a defined answer (log ESS = -inf, not NaN)."""
    m = jnp.max(log_weights)
    m = jnp.where(jnp.isfinite(m), m, 0.0)
    shifted = log_weights - m
    value = 2.0 * logsumexp(shifted) - logsumexp(2.0 * shifted)
    return jnp.where(jnp.any(log_weights > -jnp.inf), value, -jnp.inf)


def ess(log_weights: Array) -> Array:
    """Effective sample size in [1, N] from log-weights (see :func:`log_ess`)."""
    return jnp.exp(log_ess(log_weights))


def _repair_zero_picks(idx: Array, weights: Array) -> Array:
    """Move picks of zero-weight particles to the nearest positive-weight one below
    (above, for leading zeros): where exact arithmetic would have landed."""
    N = weights.shape[0]
    pos = weights > 0
    ar = jnp.arange(N)
    last_pos_below = jax.lax.cummax(jnp.where(pos, ar, -1), axis=0)
    first_pos = jnp.argmax(pos)
    fix = jnp.where(last_pos_below >= 0, last_pos_below, first_pos)
    return jnp.where(pos[idx], idx, fix[idx])


def _wrap(bj_name: str, name: str) -> ResampleFn:
    def resample(key: Array, log_weights: Array, n: int) -> Array:
        check_log_weights(log_weights)
        n = _check_n(n)
        N = log_weights.shape[0]
        valid = log_weights_valid(log_weights)
        safe = jnp.where(valid, log_weights, jnp.zeros_like(log_weights))
        weights = jax.nn.softmax(safe)
        idx = _repair_zero_picks(_blackjax(bj_name)(key, weights, n), weights)
        identity = jnp.arange(n) % N
        return jnp.where(valid, idx, identity).astype(jnp.int32)

    resample.__name__ = name
    resample.__qualname__ = name
    return resample


multinomial = _wrap("multinomial", "multinomial")
multinomial.__doc__ = """Multinomial resampling: n i.i.d. draws from w (blackjax's, sorted uniforms).
Offspring counts ~ Multinomial(n, w): Var c_i = n w_i (1 - w_i)."""
stratified = _wrap("stratified", "stratified")
stratified.__doc__ = """Stratified resampling (Kitagawa 1996): one uniform per stratum [k/n, (k+1)/n).
Var c_i <= multinomial's for every i (Douc, Cappé & Moulines 2005, Sec. 3)."""
systematic = _wrap("systematic", "systematic")
systematic.__doc__ = """Systematic resampling (Carpenter, Clifford & Fearnhead 1999): one shared uniform.
c_i is floor(n w_i) or ceil(n w_i), so Var c_i = r_i (1 - r_i), r_i = frac(n w_i): the least
any integer count with mean n w_i can have.  No ordering for general functionals (covariances
between counts): Douc, Cappé & Moulines 2005, Sec. 3 give a case worse than multinomial."""
residual = _wrap("residual", "residual")
residual.__doc__ = """Residual resampling (Liu & Chen 1998): floor(n w_i) copies, the remaining
m = n - sum floor(n w_i) drawn multinomially from the residuals.  Var c_i <= multinomial's
(Douc, Cappé & Moulines 2005, Sec. 3)."""

RESAMPLING: Dict[str, ResampleFn] = {
    "multinomial": multinomial,
    "stratified": stratified,
    "systematic": systematic,
    "residual": residual,
}


def get_resampling(name: str) -> ResampleFn:
    """The scheme called ``name``; ValueError listing the allowed names otherwise."""
    if not isinstance(name, str) or name not in RESAMPLING:
        raise ValueError(f"resampling must be one of {sorted(RESAMPLING)}, got {name!r}")
    return RESAMPLING[name]
