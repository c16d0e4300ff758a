"""A generic SMC driver with adaptive resampling and the normalising-constant estimate.

Shape as in blackjax (``init(...) -> State``, ``step(key, state) -> (State, Info)``,
NamedTuples), but on log-weights, with adaptive resampling and the running
``log Z_hat``; blackjax's ``blackjax.smc.base.step`` always resamples, holds
normalised weights (not logs) and reports no ESS or non-finite weights, so the
step is ours and the resampling is blackjax's (see ``samplax.smc.resampling``).

One step t = 1, 2, ... (Doucet & Johansen 2009, "A tutorial on particle filtering
and smoothing", Sec. 3, ESS-triggered resampling; Del Moral 2004, Feynman–Kac
formulae, Ch. 7 for unbiasedness):

1. ESS of the current normalised weights W_{t-1}; if ESS < threshold * n,
   resample: ancestors ~ scheme(W_{t-1}), W_{t-1} <- 1/n (else ancestors = identity).
2. ``new_particles, g = mutation(key, particles[ancestors], t)``: the move and the
   log incremental weight log G_t of each particle.
3. log Z_hat_t = log Z_hat_{t-1} + log sum_i W_{t-1}^i exp(g^i)   (the log-mean of
   the increments after a resampling, since then W = 1/n), and
   log W_t = normalise(log W_{t-1} + g).

Z_hat_T = Z_0 prod_t sum_i W_{t-1}^i G_t^i is unbiased for Z_T for any adaptive
choice of resampling times made from the past (E[Z_hat] = Z, not E[log Z_hat]).

Particles are any pytree whose leaves share a leading particle axis of size n.
"""
from __future__ import annotations

from typing import Any, Callable, NamedTuple, Optional, Tuple, Union

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import logsumexp

from samplax.smc.resampling import (ResampleFn, check_log_weights, get_resampling, log_ess,
                                    log_weights_valid)

Array = jax.Array
PyTree = Any
Mutation = Callable[[Array, PyTree, Array], Tuple[PyTree, Array]]

__all__ = ["SMCState", "SMCInfo", "SMC", "smc", "run", "num_particles", "check_ess_threshold"]


class SMCState(NamedTuple):
    particles: PyTree        # leaves of shape (n, ...)
    log_weights: Array       # (n,) normalised: logsumexp(log_weights) = 0
    log_Z: Array             # () running log Z_hat
    t: Array                 # () int32, steps done so far (the next step is t + 1)
    first_invalid_step: Array  # () int32, first step with NaN/+inf or all -inf log-weights; -1 if none


class SMCInfo(NamedTuple):
    ancestors: Array              # (n,) int32; identity when not resampled
    ess: Array                    # () ESS of the weights before this step's resampling decision
    resampled: Array              # () bool
    log_weight_increment: Array   # (n,) log G_t returned by the mutation
    log_Z_increment: Array        # () log sum_i W_{t-1}^i G_t^i
    num_nonfinite: Array          # () int32, entries of the new log-weights that are NaN or +/-inf
    num_nan: Array                # () int32, entries that are NaN or +inf (never legitimate)
    valid: Array                  # () bool, new log-weights define a distribution
    first_invalid_step: Array     # () int32, as in the state after this step


class SMC(NamedTuple):
    init: Callable[..., SMCState]
    step: Callable[[Array, SMCState], Tuple[SMCState, SMCInfo]]
    resampling: str
    ess_threshold: float


def num_particles(particles: PyTree) -> int:
    """The common leading axis of the particle pytree; ValueError otherwise."""
    leaves = jax.tree_util.tree_leaves(particles)
    if not leaves:
        raise ValueError("particles must be a pytree with at least one array leaf")
    sizes = {np.shape(x)[0] if np.ndim(x) >= 1 else None for x in leaves}
    if None in sizes or len(sizes) != 1:
        raise ValueError("particles: every leaf needs the same leading particle axis, "
                         f"got leaf shapes {[np.shape(x) for x in leaves]}")
    return sizes.pop()


def _init(particles: PyTree, log_weights: Optional[Array] = None) -> SMCState:
    """State at t = 0.  ``log_weights`` (optional, unnormalised, shape (n,)) are initial
    importance weights; then log Z_hat_0 = log mean exp(log_weights), else 0."""
    n = num_particles(particles)
    dtype = jnp.result_type(float)
    if log_weights is None:
        log_weights = jnp.full((n,), -jnp.log(n), dtype)
        log_Z = jnp.zeros((), dtype)
    else:
        log_weights = jnp.asarray(log_weights)
        check_log_weights(log_weights)
        if log_weights.shape != (n,):
            raise ValueError(f"log_weights must have shape ({n},) to match particles, got {log_weights.shape}")
        lse = logsumexp(log_weights)
        log_Z = lse - jnp.log(n)
        log_weights = log_weights - lse
    return SMCState(particles, log_weights, log_Z, jnp.zeros((), jnp.int32), jnp.full((), -1, jnp.int32))


