"""Stochastic samplers: DDIM with eta, SDE-DPM-Solver++(2M), reverse-SDE
Euler-Maruyama and predictor-corrector with a Langevin corrector.

Noise for sample b at step i comes from fold_in(fold_in(key, b), i) (see
:func:`samplax.solvers.base.sample`), so a sample does not depend on the batch
it is drawn in.  A step into sigma = 0 adds no noise and is the denoising jump.
"""
from __future__ import annotations

from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp

from samplax.solvers.base import Solver, check_options, evaluate, fixed_orders, initial_output
from samplax.solvers.multistep import _safeguard_order, static_orders


class SDEState(NamedTuple):
    x: jnp.ndarray
    m: jnp.ndarray  # model outputs at x: stacked (x0_hat, eps_hat), or a history of x0_hat


def _normal(keys, x):
    return jax.vmap(lambda k: jax.random.normal(k, x.shape[1:], x.dtype))(keys)


def _init_both(afs):
    def init(model, grid, x):
        return SDEState(x=x, m=initial_output(model, grid, x, "both", afs))
    return init


def _both(model, x, t):
    return evaluate(model, "both", x, t)


def ddim_eta(eta: float = 1.0, afs: bool = False) -> Solver:
    """DDIM (Song et al. 2021, Eq. 12) with stochasticity eta: x_t = alpha_t x0_hat
    + sqrt(sigma_t^2 - s^2) eps_hat + s z, s = eta sigma_t sqrt(1 - e^{-2h}).
    eta = 0 is deterministic DDIM, eta = 1 ancestral sampling (DDPM posterior).
    NFE = steps (+1 denoise, -1 AFS)."""
    check_options(ddim_eta, locals())
    if not (isinstance(eta, (int, float)) and eta >= 0):
        raise ValueError(f"ddim_eta: eta must be a number >= 0, got {eta!r}")

    def step(model, grid, state, i, keys, last):
        x0, eps = state.m[0], state.m[1]
        a_t, s_t = grid.alpha[i + 1], grid.sigma[i + 1]
        h = grid.lam[i + 1] - grid.lam[i]
        noise_std = eta * s_t * jnp.sqrt(-jnp.expm1(-2.0 * h))
        eps_coef = jnp.sqrt(jnp.maximum(s_t**2 - noise_std**2, 0.0))
        x = a_t.astype(x0.dtype) * x0 + eps_coef.astype(x0.dtype) * eps
        if eta > 0:
            x = x + noise_std.astype(x0.dtype) * _normal(keys, x)
        if last:
            return SDEState(x=x, m=state.m)
        return SDEState(x=x, m=_both(model, x, grid.t[i + 1]))

    return Solver(f"ddim_eta{eta:g}", _init_both(afs), step,
                  lambda n, end: n + (end == "denoise") - afs, order=1, stochastic=eta > 0,
                  step_orders=fixed_orders(1))


def sde_dpm_solver_pp_2m(lower_order_final: bool = True, max_step_ratio: Optional[float] = 3.0,
                         afs: bool = False) -> Solver:
    """SDE-DPM-Solver++(2M) (Lu et al. 2022b, App. B, the midpoint form used by
    diffusers and k-diffusion):
    x_t = (sigma_t/sigma_s) e^{-h} x + alpha_t (1 - e^{-2h}) (D0 + D1/2) + sigma_t sqrt(1 - e^{-2h}) z,
    D1 = (D0 - D_prev) / r.  NFE = steps (+1 denoise, -1 AFS)."""
    check_options(sde_dpm_solver_pp_2m, locals())

    def init(model, grid, x):
        m0 = initial_output(model, grid, x, "data", afs)
        return SDEState(x=x, m=jnp.stack([m0, jnp.zeros_like(m0)]))

    def step_order(grid, i):
        p_static = jnp.asarray(static_orders(grid.n_steps, 2, lower_order_final, None, grid.ends_at_zero))[i]
        p = p_static
        if max_step_ratio is not None:
            p = jnp.minimum(p, _safeguard_order(grid.lam, i, 2, max_step_ratio))
        return p_static, p

    def step(model, grid, state, i, keys, last):
        x, hist = state.x, state.m
        _, p = step_order(grid, i)
        s_s, a_t, s_t = grid.sigma[i], grid.alpha[i + 1], grid.sigma[i + 1]
        h = grid.lam[i + 1] - grid.lam[i]
        h_prev = grid.lam[i] - grid.lam[jnp.maximum(i - 1, 0)]
        r = jnp.where(h_prev == 0, 1.0, h_prev / h)
        one_m = -jnp.expm1(-2.0 * h)
        d1 = jnp.where(p >= 2, 0.5 / r, 0.0).astype(x.dtype)
        if last and grid.ends_at_zero:
            d1 = jnp.zeros((), x.dtype)
        drift = (s_t / s_s * jnp.exp(-h)).astype(x.dtype) * x + (a_t * one_m).astype(x.dtype) * (
            hist[0] + d1 * (hist[0] - hist[1]))
        x_new = drift + (s_t * jnp.sqrt(one_m)).astype(x.dtype) * _normal(keys, x)
        if last:
            return SDEState(x=x_new, m=hist)
        m_new = evaluate(model, "data", x_new, grid.t[i + 1])
        return SDEState(x=x_new, m=jnp.stack([m_new, hist[0]]))

    return Solver("sde_dpm_solver_pp_2m", init, step, lambda n, end: n + (end == "denoise") - afs,
                  order=1, stochastic=True, step_orders=step_order)


