"""One-step solvers: Euler (probability-flow ODE in t), Heun (EDM), and the
singlestep DPM-Solver (noise prediction, orders 1-3) and DPM-Solver++ (data
prediction, 2S/3S).

Each keeps the model output at the current point in the carry (evaluated at
the end of the previous step, or by ``init``), so the first evaluation can be
replaced by the analytic first step (AFS) and no evaluation is wasted after
the last step.  A step into sigma = 0 is the denoising jump x0_hat for every
method here (Heun: its Euler predictor, which is the same thing).
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from samplax.solvers.base import Solver, bcast, check_options, evaluate, fixed_orders, initial_output


class OneStepState(NamedTuple):
    x: jnp.ndarray
    m: jnp.ndarray  # model output at x (view depends on the solver)


def _check_order(name, order, allowed):
    if order not in allowed:
        raise ValueError(f"{name}: order must be one of {sorted(allowed)}, got {order!r}")


def _init(view, afs):
    def init(model, grid, x):
        return OneStepState(x=x, m=initial_output(model, grid, x, view, afs))
    return init


def euler(afs: bool = False) -> Solver:
    """Explicit Euler on the probability-flow ODE in the schedule's time t,
    dx/dt = alpha'(t) x0_hat + sigma'(t) eps_hat (order 1).  NFE = steps (+1 denoise, -1 AFS)."""
    check_options(euler, locals())

    def step(model, grid, state, i, keys, last):
        x0, eps = state.m[0], state.m[1]
        if last and grid.ends_at_zero:
            return OneStepState(x=x0, m=state.m)
        t = grid.t[i]
        _, da = jax.jvp(model.schedule.alpha, (t,), (jnp.ones_like(t),))
        _, ds = jax.jvp(model.schedule.sigma, (t,), (jnp.ones_like(t),))
        dt = grid.t[i + 1] - t
        x = state.x + (dt * da).astype(x0.dtype) * x0 + (dt * ds).astype(x0.dtype) * eps
        if last:
            return OneStepState(x=x, m=state.m)
        return OneStepState(x=x, m=evaluate(model, "both", x, grid.t[i + 1]))

    def nfe(n, end):
        return n + (end == "denoise") - afs

    return Solver("euler", _init("both", afs), step, nfe, order=1, step_orders=fixed_orders(1))


#: Defaults of the a-priori stability check (docs/solvers.md, "Stability warnings").
STABILITY_SIGMA_DATA = 0.5
STABILITY_MAX_GAIN = 2.0


def heun_gaussian_gain(sigma_tilde, sigma_data: float = STABILITY_SIGMA_DATA, ends_at_zero: bool = True) -> np.ndarray:
    """Heun's solution over the exact one, after each step, on Gaussian data
    N(0, sigma_data^2 I) (float64 numpy; one entry per Heun step).

    For such data eps_hat(x_tilde, s) = s / (sigma_data^2 + s^2) x_tilde =: k(s) x_tilde, so a
    Heun step multiplies x_tilde by m = 1 + d/2 (k_i + k_{i+1} (1 + d k_i)), d = s_{i+1} - s_i,
    where the exact flow multiplies it by sqrt((sigma_data^2 + s_{i+1}^2) / (sigma_data^2 + s_i^2)).
    The step into sigma = 0 (Euler, a contraction) is not counted."""
    st = np.asarray(sigma_tilde, np.float64)
    if ends_at_zero:
        st = st[:-1]
    s2 = float(sigma_data) ** 2
    k = st / (s2 + st ** 2)
    d = st[1:] - st[:-1]
    m = 1.0 + 0.5 * d * (k[:-1] + k[1:] * (1.0 + d * k[:-1]))
    exact = np.sqrt((s2 + st[1:] ** 2) / (s2 + st[:-1] ** 2))
    return np.cumprod(m / exact)


def _heun_stability(grid, sigma_data: float = STABILITY_SIGMA_DATA, max_gain: float = STABILITY_MAX_GAIN):
    st = grid.sigma_tilde
    if isinstance(st, jax.core.Tracer) or np.ndim(st) != 1:
        return None
    gain = heun_gaussian_gain(st, sigma_data, grid.ends_at_zero)
    if gain.size == 0 or not np.max(np.abs(gain)) > max_gain:
        return None
    i = int(np.argmax(np.abs(gain) > max_gain))
    s = np.asarray(st, np.float64)
    worst = int(np.argmax(s[:-1] / np.where(s[1:] > 0, s[1:], np.inf)))
    return (f"heun: outside its stable regime on this grid: on Gaussian data of std {sigma_data:g} its solution "
            f"reaches {float(np.max(np.abs(gain))):.3g}x the exact one (> {max_gain:g}x from step {i}); its "
            f"trapezoidal step extrapolates the denoiser with weight (R - 1)/2 at step ratio R = sigma_tilde_i / "
            f"sigma_tilde_(i+1), largest R = {s[worst] / s[worst + 1]:.3g} at step {worst} "
            f"({s[worst]:.3g} -> {s[worst + 1]:.3g}); use more steps or smaller ratios")


def heun(afs: bool = False) -> Solver:
    """Heun's method of EDM (Karras et al. 2022, Alg. 1) in x / alpha and
    sigma_tilde = sigma / alpha, d = eps_hat; the step into sigma = 0 is its Euler
    predictor (order 2).  NFE = 2 steps (-1 ending at sigma = 0, +1 denoise, -1 AFS)."""
    check_options(heun, locals())

    def step(model, grid, state, i, keys, last):
        x, eps = state.x, state.m
        st, a = grid.sigma_tilde, grid.alpha
        dst = (st[i + 1] - st[i]).astype(x.dtype)
        xt = x / a[i].astype(x.dtype)
        x_pred = xt + dst * eps
        if last and grid.ends_at_zero:
            return OneStepState(x=a[i + 1].astype(x.dtype) * x_pred, m=eps)
        eps2 = evaluate(model, "noise", a[i + 1].astype(x.dtype) * x_pred, grid.t[i + 1])
        x_new = a[i + 1].astype(x.dtype) * (xt + dst * 0.5 * (eps + eps2))
        if last:
            return OneStepState(x=x_new, m=eps)
        return OneStepState(x=x_new, m=evaluate(model, "noise", x_new, grid.t[i + 1]))

    def nfe(n, end):
        return 2 * n - (end == "zero") + (end == "denoise") - afs

    return Solver("heun", _init("noise", afs), step, nfe, order=2, step_orders=fixed_orders(2),
                  stability=_heun_stability)


def dpm_solver_singlestep(order: int = 2, afs: bool = False) -> Solver:
    """Singlestep DPM-Solver-``order`` in noise prediction (Lu et al. 2022, Alg. 1
    (order 2, r1 = 1/2) and Alg. 2 (order 3, r1 = 1/3, r2 = 2/3), 'dpmsolver'
    form); every step has the same order.  NFE = order x steps (-(order-1) when
    ending at sigma = 0, +1 denoise, -1 AFS)."""
    check_options(dpm_solver_singlestep, locals())
    _check_order("dpm_solver_singlestep", order, {1, 2, 3})
    return _singlestep(order, data_pred=False, afs=afs)


def dpm_solver_pp_singlestep(order: int = 2, afs: bool = False) -> Solver:
    """Singlestep DPM-Solver++ (2S, 3S) in data prediction (Lu et al. 2022b, Alg. 1
    and App. A, 'dpmsolver' form).  NFE as :func:`dpm_solver_singlestep`."""
    check_options(dpm_solver_pp_singlestep, locals())
    _check_order("dpm_solver_pp_singlestep", order, {1, 2, 3})
    return _singlestep(order, data_pred=True, afs=afs)


def _singlestep(order, data_pred, afs):
    view = "data" if data_pred else "noise"

    def first_order(grid_vals, x, m):
        # x_t from (x_s, m_s) with the exact first-order exponential integrator.
        a_s, s_s, a_t, s_t, h = grid_vals
        if data_pred:
            return bcast(s_t / s_s, x).astype(x.dtype) * x - (a_t * jnp.expm1(-h)).astype(x.dtype) * m
        return bcast(jnp.exp(jnp.log(a_t) - jnp.log(a_s)), x).astype(x.dtype) * x \
            + (s_t - a_t * s_s / a_s).astype(x.dtype) * m

    def phi(h):
        # phi_1 of the method's sign: expm1(-h) (data) or expm1(h) (noise); "lead" scale.
        return jnp.expm1(-h) if data_pred else jnp.expm1(h)

    def step(model, grid, state, i, keys, last):
        x, m = state.x, state.m
        sch = model.schedule
        a_s, s_s, lam_s = grid.alpha[i], grid.sigma[i], grid.lam[i]
        a_t, s_t, lam_t = grid.alpha[i + 1], grid.sigma[i + 1], grid.lam[i + 1]
        h = lam_t - lam_s
        p = 1 if (last and grid.ends_at_zero) else order
        x_lin = first_order((a_s, s_s, a_t, s_t, h), x, m)

        def at(r):
            ti = sch.t_from_lambda(lam_s + r * h)
            return ti, sch.alpha(ti), sch.sigma(ti)

        def lead(a_, s_):
            return a_ if data_pred else s_

        if p == 1:
            x_new = x_lin
        elif p == 2:
            r1 = 0.5
            s1, a1, sg1 = at(r1)
            u = first_order((a_s, s_s, a1, sg1, r1 * h), x, m)
            m1 = evaluate(model, view, u, s1)
            x_new = x_lin - (0.5 / r1 * lead(a_t, s_t) * phi(h)).astype(x.dtype) * (m1 - m)
        else:
            r1, r2 = 1.0 / 3.0, 2.0 / 3.0
            s1, a1, sg1 = at(r1)
            s2, a2, sg2 = at(r2)
            u1 = first_order((a_s, s_s, a1, sg1, r1 * h), x, m)
            d1 = evaluate(model, view, u1, s1) - m
            if data_pred:
                phi22 = jnp.expm1(-r2 * h) / (r2 * h) + 1.0
                phi2 = jnp.expm1(-h) / h + 1.0
                u2 = first_order((a_s, s_s, a2, sg2, r2 * h), x, m) + (r2 / r1 * a2 * phi22).astype(x.dtype) * d1
                d2 = evaluate(model, view, u2, s2) - m
                x_new = x_lin + (a_t * phi2 / r2).astype(x.dtype) * d2
            else:
                phi22 = jnp.expm1(r2 * h) / (r2 * h) - 1.0
                phi2 = jnp.expm1(h) / h - 1.0
                u2 = first_order((a_s, s_s, a2, sg2, r2 * h), x, m) - (r2 / r1 * sg2 * phi22).astype(x.dtype) * d1
                d2 = evaluate(model, view, u2, s2) - m
                x_new = x_lin - (s_t * phi2 / r2).astype(x.dtype) * d2
        if last:
            return OneStepState(x=x_new, m=m)
        return OneStepState(x=x_new, m=evaluate(model, view, x_new, grid.t[i + 1]))

    def nfe(n, end):
        return order * n - (order - 1) * (end == "zero") + (end == "denoise") - afs

    name = f"dpm_solver_pp_{order}s" if data_pred else f"dpm_solver_singlestep{order}"
    return Solver(name, _init(view, afs), step, nfe, order=order, step_orders=fixed_orders(order))
