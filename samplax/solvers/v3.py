"""DPM-Solver-v3 (Zheng, Lu, Chen, Zhu, "DPM-Solver-v3: Improved Diffusion ODE Solver with
Empirical Model Statistics", NeurIPS 2023; official code github.com/thu-ml/DPM-Solver-v3).

Notation (per dimension; products are elementwise; ' = d/dlambda, lambda = log(alpha/sigma)):

* the diffusion ODE in lambda (paper Sec. 2, the noise-prediction form)
      dx/dlambda = (log alpha)' x - N(x, lambda),     N = sigma eps_theta(x, lambda);
* the empirical model statistics (EMS, paper Sec. 3.1/3.2):
      l_lambda = argmin_l E ||grad_x N(x_lambda, lambda) - diag(l)||_F^2 = E[diag grad_x N]
  (the linear part of the model pulled into the linear term of the ODE), and with
      f(x, lambda) = (N(x, lambda) - l_lambda x) / alpha_lambda,    f^(1) = df/dlambda along the ODE,
      (s_lambda, b_lambda) = argmin_{s, b} E ||f^(1) - s f - b||^2   (a per-dimension regression);
* the transformed model output (paper's g_theta)
      g(x, lambda) = e^{-int_{ls}^{lambda} s} f - int_{ls}^{lambda} e^{-int_{ls}^{r} s} b_r dr;
* the exact solution from s to t (the paper's variation-of-constants formula)
      x_t = alpha_t/alpha_s e^{-int_{ls}^{lt} l} x_s
            - alpha_t int_{ls}^{lt} e^{-int_{lambda}^{lt} l} e^{int_{ls}^{lambda} s} (g + int_{ls}^{lambda} e^{-int s} b) dlambda,
  and the (n+1)-th order local method Taylor-expands g about lambda_s, with g^(k) estimated from
  the model outputs at the previous (multistep predictor) or previous and new (corrector) nodes:
      x_t ~ alpha_t/alpha_s e^{L_s - L_t} x_s - alpha_t e^{L_s - L_t} [E_0 g_s + C + sum_{k=1}^{n} E_k g^(k)_s],
      E_k = int_{ls}^{lt} e^{(L+S)(lambda) - (L+S)(ls)} (lambda - ls)^k / k! dlambda,
      C   = int_{ls}^{lt} e^{(L+S)(lambda) - (L+S)(ls)} e^{S_s} (B(lambda) - B_s) dlambda,
  with the cumulative tables L = int l, S = int s, B = int e^{-S} b on the statistics grid.

Degenerate statistics l = 1, s = 0, b = 0 give f = -x0_hat and make the method DPM-Solver++
multistep with the exact ("taylor") Taylor coefficients (paper App. A.2; tested).

Choices of this implementation (see docs/dpm_solver_v3.md):

* the statistics live on a logSNR-uniform grid; a step's lambda's are *interpolated* into the
  cumulative tables (linearly) and the E_k / C integrals are computed by 16-point Gauss-Legendre
  quadrature, so any time grid works (the official code rounds every step to a statistics node);
* l is estimated by the Hutchinson estimator E_v[v * (J v)] with Rademacher probes v and forward-
  mode JVPs (``jacobian="exact"``: all d unit vectors, the exact diagonal), with the same
  (x_0, eps, v) at every lambda node, so the estimate is smooth in lambda; l' (needed in f^(1))
  is the exact lambda-derivative of that estimate (a JVP in lambda of the JVP);
* (s, b) by per-dimension least squares with a tiny ridge on Var(f) (when f is a deterministic
  function of lambda alone -- a single Gaussian -- s is not identified and the ridge picks s = 0,
  the minimum-norm solution);
* predictor pseudo-order (the paper's Sec. 3.4 low-NFE technique: derivatives from divided
  differences instead of the Taylor fit) automatically on at <= 5 steps, as in the official
  scripts; corrector (UniC-style, reusing the new model evaluation, so NFE unchanged) of the
  previous order (``corrector_pseudo=True``: one order higher by divided differences).

NFE = steps (+1 with a final denoise), exactly as DPM-Solver++ multistep: one model call at x_T
and one after every step but the last.  A step into sigma = 0 is the data-prediction jump
x_0 = ((1 - l_s) x_s / alpha_s) - f_s (no model call).
"""
from __future__ import annotations