def _drift_diffusion(schedule, t):
    """f(t) = d log alpha / dt and g^2(t) = d sigma^2/dt - 2 f sigma^2 of the forward SDE."""
    _, f = jax.jvp(schedule.log_alpha, (t,), (jnp.ones_like(t),))
    s2 = lambda tt: schedule.sigma(tt) ** 2  # noqa: E731
    sig2, ds2 = jax.jvp(s2, (t,), (jnp.ones_like(t),))
    return f, ds2 - 2.0 * f * sig2


def _em_step(model, grid, x, x0, eps, i, keys, last):
    if last and grid.ends_at_zero:
        return x0
    t, t_next = grid.t[i], grid.t[i + 1]
    f, g2 = _drift_diffusion(model.schedule, t)
    dt = t - t_next  # > 0: we integrate backwards in time
    score = -eps / grid.sigma[i].astype(x.dtype)
    x_mean = x - (dt * f).astype(x.dtype) * x + (dt * g2).astype(x.dtype) * score
    return x_mean + jnp.sqrt(g2 * dt).astype(x.dtype) * _normal(keys, x)


def euler_maruyama(afs: bool = False) -> Solver:
    """Euler-Maruyama on the reverse-time SDE dx = [f x - g^2 score] dt + g dw
    (Song et al. 2021, Eq. 6), weak order 1.  NFE = steps (+1 denoise, -1 AFS)."""
    check_options(euler_maruyama, locals())

    def step(model, grid, state, i, keys, last):
        x0, eps = state.m[0], state.m[1]
        x = _em_step(model, grid, state.x, x0, eps, i, keys, last)
        if last:
            return SDEState(x=x, m=state.m)
        return SDEState(x=x, m=_both(model, x, grid.t[i + 1]))

    return Solver("euler_maruyama", _init_both(afs), step,
                  lambda n, end: n + (end == "denoise") - afs, order=1, stochastic=True, step_orders=fixed_orders(1))


def predictor_corrector(snr: float = 0.16, n_corrector: int = 1, afs: bool = False) -> Solver:
    """Predictor-corrector sampling (Song et al. 2021, Alg. 2/3): at each t_i,
    ``n_corrector`` Langevin steps x <- x + e score + sqrt(2 e) z, then one
    Euler-Maruyama predictor step (the step into sigma = 0 is the denoising jump).

    Step size: score_sde uses e = 2 (snr |z| / |score|)^2 with norms averaged over
    the batch, which couples the samples of a batch (and with per-sample norms is
    unstable in low dimension, where |score| can vanish).  We use the value that
    rule takes when |eps_hat| = |z|, e = 2 (snr sigma_t)^2, which needs no batch
    statistics.  NFE = (1 + n_corrector) steps (+1 denoise, -1 AFS)."""
    check_options(predictor_corrector, locals())
    if not snr > 0:
        raise ValueError(f"predictor_corrector: snr must be positive, got {snr!r}")
    if not isinstance(n_corrector, int) or n_corrector < 0:
        raise ValueError(f"predictor_corrector: n_corrector must be an integer >= 0, got {n_corrector!r}")

    def step(model, grid, state, i, keys, last):
        x, m = state.x, state.m
        t = grid.t[i]
        sig = grid.sigma[i].astype(x.dtype)
        e = 2.0 * (snr * sig) ** 2
        for c in range(n_corrector):
            ck = jax.vmap(lambda k: jax.random.fold_in(k, 1000 + c))(keys)
            z = _normal(ck, x)
            score = -m[1] / sig
            x = x + e * score + jnp.sqrt(2.0 * e) * z
            m = _both(model, x, t)
        x_new = _em_step(model, grid, x, m[0], m[1], i, keys, last)
        if last:
            return SDEState(x=x_new, m=m)
        return SDEState(x=x_new, m=_both(model, x_new, grid.t[i + 1]))

    return Solver(f"pc_langevin{n_corrector}", _init_both(afs), step,
                  lambda n, end: (1 + n_corrector) * n + (end == "denoise") - afs, order=1, stochastic=True,
                  step_orders=fixed_orders(1))
