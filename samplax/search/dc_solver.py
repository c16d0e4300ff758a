"""DC-Solver: dynamic compensation for predictor-corrector samplers (UniPC).

Zhao, Wang, Rao, Zhou and Lu 2024, "DC-Solver: Improving Predictor-Corrector
Diffusion Sampler via Dynamic Compensation".  In UniPC the model output m_i
stored in the history is evaluated at the *predicted* x_i, while the corrector
moves the sample to x_i^c: the two are misaligned.  DC-Solver replaces m_i,
before it is used by the step i -> i+1 (predictor and corrector) and by every
later step, with the Lagrange interpolation of the last K + 1 history entries
(K = ``dc_order``, 2 in the paper) in time, evaluated at a ratio-shifted time

    tau_i = rho_i t_i + (1 - rho_i) t_{i-1},
    m_i <- sum_{k=0..K} ell_k(tau_i) m_{i-k},   ell_k Lagrange basis on t_i, ..., t_{i-K}

(paper Sec. 3.2, "dynamic compensation"; rho_i = 1 is plain UniPC).  Steps with
fewer than K + 1 outputs in the history (warm-up, i < K) are not compensated.
The compensated value is what the history keeps, so later compensations and
steps see it.

Implementation: a dedicated ``lax.scan`` over the :class:`Table` of any
multistep solver (``unipc(...).table(grid, schedule)``), identical to
:func:`samplax.solvers.unified.run_table` but for one linear map on the history
at the start of each step.  The compensation *is* linear in the history, but
since the compensated value replaces the stored one, the map composes across
steps (m_i depends on all earlier raw outputs), so it cannot be folded into a
fixed-depth table of raw outputs without widening the history to every past
step; a history update in the scan is simpler and exact.

Ratios are fitted (:func:`fit_ratios`) by gradient descent (optax Adam) on a few
samples (~10) against a reference trajectory at the grid's own nodes (the
exact PF-ODE solution for the analytic problems, :func:`exact_trajectory`, or
a many-step teacher, :func:`teacher_trajectory`); the paper fits greedily one
step at a time, here all ratios are fitted jointly on the sum of per-node
errors (the same objective, every step's ratio also sees its effect on later
nodes).  :func:`cpr_fit` / :func:`cpr_predict` are the cascade polynomial
regression (paper Sec. 3.3) that predicts the ratios of unseen NFEs (and
guidance scales): rho(step, NFE, s) = sum_i c_i(NFE, s) (step / NFE)^i with
c_i quadratic in s / 12 whose coefficients are quadratic in NFE / 50; the
coefficients enter linearly, so the fit is one least-squares solve.
"""
from __future__ import annotations

import time
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax

from samplax.solvers.base import bcast
from samplax.solvers.unified import Table, _evaluate, _initial, widen

Array = jnp.ndarray


def lagrange_weights(t: Array, i, rho, dc_order: int = 2):
    """(dc_order + 1,) weights ell_k(tau), tau = rho t_i + (1 - rho) t_{i-1}, on the nodes
    t_i, t_{i-1}, ..., t_{i-K}.  Nodes before t_0 are finite dummies extending the
    first spacing (their weights are never used: warm-up steps are not compensated),
    so gradients stay finite."""
    d = t[0] - t[1]

    def node(j):
        return jnp.where(j >= 0, t[jnp.maximum(j, 0)], t[0] - j * d)

    nodes = [node(i - k) for k in range(dc_order + 1)]
    tau = rho * nodes[0] + (1.0 - rho) * nodes[1]
    w = []
    for k in range(dc_order + 1):
        ell = jnp.ones_like(tau)
        for j in range(dc_order + 1):
            if j != k:
                ell = ell * (tau - nodes[j]) / (nodes[k] - nodes[j])
        w.append(ell)
    return jnp.stack(w)


def _check(tab: Table, ratios, dc_order: int):
    if isinstance(dc_order, bool) or not isinstance(dc_order, int) or dc_order < 1:
        raise ValueError(f"dc_order: must be an integer >= 1, got {dc_order!r}")
    if np.shape(ratios) != (tab.n_steps,):
        raise ValueError(f"ratios: must have one entry per step ({tab.n_steps},), got shape {np.shape(ratios)}")


