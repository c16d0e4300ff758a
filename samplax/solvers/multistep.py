"""Linear multistep solvers in one engine.

Every multistep method here advances as

    x_{i+1} = a_i x_i + sum_j c_{i,j} m_{i-j}        (predictor)
    x_{i+1} = a_i x_i + sum_j c'_{i,j} m_{i-j} + c'_new m(x_pred, t_{i+1})   (UniC corrector)

where m is the model output in the method's view (noise or data prediction)
and the scalars (a, c) depend only on the grid and on the step's order.  The
coefficients are computed per step from the grid arrays (cheap scalar work),
for every candidate order, and the step's order picks one set; the vector work
is one weighted sum over the history kept in the scan carry (a fixed-size
array, newest first).  So the order can vary per step (warm-up,
lower-order-final, the safeguard) with no Python branch on traced values.

Methods (each cites its paper; h = lambda_{i+1} - lambda_i, lambda = log(alpha/sigma)):

* DPM-Solver multistep (noise prediction; Lu et al. 2022, Sec. 3.4 / official
  ``multistep_dpm_solver_{second,third}_update`` with solver_type 'dpmsolver' or 'taylor'),
* DPM-Solver++ multistep 2M/3M (data prediction; Lu et al. 2022b, Alg. 2),
* UniPC (Zhao et al. 2023, Alg. 2/3: UniP-p predictor and UniC corrector,
  B(h) = h (bh1) or e^h - 1 (bh2), data or noise prediction),
* DEIS tAB (Zhang & Chen 2023, Eq. 14: polynomial extrapolation of eps in t,
  integrated exactly against the exponential-integrator weight, here by
  16-point Gauss-Legendre quadrature in sigma_tilde),
* iPNDM (Zhang & Chen 2023, Eq. 23 / Zhou et al. 2024: fixed Adams-Bashforth
  coefficients in sigma_tilde on eps) and iPNDM_v (variable-step
  Adams-Bashforth in sigma_tilde).

Order per step = min(order, warm-up i+1, lower-order-final, safeguard).  The
safeguard (on by default for the exponential integrators: ``max_step_ratio``,
``max_step``) lowers the order of a step that is more than ``max_step_ratio``
times longer in lambda than a step its history came from, or longer than
``max_step / (p - 1)`` for order p.  Steps into sigma = 0 (h = inf) are always
first order for the lambda-based methods, where a polynomial in lambda cannot
be extrapolated; on such grids lower-order-final treats the step into t_min
as the final one.
"""
from __future__ import annotations

from typing import Callable, Literal, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

from samplax.solvers.base import Solver, bcast, check_options, evaluate, initial_output
from samplax.timesteps import Grid


# Safeguard defaults for the multistep exponential integrators (see docs/solvers.md):
# a step of order p >= 2 needs h <= SAFEGUARD_RATIO x each history step and h <= SAFEGUARD_MAX_STEP / (p - 1) (in lambda).
SAFEGUARD_RATIO = 2.0
SAFEGUARD_MAX_STEP = 2.0


class MultistepState(NamedTuple):
    x: jnp.ndarray
    hist: jnp.ndarray  # (K, B, ...) model outputs, hist[0] at the current point


def _safe(v):
    return jnp.where(v == 0, jnp.ones_like(v), v)


def static_orders(n: int, order: int, lower_order_final: bool, lower_order_final_below: Optional[int],
                  ends_at_zero: bool = False) -> np.ndarray:
    """Per-step orders from warm-up and lower-order-final (static in n).

    On a grid ending at sigma = 0 the last step is the denoising jump (order 1),
    and lower-order-final counts the steps before it: the step into t_min is then
    the "final" step, exactly as with the official codes' t_min + denoise ending."""
    if ends_at_zero and n > 1:
        return np.append(static_orders(n - 1, order, lower_order_final, lower_order_final_below), 1).astype(np.int32)
    i = np.arange(n)
    p = np.minimum(order, i + 1)
    if lower_order_final and (lower_order_final_below is None or n < lower_order_final_below):
        p = np.minimum(p, n - i)
    return p.astype(np.int32)


