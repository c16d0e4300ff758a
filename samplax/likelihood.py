"""Exact log-likelihood of data under a diffusion model's probability-flow ODE.

Along the probability-flow ODE dx/dt = f(x, t) the density obeys d log p_t(x_t)/dt = -div f
(the instantaneous change of variables; Chen et al. 2018, Thm. 1; Song et al. 2021, Eq. (39)):

    log p_{t0}(x) = log p_T(x_T) + int_{t0}^{T} div_x f(x_t, t) dt.

We integrate in the variables of the model's VE form, u = x / alpha and the half log-SNR
lambda = log(alpha / sigma) (sigma_tilde = sigma / alpha = e^-lambda), where the ODE is
(Karras et al. 2022, Eq. (3) with s = 1, written in lambda; Lu et al. 2022b, Eq. (9))

    du/dlambda = D(u, lambda) - u,      D(u, lambda) = x0_hat(alpha u, t(lambda)),
    d Delta/dlambda = div_u (D - u) = tr(dD/du) - d,

from lambda_0 = lambda(t_start) (the data end) down to lambda_T = lambda(t_end).  With
x_T = alpha_T u_T and the change of variables x = alpha u at both ends,

    log p_{t_start}(x) = log p_T(x_T) + d log alpha_T - d log alpha_0 + Delta(lambda_T).

The drift D - u is bounded at both ends (it tends to 0 at small noise and to -u at large
noise), so fixed steps in lambda need no special grid; the end-time convention is that the
result is the density of the marginal at ``t_start`` (default: the schedule's t_min), *not* of
the clean data at sigma = 0 (for the discrete VP schedule t_min = 1e-3 has sigma_tilde = 0.01).

Divergence: ``"exact"``: tr(dD/du) from d forward-mode products with the basis vectors (one
``jax.linearize`` of the model and d tangents: for small dimension), or ``"hutchinson"``:
v^T (dD/du) v with Rademacher probes v fixed per sample for the whole solve (Hutchinson 1989;
Grathwohl et al. 2019; score_sde's ``likelihood.py``), ``n_probes`` of them averaged.  With
a fixed probe the integral is a linear function of v v^T, so the estimate of log p is unbiased.

Integrators (``integrator``):

* ``"rk4"`` (default): classical fourth-order Runge-Kutta with ``n_steps`` uniform steps in
  lambda on the augmented state (u, Delta); 4 drift evaluations per step.
* ``"heun"``: Heun's second-order method, uniform in lambda; 2 per step.
* ``"adaptive"``: the adaptive DPM-Solver-12/23 of :mod:`samplax.solvers.adaptive` (``order``,
  ``rtol``, ``atol``, ``max_nfe``) on the augmented state, run as a data-prediction model of a
  VE (alpha = 1, sigma = sigma_tilde) schedule whose extra coordinate predicts
  Delta + div (so that the exponential integrator's d Delta/dlambda is exactly the divergence;
  the DPM-Solver order conditions hold for any smooth drift).  Its step-size control covers
  Delta too (atol / rtol in nats).

The grid solvers of :mod:`samplax.solvers` (DPM-Solver++, UniPC, ...) are not offered: their
grids run from high to low noise only (``check_grid``), and the likelihood solve runs the other
way; the adaptive solver is direction-agnostic.
"""
from __future__ import annotations

import math
from typing import Callable, NamedTuple, Optional, Union

import jax
import jax.numpy as jnp
import numpy as np

from samplax.models.base import DiffusionModel
from samplax.schedules import EDM

Array = jnp.ndarray
INTEGRATORS = ("rk4", "heun", "adaptive")
DIVERGENCES = ("exact", "hutchinson")
#: bin width of scikit-learn's digits in the data pipeline's units (p in 0..16 -> x = p / 8 - 1)
DIGITS_BIN_WIDTH = 1.0 / 8.0


class LikelihoodInfo(NamedTuple):
    """``prior_logp``: log p_T(x_T) (B,); ``delta``: int div (B,) (the ODE part, in u);
    ``x_T``: the end point of the solve; ``nfe``: drift evaluations (each one model
    linearisation plus its divergence products); ``n_jvp``: forward-mode products per
    evaluation (d for "exact", n_probes for "hutchinson"); ``cap_hit``: the adaptive solve hit
    its max_nfe cap (always False for the fixed-step integrators)."""

    prior_logp: Array
    delta: Array
    x_T: Array
    nfe: Array
    n_jvp: int
    cap_hit: Array