def run_dc(model, x_T: Array, tab: Table, ratios: Array, dc_order: int = 2, return_trajectory: bool = False):
    """Sample with ``tab`` and dynamic compensation ratios (one per step; the first
    ``dc_order`` are ignored): ``x_0``, and with ``return_trajectory`` also the
    states after every step (n, B, ...).  Same model evaluations as
    :func:`run_table` (the compensation is free).  ``ratios = 1`` everywhere is
    exactly ``run_table``.  Traceable and differentiable in ``ratios`` and the table."""
    _check(tab, ratios, dc_order)
    if tab.k < dc_order + 1:
        tab = widen(tab, k=dc_order + 1)
    dt = x_T.dtype
    n, k, v = tab.n_steps, tab.k, len(tab.views)
    cast = lambda a: a.astype(dt)  # noqa: E731
    a, c, ca, cc, cw = cast(tab.a), cast(tab.c), cast(tab.ca), cast(tab.cc), cast(tab.cw)
    t = tab.t
    ratios = jnp.asarray(ratios, t.dtype)
    m0 = jnp.stack(_initial(model, tab, x_T))  # (V, B, ...)
    hist = jnp.concatenate([m0, jnp.zeros(((k - 1) * v,) + x_T.shape, dt)], 0)

    def compensate(hist, i):
        w = lagrange_weights(t, i, ratios[i], dc_order)
        w = jnp.where(i >= dc_order, w, jnp.zeros_like(w).at[0].set(1.0)).astype(dt)
        h = hist.reshape((k, v) + x_T.shape)
        new0 = jnp.tensordot(w, h[: dc_order + 1], axes=1)
        return jnp.concatenate([new0, hist[v:]], 0)

    def advance(x, hist, i, last):
        hist = compensate(hist, i)
        x_new = bcast(a[i], x) * x + jnp.tensordot(c[i], hist, axes=1)
        if last:
            return x_new, hist
        m_new = jnp.stack(_evaluate(model, tab.views, x_new, t[i + 1]))
        if tab.has_corrector:
            x_corr = bcast(ca[i], x) * x + jnp.tensordot(cc[i], hist, axes=1) + jnp.tensordot(cw[i], m_new, axes=1)
            x_new = jnp.where(tab.corrected[i], x_corr, x_new)
        hist = jnp.concatenate([m_new, hist[:-v]], 0)
        return x_new, hist

    def body(carry, i):
        x, hist = advance(*carry, i, False)
        return (x, hist), (x if return_trajectory else None)

    x, traj = x_T, None
    if n > 1:
        (x, hist), traj = jax.lax.scan(body, (x, hist), jnp.arange(n - 1))
    x, _ = advance(x, hist, n - 1, True)
    if tab.end == "denoise":
        x = model.data(x, t[-1]).astype(dt)
    if return_trajectory:
        traj = x[None] if traj is None else jnp.concatenate([traj, x[None]], 0)
        return x, traj
    return x


# ----------------------------------------------------------------------------------------
# References
# ----------------------------------------------------------------------------------------
def exact_trajectory(gmm, schedule, x_T, grid, n_steps: int = 500) -> np.ndarray:
    """The exact PF-ODE solution from x_T (at t_0 = grid.t[0]) at every later node of
    ``grid`` (n, B, ...): float64 RK4 of the analytic mixture (the last node of an
    end="zero" grid is sigma = 0; with end="denoise" the last entry is the solution at
    sigma = 0, what the denoising evaluation approximates)."""
    t = np.asarray(grid.t, np.float64)
    with jax.enable_x64(True):
        x = jnp.asarray(np.asarray(x_T, np.float64))
        out = []
        n = grid.n_steps
        for j in range(1, n + 1):
            to = None if (grid.end == "zero" and j == n) else float(t[j])
            out.append(np.asarray(gmm.ode_solution(x, float(t[0]), to, schedule, n_steps=n_steps)))
        if grid.end == "denoise":
            out[-1] = np.asarray(gmm.ode_solution(x, float(t[0]), None, schedule, n_steps=n_steps))
    return np.stack(out)