import functools
import math
from typing import Literal, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

from samplax.solvers.base import ModelData, Solver, bcast, check_options
from samplax.solvers.multistep import _safe, _safeguard_order, static_orders

_GL_X, _GL_W = np.polynomial.legendre.leggauss(16)
RIDGE = 1e-10  # relative ridge on Var(f) in the (s, b) regression


# ---------------------------------------------------------------------------------------------
# The estimator
# ---------------------------------------------------------------------------------------------
def _lam_fns(schedule):
    """t(lambda), alpha(lambda), sigma(lambda) as differentiable functions of lambda."""
    def t_of(lam):
        return schedule.t_from_lambda(lam)

    def alpha_of(lam):
        return schedule.alpha(t_of(lam))

    def sigma_of(lam):
        return schedule.sigma(t_of(lam))
    return t_of, alpha_of, sigma_of


def _n_fn(model):
    """N(x, lambda) = sigma(lambda) eps_theta(x, t(lambda)) for one sample x (no batch axis)."""
    t_of, _, sigma_of = _lam_fns(model.schedule)

    def n(x, lam):
        eps = model.noise(x[None], t_of(lam))[0]
        return sigma_of(lam).astype(x.dtype) * eps
    return n


def _probes(key, n, shape, dtype, jacobian):
    if jacobian == "exact":
        d = int(np.prod(shape))
        return jnp.eye(d, dtype=dtype).reshape((d,) + tuple(shape))[None].repeat(n, 0)  # (n, d, ...)
    v = jax.random.rademacher(key, (n, 1) + tuple(shape), dtype=dtype)
    return v


def _l_pass_impl(model, x0, eps, v, lambdas, batch_size):
    """Per lambda node: (mean over samples of v * J v summed over probes, and its lambda-derivative)."""
    _, alpha_of, sigma_of = _lam_fns(model.schedule)
    n_fn = _n_fn(model)

    def per_sample(x0_i, eps_i, v_i, lam):
        def diag_est(lam_):
            x = alpha_of(lam_).astype(x0_i.dtype) * x0_i + sigma_of(lam_).astype(x0_i.dtype) * eps_i

            def one(vk):
                _, jv = jax.jvp(lambda xx: n_fn(xx, lam_), (x,), (vk,))
                return vk * jv
            return jnp.sum(jax.vmap(one)(v_i), 0)
        val, dval = jax.jvp(diag_est, (lam,), (jnp.ones_like(lam),))
        return val, dval

    return _batched_mean(per_sample, (x0, eps, v), lambdas, batch_size)


def _batched_mean(per_sample, arrays, lambdas, batch_size):
    """For each lambda node, the mean over samples of per_sample(*arrays[i], lam) (a tuple), computed
    in batches of ``batch_size`` samples (lax.map over nodes, lax.scan over batches)."""
    n = arrays[0].shape[0]
    nb = n // batch_size
    resh = [a[: nb * batch_size].reshape((nb, batch_size) + a.shape[1:]) for a in arrays]

    def at_node(lam):
        def body(acc, chunk):
            out = jax.vmap(lambda *a: per_sample(*a, lam))(*chunk)
            return jax.tree.map(lambda s, o: s + jnp.sum(o, 0), acc, out), None
        first = jax.eval_shape(lambda *a: jax.vmap(lambda *b: per_sample(*b, lam))(*a), *[r[0] for r in resh])
        zero = jax.tree.map(lambda s: jnp.zeros(s.shape[1:], s.dtype), first)
        acc, _ = jax.lax.scan(body, zero, tuple(resh))
        return jax.tree.map(lambda s: s / (nb * batch_size), acc)
    return jax.lax.map(at_node, lambdas)