def _drift(model: DiffusionModel, divergence: str, probes: Optional[Array]):
    """(u, lambda) -> (D - u, tr dD/du - d) per sample, u of shape (B, ...)."""
    sch = model.schedule

    def f(u, lam):
        t = sch.t_from_lambda(lam)
        a = sch.alpha(t).astype(u.dtype)

        def denoise(v):
            return model.data(a * v, t).astype(u.dtype)

        dd, lin = jax.linearize(denoise, u)
        b = u.shape[0]
        d = int(np.prod(u.shape[1:]))
        if divergence == "exact":
            basis = jnp.eye(d, dtype=u.dtype).reshape((d, 1) + u.shape[1:])
            jv = jax.vmap(lambda e: lin(jnp.broadcast_to(e, u.shape)))(basis)  # (d, B, ...)
            tr = jnp.einsum("kbi,ki->b", jv.reshape(d, b, d), jnp.eye(d, dtype=u.dtype))
        else:
            jv = jax.vmap(lin, in_axes=1, out_axes=1)(probes)  # (B, k, ...)
            tr = jnp.mean(jnp.sum((probes * jv).reshape(b, probes.shape[1], -1), -1), -1)
        return dd - u, tr - d

    return f


def _fixed(f, u0, lam0, lam1, n_steps, method):
    h = (lam1 - lam0) / n_steps
    z0 = (u0, jnp.zeros(u0.shape[:1], u0.dtype))

    def add(z, k, c):
        return (z[0] + c * k[0], z[1] + c * k[1])

    def body(z, i):
        lam = lam0 + i * h
        k1 = f(z[0], lam)
        if method == "heun":
            k2 = f(add(z, k1, h)[0], lam + h)
            return add(add(z, k1, 0.5 * h), k2, 0.5 * h), None
        k2 = f(add(z, k1, 0.5 * h)[0], lam + 0.5 * h)
        k3 = f(add(z, k2, 0.5 * h)[0], lam + 0.5 * h)
        k4 = f(add(z, k3, h)[0], lam + h)
        z = add(z, k1, h / 6)
        z = add(z, k2, h / 3)
        z = add(z, k3, h / 3)
        return add(z, k4, h / 6), None

    (u, delta), _ = jax.lax.scan(body, z0, jnp.arange(n_steps, dtype=u0.dtype))
    return u, delta


def _augmented_model(f, shape, dtype):
    """A data-prediction model of the VE schedule sigma(t) = t (t = sigma_tilde) on the
    flattened state z = (u, Delta): D_aug = (D(u), Delta + div) (see the module docstring)."""
    n = int(np.prod(shape))

    def apply(params, z, t):
        u = z[:, :n].reshape((z.shape[0],) + shape)
        g, div = f(u, -jnp.log(t))
        d_u = (g + u).reshape(z.shape[0], n)
        return jnp.concatenate([d_u, (z[:, n] + div)[:, None]], axis=1).astype(dtype)

    return DiffusionModel(apply=apply, params=None, schedule=EDM(sigma_min=1e-12, sigma_max=1e12), prediction="data")


def gaussian_prior(schedule, t_end, data_var: float = 1.0) -> Callable:
    """log N(x_T; 0, (alpha_T^2 data_var + sigma_T^2) I): the marginal at t_end of data with zero
    mean and covariance data_var I (data_var = 1: the prior of samplax.schedules.prior_std;
    for VP schedules at t_max = 1 alpha_T ~ 7e-3, so the variance is 1 within 5e-5)."""
    def logp(x):
        a, s = schedule.alpha(t_end), schedule.sigma(t_end)
        v = (a * a * data_var + s * s).astype(x.dtype)
        flat = x.reshape(x.shape[0], -1)
        d = flat.shape[1]
        return -0.5 * d * jnp.log(2 * math.pi * v) - 0.5 * jnp.sum(flat * flat, -1) / v
    return logp