def teacher_trajectory(model, x_T, grid, substeps: int = 20, order: int = 3) -> Array:
    """A many-step teacher solution at every later node of ``grid`` (n, B, ...):
    DPM-Solver++(``order``M) on the grid refined ``substeps`` times uniformly in
    logSNR between consecutive nodes (the step into sigma = 0 of an end="zero" grid
    is refined down to the schedule's t_min, then jumps)."""
    from samplax.solvers.multistep import dpm_solver_pp
    from samplax.timesteps import grid_from_times

    sched = model.schedule
    t = jnp.asarray(grid.t)
    real = t if grid.end != "zero" else t[:-1]
    lam = sched.lambda_(real)
    u = jnp.arange(substeps, dtype=t.dtype) / substeps
    fine = (lam[:-1, None] + (lam[1:] - lam[:-1])[:, None] * u[None]).reshape(-1)
    pieces = [fine, lam[-1:]]
    if grid.end == "zero":
        lam_min = sched.lambda_(jnp.asarray(sched.t_min, t.dtype))
        tail = lam[-1] + (lam_min - lam[-1]) * jnp.arange(1, substeps + 1, dtype=t.dtype) / substeps
        pieces.append(jnp.where(lam_min > lam[-1] + 1e-6, tail, lam[-1] + 1e-3 * jnp.arange(1, substeps + 1)))
    lam_all = jnp.concatenate(pieces)
    times = sched.t_from_lambda(lam_all).at[0].set(t[0])
    fg = grid_from_times(sched, times, end=grid.end, dtype=t.dtype)
    solver = dpm_solver_pp(order=order, max_step_ratio=None, max_step=None)
    from samplax.solvers.unified import run_table
    _, info = run_table(model, jnp.asarray(x_T, t.dtype), solver.table(fg, sched), return_trajectory=True)
    traj = info.trajectory
    n = grid.n_steps
    idx = [substeps * j - 1 for j in range(1, real.shape[0])]
    if grid.end == "zero":
        idx.append(traj.shape[0] - 1)
    return traj[jnp.asarray(idx[:n])]


# ----------------------------------------------------------------------------------------
# Fitting
# ----------------------------------------------------------------------------------------
def trajectory_loss(model, x_T, ref_traj, tab: Table, ratios, dc_order: int = 2, metric: str = "l2"):
    """Sum over the grid's later nodes of the mean distance (``"l2"``) or mean squared
    distance (``"mse"``) to the reference."""
    _, traj = run_dc(model, x_T, tab, ratios, dc_order, return_trajectory=True)
    d = (traj - ref_traj.astype(traj.dtype)).reshape(traj.shape[0], traj.shape[1], -1)
    sq = jnp.sum(d * d, -1)
    per = sq if metric == "mse" else jnp.sqrt(sq + 1e-30)
    return jnp.sum(jnp.mean(per, -1))


