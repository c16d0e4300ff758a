"""Denoising losses for every prediction type, matching the schedule object.

With x_t = alpha(t) x0 + sigma(t) eps, a network trained on the target

* ``"noise"``:    eps                                   (DDPM, Ho et al. 2020, eq. 14)
* ``"data"``:     x0
* ``"velocity"``: alpha eps - sigma x0                  (v-prediction, Salimans & Ho 2022)
* ``"flow"``:     alpha'(t) x0 + sigma'(t) eps          (flow matching / rectified flow: with
                  alpha = 1 - t, sigma = t this is eps - x0; Lipman et al. 2023)

is a :class:`~samplax.models.DiffusionModel` with that ``prediction``, so a
trained network plugs into every solver.  The minimiser of each loss is the
conditional expectation E[target | x_t]; for Gaussian data its minimum value is
known in closed form, which the tests check.

Weightings (a function of t only, multiplying the per-example squared error):
``"none"``; ``"min_snr"``: min(SNR, gamma) / SNR for the noise target (Hang et
al. 2023, "Efficient Diffusion Training via Min-SNR Weighting"), which equals the
data loss weighted by min(SNR, gamma), because |eps_hat - eps|^2 = SNR |x0_hat - x0|^2
with SNR = alpha^2 / sigma^2.
"""
from __future__ import annotations

from typing import Callable, Optional

import jax
import jax.numpy as jnp

from samplax.schedules import VPDiscrete

TARGETS = ("noise", "data", "velocity", "flow")
WEIGHTINGS = ("none", "min_snr")


def _bcast(a, x):
    return a.reshape(a.shape + (1,) * (x.ndim - a.ndim))


def sample_times(key, n: int, schedule, discrete: bool = False, t_min: Optional[float] = None,
                 t_max: Optional[float] = None, dtype=jnp.float32):
    """n training times: uniform on [t_min, t_max] (defaults: the schedule's), or, with
    ``discrete`` and a VPDiscrete schedule, uniform over its N training times (i+1)/N."""
    if discrete:
        if not isinstance(schedule, VPDiscrete):
            raise ValueError("sample_times: discrete=True needs a VPDiscrete schedule")
        big_n = schedule.num_train_timesteps
        i = jax.random.randint(key, (n,), 0, big_n)
        return ((i + 1) / big_n).astype(dtype)
    lo = schedule.t_min if t_min is None else t_min
    hi = schedule.t_max if t_max is None else t_max
    if not hi > lo:
        raise ValueError(f"sample_times: need t_max > t_min, got t_min={lo}, t_max={hi}")
    return jax.random.uniform(key, (n,), dtype, lo, hi)


def diffusion_target(schedule, x0, eps, t, target: str):
    """The regression target of ``target`` for x_t = alpha(t) x0 + sigma(t) eps (t per example)."""
    if target == "noise":
        return eps
    if target == "data":
        return x0
    alpha, sigma = _bcast(schedule.alpha(t), x0), _bcast(schedule.sigma(t), x0)
    if target == "velocity":
        return alpha * eps - sigma * x0
    if target == "flow":
        da = jax.vmap(jax.grad(lambda s: schedule.alpha(s)))(t)
        ds = jax.vmap(jax.grad(lambda s: schedule.sigma(s)))(t)
        return _bcast(da, x0) * x0 + _bcast(ds, x0) * eps
    raise ValueError(f"diffusion_target: unknown target {target!r}; allowed: {list(TARGETS)}")


def loss_weight(schedule, t, weighting: str, target: str, gamma: float = 5.0):
    """Per-example weight w(t) of :func:`denoising_loss`."""
    if weighting == "none":
        return jnp.ones_like(t)
    snr = jnp.exp(2.0 * schedule.lambda_(t))
    if weighting == "min_snr":
        if target != "noise":
            raise ValueError("loss_weight: 'min_snr' weighting is implemented for the noise target")
        return jnp.minimum(snr, gamma) / snr
    raise ValueError(f"loss_weight: unknown weighting {weighting!r}; allowed: {list(WEIGHTINGS)}")


def denoising_loss(predict: Callable, x0, key, schedule, target: str = "noise", weighting: str = "none",
                   discrete: bool = False, t_min: Optional[float] = None, t_max: Optional[float] = None):
    """Monte Carlo denoising loss  mean_b w(t_b) |predict(x_t, t)_b - target_b|^2 / d.

    ``predict(x_t, t)`` returns the prediction of ``target`` for a batch x_t (B, ...)
    at per-example times t (B,).  One t and one eps per example, from ``key``.
    Returns (loss, aux) with aux = dict(t=..., per_example=...)."""
    if target not in TARGETS:
        raise ValueError(f"denoising_loss: unknown target {target!r}; allowed: {list(TARGETS)}")
    k_t, k_eps = jax.random.split(key)
    b = x0.shape[0]
    t = sample_times(k_t, b, schedule, discrete, t_min, t_max, x0.dtype)
    eps = jax.random.normal(k_eps, x0.shape, x0.dtype)
    x_t = _bcast(schedule.alpha(t), x0) * x0 + _bcast(schedule.sigma(t), x0) * eps
    y = diffusion_target(schedule, x0, eps, t, target)
    err = (predict(x_t, t) - y).reshape(b, -1)
    per_example = jnp.mean(err * err, axis=-1) * loss_weight(schedule, t, weighting, target)
    return jnp.mean(per_example), dict(t=t, per_example=per_example)