def log_likelihood(model: DiffusionModel, x: Array, key: Optional[Array] = None, t_start=None, t_end=None,
                   integrator: str = "rk4", n_steps: int = 100, divergence: str = "exact", n_probes: int = 1,
                   prior: Union[str, Callable] = "gaussian", data_var: float = 1.0, order: int = 3,
                   rtol: float = 1e-4, atol: float = 1e-4, max_nfe: int = 2000):
    """log p_{t_start}(x) (B,) of data x (B, ...) under ``model``'s probability-flow ODE, in
    nats, and a :class:`LikelihoodInfo`.  See the module docstring for the formula,
    ``integrator`` (``n_steps`` for the fixed-step ones; ``order``, ``rtol``, ``atol``,
    ``max_nfe`` for "adaptive") and ``divergence`` (``key`` and ``n_probes`` for "hutchinson").

    ``t_start`` / ``t_end`` default to the schedule's t_min / t_max.  ``prior``: "gaussian"
    (:func:`gaussian_prior` with ``data_var``) or a callable x_T (B, ...) -> log p_T (B,),
    e.g. the exact marginal of an analytic model, ``lambda y: gmm.log_prob(y, t_end, schedule)``.
    Pure and jit-able (``key`` traced; the string and integer options static)."""
    if integrator not in INTEGRATORS:
        raise ValueError(f"integrator: unknown {integrator!r}; allowed: {list(INTEGRATORS)}")
    if divergence not in DIVERGENCES:
        raise ValueError(f"divergence: unknown {divergence!r}; allowed: {list(DIVERGENCES)}")
    for name, v in (("n_steps", n_steps), ("n_probes", n_probes)):
        if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer)) or v < 1:
            raise ValueError(f"{name}: must be an integer >= 1, got {v!r}")
    if not (callable(prior) or prior == "gaussian"):
        raise ValueError(f"prior: must be 'gaussian' or a callable x_T -> log p_T(x_T), got {prior!r}")
    if divergence == "hutchinson" and key is None:
        raise ValueError("key: the Hutchinson divergence needs a PRNG key for its probes")
    x = jnp.asarray(x)
    if not jnp.issubdtype(x.dtype, jnp.floating) or x.ndim < 2 or x.shape[0] < 1:
        raise ValueError(f"x: must be a floating-point array (B, ...) with B >= 1, got {x.dtype} {tuple(x.shape)}")
    sch = model.schedule
    dt = x.dtype
    t0 = jnp.asarray(sch.t_min if t_start is None else t_start, dt)
    t1 = jnp.asarray(sch.t_max if t_end is None else t_end, dt)
    lam0, lam1 = sch.lambda_(t0), sch.lambda_(t1)
    a0, a1 = sch.alpha(t0), sch.alpha(t1)
    probes = None
    if divergence == "hutchinson":
        probes = jax.random.rademacher(key, (x.shape[0], n_probes) + x.shape[1:], dtype=dt)
    f = _drift(model, divergence, probes)
    u0 = x / a0
    d = int(np.prod(x.shape[1:]))
    if integrator == "adaptive":
        from samplax.solvers.adaptive import adaptive_sample

        aug = _augmented_model(f, x.shape[1:], dt)
        z0 = jnp.concatenate([u0.reshape(x.shape[0], d), jnp.zeros((x.shape[0], 1), dt)], axis=1)
        z, ainfo = adaptive_sample(aug, z0, jnp.exp(-lam0), jnp.exp(-lam1), order=order, rtol=rtol, atol=atol,
                                   max_nfe=max_nfe, prediction="data")
        u_T, delta = z[:, :d].reshape(x.shape), z[:, d]
        nfe, cap = ainfo.nfe, ainfo.cap_hit
    else:
        u_T, delta = _fixed(f, u0, lam0, lam1, n_steps, integrator)
        nfe, cap = jnp.asarray(n_steps * (4 if integrator == "rk4" else 2)), jnp.asarray(False)
    x_T = a1 * u_T
    prior_fn = gaussian_prior(sch, t1, data_var) if prior == "gaussian" else prior
    lp_T = prior_fn(x_T)
    logp = lp_T + delta + d * (jnp.log(a1) - jnp.log(a0))
    n_jvp = d if divergence == "exact" else n_probes
    return logp, LikelihoodInfo(prior_logp=lp_T, delta=delta, x_T=x_T, nfe=nfe, n_jvp=n_jvp, cap_hit=cap)


def dequantize(key: Array, x: Array, bin_width: float = DIGITS_BIN_WIDTH) -> Array:
    """x + U(-bin_width / 2, bin_width / 2) per coordinate: uniform dequantisation of data on a
    lattice of spacing ``bin_width`` centred on the data values (Theis et al. 2016; Ho et al.
    2019, Sec. 3.1)."""
    return x + bin_width * (jax.random.uniform(key, x.shape, x.dtype) - 0.5)


def bits_per_dim(logp: Array, dim: int, bin_width: float = DIGITS_BIN_WIDTH) -> Array:
    """Bits per dimension of the discrete data from the continuous log-density ``logp`` (nats)
    of the scaled data: -log P(bin) ~= -log p(x) - dim log(bin_width), i.e.
    bpd = -logp / (dim ln 2) + log2(1 / bin_width).  For the digits (17 levels scaled by 1/8)
    the correction is +3 bits/dim; with ``logp`` of uniformly dequantised points
    (:func:`dequantize`) the mean is an upper bound on the discrete NLL (Jensen)."""
    return -logp / (dim * math.log(2.0)) - math.log2(bin_width)


__all__ = ["log_likelihood", "LikelihoodInfo", "gaussian_prior", "dequantize", "bits_per_dim", "DIGITS_BIN_WIDTH",
           "INTEGRATORS", "DIVERGENCES"]