def _safeguard_order(v: jnp.ndarray, i, order: int, ratio: float, max_step: Optional[float] = None):
    """Largest p <= order with |v_{i+1}-v_i| <= ratio |v_{i-j+1}-v_{i-j}| for j < p
    (and, when ``max_step`` is set, |v_{i+1}-v_i| <= max_step / (p - 1))."""
    h = jnp.abs(v[i + 1] - v[i])
    p = jnp.asarray(1, jnp.int32)
    ok = jnp.asarray(True)
    for j in range(1, order):
        hj = jnp.abs(v[jnp.maximum(i - j + 1, 0)] - v[jnp.maximum(i - j, 0)])
        ok = ok & (h <= ratio * hj)
        if max_step is not None:
            # order j + 1 extrapolates a degree-j polynomial: allow it up to max_step / j.
            ok = ok & (h <= max_step / j)
        p = p + ok.astype(jnp.int32)
    return p


def _lam(grid, i):
    return grid.lam[jnp.maximum(i, 0)]


# ----------------------------------------------------------------------------------------
# Coefficient functions: (grid, schedule, i, p) -> (a, [c_0..c_{p-1}]) for static p.
# ----------------------------------------------------------------------------------------
def _dpm_coeffs(data_pred: bool, solver_type: str, third_order: str = "exact") -> Callable:
    """DPM-Solver (noise) / DPM-Solver++ (data) multistep, orders 1-3.

    Third order: with D2 = (D1_0 - D1_1) / (r0 + r1) = h^2 m''/2 + O(h^3), the
    exact integral of the quadratic interpolant needs the term -2 phi_3 D2 (phi_3
    = phi_2 / h - 1/2 in the official notation).  The official codes (and the
    DPM-Solver++ paper's 3M formula) use -phi_3 D2, which makes their "third
    order" multistep method second-order accurate; ``third_order="official"``
    reproduces it, ``"exact"`` (default) is the genuine third-order method.
    """
    d2_factor = 2.0 if third_order == "exact" else 1.0

    def coeffs(grid: Grid, schedule, i, p):
        lam_s, lam_t = grid.lam[i], grid.lam[i + 1]
        h = lam_t - lam_s
        a_t, s_t, a_s, s_s = grid.alpha[i + 1], grid.sigma[i + 1], grid.alpha[i], grid.sigma[i]
        if data_pred:
            a = s_t / s_s
            phi1 = jnp.expm1(-h)
            lead = a_t  # coefficient scale of the model terms
            c0 = -a_t * phi1
        else:
            a = jnp.exp(jnp.log(a_t) - jnp.log(a_s))
            phi1 = jnp.expm1(h)
            lead = s_t
            # -sigma_t (e^h - 1) = sigma_t - alpha_t sigma_s / alpha_s: finite at sigma_t = 0.
            c0 = s_t - a_t * s_s / a_s
        c = [c0] + [jnp.zeros_like(c0)] * (p - 1)
        if p == 1:
            return a, c
        h0 = lam_s - _lam(grid, i - 1)
        r0 = _safe(h0 / h)
        if p == 2:
            if solver_type == "dpmsolver":
                k = -0.5 * lead * phi1
            else:  # taylor
                k = (lead * (phi1 / h + 1.0)) if data_pred else (-lead * (phi1 / h - 1.0))
            c[0] = c[0] + k / r0
            c[1] = c[1] - k / r0
            return a, c
        h1 = _lam(grid, i - 1) - _lam(grid, i - 2)
        r1 = _safe(h1 / h)
        if data_pred:
            phi2 = phi1 / h + 1.0
            phi3 = phi2 / h - 0.5
            k1, k2 = lead * phi2, -d2_factor * lead * phi3  # x += k1 D1 + k2 D2
        else:
            phi2 = phi1 / h - 1.0
            phi3 = phi2 / h - 0.5
            k1, k2 = -lead * phi2, -d2_factor * lead * phi3
        # D1 = D1_0 + r0/(r0+r1) (D1_0 - D1_1), D2 = (D1_0 - D1_1)/(r0+r1),
        # D1_0 = (m0 - m1)/r0, D1_1 = (m1 - m2)/r1.
        w0 = k1 * (1.0 + r0 / (r0 + r1)) + k2 / (r0 + r1)  # coefficient of D1_0
        w1 = -k1 * r0 / (r0 + r1) - k2 / (r0 + r1)  # coefficient of D1_1
        c[0] = c[0] + w0 / r0
        c[1] = c[1] - w0 / r0 + w1 / r1
        c[2] = c[2] - w1 / r1
        return a, c

    return coeffs


