"""SMC over reverse-diffusion particles: the one driver every diffusion SMC method runs on.

A method (Feynman–Kac correctors, twisted posterior sampling, ...) is a :class:`Kernel`:
how one group of P particles starts at the first grid node and how it moves from node i
to node i + 1, with the log incremental weight of the move.  :func:`diffusion_smc` runs
G = B / P independent groups (vmapped), each an adaptive SMC of :func:`samplax.smc.core.smc`
inside ``lax.scan`` over the grid's steps, and returns equally weighted samples (one more
resampling at the end) or the weighted particles.

Keys: group g draws from ``fold_in(key, index_offset // P + g)`` and step k of a group from
``fold_in(group_key, k)``, so a group's result does not depend on how many groups run
together or on which device (the batch analogue of samplax's per-sample keys).  The
particles of one group are coupled by resampling, so the unit of independence is the group.

A kernel with zero log-increments is the plain (uncorrected) particle system: the weights
stay equal, ESS = P, nothing is resampled and the output is the proposal's samples.
"""
from __future__ import annotations

from typing import Any, Callable, NamedTuple, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from samplax.smc.core import run, smc
from samplax.smc.resampling import get_resampling

Array = jax.Array

__all__ = ["Kernel", "DiffusionSMCInfo", "diffusion_smc", "check_particle_layout", "check_num_particles",
           "one_per_group"]


class Kernel(NamedTuple):
    """One diffusion SMC method.

    init(models, grid, x) -> (aux, log_w0): x (P, ...) one group's particles at grid node 0;
        aux a pytree with leading axis P carried per particle (cached model outputs, the
        previous twist value, ...); log_w0 (P,) initial log-weights (zeros if none).
    step(models, grid, i, x, aux, key) -> (x_next, aux_next, log_increment (P,)): one move of
        one group from node i to node i + 1 (i a traced int32); ``key`` is this group's key
        for this step's move (split it per particle).
    name: for labels and errors.
    """
    init: Callable
    step: Callable
    name: str = "kernel"


class DiffusionSMCInfo(NamedTuple):
    log_Z: Array               # (G,) log normalising-constant estimate of each group
    ess: Array                 # (S, G) ESS before each step's resampling decision
    resampled: Array           # (S, G) bool
    first_invalid_step: Array  # (G,) int32: first step (1-based) whose weights were NaN/+inf or all zero; -1 if none
    log_weights: Array         # (G, P) final normalised log-weights (before the final resampling)


def check_num_particles(num_particles, name: str = "num_particles", where: str = "") -> int:
    """A positive int (particles per SMC group); one ValueError naming ``name`` (prefixed by
    ``where``, e.g. a solver's name) otherwise."""
    if isinstance(num_particles, bool) or not isinstance(num_particles, (int, np.integer)) or num_particles < 1:
        raise ValueError(f"{where + ': ' if where else ''}{name} must be a positive int (particles per SMC group), "
                         f"got {num_particles!r}")
    return int(num_particles)


def check_particle_layout(batch: int, num_particles, index_offset=0) -> int:
    """The number of groups G = batch / num_particles; ValueError naming the argument otherwise."""
    check_num_particles(num_particles)
    if batch % int(num_particles):
        raise ValueError(f"num_particles: the batch ({batch} samples) must be a whole number of groups of "
                         f"num_particles = {num_particles} particles; allowed: a divisor of the batch")
    if isinstance(index_offset, (int, np.integer)) and index_offset % int(num_particles):
        raise ValueError(f"index_offset must be a multiple of num_particles = {num_particles} (groups start "
                         f"at multiples of it), got {index_offset}")
    return batch // int(num_particles)


def diffusion_smc(kernel: Kernel, models: Any, x_T: Array, grid, key: Array, *, num_particles: int,
                  resampling: str = "systematic", ess_threshold: float = 0.5, index_offset: Any = 0,
                  final_resample: bool = True) -> Tuple[Array, DiffusionSMCInfo]:
    """Run ``kernel`` from x_T (B, ...) along ``grid`` as B / num_particles independent SMC groups.

    Returns (x0 (B, ...), :class:`DiffusionSMCInfo`).  With ``final_resample`` each group's
    particles are resampled once more with ``resampling`` so that the B returned samples are
    equally weighted draws (shuffled within the group, so that any one position, e.g. the first
    sample of each group, is an unbiased single draw from the weighted particles); otherwise they
    are the weighted particles (``info.log_weights``).
    Resampling happens before a step when ESS / P < ``ess_threshold`` (1: every step, 0: never).
    """
    if not isinstance(kernel, Kernel):
        raise ValueError(f"kernel must be a samplax.smc.diffusion.Kernel, got {type(kernel).__name__}")
    x_T = jnp.asarray(x_T)
    if x_T.ndim < 2 or not jnp.issubdtype(x_T.dtype, jnp.floating):
        raise ValueError(f"x_T must be a floating array of shape (B, ...), got {x_T.dtype} {x_T.shape}")
    P = int(num_particles) if isinstance(num_particles, (int, np.integer)) and not isinstance(num_particles, bool) \
        else num_particles
    G = check_particle_layout(x_T.shape[0], P, index_offset)
    final_fn = get_resampling(resampling)
    n_steps = int(grid.t.shape[-1]) - 1
    if n_steps < 1:
        raise ValueError(f"grid: needs at least one step, got {n_steps + 1} node(s)")

    def one_group(g, x):
        gkey = jax.random.fold_in(key, index_offset // P + g)
        aux0, log_w0 = kernel.init(models, grid, x)

        def mutation(k, particles, t):
            xs, aux = particles
            x_next, aux_next, inc = kernel.step(models, grid, t - 1, xs, aux, k)
            return (x_next, aux_next), inc

        sampler = smc(mutation, resampling=resampling, ess_threshold=ess_threshold)
        state = sampler.init((x, aux0), jnp.asarray(log_w0, x.dtype))
        state, infos = run(sampler, gkey, state, n_steps)
        x_out = state.particles[0]
        if final_resample:
            k_final, k_perm = jax.random.split(jax.random.fold_in(gkey, n_steps + 1))
            anc = final_fn(k_final, state.log_weights, P)
            # shuffled: systematic / stratified ancestors come sorted, so a fixed position (the first
            # sample of a group) would be a biased pick; after a uniform shuffle every position is
            # marginally one draw from the weighted particles
            x_out = x_out[anc[jax.random.permutation(k_perm, P)]]
        return x_out, (state.log_Z, infos.ess, infos.resampled, state.first_invalid_step, state.log_weights)

    xg = x_T.reshape((G, P) + x_T.shape[1:])
    out, (log_Z, ess, resampled, first_bad, log_w) = jax.vmap(one_group)(jnp.arange(G), xg)
    info = DiffusionSMCInfo(log_Z=log_Z, ess=ess.T, resampled=resampled.T, first_invalid_step=first_bad,
                            log_weights=log_w)
    return out.reshape(x_T.shape), info


def one_per_group(key, x, log_weights) -> jnp.ndarray:
    """One draw per SMC group from its weighted particles: x (G * P, ...) returned by
    ``diffusion_smc(..., final_resample=False)``, log_weights (G, P) = info.log_weights -> (G, ...).
    The G draws are independent (groups are), so i.i.d.-sample tests apply to them; the P particles
    of one group are not."""
    G, P = log_weights.shape
    idx = jax.random.categorical(key, log_weights, axis=-1)
    return x.reshape((G, P) + x.shape[1:])[jnp.arange(G), idx]