def _sb_pass_impl(model, x0, eps, lambdas, l, dl, batch_size):
    """Per lambda node: E f, E f^(1), Var f, Cov(f, f^(1)) (per dimension)."""
    t_of, alpha_of, sigma_of = _lam_fns(model.schedule)
    n_fn = _n_fn(model)
    dlog_alpha = jax.grad(lambda lam: jnp.log(alpha_of(lam)))
    idx = jnp.arange(lambdas.shape[0])

    def per_sample(x0_i, eps_i, k):
        lam = lambdas[k]
        lk, dlk = l[k], dl[k]
        a = alpha_of(lam).astype(x0_i.dtype)
        x = a * x0_i + sigma_of(lam).astype(x0_i.dtype) * eps_i
        nv = n_fn(x, lam)
        dla = dlog_alpha(lam).astype(x.dtype)
        dx = dla * x - nv  # the ODE (noise-prediction form)
        _, dn = jax.jvp(n_fn, (x, lam), (dx, jnp.ones_like(lam)))
        f = (nv - lk * x) / a
        # f^(1) = d/dlambda [(N - l x) / alpha] along the ODE
        f1 = (dn - dlk * x - lk * dx) / a - dla * f
        return f, f1

    n = x0.shape[0]
    nb = n // batch_size
    resh = [arr[: nb * batch_size].reshape((nb, batch_size) + arr.shape[1:]) for arr in (x0, eps)]

    def at_node(k):
        # Chan et al.'s pairwise update of (count, means, centred second moments): no cancellation
        # of raw moments (which would leave s ~ 1e-6 where Var f = 0 exactly).
        def body(acc, chunk):
            cnt, mf, mf1, m2, c2 = acc
            f, f1 = jax.vmap(lambda a_, b_: per_sample(a_, b_, k))(*chunk)
            bf, bf1 = jnp.mean(f, 0), jnp.mean(f1, 0)
            bm2 = jnp.sum((f - bf) ** 2, 0)
            bc2 = jnp.sum((f - bf) * (f1 - bf1), 0)
            nb_ = batch_size
            tot = cnt + nb_
            df, df1 = bf - mf, bf1 - mf1
            m2 = m2 + bm2 + df * df * cnt * nb_ / tot
            c2 = c2 + bc2 + df * df1 * cnt * nb_ / tot
            mf = mf + df * nb_ / tot
            mf1 = mf1 + df1 * nb_ / tot
            return (tot, mf, mf1, m2, c2), None
        z = jnp.zeros(x0.shape[1:], x0.dtype)
        acc, _ = jax.lax.scan(body, (jnp.asarray(0.0, x0.dtype), z, z, z, z), tuple(resh))
        cnt, mf, mf1, m2, c2 = acc
        return mf, mf1, m2 / cnt, c2 / cnt
    return jax.lax.map(at_node, idx)


@functools.partial(jax.jit, static_argnames=("jacobian", "batch_size"))
def _estimate_jit(model, x0, lambdas, key, jacobian, batch_size):
    k_eps, k_v = jax.random.split(key)
    n = x0.shape[0]
    shape = x0.shape[1:]
    eps = jax.random.normal(k_eps, x0.shape, x0.dtype)
    v = _probes(k_v, n, shape, x0.dtype, jacobian)
    l, dl = _l_pass_impl(model, x0, eps, v, lambdas, batch_size)
    mf, mf1, var, cov = _sb_pass_impl(model, x0, eps, lambdas, l, dl, batch_size)
    s = cov / (var + RIDGE * (var + mf * mf) + jnp.finfo(var.dtype).tiny)
    b = mf1 - s * mf
    return {"l": l, "dl": dl, "s": s, "b": b}


def estimate_statistics(model, x0, lambdas, key, batch_size: Optional[int] = None,
                        jacobian: str = "hutchinson") -> dict:
    """The empirical model statistics of ``model`` at the logSNR nodes ``lambdas`` (G,), from data
    samples ``x0`` (n, ...): x_lambda = alpha x0 + sigma eps with one eps per sample (the same at
    every node, as are the probes, so the estimates are smooth in lambda).

    Returns {"l", "dl", "s", "b"}: arrays (G, ...) (one sample's shape per node): l = E[diag grad_x N]
    (Hutchinson with one Rademacher probe per sample, or the exact diagonal with
    ``jacobian="exact"``: d JVPs per sample), dl = its exact lambda-derivative, and the per-dimension
    least-squares fit f^(1) ~ s f + b.  Memory is bounded by ``batch_size`` samples at a time
    (n is truncated to a multiple of it).  Pure and jitted."""
    if jacobian not in ("hutchinson", "exact"):
        raise ValueError(f"jacobian: {jacobian!r} is not allowed; allowed: 'hutchinson' or 'exact'")
    x0 = jnp.asarray(x0)
    n = x0.shape[0]
    if x0.ndim < 2 or n < 2:
        raise ValueError(f"x0: need at least 2 data samples of shape (n, ...), got shape {tuple(x0.shape)}")
    batch_size = min(n, batch_size or 256)
    lambdas = jnp.asarray(lambdas, x0.dtype)
    return _estimate_jit(model, x0, lambdas, key, jacobian, batch_size)