def _unipc_b(hh, p: int, variant: str):
    """UniPC's B(h) and the vector b_k = h phi_k(hh) k! / B(h), k = 1..p
    (Zhao et al. 2023, Eq. 7 / official recursion)."""
    b_h = hh if variant == "bh1" else jnp.expm1(hh)
    h_phi_1 = jnp.expm1(hh)
    h_phi_k = h_phi_1 / hh - 1.0
    fact = 1.0
    b = []
    for k in range(1, p + 1):
        b.append(h_phi_k * fact / b_h)
        fact *= k + 1
        h_phi_k = h_phi_k / hh - 1.0 / fact
    return b_h, h_phi_1, b


def _solve_small(rks, b, size: int):
    """Solve R rho = b with R[k, j] = rks[j]^k, k, j < size (Cramer/elimination on scalars)."""
    mat = [[rks[j] ** k for j in range(size)] for k in range(size)]
    rhs = list(b[:size])
    # Gaussian elimination without pivoting on a Vandermonde system with distinct nodes.
    for col in range(size):
        piv = mat[col][col]
        for row in range(col + 1, size):
            f = mat[row][col] / piv
            mat[row] = [mat[row][j] - f * mat[col][j] for j in range(size)]
            rhs[row] = rhs[row] - f * rhs[col]
    sol = [None] * size
    for row in reversed(range(size)):
        acc = rhs[row]
        for j in range(row + 1, size):
            acc = acc - mat[row][j] * sol[j]
        sol[row] = acc / mat[row][row]
    return sol


def _unipc_coeffs(data_pred: bool, variant: str, official_rhos: bool = False):
    """Returns (predictor_coeffs, corrector_coeffs) for UniPC.

    The official code replaces two of the linear solves by the constant 1/2 (the
    order-2 predictor and the order-1 corrector).  That is right to leading order
    in h only: for bh1 at large h the corrector weight B(h) rho = h/2 grows without
    bound, where the exact weight of the new point in the integral of the linear
    interpolant is (h - 1 + e^{-h}) / h < 1.  ``official_rhos=False`` solves the
    systems (exact for the interpolating polynomial at any h; B(h) then cancels);
    ``True`` uses the official constants.  :func:`unipc` picks per variant."""

    def common(grid, i, p):
        lam_s, lam_t = grid.lam[i], grid.lam[i + 1]
        h = lam_t - lam_s
        a_t, s_t, a_s, s_s = grid.alpha[i + 1], grid.sigma[i + 1], grid.alpha[i], grid.sigma[i]
        hh = -h if data_pred else h
        b_h, h_phi_1, b = _unipc_b(hh, p, variant)
        if data_pred:
            a, lead = s_t / s_s, a_t
            c0 = -lead * h_phi_1
        else:
            a, lead = jnp.exp(jnp.log(a_t) - jnp.log(a_s)), s_t
            c0 = s_t - a_t * s_s / a_s  # = -sigma_t (e^h - 1), finite at sigma_t = 0
        rks = [_safe((_lam(grid, i - j) - lam_s) / h) for j in range(1, p)]
        return a, lead, c0, b_h, b, rks

    def predictor(grid, schedule, i, p):
        a, lead, c0, b_h, b, rks = common(grid, i, p)
        c = [c0] + [jnp.zeros_like(c0)] * (p - 1)
        if p == 1:
            return a, c
        if p == 2 and official_rhos:
            rhos = [jnp.full_like(c0, 0.5)]
        else:
            rhos = _solve_small(rks + [1.0], b, p - 1)
        for j in range(1, p):  # D1_j = (m_j - m_0) / r_j
            w = -lead * b_h * rhos[j - 1] / rks[j - 1]
            c[j] = c[j] + w
            c[0] = c[0] - w
        return a, c

    def corrector(grid, schedule, i, p):
        a, lead, c0, b_h, b, rks = common(grid, i, p)
        c = [c0] + [jnp.zeros_like(c0)] * (p - 1)
        if p == 1 and official_rhos:
            rhos = [jnp.full_like(c0, 0.5)]
        else:
            rhos = _solve_small(rks + [jnp.ones_like(c0)], b, p)
        for j in range(1, p):
            w = -lead * b_h * rhos[j - 1] / rks[j - 1]
            c[j] = c[j] + w
            c[0] = c[0] - w
        w_new = -lead * b_h * rhos[-1]
        c[0] = c[0] - w_new
        return a, c, w_new

    return predictor, corrector


