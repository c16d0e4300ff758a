"""A small exact Gaussian process in JAX (float64): SE / Matern-5/2 ARD kernels,
Cholesky, type-II maximum likelihood (MAP with weak log-normal priors) by L-BFGS-B.

Why our own and not a GP package: the branch-and-bound of
:mod:`samplax.optim.palm_mean` needs the posterior mean in its expanded form
``m(x) = c + sum_i a_i phi(r_i(x))`` with ``r_i(x) = sum_j (x_j - X_ij)^2 / l_j^2``
(the scaled squared distance to data point i) and the exact profile ``phi`` of the
kernel; a GP here is a handful of arrays (:class:`GP`) holding exactly that, with no
new dependency and nothing hidden behind a package's abstractions (Rasmussen &
Williams 2006, Ch. 2 eq. 2.25-2.26 for the posterior, Sec. 5.4.1 eq. 5.8 for the
marginal likelihood, Sec. 4.2 eq. 4.17 for Matern-5/2).

Profiles (functions of the scaled squared distance r, signal variance s2):

* ``"se"``: ``phi(r) = s2 exp(-r / 2)``;
* ``"matern52"``: ``phi(r) = s2 (1 + u + u^2 / 3) exp(-u)``, ``u = sqrt(5 r)``.

Both are decreasing and convex in r (for Matern-5/2, ``dphi/dr = -(5/6) s2 (1 + u) e^-u``
increases with r) -- the property the lower bounds use.

Fitting: inputs as given (the caller scales them, e.g. to [-1, 1]^d), targets
standardised; parameters ``log l`` (d), ``log s2``, ``log noise``; the negative log
marginal likelihood plus ``0.5 ((log l - log 0.5) / 1.5)^2`` per lengthscale and
``0.5 (log s2 / 2)^2`` (weak priors against degenerate fits), minimised by L-BFGS-B
(scipy) on the jitted value and gradient, |log parameters| <= 7, noise >= 1e-8.  Data are
padded to a power-of-two capacity (padded rows get an identity block of K and
target 0, which changes neither the quadratic term nor the log-determinant) so a
growing data set recompiles only when it crosses a power of two.
"""
from __future__ import annotations

from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

KERNELS = ("se", "matern52")


class GP(NamedTuple):
    """A fitted GP (numpy float64).  Posterior mean ``mean + sum_i alpha_i k(x, X_i)``
    (``alpha`` already includes the target scale, ``k`` the signal variance)."""

    kernel: str
    X: np.ndarray            # (n, d) inputs
    alpha: np.ndarray        # (n,) K_y^-1 (y - mean)
    lengthscales: np.ndarray  # (d,)
    signal_var: float
    noise_var: float
    mean: float              # the constant prior mean (mean of y)
    chol: np.ndarray         # (n, n) Cholesky factor of K + noise I (standardised units; signal_var too)
    y_scale: float           # the targets' standard deviation (alpha and noise_var are in target units)


def check_kernel(kernel: str, who: str = "kernel") -> str:
    if kernel not in KERNELS:
        raise ValueError(f"{who}: unknown kernel {kernel!r}; allowed: {list(KERNELS)}")
    return kernel


def _safe_u(r, xp):
    """sqrt(5 r) with a finite gradient at r = 0 (where u = 0)."""
    pos = r > 0
    return xp.where(pos, xp.sqrt(5.0 * xp.where(pos, r, 1.0)), 0.0)


def profile(kernel: str, r, signal_var=1.0, xp=jnp):
    """phi(r): the kernel as a function of the scaled squared distance r >= 0."""
    if kernel == "se":
        return signal_var * xp.exp(-0.5 * r)
    u = _safe_u(r, xp)
    return signal_var * (1.0 + u + u * u / 3.0) * xp.exp(-u)


def profile_grad(kernel: str, r, signal_var=1.0, xp=jnp):
    """dphi/dr (negative, increasing in r: phi is convex decreasing)."""
    if kernel == "se":
        return -0.5 * signal_var * xp.exp(-0.5 * r)
    u = _safe_u(r, xp)
    return -(5.0 / 6.0) * signal_var * (1.0 + u) * xp.exp(-u)


def sq_dist(X1, X2, lengthscales, xp=jnp):
    """(n1, n2) scaled squared distances sum_j (x_j - z_j)^2 / l_j^2."""
    d = (X1[:, None, :] - X2[None, :, :]) / lengthscales
    return xp.sum(d * d, axis=-1)


def kernel_matrix(kernel, X1, X2, lengthscales, signal_var, xp=jnp):
    return profile(kernel, sq_dist(X1, X2, lengthscales, xp), signal_var, xp)


def _capacity(n: int) -> int:
    return max(8, 1 << (int(n) - 1).bit_length())


def _neg_log_marginal(kernel, params, X, y, mask, fixed_noise):
    ls = jnp.exp(params["log_ls"])
    s2 = jnp.exp(params["log_s2"])
    noise = fixed_noise if fixed_noise is not None else jnp.exp(params["log_noise"]) + 1e-8
    K = kernel_matrix(kernel, X, X, ls, s2)
    m2 = mask[:, None] * mask[None, :]
    K = K * m2 + jnp.diag(jnp.where(mask > 0, noise, 1.0))
    L = jnp.linalg.cholesky(K)
    a = jax.scipy.linalg.cho_solve((L, True), y)
    n = jnp.sum(mask)
    nll = 0.5 * y @ a + jnp.sum(jnp.log(jnp.diag(L))) + 0.5 * n * jnp.log(2 * jnp.pi)
    prior = 0.5 * jnp.sum(((params["log_ls"] - jnp.log(0.5)) / 1.5) ** 2) + 0.5 * (params["log_s2"] / 2.0) ** 2
    return nll + prior


