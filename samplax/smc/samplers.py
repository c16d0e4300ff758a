"""Particle samplers as :class:`~samplax.solvers.base.Solver` objects, so that configs, sweeps,
the runner and :func:`samplax.solvers.sample` reach them like any other solver.

:func:`smc_solver` wraps a :class:`~samplax.smc.diffusion.Kernel` factory: the solver's
``smc`` field (:class:`~samplax.solvers.base.SMCSpec`) runs :func:`diffusion_smc` over the
batch in groups of ``num_particles``.  What is per-sample for the ODE solvers is per-group here:
group g of a batch starting at ``index_offset`` draws from ``fold_in(key, index_offset / P + g)``,
so a group's samples do not change with the batch size, the chunking or the device count as
long as those are multiples of P (the runner makes them so).

Non-finite reporting: the ``SampleInfo`` of a particle sampler gives the first step (0-based)
after which some group's weights were invalid (NaN/+inf or all zero), or the last step if only
the final samples are non-finite; ``n_nonfinite`` per step counts the groups invalid by then
(the per-sample count of the ODE solvers has no meaning once particles are resampled).
"""
from __future__ import annotations

from typing import Callable, Optional

import jax.numpy as jnp

from samplax.smc.core import check_ess_threshold
from samplax.smc.diffusion import DiffusionSMCInfo, Kernel, check_num_particles, diffusion_smc
from samplax.smc.resampling import get_resampling
from samplax.solvers.base import SampleInfo, SMCSpec, Solver, fixed_orders

__all__ = ["smc_solver", "check_smc_options"]


def check_smc_options(name: str, num_particles, resampling, ess_threshold) -> None:
    """One clear ValueError for each shared option of a particle sampler (the driver's own checks,
    naming the factory's options)."""
    check_num_particles(num_particles, "particles", name)
    get_resampling(resampling)  # ValueError naming the allowed schemes
    check_ess_threshold(ess_threshold, name)


def _sample_info(info: DiffusionSMCInfo, x: jnp.ndarray, n_steps: int) -> SampleInfo:
    steps = jnp.arange(1, n_steps + 1)
    fi = info.first_invalid_step  # (G,) 1-based, -1 if none
    bad_by_step = jnp.sum((fi[None, :] > 0) & (fi[None, :] <= steps[:, None]), axis=1).astype(jnp.int32)
    x_bad = jnp.sum(~jnp.all(jnp.isfinite(x.reshape(x.shape[0], -1)), axis=-1)).astype(jnp.int32)
    bad_by_step = bad_by_step.at[-1].set(jnp.maximum(bad_by_step[-1], x_bad))
    first = jnp.where(jnp.any(bad_by_step > 0), jnp.argmax(bad_by_step > 0), -1)
    return SampleInfo(first_nonfinite_step=first, n_nonfinite=bad_by_step, trajectory=None)


def smc_solver(name: str, make_kernel: Callable[[], Kernel], *, num_particles: int, resampling: str,
               ess_threshold: float, nfe_per_step: int = 1, models: Optional[Callable] = None,
               exact_target: Optional[Callable] = None, needs_conditional: bool = False,
               order: int = 1, min_steps: int = 1) -> Solver:
    """A Solver that runs ``make_kernel()`` as grouped SMC.

    models(model, conditional) -> the pytree of models the kernel takes (default: the model
        itself); ``conditional(model, label)`` is None when the model has no labels.
    nfe_per_step: model evaluations per particle and step (2 for a product of two models).
    exact_target(gmm, schedule): the exact target on an analytic mixture, or None.
    """
    check_smc_options(name, num_particles, resampling, ess_threshold)
    P = int(num_particles)

    def run(model, x_T, grid, key, index_offset=0, conditional=None):
        if key is None:
            raise ValueError(f"key: {name} is stochastic and needs a PRNG key; allowed: a jax.random key")
        if needs_conditional and conditional is None:
            raise ValueError(f"model: {name} needs a label-conditional model (the conditional and unconditional "
                             f"scores); allowed: an analytic mixture with labels or a class-conditional network")
        if grid.denoise:
            raise ValueError(f"grid: {name} ends its own last step (a denoising jump when the grid ends at "
                             f"sigma = 0); allowed: end='zero' or end='t_min', not 'denoise'")
        ms = model if models is None else models(model, conditional)
        x, info = diffusion_smc(make_kernel(), ms, x_T, grid, key, num_particles=P, resampling=resampling,
                                ess_threshold=float(ess_threshold), index_offset=index_offset)
        return x, _sample_info(info, x, grid.n_steps), info

    def unused(*a, **k):
        raise ValueError(f"{name} is a particle sampler: run it with samplax.solvers.sample (it has no per-step "
                         f"init/step of its own)")

    return Solver(name=name, init=unused, step=unused, nfe=lambda n_steps, end="zero": nfe_per_step * n_steps, order=order,
                  stochastic=True, min_steps=min_steps, view="data", step_orders=fixed_orders(order),
                  smc=SMCSpec(run=run, num_particles=P, exact_target=exact_target,
                              needs_conditional=needs_conditional, resampling=resampling,
                              ess_threshold=float(ess_threshold)))