_GL = {k: np.polynomial.legendre.leggauss(k) for k in (4, 16)}


def _lagrange_integrals(nodes, lo, hi, f_of_u, n_quad: int = 16):
    """int_lo^hi ell_j(f(u)) du for the Lagrange basis ell_j on ``nodes``, by
    ``n_quad``-point Gauss-Legendre quadrature in u (4 points are exact when f is
    the identity and the basis has degree <= 7)."""
    gx, gw = _GL[n_quad]
    u = 0.5 * (hi + lo) + 0.5 * (hi - lo) * jnp.asarray(gx, dtype=jnp.result_type(lo))
    w = 0.5 * (hi - lo) * jnp.asarray(gw, dtype=jnp.result_type(lo))
    z = f_of_u(u)
    out = []
    for j, nj in enumerate(nodes):
        ell = jnp.ones_like(z)
        for k, nk in enumerate(nodes):
            if k != j:
                ell = ell * (z - nk) / _safe(nj - nk)
        out.append(jnp.sum(w * ell))
    return out


def _deis_tab_coeffs(grid: Grid, schedule, i, p):
    """DEIS tAB: x_{i+1}/alpha_{i+1} = x_i/alpha_i + int eps_poly(t) dsigma_tilde, eps
    extrapolated by the Lagrange polynomial in t through t_i, ..., t_{i-p+1}."""
    st = grid.sigma_tilde
    a_t = grid.alpha[i + 1]
    a = a_t / grid.alpha[i]
    nodes = [grid.t[jnp.maximum(i - j, 0)] for j in range(p)]
    if p == 1:
        return a, [a_t * (st[i + 1] - st[i])]
    ints = _lagrange_integrals(nodes, st[i], st[i + 1], lambda u: schedule.t_from_lambda(-jnp.log(u)))
    return a, [a_t * v for v in ints]


_AB = {1: [1.0], 2: [1.5, -0.5], 3: [23 / 12, -16 / 12, 5 / 12], 4: [55 / 24, -59 / 24, 37 / 24, -9 / 24]}


def _ipndm_coeffs(grid: Grid, schedule, i, p):
    """iPNDM: fixed-step Adams-Bashforth coefficients on eps in sigma_tilde."""
    st = grid.sigma_tilde
    a_t = grid.alpha[i + 1]
    dst = st[i + 1] - st[i]
    return a_t / grid.alpha[i], [a_t * dst * b for b in _AB[p]]


