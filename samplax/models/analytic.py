"""Exact analytic models: ground truth for every solver test and benchmark.

* :class:`GaussianMixture` -- isotropic mixture p0 = sum_k w_k N(mu_k, tau_k^2 I),
  with exact data/noise predictions at any noise level (log-sum-exp
  responsibilities; eps_hat computed per component, without the cancellation
  of (x - alpha x0_hat) / sigma), the exact log-density of every marginal,
  exact sampling, labels per component (an exact conditional model for
  classifier-free guidance), and a float64 reference solution of the
  probability-flow ODE.
* :class:`Gaussian` -- N(mu, diag(s^2)), whose probability-flow ODE has a
  closed-form solution between any two noise levels.

The marginal at time t only depends on (alpha, sigma); in the variables
u = x / alpha and sigma_tilde = sigma / alpha the probability-flow ODE is
du/dsigma_tilde = eps_hat(u; sigma_tilde) (Karras et al. 2022, Eq. 3 with
s = 1), independent of the schedule.  The ODE helpers work in those variables.
"""
from __future__ import annotations

import functools
import json
import os
from typing import Optional

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from samplax.models.base import DiffusionModel
from samplax.schedules import VPDiscrete

_PROBLEMS_DIR = os.path.join(os.path.dirname(os.path.dirname(__file__)), "problems")
PROBLEMS = ("gmm2d", "gmm64d")


def _ab(schedule, t, x):
    t = jnp.asarray(t, dtype=x.dtype)
    a = schedule.alpha(t)
    s = schedule.sigma(t)
    return a.reshape(a.shape + (1,) * (x.ndim - a.ndim)), s.reshape(s.shape + (1,) * (x.ndim - s.ndim))