def _nll_program(kernel: str, fixed: bool):
    def fn(params, X, y, mask, fixed_noise):
        return _neg_log_marginal(kernel, params, X, y, mask, fixed_noise if fixed else None)
    return jax.jit(jax.value_and_grad(fn))


_PROGRAMS: dict = {}
LOG_BOUND = 7.0  # |log parameter| <= 7 (L-BFGS-B box)


def fit_gp(X, y, kernel: str = "matern52", noise: Optional[float] = None, iters: int = 60,
           lengthscale_init: float = 0.5) -> GP:
    """Fit a GP to ``X`` (n, d), ``y`` (n,) by maximising the (weakly regularised)
    marginal likelihood.  ``noise``: a fixed noise variance in standardised-target
    units (e.g. 1e-10 for noiseless data); ``None`` fits it."""
    check_kernel(kernel)
    X = np.asarray(X, np.float64)
    y = np.asarray(y, np.float64)
    if X.ndim != 2 or X.shape[0] < 1:
        raise ValueError(f"fit_gp.X: must be an (n, d) array with n >= 1, got shape {X.shape}")
    if y.shape != (X.shape[0],):
        raise ValueError(f"fit_gp.y: must have shape ({X.shape[0]},), got {y.shape}")
    if not (np.all(np.isfinite(X)) and np.all(np.isfinite(y))):
        raise ValueError("fit_gp.X / y: must be finite")
    if noise is not None and not (np.isfinite(noise) and noise > 0):
        raise ValueError(f"fit_gp.noise: must be a positive number or None, got {noise!r}")
    if isinstance(iters, bool) or not isinstance(iters, int) or iters < 0:
        raise ValueError(f"fit_gp.iters: must be an integer >= 0, got {iters!r}")
    n, d = X.shape
    mu = float(np.mean(y))
    sd = float(np.std(y)) if n > 1 and np.std(y) > 0 else 1.0
    ys = (y - mu) / sd
    cap = _capacity(n)
    Xp = np.zeros((cap, d))
    Xp[:n] = X
    yp = np.zeros(cap)
    yp[:n] = ys
    mask = np.zeros(cap)
    mask[:n] = 1.0
    key = (kernel, noise is not None)
    if key not in _PROGRAMS:
        _PROGRAMS[key] = _nll_program(kernel, noise is not None)
    vg = _PROGRAMS[key]
    from scipy.optimize import minimize

    def unpack(v):
        return dict(log_ls=v[:d], log_s2=v[d], log_noise=v[d + 1])

    with jax.enable_x64(True):
        args = (jnp.asarray(Xp), jnp.asarray(yp), jnp.asarray(mask), jnp.asarray(noise if noise is not None else 0.0))

        def f(v):
            val, g = vg(jax.tree.map(jnp.asarray, unpack(v)), *args)
            val = float(val)
            g = np.concatenate([np.asarray(g["log_ls"]), [float(g["log_s2"]), float(g["log_noise"])]])
            if not (np.isfinite(val) and np.all(np.isfinite(g))):
                return 1e30, np.zeros_like(v)
            return val, g

        v0 = np.concatenate([np.full(d, np.log(lengthscale_init)), [0.0, np.log(1e-2)]])
        bounds = [(-LOG_BOUND, LOG_BOUND)] * (d + 1) + [(np.log(1e-8), 1.0)]
        res = minimize(f, v0, jac=True, method="L-BFGS-B", bounds=bounds, options=dict(maxiter=iters))
        v = res.x if np.isfinite(res.fun) and res.fun < f(v0)[0] else v0
        p = unpack(np.asarray(v))
    ls = np.exp(p["log_ls"])
    s2 = float(np.exp(p["log_s2"]))
    nz = float(noise) if noise is not None else float(np.exp(p["log_noise"]) + 1e-8)
    K = kernel_matrix(kernel, X, X, ls, s2, np) + nz * np.eye(n)
    L = np.linalg.cholesky(K)
    a = np.linalg.solve(L.T, np.linalg.solve(L, ys))
    # in target units: m(x) = mu + sd * k(x)^T a  (k with unit-scale s2)
    return GP(kernel, X, sd * a, ls, s2, nz * sd * sd, mu, L, sd)


def posterior_mean(gp: GP, x):
    """m(x) for x (..., d) (numpy)."""
    x = np.asarray(x, np.float64)
    flat = x.reshape(-1, gp.X.shape[1])
    k = kernel_matrix(gp.kernel, flat, gp.X, gp.lengthscales, gp.signal_var, np)
    return (gp.mean + k @ gp.alpha).reshape(x.shape[:-1])


def posterior_var(gp: GP, x):
    """Latent posterior variance at x (..., d) (numpy; target units)."""
    x = np.asarray(x, np.float64)
    flat = x.reshape(-1, gp.X.shape[1])
    k = kernel_matrix(gp.kernel, flat, gp.X, gp.lengthscales, gp.signal_var, np)
    v = np.linalg.solve(gp.chol, k.T)  # chol: unit-scale factor
    var = gp.signal_var - np.sum(v * v, axis=0)
    return (gp.y_scale ** 2) * np.maximum(var, 0.0).reshape(x.shape[:-1])


__all__ = ["GP", "KERNELS", "fit_gp", "posterior_mean", "posterior_var", "profile", "profile_grad", "sq_dist",
           "kernel_matrix", "check_kernel"]