def _ipndm_v_coeffs(grid: Grid, schedule, i, p):
    """iPNDM_v: variable-step Adams-Bashforth in sigma_tilde (exact integral of
    the Lagrange polynomial of eps through the past nodes)."""
    st = grid.sigma_tilde
    a_t = grid.alpha[i + 1]
    a = a_t / grid.alpha[i]
    if p == 1:
        return a, [a_t * (st[i + 1] - st[i])]
    nodes = [st[jnp.maximum(i - j, 0)] for j in range(p)]
    ints = _lagrange_integrals(nodes, st[i], st[i + 1], lambda u: u, n_quad=4)
    return a, [a_t * v for v in ints]


def _ipndm_v_diff_sampler_coeffs(grid: Grid, schedule, i, p):
    """iPNDM_v with diff-sampler's published coefficients (its ``ipndm_v_sampler``).
    Order 2 is exact variable-step AB2; its order-3/4 formulas are not exact
    variable-step AB (with equal steps its order 4 gives (57, -65, 43, -11)/24)
    -- kept only to compare with numbers computed by that toolbox."""
    st = grid.sigma_tilde
    a_t = grid.alpha[i + 1]
    a = a_t / grid.alpha[i]
    hn = st[i + 1] - st[i]
    if p == 1:
        return a, [a_t * hn]

    def h(j):  # h_{n-j} = st[i-j+1] - st[i-j]
        return _safe(st[jnp.maximum(i - j + 1, 0)] - st[jnp.maximum(i - j, 0)])

    h1 = h(1)
    ab2 = [(2.0 + hn / h1) / 2.0, -(hn / h1) / 2.0]
    if p == 2:
        return a, [a_t * hn * c for c in ab2]
    h2 = h(2)
    # diff-sampler's expression, with its operator precedence: 1 - (((hn / (3 (hn + h1))) * hn (hn + h1)) / (h1 (h1 + h2)))
    t1 = (1.0 - hn / (3.0 * (hn + h1)) * (hn * (hn + h1)) / (h1 * (h1 + h2))) / 2.0
    if p == 3:
        cs = [ab2[0] + t1, ab2[1] - (1.0 + h1 / h2) * t1, t1 * h1 / h2]
        return a, [a_t * hn * c for c in cs]
    h3 = h(3)
    t2 = ((1.0 - hn / (3.0 * (hn + h1))) / 2.0 + (1.0 - hn / (2.0 * (hn + h1))) * hn / (6.0 * (hn + h1 + h2))) \
        * (hn * (hn + h1) * (hn + h1 + h2)) / (h1 * (h1 + h2) * (h1 + h2 + h3))
    q = h1 * (h1 + h2) / (h2 * (h2 + h3))
    cs = [ab2[0] + t1 + t2,
          ab2[1] - (1.0 + h1 / h2) * t1 - (1.0 + h1 / h2 + q) * t2,
          t1 * h1 / h2 + (h1 / h2 + q * (1.0 + h2 / h3)) * t2,
          -t2 * q * h1 / h2]
    return a, [a_t * hn * c for c in cs]


# ----------------------------------------------------------------------------------------
# The engine
# ----------------------------------------------------------------------------------------
def _check(name, order, max_order, max_step_ratio, max_step=None):
    if not isinstance(order, (int, np.integer)) or not 1 <= order <= max_order:
        raise ValueError(f"{name}: order must be an integer in 1..{max_order}, got {order!r}")
    if max_step_ratio is not None and not max_step_ratio > 0:
        raise ValueError(f"{name}: max_step_ratio must be positive or None, got {max_step_ratio!r}")
    if max_step is not None and not max_step > 0:
        raise ValueError(f"{name}: max_step must be positive or None, got {max_step!r}")