@flax.struct.dataclass
class GaussianMixture:
    """Isotropic Gaussian mixture: weights (K,), means (K, d), stds (K,), labels (K,)."""

    weights: jnp.ndarray
    means: jnp.ndarray
    stds: jnp.ndarray
    labels: jnp.ndarray

    @classmethod
    def create(cls, weights, means, stds, labels=None, dtype=None) -> "GaussianMixture":
        dtype = dtype or jnp.result_type(float)
        w = np.asarray(weights, dtype=np.float64)
        m = np.asarray(means, dtype=np.float64)
        s = np.asarray(stds, dtype=np.float64)
        if w.ndim != 1 or m.ndim != 2 or s.ndim != 1 or not (w.shape[0] == m.shape[0] == s.shape[0]):
            raise ValueError(f"GaussianMixture: need weights (K,), means (K, d), stds (K,); got {w.shape}, {m.shape}, {s.shape}")
        if np.any(w <= 0) or np.any(s <= 0):
            raise ValueError("GaussianMixture: weights and stds must be positive")
        w = w / w.sum()
        lab = np.arange(w.shape[0]) if labels is None else np.asarray(labels)
        return cls(jnp.asarray(w, dtype), jnp.asarray(m, dtype), jnp.asarray(s, dtype), jnp.asarray(lab, jnp.int32))

    @property
    def dim(self) -> int:
        return self.means.shape[-1]

    def astype(self, dtype) -> "GaussianMixture":
        return GaussianMixture(self.weights.astype(dtype), self.means.astype(dtype), self.stds.astype(dtype), self.labels)

    # --- VE-form quantities: u = x / alpha, noise level s = sigma / alpha -------------
    def _log_resp(self, u, s, label=None):
        """log responsibilities (..., K) and per-component variances (K,)."""
        var = self.stds**2 + s[..., None] ** 2 if jnp.ndim(s) else self.stds**2 + s**2
        diff = u[..., None, :] - self.means  # (..., K, d)
        d = u.shape[-1]
        logp = jnp.log(self.weights) - 0.5 * d * jnp.log(2 * jnp.pi * var) - 0.5 * jnp.sum(diff**2, -1) / var
        if label is not None:
            label = jnp.asarray(label)
            mask = (label[..., None] < 0) | (self.labels == label[..., None])
            logp = jnp.where(mask, logp, -jnp.inf)
        return logp, var, diff

    def denoise_ve(self, u, s, label=None):
        """(E[x0 | u], E[eps | u]) for u = x0 + s eps; s scalar or per-sample (B,)."""
        s = jnp.asarray(s, dtype=u.dtype)
        logp, var, diff = self._log_resp(u, s, label)
        r = jax.nn.softmax(logp, axis=-1)[..., None]  # (..., K, 1)
        sv = s[..., None, None] if jnp.ndim(s) else s
        x0_k = self.means + (self.stds**2 / var)[..., None] * diff
        eps_k = sv / var[..., None] * diff
        return jnp.sum(r * x0_k, -2), jnp.sum(r * eps_k, -2)

    def log_prob_ve(self, u, s):
        """log density of u = x0 + s eps."""
        logp, _, _ = self._log_resp(u, jnp.asarray(s, dtype=u.dtype))
        return jax.scipy.special.logsumexp(logp, axis=-1)

    def component_log_posterior(self, u, s):
        """log p(k | u) for u = x0 + s eps, shape (..., K)."""
        logp, _, _ = self._log_resp(u, jnp.asarray(s, dtype=u.dtype))
        return jax.nn.log_softmax(logp, axis=-1)

    # --- VP/any-schedule views ---------------------------------------------------
    def log_prob(self, x, t, schedule):
        """Exact log p_t(x) of the marginal at time t of ``schedule``."""
        a, s = _ab(schedule, t, x)
        shape = jnp.shape(t)
        return self.log_prob_ve(x / a, (s / a).reshape(shape)) - x.shape[-1] * jnp.log(a.reshape(shape))

    def sample(self, key, n: int, t=None, schedule=None, dtype=None):
        """Exact samples of p0 (t None) or of the marginal at time t."""
        dtype = dtype or self.means.dtype
        kc, kz, ke = jax.random.split(key, 3)
        comp = jax.random.categorical(kc, jnp.log(self.weights), shape=(n,))
        x0 = self.means[comp] + self.stds[comp, None] * jax.random.normal(kz, (n, self.dim), dtype)
        if t is None:
            return x0.astype(dtype)
        a, s = _ab(schedule, t, x0)
        return (a * x0 + s * jax.random.normal(ke, x0.shape, dtype)).astype(dtype)

    def sample_with_components(self, key, n: int, dtype=None):
        dtype = dtype or self.means.dtype
        kc, kz = jax.random.split(key)
        comp = jax.random.categorical(kc, jnp.log(self.weights), shape=(n,))
        return (self.means[comp] + self.stds[comp, None] * jax.random.normal(kz, (n, self.dim), dtype)), comp

    def mean(self):
        return jnp.sum(self.weights[:, None] * self.means, 0)

    def covariance(self):
        mu = self.mean()
        d = self.dim
        c = jnp.einsum("k,ki,kj->ij", self.weights, self.means - mu, self.means - mu)
        return c + jnp.sum(self.weights * self.stds**2) * jnp.eye(d, dtype=self.means.dtype)

    def model(self, schedule, label=None) -> DiffusionModel:
        """The exact diffusion model (prediction ``data_noise``) under ``schedule``.
        ``label`` (an int or (B,) array, -1 = unconditional) conditions on the
        components carrying that label."""
        params = (self, None if label is None else jnp.asarray(label, jnp.int32), schedule)
        return DiffusionModel(apply=_gmm_apply, params=params, schedule=schedule, prediction="data_noise")

    def conditional_apply(self, schedule):
        """``fn(params, x, t, label)`` for :func:`classifier_free_guidance` (label -1 = unconditional)."""
        def fn(params, x, t, label):
            return _gmm_apply_sched(params, x, t, label, schedule)
        return fn

    # --- probability-flow ODE reference ------------------------------------------
    def ode_solve_ve(self, u, s_from, s_to, n_steps: int = 2000, rho: float = 7.0, richardson: bool = True):
        """Solve du/ds = eps_hat(u; s) from noise level s_from to s_to (>= 0) with
        classical RK4 on a grid uniform in s^(1/rho) (dense near s = 0, where the
        mixture components are sharp), Richardson-extrapolated from n_steps and
        n_steps / 2 (fifth order).  Run in float64 for references: with the
        default 2000 steps the error on the benchmark problems is below 1e-9
        (checked against scipy's DOP853 in the tests)."""
        return _gmm_ode_solve(self, u, jnp.asarray(s_from, u.dtype), jnp.asarray(s_to, u.dtype),
                              n_steps=n_steps, rho=rho, richardson=richardson)

    def ode_solution(self, x, t_from, t_to, schedule, n_steps: int = 2000):
        """Exact (numerical, RK4 in sigma_tilde) PF-ODE solution from x at t_from to
        t_to; ``t_to=None`` means sigma = 0 (alpha = 1)."""
        a0, s0 = float(schedule.alpha(t_from)), float(schedule.sigma(t_from))
        if t_to is None:
            a1, s1 = 1.0, 0.0
        else:
            a1, s1 = float(schedule.alpha(t_to)), float(schedule.sigma(t_to))
        u = self.ode_solve_ve(x / a0, s0 / a0, s1 / a1, n_steps)
        return a1 * u