# ---------------------------------------------------------------------------------------------
# Tables and coefficients
# ---------------------------------------------------------------------------------------------
def _cumtrapz(y, x):
    """Cumulative trapezoid integral along axis 0, starting at 0 (float64 numpy)."""
    dx = np.diff(x).reshape((-1,) + (1,) * (y.ndim - 1))
    out = np.cumsum(0.5 * dx * (y[1:] + y[:-1]), axis=0)
    return np.concatenate([np.zeros_like(y[:1]), out], 0)


def statistics_tables(stats: dict) -> dict:
    """Cumulative tables on the statistics grid (float64 numpy): L = int l, S = int s,
    B = int e^{-S} b (trapezoid), and l itself (for f and the final jump)."""
    lam = np.asarray(stats["lam"], np.float64)
    l, s, b = (np.asarray(stats[k], np.float64) for k in ("l", "s", "b"))
    if not (lam.ndim == 1 and lam.size >= 2 and np.all(np.diff(lam) > 0)):
        raise ValueError("stats: 'lam' must be a strictly increasing 1-D logSNR grid of at least 2 nodes")
    for k, a in (("l", l), ("s", s), ("b", b)):
        if a.shape[0] != lam.size or not np.all(np.isfinite(a)):
            raise ValueError(f"stats: {k!r} must be finite with leading axis {lam.size} (the grid), got shape {a.shape}")
    L = _cumtrapz(l, lam)
    S = _cumtrapz(s, lam)
    B = _cumtrapz(np.exp(-S) * b, lam)
    return {"lam": lam, "l": l, "s": s, "L": L, "S": S, "B": B}


def _locate(lam_grid, lam):
    """Interval index k and position w = (lam - lam_k) / (lam_{k+1} - lam_k) on the grid (w outside
    [0, 1] beyond the ends: linear extrapolation)."""
    k = jnp.clip(jnp.searchsorted(lam_grid, lam, side="right") - 1, 0, lam_grid.shape[0] - 2)
    dl = lam_grid[k + 1] - lam_grid[k]
    return k, (lam - lam_grid[k]) / dl, dl


def _interp(tab, lam_grid, lam):
    """Linear interpolation of tab (G, ...) at lam (scalar or (Q,))."""
    k, w, _ = _locate(lam_grid, lam)
    w = w.reshape(w.shape + (1,) * (tab.ndim - 1))
    return tab[k] * (1 - w) + tab[k + 1] * w


def _interp_integral(cum, vals, lam_grid, lam):
    """The exact integral of the linear interpolant of ``vals`` from lam_grid[0] to lam, given its
    trapezoid cumulative table ``cum`` at the nodes.  So d/dlambda of it is exactly the interpolated
    value that f uses: the transformed ODE stays consistent with the interpolated l (no error
    floor from the tables; see the convergence test)."""
    k, w, dl = _locate(lam_grid, lam)
    shp = w.shape + (1,) * (vals.ndim - 1)
    w, dl = w.reshape(shp), dl.reshape(shp)
    return cum[k] + dl * (w * vals[k] + 0.5 * w * w * (vals[k + 1] - vals[k]))