def linear_multistep(name: str, view: str, order: int, coeff_fn: Callable, *, corrector_fn: Optional[Callable] = None,
                     step_variable: str = "lam", lower_order_final: bool = True,
                     lower_order_final_below: Optional[int] = None, max_step_ratio: Optional[float] = None,
                     max_step: Optional[float] = None, safeguard_variable: Optional[str] = None,
                     afs: bool = False, declared_order: Optional[int] = None) -> Solver:
    """Build a multistep Solver from a coefficient function (see module doc).
    NFE = n_steps (+1 with a final denoise, -1 with AFS)."""
    k = order

    def init(model, grid, x):
        m0 = initial_output(model, grid, x, view, afs)
        hist = jnp.zeros((k,) + x.shape, x.dtype).at[0].set(m0)
        return MultistepState(x=x, hist=hist)

    def step_order(grid, i):
        """(order from warm-up and lower-order-final, order after the safeguard) of step i:
        what :func:`step` uses (and :func:`samplax.solvers.effective_orders` reports)."""
        n = grid.n_steps
        p_static = jnp.asarray(static_orders(n, order, lower_order_final, lower_order_final_below,
                                             grid.ends_at_zero and step_variable == "lam"))[i]
        p = p_static
        if max_step_ratio is not None or max_step is not None:
            v = {"lam": grid.lam, "sigma_tilde": grid.sigma_tilde, "t": grid.t}[safeguard_variable or step_variable]
            ratio = jnp.inf if max_step_ratio is None else max_step_ratio
            p = jnp.minimum(p, _safeguard_order(v, i, order, ratio, max_step))
        return p_static, p

    def step(model, grid, state, i, keys, last):
        n = grid.n_steps
        _, p = step_order(grid, i)
        schedule = model.schedule
        zero_last = last and grid.ends_at_zero and step_variable == "lam"
        orders = [1] if zero_last else list(range(1, k + 1))

        def combine(coef_list, with_new=None):
            a_s, c_s = [], []
            for q, co in zip(orders, coef_list):
                a_q, c_q = co[0], co[1]
                a_s.append(a_q)
                c_s.append(jnp.stack([jnp.asarray(c, a_q.dtype) for c in c_q] + [jnp.zeros_like(a_q)] * (k - q)))
            sel = jnp.clip(p - 1, 0, len(orders) - 1)
            a_sel = jnp.stack(a_s)[sel]
            c_sel = jnp.stack(c_s)[sel]
            return a_sel, c_sel

        pred = [coeff_fn(grid, schedule, i, q) for q in orders]
        a, c = combine(pred)
        x = state.x
        x_new = bcast(a, x).astype(x.dtype) * x + jnp.tensordot(c.astype(x.dtype), state.hist, axes=1)
        if last:
            return MultistepState(x=x_new, hist=state.hist)
        t_next = grid.t[i + 1]
        m_new = evaluate(model, view, x_new, t_next)
        if corrector_fn is not None:
            corr = [corrector_fn(grid, schedule, i, q) for q in orders]
            a_c, c_c = combine([(co[0], co[1]) for co in corr])
            w_new = jnp.stack([co[2] for co in corr])[jnp.clip(p - 1, 0, len(orders) - 1)]
            x_corr = (bcast(a_c, x).astype(x.dtype) * x + jnp.tensordot(c_c.astype(x.dtype), state.hist, axes=1)
                      + w_new.astype(x.dtype) * m_new)
            if grid.ends_at_zero and lower_order_final:
                # The step into t_min is the final integration step (the next is the denoising
                # jump): like the official last step it is not corrected.
                x_new = jnp.where(i == n - 2, x_new, x_corr)
            else:
                x_new = x_corr
        hist = jnp.concatenate([m_new[None], state.hist[:-1]], 0)
        return MultistepState(x=x_new, hist=hist)

    def nfe(n_steps, end):
        return n_steps + (1 if end == "denoise" else 0) - (1 if afs else 0)

    def table(grid, schedule):
        """The coefficients :func:`step` computes, for all steps at once (see
        :mod:`samplax.solvers.unified`)."""
        from samplax.solvers.unified import multistep_table
        n = grid.n_steps
        idx = jnp.arange(n)
        orders = jax.vmap(lambda i: step_order(grid, i)[1])(idx)
        corrected = None
        if corrector_fn is not None:
            corrected = idx < n - 1
            if grid.ends_at_zero and lower_order_final:
                corrected = corrected & (idx != n - 2)
        return multistep_table(coeff_fn, grid, schedule, k, view, orders, corrector_fn=corrector_fn,
                               corrected=corrected, afs=afs)

    return Solver(name=name, init=init, step=step, nfe=nfe, order=declared_order or order, min_steps=order,
                  view=view, step_orders=step_order, table=table)