def check_ess_threshold(ess_threshold, where: str = "") -> float:
    """``ess_threshold`` as a float in [0, 1]; one ValueError naming it (prefixed by ``where``,
    e.g. a solver's name) otherwise."""
    if isinstance(ess_threshold, bool) or not isinstance(ess_threshold, (int, float, np.floating, np.integer)) \
            or not 0.0 <= float(ess_threshold) <= 1.0:
        raise ValueError(f"{where + ': ' if where else ''}ess_threshold must be a float in [0, 1] (resample when "
                         f"ESS / n falls below it; 1 = always resample, 0 = never), got {ess_threshold!r}")
    return float(ess_threshold)


def smc(mutation: Mutation, resampling: str = "systematic", ess_threshold: float = 0.5) -> SMC:
    """Build an adaptive SMC sampler.

    mutation: ``(key, particles, t) -> (new_particles, log_weight_increment)`` on the whole
        particle pytree (leading axis n), ``t`` the int32 index of the step (1, 2, ...);
        ``log_weight_increment`` of shape (n,) is log G_t.  It is called on the
        resampled particles.
    resampling: one of ``samplax.smc.RESAMPLING``.
    ess_threshold: resample when ESS / n < ess_threshold; 1 = every step, 0 = never.
    """
    if not callable(mutation):
        raise ValueError(f"mutation must be callable (key, particles, t) -> (particles, log_increment), got {mutation!r}")
    resample_fn: ResampleFn = get_resampling(resampling)
    threshold = check_ess_threshold(ess_threshold)

    def step(key: Array, state: SMCState) -> Tuple[SMCState, SMCInfo]:
        n = state.log_weights.shape[0]
        key_resample, key_move = jax.random.split(key)
        cur_log_ess = log_ess(state.log_weights)
        if threshold >= 1.0:
            do_resample = jnp.asarray(True)
        elif threshold <= 0.0:
            do_resample = jnp.asarray(False)
        else:
            do_resample = cur_log_ess < jnp.log(threshold * n)
        identity = jnp.arange(n, dtype=jnp.int32)
        if threshold <= 0.0:
            ancestors = identity
        else:
            # Both branches computed and selected: cheap, and vmap-friendly (no lax.cond).
            ancestors = jnp.where(do_resample, resample_fn(key_resample, state.log_weights, n), identity)
        log_w_prev = jnp.where(do_resample, jnp.full_like(state.log_weights, -jnp.log(n)), state.log_weights)
        particles = jax.tree_util.tree_map(lambda x: x[ancestors], state.particles)
        t = state.t + 1
        new_particles, increment = mutation(key_move, particles, t)
        increment = jnp.asarray(increment)
        if increment.shape != (n,):
            raise ValueError(f"mutation must return a log_weight_increment of shape ({n},), got {increment.shape}")
        unnorm = log_w_prev + increment
        log_Z_inc = logsumexp(unnorm)
        valid = log_weights_valid(unnorm)
        num_nonfinite = jnp.sum(~jnp.isfinite(unnorm)).astype(jnp.int32)
        num_nan = jnp.sum(jnp.isnan(unnorm) | (unnorm == jnp.inf)).astype(jnp.int32)
        first_invalid = jnp.where((state.first_invalid_step < 0) & ~valid, t, state.first_invalid_step)
        new_state = SMCState(new_particles, unnorm - log_Z_inc, state.log_Z + log_Z_inc, t,
                             first_invalid.astype(jnp.int32))
        info = SMCInfo(ancestors, jnp.exp(cur_log_ess), do_resample, increment, log_Z_inc,
                       num_nonfinite, num_nan, valid, new_state.first_invalid_step)
        return new_state, info

    return SMC(init=_init, step=step, resampling=resampling, ess_threshold=threshold)


def run(sampler: SMC, key: Array, state: SMCState, num_steps: int) -> Tuple[SMCState, SMCInfo]:
    """``num_steps`` steps under ``lax.scan``; step k uses ``fold_in(key, k)``.  Returns the
    final state and the stacked per-step infos (leading axis num_steps)."""
    if isinstance(num_steps, bool) or not isinstance(num_steps, (int, np.integer)) or num_steps < 1:
        raise ValueError(f"num_steps must be a positive int, got {num_steps!r}")

    def body(s, k):
        return sampler.step(jax.random.fold_in(key, k), s)

    return jax.lax.scan(body, state, jnp.arange(num_steps))