def _deriv_weights(lams, n: int, pseudo: bool):
    """Scalar weights W (n, n+1): g^(k) ~ sum_j W[k-1, j] g_j (k = 1..n) from values at
    lams[0] (the expansion point), ..., lams[n].  ``pseudo``: k! times the Newton divided
    difference g[l_0..l_k] (paper Sec. 3.4, pseudo-order); else the Taylor fit
    sum_k (l_j - l_0)^k / k! g^(k) = g_j - g_0, j = 1..n (official code's linear solve)."""
    if pseudo:
        d = [[[1.0 if m == j else 0.0 for m in range(n + 1)] for j in range(n + 1)]]
        for i in range(1, n + 1):
            row = []
            for j in range(n - i + 1):
                den = _safe(lams[j] - lams[i + j])
                row.append([(d[i - 1][j][m] - d[i - 1][j + 1][m]) / den for m in range(n + 1)])
            d.append(row)
        return [[math.factorial(i) * d[i][0][m] for m in range(n + 1)] for i in range(1, n + 1)]
    r = jnp.stack([jnp.stack([(lams[j] - lams[0]) ** k for k in range(1, n + 1)]) for j in range(1, n + 1)])
    rinv = jnp.linalg.inv(r)  # sol = rinv (g_{1..n} - g_0); g^(k) = k! sol_k
    w = []
    for k in range(n):
        row = [rinv[k, j] for j in range(n)]
        w.append([math.factorial(k + 1) * c for c in [-sum(row)] + row])
    return w


# ---------------------------------------------------------------------------------------------
# The solver
# ---------------------------------------------------------------------------------------------
class V3State(NamedTuple):
    x: jnp.ndarray
    hist: jnp.ndarray  # (K, B, ...) f = (N - l x) / alpha at the last K nodes, hist[0] at the current one