# ----------------------------------------------------------------------------------------
# Factories
# ----------------------------------------------------------------------------------------
def dpm_solver_multistep(order: int = 2, solver_type: Literal["dpmsolver", "taylor"] = "dpmsolver",
                         third_order: Literal["exact", "official"] = "exact",
                         lower_order_final: bool = True,
                         lower_order_final_below: Optional[int] = None, max_step_ratio: Optional[float] = SAFEGUARD_RATIO,
                         max_step: Optional[float] = SAFEGUARD_MAX_STEP,
                         afs: bool = False) -> Solver:
    """Multistep DPM-Solver in noise prediction (Lu et al. 2022), orders 1-3.
    NFE = steps (+1 denoise, -1 AFS).  ``lower_order_final_below=10``,
    ``max_step_ratio=None`` and ``third_order="official"`` reproduce the official
    code (see :func:`_dpm_coeffs` on its third-order coefficient)."""
    check_options(dpm_solver_multistep, locals())
    _check("dpm_solver_multistep", order, 3, max_step_ratio, max_step)
    return linear_multistep(f"dpm_solver_multistep{order}", "noise", order, _dpm_coeffs(False, solver_type, third_order),
                            lower_order_final=lower_order_final, lower_order_final_below=lower_order_final_below,
                            max_step_ratio=max_step_ratio, max_step=max_step, afs=afs)


def dpm_solver_pp(order: int = 2, solver_type: Literal["dpmsolver", "taylor"] = "dpmsolver",
                  third_order: Literal["exact", "official"] = "exact",
                  lower_order_final: bool = True,
                  lower_order_final_below: Optional[int] = None, max_step_ratio: Optional[float] = SAFEGUARD_RATIO,
                  max_step: Optional[float] = SAFEGUARD_MAX_STEP,
                  afs: bool = False) -> Solver:
    """DPM-Solver++ multistep (2M, 3M) in data prediction (Lu et al. 2022b, Alg. 2).
    NFE = steps (+1 denoise, -1 AFS)."""
    check_options(dpm_solver_pp, locals())
    _check("dpm_solver_pp", order, 3, max_step_ratio, max_step)
    return linear_multistep(f"dpm_solver_pp{order}m", "data", order, _dpm_coeffs(True, solver_type, third_order),
                            lower_order_final=lower_order_final, lower_order_final_below=lower_order_final_below,
                            max_step_ratio=max_step_ratio, max_step=max_step, afs=afs)


def ddim(afs: bool = False) -> Solver:
    """Deterministic DDIM (Song et al. 2021) = DPM-Solver-1 = DPM-Solver++-1, in
    data-prediction form (finite at sigma = 0).  NFE = steps (+1 denoise, -1 AFS).
    For eta > 0 see :func:`samplax.solvers.sde.ddim_eta`."""
    check_options(ddim, locals())
    return linear_multistep("ddim", "data", 1, _dpm_coeffs(True, "dpmsolver"), max_step_ratio=None, afs=afs)