def fit_ratios(model, x_T, ref_traj, tab: Table, dc_order: int = 2, steps: int = 200,
               learning_rate: float = 0.05, init: float = 1.0, metric: str = "l2", penalty: float = 0.0,
               greedy: bool = False):
    """Compensation ratios for ``tab`` fitted by Adam on (``x_T``, ``ref_traj``):
    ``(ratios (n,), dict(loss=[...], seconds=...))``.  The warm-up ratios
    (first ``dc_order`` steps) stay 1."""
    n = tab.n_steps
    x_T = jnp.asarray(x_T)
    ref_traj = jnp.asarray(ref_traj, x_T.dtype)
    if ref_traj.shape != (n,) + x_T.shape:
        raise ValueError(f"ref_traj: must be the reference at the grid's {n} later nodes, shape "
                         f"{(n,) + tuple(x_T.shape)}, got {tuple(ref_traj.shape)}")
    opt = optax.adam(learning_rate)
    free = (jnp.arange(n) >= dc_order).astype(tab.t.dtype)

    def loss(r):
        rr = 1.0 + free * (r - 1.0)
        return (trajectory_loss(model, x_T, ref_traj, tab, rr, dc_order, metric)
                + penalty * jnp.sum(jnp.square(rr - 1.0)))

    @jax.jit
    def step(r, s):
        val, g = jax.value_and_grad(loss)(r)
        g = jnp.where(jnp.isfinite(g), g, 0.0)
        up, s = opt.update(g, s, r)
        return optax.apply_updates(r, up), s, val

    r = jnp.full((n,), init, tab.t.dtype)
    s = opt.init(r)
    t0 = time.perf_counter()
    hist, best, best_val = [], r, np.inf
    for _ in range(steps):
        r_old = r
        r, s, val = step(r, s)
        val = float(val)
        hist.append(val)
        if np.isfinite(val) and val < best_val:
            best, best_val = r_old, val
    best = 1.0 + free * (best - 1.0)
    return best, dict(loss=hist, seconds=time.perf_counter() - t0)


# ----------------------------------------------------------------------------------------
# Cascade polynomial regression
# ----------------------------------------------------------------------------------------
def _cpr_design(step, nfe, scale, deg_x: int, deg_nfe: int, deg_s: int):
    x = np.asarray(step, np.float64) / np.asarray(nfe, np.float64)
    u = np.asarray(nfe, np.float64) / 50.0
    s = np.asarray(scale, np.float64) / 12.0
    cols = []
    for i in range(deg_x + 1):
        for j in range(deg_s + 1):
            for k in range(deg_nfe + 1):
                cols.append(x ** i * s ** j * u ** k)
    return np.stack(cols, -1)


def cpr_fit(fitted: dict, dc_order: int = 2, deg_x: int = 2, deg_nfe: int = 2, deg_s: int = 2) -> dict:
    """Cascade polynomial regression (DC-Solver Sec. 3.3) of fitted ratios.

    ``fitted``: {nfe: ratios} or {(nfe, guidance_scale): ratios}, ratios one per step
    (step index i = 0..n-1 is the paper's step i + 1; warm-up steps i < dc_order
    are left out of the fit).  The model: rho = sum_i c_i (step / NFE)^i,
    c_i = sum_j b_ij (s / 12)^j, b_ij = sum_k a_ijk (NFE / 50)^k; least squares
    (minimum norm when under-determined) on a, with ``deg_s = 0`` when no guidance scale is given.
    Returns the coefficients as a dict for :func:`cpr_predict`."""
    rows, ys = [], []
    with_scale = any(isinstance(key, tuple) for key in fitted)
    deg_s = deg_s if with_scale else 0
    for key, r in fitted.items():
        nfe, scale = (key if isinstance(key, tuple) else (key, 0.0))
        r = np.asarray(r, np.float64)
        steps = np.arange(r.shape[0]) + 1
        keep = steps > dc_order
        rows.append(_cpr_design(steps[keep], nfe, scale, deg_x, deg_nfe, deg_s))
        ys.append(r[keep])
    a_mat, y = np.concatenate(rows), np.concatenate(ys)
    coef = np.linalg.lstsq(a_mat, y, rcond=None)[0]  # minimum-norm when under-determined
    return dict(coef=coef, deg_x=deg_x, deg_nfe=deg_nfe, deg_s=deg_s, dc_order=dc_order)


def cpr_predict(cpr: dict, n_steps: int, nfe: Optional[int] = None, scale: float = 0.0) -> np.ndarray:
    """Predicted ratios (n_steps,) for ``nfe`` (default n_steps) and guidance ``scale``
    (warm-up steps get 1)."""
    nfe = n_steps if nfe is None else nfe
    steps = np.arange(n_steps) + 1
    r = _cpr_design(steps, nfe, scale, cpr["deg_x"], cpr["deg_nfe"], cpr["deg_s"]) @ cpr["coef"]
    return np.where(steps > cpr["dc_order"], r, 1.0)