def _bound_solver(stats: dict, order: int, corrector: bool, corrector_pseudo: bool,
                  predictor_pseudo: Optional[bool], lower_order_final: bool,
                  max_step_ratio: Optional[float], max_step: Optional[float]) -> Solver:
    tabs = statistics_tables(stats)
    k_hist = order
    max_c = order + (1 if corrector_pseudo else 0)

    def arrays(dtype):
        return {k: jnp.asarray(v, dtype) for k, v in tabs.items()}

    def f_of(tb, x, eps, lam, alpha, sigma):
        l_ = _interp(tb["l"], tb["lam"], lam).astype(x.dtype)
        return (sigma * eps - l_ * x) / alpha

    def init(model, grid, x):
        tb = arrays(grid.lam.dtype)
        eps = model.noise(x, grid.t[0]).astype(x.dtype)
        f0 = f_of(tb, x, eps, grid.lam[0], grid.alpha[0], grid.sigma[0])
        return V3State(x=x, hist=jnp.zeros((k_hist,) + x.shape, x.dtype).at[0].set(f0))

    def step_order(grid, i):
        n = grid.n_steps
        p_static = jnp.asarray(static_orders(n, order, lower_order_final, None, grid.ends_at_zero))[i]
        p = p_static
        if max_step_ratio is not None or max_step is not None:
            ratio = jnp.inf if max_step_ratio is None else max_step_ratio
            p = jnp.minimum(p, _safeguard_order(grid.lam, i, order, ratio, max_step))
        return p_static, p

    def update(tb, x_s, lam_s, lam_t, alpha_s, alpha_t, nodes, fs, pseudo, n_list):
        """x_t from x_s by the local method of order n+1 (paper's Taylor expansion of g), for each
        n in n_list; nodes/fs: lambda's and f's, nodes[0] = lam_s.  Returns a stacked candidate
        per n (scalar-coefficient work plus one weighted sum per candidate)."""
        dtype = x_s.dtype
        h = lam_t - lam_s
        u = 0.5 * (lam_s + lam_t) + 0.5 * h * jnp.asarray(_GL_X, h.dtype)
        w = 0.5 * h * jnp.asarray(_GL_W, h.dtype)
        big_l = lambda v: _interp_integral(tb["L"], tb["l"], tb["lam"], v)  # noqa: E731
        big_s = lambda v: _interp_integral(tb["S"], tb["s"], tb["lam"], v)  # noqa: E731
        l_s, l_t, s_s = big_l(lam_s), big_l(lam_t), big_s(lam_s)
        ls_s = l_s + s_s
        ls_u = big_l(u) + big_s(u)  # (Q, ...)
        b_s = _interp(tb["B"], tb["lam"], lam_s)
        b_u = _interp(tb["B"], tb["lam"], u)
        wq = w.reshape(w.shape + (1,) * (ls_u.ndim - 1))
        ea = jnp.exp(ls_u - ls_s[None])
        e = [jnp.sum(wq * ea, 0)]
        du = (u - lam_s).reshape(wq.shape)
        for k in range(1, max(n_list) + 1):
            e.append(jnp.sum(wq * ea * du ** k, 0) / math.factorial(k))
        c = jnp.sum(wq * ea * jnp.exp(s_s)[None] * (b_u - b_s[None]), 0)
        # g_j = e^{S_s - S_j} f_j - e^{S_s} (B_j - B_s)
        gs = []
        for lam_j, f_j in zip(nodes, fs):
            s_j, b_j = big_s(lam_j), _interp(tb["B"], tb["lam"], lam_j)
            gs.append((jnp.exp(s_s - s_j).astype(dtype) * f_j - (jnp.exp(s_s) * (b_j - b_s)).astype(dtype)))
        lead = alpha_t * jnp.exp(l_s - l_t)  # (...)
        x_lin = (alpha_t / alpha_s * jnp.exp(l_s - l_t)).astype(dtype) * x_s
        outs = []
        for n in n_list:
            acc = e[0].astype(dtype) * gs[0] + c.astype(dtype)
            if n > 0:
                wts = _deriv_weights(nodes[: n + 1], n, pseudo)
                for k in range(n):
                    dk = sum(jnp.asarray(wts[k][j], dtype) * gs[j] for j in range(n + 1))
                    acc = acc + e[k + 1].astype(dtype) * dk
            outs.append(x_lin - lead.astype(dtype) * acc)
        return jnp.stack(outs)

    def step(model, grid, state, i, keys, last):
        tb = arrays(grid.lam.dtype)
        x = state.x
        n_steps = grid.n_steps
        if last and grid.ends_at_zero:
            # the denoising jump: x0_hat = (x - N) / alpha with N = alpha f + l x
            l_s = _interp(tb["l"], tb["lam"], grid.lam[i]).astype(x.dtype)
            return V3State(x=(1 - l_s) * x / grid.alpha[i] - state.hist[0], hist=state.hist)
        _, p = step_order(grid, i)
        pp = (n_steps <= 5) if predictor_pseudo is None else predictor_pseudo
        lam = lambda j: grid.lam[jnp.maximum(j, 0)]  # noqa: E731
        nodes = [lam(i - j) for j in range(k_hist)]
        fs = [state.hist[j] for j in range(k_hist)]
        cands = update(tb, x, grid.lam[i], grid.lam[i + 1], grid.alpha[i], grid.alpha[i + 1], nodes, fs, pp,
                       list(range(order)))
        x_new = cands[jnp.clip(p - 1, 0, order - 1)]
        if last:
            return V3State(x=x_new, hist=state.hist)
        eps = model.noise(x_new, grid.t[i + 1]).astype(x.dtype)
        f_new = f_of(tb, x_new, eps, grid.lam[i + 1], grid.alpha[i + 1], grid.sigma[i + 1])
        if corrector:
            # corrector of order p_c (nodes s, t and p_c - 2 older ones); f at t is kept (the official
            # code keeps N - l x fixed when it moves x), so only x changes.
            pc = p + (1 if corrector_pseudo else 0)
            c_nodes = [grid.lam[i], grid.lam[i + 1]] + nodes[1: max_c - 1]
            c_fs = [fs[0], f_new] + fs[1: max_c - 1]
            c_cands = update(tb, x, grid.lam[i], grid.lam[i + 1], grid.alpha[i], grid.alpha[i + 1], c_nodes, c_fs,
                             corrector_pseudo, list(range(1, max_c)))
            x_corr = c_cands[jnp.clip(pc - 2, 0, max_c - 2)]
            x_new = jnp.where(pc >= 2, x_corr, x_new)
        hist = jnp.concatenate([f_new[None], state.hist[:-1]], 0)
        return V3State(x=x_new, hist=hist)

    def nfe(n_steps, end):
        return n_steps + (1 if end == "denoise" else 0)

    return Solver(name=f"dpm_solver_v3_{order}", init=init, step=step, nfe=nfe, order=order, min_steps=order,
                  view="noise", step_orders=step_order)