def unipc(order: int = 2, variant: Literal["bh1", "bh2"] = "bh2",
          prediction: Literal["data", "noise"] = "data", corrector: bool = True,
          official_rhos: Optional[bool] = None, lower_order_final: bool = True, lower_order_final_below: Optional[int] = None,
          max_step_ratio: Optional[float] = SAFEGUARD_RATIO,
          max_step: Optional[float] = SAFEGUARD_MAX_STEP, afs: bool = False) -> Solver:
    """UniPC (Zhao et al. 2023): UniP-``order`` predictor, optionally with the UniC
    corrector (which reuses the next step's model evaluation, so NFE = steps
    (+1 denoise, -1 AFS) either way; no corrector after the last step).
    ``variant``: 'bh1' (B(h) = h) or 'bh2' (B(h) = e^h - 1).  ``official_rhos``:
    use the official code's constant 1/2 weights (default: yes for bh2, no for
    bh1, whose constants over-weight long steps; with solved weights bh1 = bh2).
    ``official_rhos=True, max_step_ratio=None, max_step=None`` reproduce the
    official code (see :func:`_unipc_coeffs`)."""
    check_options(unipc, locals())
    _check("unipc", order, 3, max_step_ratio, max_step)
    if official_rhos is None:
        # bh2: the official constants (more accurate than exact solves on our problems);
        # bh1: its constants over-weight long steps (see _unipc_coeffs), so solve.
        official_rhos = variant == "bh2"
    pred, corr = _unipc_coeffs(prediction == "data", variant, official_rhos)
    return linear_multistep(f"unipc_{variant}_{order}{'' if corrector else '_nocorr'}", prediction, order, pred,
                            corrector_fn=corr if corrector else None, lower_order_final=lower_order_final,
                            lower_order_final_below=lower_order_final_below, max_step_ratio=max_step_ratio, max_step=max_step,
                            afs=afs, declared_order=order + 1 if corrector else order)


def deis(order: int = 3, lower_order_final: bool = False, max_step_ratio: Optional[float] = SAFEGUARD_RATIO,
         max_step: Optional[float] = SAFEGUARD_MAX_STEP,
         afs: bool = False) -> Solver:
    """DEIS tAB (Zhang & Chen 2023), orders 1-4.  NFE = steps (+1 denoise, -1 AFS)."""
    check_options(deis, locals())
    _check("deis", order, 4, max_step_ratio, max_step)
    return linear_multistep(f"deis_tab{order}", "noise", order, _deis_tab_coeffs, step_variable="t", safeguard_variable="lam",
                            lower_order_final=lower_order_final, max_step_ratio=max_step_ratio, max_step=max_step, afs=afs)


def ipndm(order: int = 4, lower_order_final: bool = False, max_step_ratio: Optional[float] = None,
          afs: bool = False) -> Solver:
    """iPNDM (Zhang & Chen 2023; Zhou et al. 2024): fixed-step Adams-Bashforth on eps
    in sigma_tilde, orders 1-4 with lower-order warm start.  NFE = steps (+1 denoise, -1 AFS)."""
    check_options(ipndm, locals())
    _check("ipndm", order, 4, max_step_ratio)
    return linear_multistep(f"ipndm{order}", "noise", order, _ipndm_coeffs, step_variable="sigma_tilde",
                            lower_order_final=lower_order_final, max_step_ratio=max_step_ratio, afs=afs)


def ipndm_v(order: int = 4, coefficients: Literal["exact", "diff_sampler"] = "exact", lower_order_final: bool = False,
            max_step_ratio: Optional[float] = None, afs: bool = False) -> Solver:
    """iPNDM_v: variable-step Adams-Bashforth on eps in sigma_tilde, orders 1-4.
    ``coefficients="exact"``: the exact variable-step AB weights (order p);
    ``"diff_sampler"``: that toolbox's published weights (see
    :func:`_ipndm_v_diff_sampler_coeffs`).  NFE = steps (+1 denoise, -1 AFS)."""
    check_options(ipndm_v, locals())
    _check("ipndm_v", order, 4, max_step_ratio)
    fn = _ipndm_v_coeffs if coefficients == "exact" else _ipndm_v_diff_sampler_coeffs
    return linear_multistep(f"ipndm_v{order}" + ("" if coefficients == "exact" else "_ds"), "noise", order, fn,
                            step_variable="sigma_tilde", lower_order_final=lower_order_final,
                            max_step_ratio=max_step_ratio, afs=afs)