def _rk4_ve(gmm, u, s_from, s_to, n_steps, rho):
    a, b = s_from ** (1 / rho), s_to ** (1 / rho)
    grid = (a + (b - a) * jnp.arange(n_steps + 1, dtype=u.dtype) / n_steps) ** rho

    def f(u_, s_):
        return gmm.denoise_ve(u_, s_)[1]

    def body(u_, i):
        s0, s1 = grid[i], grid[i + 1]
        h = s1 - s0
        k1 = f(u_, s0)
        k2 = f(u_ + 0.5 * h * k1, s0 + 0.5 * h)
        k3 = f(u_ + 0.5 * h * k2, s0 + 0.5 * h)
        k4 = f(u_ + h * k3, s1)
        return u_ + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4), None

    out, _ = jax.lax.scan(body, u, jnp.arange(n_steps))
    return out


@functools.partial(jax.jit, static_argnames=("n_steps", "rho", "richardson"))
def _gmm_ode_solve(gmm, u, s_from, s_to, n_steps, rho, richardson):
    fine = _rk4_ve(gmm, u, s_from, s_to, n_steps, rho)
    if not richardson:
        return fine
    coarse = _rk4_ve(gmm, u, s_from, s_to, n_steps // 2, rho)
    return fine + (fine - coarse) / 15.0


def _gmm_apply(params, x, t):
    gmm, label, schedule = params
    return _gmm_apply_sched(gmm, x, t, label, schedule)


def _gmm_apply_sched(gmm, x, t, label, schedule):
    a, s = _ab(schedule, t, x)
    st = (s / a).reshape(jnp.shape(t))
    return gmm.denoise_ve(x / a, st, label)


@flax.struct.dataclass
class Gaussian:
    """N(mu, diag(std^2)) with a closed-form probability-flow ODE."""

    mean: jnp.ndarray
    std: jnp.ndarray

    def denoise_ve(self, u, s):
        var = self.std**2 + jnp.asarray(s, u.dtype) ** 2
        diff = u - self.mean
        return self.mean + self.std**2 / var * diff, s / var * diff

    def ode_solve_ve(self, u, s_from, s_to):
        """Exact: u(s) = mu + (u - mu) sqrt(std^2 + s^2) / sqrt(std^2 + s_from^2)."""
        return self.mean + (u - self.mean) * jnp.sqrt((self.std**2 + s_to**2) / (self.std**2 + s_from**2))

    def ode_solution(self, x, t_from, t_to, schedule):
        a0, s0 = schedule.alpha(t_from), schedule.sigma(t_from)
        if t_to is None:
            a1, s1 = 1.0, 0.0
        else:
            a1, s1 = schedule.alpha(t_to), schedule.sigma(t_to)
        return a1 * self.ode_solve_ve(x / a0, s0 / a0, s1 / a1)

    def marginal(self, t, schedule):
        """(mean, std) of the marginal at time t."""
        a, s = schedule.alpha(t), schedule.sigma(t)
        return a * self.mean, jnp.sqrt(a**2 * self.std**2 + s**2)

    def model(self, schedule) -> DiffusionModel:
        return DiffusionModel(apply=_gaussian_apply, params=(self, schedule), schedule=schedule,
                              prediction="data_noise")


def _gaussian_apply(params, x, t):
    g, schedule = params
    a, s = _ab(schedule, t, x)
    return g.denoise_ve(x / a, s / a)


def load_problem(name: str, dtype=None):
    """A benchmark problem: (GaussianMixture, schedule, info dict).

    The schedule is the problem file's discrete linear-beta VP table in
    DPM-Solver's continuous time t in [1/N, 1]."""
    if name not in PROBLEMS:
        raise ValueError(f"load_problem: unknown problem {name!r}; allowed: {list(PROBLEMS)}")
    with open(os.path.join(_PROBLEMS_DIR, f"{name}.json")) as f:
        info = json.load(f)
    sch = info["schedule"]
    if sch["kind"] != "vp_discrete" or sch["beta_schedule"] != "linear":
        raise ValueError(f"load_problem: unsupported schedule in {name}.json: {sch}")
    schedule = VPDiscrete.linear(sch["beta_start"], sch["beta_end"], sch["num_train_timesteps"])
    gmm = GaussianMixture.create(info["weights"], info["means"], info["stds"], dtype=dtype)
    return gmm, schedule, info


def problem_start_points(info, n: Optional[int] = None) -> np.ndarray:
    """The benchmark's x_T: numpy.random.default_rng(dim).standard_normal((n, dim)), float64."""
    n = info["benchmark"]["n_samples"] if n is None else n
    return np.random.default_rng(info["dim"]).standard_normal((n, info["dim"]))


__all__ = ["GaussianMixture", "Gaussian", "load_problem", "problem_start_points", "PROBLEMS"]