def dpm_solver_v3(order: int = 3, n_stats_samples: int = 1024, stats_grid_size: int = 256, corrector: bool = True,
                  corrector_pseudo: bool = False, predictor_pseudo: Optional[bool] = None,
                  lower_order_final: bool = True, jacobian: Literal["hutchinson", "exact"] = "hutchinson", stats_batch_size: int = 256,
                  stats_seed: int = 0, max_step_ratio: Optional[float] = None,
                  max_step: Optional[float] = None, afs: bool = False) -> Solver:
    """DPM-Solver-v3 (Zheng et al. 2023): multistep predictor of ``order`` (1-3) in the EMS-transformed
    variables, with the UniC-style corrector (no extra NFE).  NFE = steps (+1 denoise).

    Model-dependent: ``prepare(model, data)`` estimates the EMS l, s, b from ``n_stats_samples``
    data samples on ``stats_grid_size + 1`` logSNR-uniform nodes spanning the schedule's
    [t_min, t_max] (see :func:`estimate_statistics`), ``bind(stats)`` gives the runnable solver.
    ``predictor_pseudo``: pseudo-order predictor (None: on for grids of <= 5 steps, as the
    official scripts); ``corrector_pseudo``: corrector one order higher by divided differences.
    ``max_step_ratio`` / ``max_step``: the order safeguard of our DPM-Solver++ / UniPC (their defaults
    are 2.0 / 2.0); off by default here, as in the official code (on gmm2d / gmm64d it mostly makes no
    difference, helps at NFE 5 and hurts at gmm2d logSNR NFE 8-10: docs/dpm_solver_v3.md).
    ``afs``: the experiment layer passes it to every solver; only False is supported (no analytic
    first step in the EMS variables)."""
    check_options(dpm_solver_v3, locals())
    if afs:
        raise ValueError("afs: DPM-Solver-v3 has no analytic first step (its first step uses the model's "
                         "statistics); allowed: False")
    if not isinstance(order, (int, np.integer)) or not 1 <= order <= 3:
        raise ValueError(f"order: must be an integer in 1..3, got {order!r}")
    if n_stats_samples < 2:
        raise ValueError(f"n_stats_samples: must be an integer >= 2, got {n_stats_samples!r}")
    if stats_grid_size < 2:
        raise ValueError(f"stats_grid_size: must be an integer >= 2 (grid intervals), got {stats_grid_size!r}")
    if stats_batch_size < 1:
        raise ValueError(f"stats_batch_size: must be an integer >= 1, got {stats_batch_size!r}")
    if jacobian not in ("hutchinson", "exact"):
        raise ValueError(f"jacobian: {jacobian!r} is not allowed; allowed: 'hutchinson' or 'exact'")
    if max_step_ratio is not None and not max_step_ratio > 0:
        raise ValueError(f"max_step_ratio: must be positive or None, got {max_step_ratio!r}")
    if max_step is not None and not max_step > 0:
        raise ValueError(f"max_step: must be positive or None, got {max_step!r}")
    opts = dict(order=order, corrector=corrector, corrector_pseudo=corrector_pseudo,
                predictor_pseudo=predictor_pseudo, lower_order_final=lower_order_final,
                max_step_ratio=max_step_ratio, max_step=max_step)

    def prepare(model, data: ModelData) -> dict:
        if data is None:
            raise ValueError("data: dpm_solver_v3 needs data samples (ModelData) to estimate its statistics")
        sch = model.schedule
        x0 = jnp.asarray(data.samples(n_stats_samples, stats_seed), jnp.result_type(float))
        lo, hi = float(sch.lambda_(jnp.asarray(sch.t_max))), float(sch.lambda_(jnp.asarray(sch.t_min)))
        lam = np.linspace(lo, hi, stats_grid_size + 1)
        st = estimate_statistics(model, x0, lam, jax.random.PRNGKey(stats_seed),
                                 batch_size=min(stats_batch_size, n_stats_samples), jacobian=jacobian)
        out = {k: np.asarray(v, np.float64) for k, v in st.items()}
        out["lam"] = lam
        return out

    def bind(stats) -> Solver:
        return _bound_solver(stats, **opts)

    base = _bound_solver({"lam": np.array([0.0, 1.0]), "l": np.ones((2, 1)), "s": np.zeros((2, 1)),
                          "b": np.zeros((2, 1))}, **opts)
    return base._replace(prepare=prepare, bind=bind)


__all__ = ["dpm_solver_v3", "estimate_statistics", "statistics_tables"]
