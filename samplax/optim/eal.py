"""Equality-constrained optimisation: an inexact Newton (SQP) method whose Newton
systems are solved by randomized iterative sketching, globalised by line search
on the exact augmented Lagrangian; and a quadratic-penalty baseline.

Problem: ``min_x f(x)  s.t.  c(x) = 0`` (f: R^n -> R, c: R^n -> R^m smooth).

Following Hong, Na, Mahoney and Kolar, "Constrained Optimization via Exact
Augmented Lagrangian and Randomized Iterative Sketching" (ICML 2023, arXiv
2305.18379; the method is called AdaSketch-Newton there):

* Lagrangian ``L(x, l) = f(x) + l^T c(x)``, KKT residual
  ``g = (grad_x L, c)``; the Newton (SQP) system

      K z = -g,   K = [[H, G^T], [G, 0]],  H = hess_x L,  G = jac c,

  is solved *inexactly* by a randomized iterative sketching solver
  (sketch-and-project, Gower & Richtarik 2015: ``z <- z - K^T S (S^T K K^T S)^+ S^T (K z - b)``
  with S a random block of coordinate vectors drawn proportional to squared row
  norms = randomized block Kaczmarz, or a Gaussian sketch), stopped by an adaptive
  accuracy condition ``||K z + g|| <= theta_k ||g||``.  Sharpening
  ``theta_k -> 0`` (here ``theta_k = theta * min(1, ||g_k||)^accuracy_power``)
  is the paper's route from local linear to superlinear convergence (abstract);
  a fixed theta gives a linear local rate of about theta.
* merit function: the exact augmented Lagrangian (after Bertsekas / Di Pillo &
  Grippo; the form used in Na, Anitescu & Kolar's earlier stochastic SQP papers)

      L_{mu,nu}(x, l) = L(x, l) + mu/2 ||c(x)||^2 + nu/2 ||grad_x L(x, l)||^2,

  whose stationary points with mu large enough are the KKT points.  Its
  directional derivative along z is affine in mu,
  ``D(mu) = d0 + mu c^T G dx`` (``= grad L^T dx + c^T dl - nu ||grad_x L||^2 - mu ||c||^2``
  for an exact solve), so the penalty ``mu`` is raised (by at least the factor
  ``rho``) until the direction is a sufficient descent direction,
  ``D(mu) <= -gamma (nu ||grad_x L||^2 + mu ||c||^2)``; if no mu can do it
  (the sketch left too large a residual in the linearised constraints) the
  accuracy is tightened (theta /= 10) and the sketch continues from its iterate
  -- our form of the paper's joint adaptive control of accuracy and penalty.
  Last resort: the negative merit gradient.
* Armijo backtracking on ``L_{mu,nu}`` (unit step tried first: the paper shows
  the unit step is accepted near a solution, so the local rate is the inexact
  Newton rate).

This is our implementation from the paper's description (only its abstract and
summaries could be read here, so no equation numbers are cited), not its code;
the descent test, the constants (gamma, rho, theta, nu) and the sharpening rule are ours.

:func:`penalty_method` is the baseline: ``min f + mu/2 ||c||^2`` for increasing
mu, inner solves by optax L-BFGS, multiplier estimate ``mu c(x)``.
"""
from __future__ import annotations

import math
import time
from typing import Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax

SKETCHES = ("kaczmarz", "gaussian", "exact")


class SketchResult(NamedTuple):
    z: jnp.ndarray
    iterations: jnp.ndarray   # sketch-and-project iterations taken
    residual: jnp.ndarray     # ||K z - b||


class ConstrainedResult(NamedTuple):
    x: jnp.ndarray
    lam: jnp.ndarray
    history: dict             # lists per outer iteration (see the solvers' docs)
    converged: bool
    iterations: int
    seconds: float


# ----------------------------------------------------------------------------------------
# Randomized iterative sketching for K z = b
# ----------------------------------------------------------------------------------------
def _check_pos_int(name, v, lo=1):
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < lo:
        raise ValueError(f"{name}: must be an integer >= {lo}, got {v!r}")


def _check_pos_float(name, v, allow_zero=False):
    ok = not isinstance(v, bool) and isinstance(v, (int, float, np.floating)) and math.isfinite(float(v))
    if not ok or (v < 0 if allow_zero else v <= 0):
        raise ValueError(f"{name}: must be a finite number {'>= 0' if allow_zero else '> 0'}, got {v!r}")


def _sketch_loop(K, b, key, z0, tol, max_iter, block, sketch):
    """lax.while_loop of sketch-and-project steps until ||K z - b|| <= tol."""
    N = K.shape[0]
    dt = K.dtype
    row_w = jnp.sum(K * K, axis=1)
    probs = row_w / jnp.maximum(jnp.sum(row_w), jnp.finfo(dt).tiny)

    def residual(z):
        return K @ z - b

    def cond(s):
        z, it, rn, _ = s
        return (rn > tol) & (it < max_iter)

    def body(s):
        z, it, _, key = s
        key, sub = jax.random.split(key)
        r = residual(z)
        if sketch == "kaczmarz":
            idx = jax.random.choice(sub, N, (block,), replace=False, p=probs)
            M, rs = K[idx], r[idx]                      # S^T K, S^T r for coordinate S
        else:
            S = jax.random.normal(sub, (N, block), dt)
            M, rs = S.T @ K, S.T @ r
        gram = M @ M.T
        gram = gram + (1e-12 * jnp.trace(gram) / block + jnp.finfo(dt).tiny) * jnp.eye(block, dtype=dt)
        y = jnp.linalg.solve(gram, rs)
        z = z - M.T @ y                                  # projection onto {z: S^T K z = S^T b}
        return z, it + 1, jnp.linalg.norm(residual(z)), key

    r0 = jnp.linalg.norm(residual(z0))
    z, it, rn, _ = jax.lax.while_loop(cond, body, (z0, jnp.zeros((), jnp.int32), r0, key))
    return SketchResult(z, it, rn)


_sketch_jit = jax.jit(_sketch_loop, static_argnames=("max_iter", "block", "sketch"))


def sketch_solve(K, b, key, z0=None, tol: float = 1e-10, max_iter: int = 10_000, block: Optional[int] = None,
                 sketch: str = "kaczmarz") -> SketchResult:
    """Solve the square system ``K z = b`` by randomized sketch-and-project
    (Euclidean projection onto the sketched equations ``S^T K z = S^T b``),
    stopping when ``||K z - b|| <= tol`` (absolute) or after ``max_iter`` steps.

    ``sketch``: ``"kaczmarz"`` (S = ``block`` distinct coordinate vectors drawn
    proportional to the squared row norms of K: randomized block Kaczmarz; block 1
    is Strohmer-Vershynin's randomized Kaczmarz), ``"gaussian"`` (S an N x block
    standard normal matrix) or ``"exact"`` (a dense LU solve, one "iteration").
    For a nonsingular K every variant converges linearly in expectation to K^{-1} b
    (Gower & Richtarik 2015, Thm 4.6)."""
    K = jnp.asarray(K)
    b = jnp.asarray(b, K.dtype)
    if K.ndim != 2 or K.shape[0] != K.shape[1]:
        raise ValueError(f"K: must be a square matrix, got shape {K.shape}")
    if b.shape != (K.shape[0],):
        raise ValueError(f"b: must have shape ({K.shape[0]},), got {b.shape}")
    if sketch not in SKETCHES:
        raise ValueError(f"sketch: unknown sketch {sketch!r}; allowed: {list(SKETCHES)}")
    _check_pos_int("max_iter", max_iter)
    _check_pos_float("tol", tol, allow_zero=True)
    N = K.shape[0]
    block = default_block(N) if block is None else block
    _check_pos_int("block", block)
    if block > N:
        raise ValueError(f"block: must be <= the system size {N}, got {block}")
    z0 = jnp.zeros((N,), K.dtype) if z0 is None else jnp.asarray(z0, K.dtype)
    if sketch == "exact":
        z = jnp.linalg.solve(K, b)
        return SketchResult(z, jnp.ones((), jnp.int32), jnp.linalg.norm(K @ z - b))
    return _sketch_jit(K, b, key, z0, jnp.asarray(tol, K.dtype), max_iter, block, sketch)


def default_block(N: int) -> int:
    """Sketch size used when none is given: half the system (at least 1).  Measured
    on the coefficient-learning KKT systems here (N = 26, ill-conditioned): a
    quarter of the rows left the sketch at its iteration cap at every Newton
    step, half of them reached the tolerance in ~11 Newton steps."""
    return max(1, N // 2)


# ----------------------------------------------------------------------------------------
# The problem's derivatives
# ----------------------------------------------------------------------------------------
class _Problem:
    def __init__(self, f: Callable, c: Callable):
        def lag(x, lam):
            return f(x) + jnp.dot(lam, c(x))

        def gx(x, lam):
            return jax.grad(lag)(x, lam)

        def merit(x, lam, mu, nu):
            cx = c(x)
            g = gx(x, lam)
            return lag(x, lam) + 0.5 * mu * jnp.dot(cx, cx) + 0.5 * nu * jnp.dot(g, g)

        def kkt_parts(x, lam):
            return gx(x, lam), c(x), jax.hessian(lag)(x, lam), jax.jacfwd(c)(x)

        self.c = jax.jit(c)
        self.kkt_parts = jax.jit(kkt_parts)
        self.merit = jax.jit(merit)


def _merit_grad(gx, cx, H, G, mu, nu):
    """Gradient of the exact augmented Lagrangian from the KKT parts (H the exact
    Hessian of L): (grad_x L + mu G^T c + nu H grad_x L,  c + nu G grad_x L)."""
    return gx + mu * (G.T @ cx) + nu * (H @ gx), cx + nu * (G @ gx)


def _as_vector(name, v, dtype=None):
    a = jnp.asarray(v, dtype)
    if a.ndim != 1 or a.shape[0] < 1:
        raise ValueError(f"{name}: must be a non-empty 1-D array, got shape {a.shape}")
    if not jnp.issubdtype(a.dtype, jnp.floating):
        a = a.astype(jnp.result_type(float))
    return a


def kkt_residual(f: Callable, c: Callable, x, lam) -> float:
    """||(grad_x L(x, lam), c(x))||: zero exactly at a KKT point."""
    lag = lambda x_, l_: f(x_) + jnp.dot(l_, c(x_))  # noqa: E731
    g = jax.grad(lag)(x, lam)
    cx = c(x)
    return float(jnp.sqrt(jnp.dot(g, g) + jnp.dot(cx, cx)))


def _inertia_shift(H, G, max_tries: int = 12) -> float:
    """Smallest delta in {0, 1e-4 s, 1e-3 s, ...} with inertia(K(delta)) = (n, m)
    (dense eigenvalues: for the small systems this solver is meant for)."""
    n, m = H.shape[0], G.shape[0]
    Hn, Gn = np.asarray(H, np.float64), np.asarray(G, np.float64)
    s = max(1.0, float(np.max(np.abs(Hn))))
    delta = 0.0
    for k in range(max_tries):
        K = np.block([[Hn + delta * np.eye(n), Gn.T], [Gn, np.zeros((m, m))]])
        ev = np.linalg.eigvalsh(K)
        tol = 1e-12 * max(1.0, float(np.max(np.abs(ev))))
        if int(np.sum(ev > tol)) == n and int(np.sum(ev < -tol)) == m:
            return delta
        delta = 1e-4 * s * 10.0 ** k
    return delta


# ----------------------------------------------------------------------------------------
# Exact augmented Lagrangian + sketching
# ----------------------------------------------------------------------------------------
def eal_sketch_solve(f: Callable, c: Callable, x0, lam0=None, *, key=None, tol: float = 1e-8,
                     max_iter: int = 100, sketch: str = "kaczmarz", block: Optional[int] = None,
                     theta: float = 0.5, accuracy_power: float = 1.0, max_sketch_iter: int = 20_000,
                     mu: float = 1.0, nu: float = 1e-4, rho: float = 10.0, gamma: float = 0.5,
                     armijo: float = 1e-4, backtrack: float = 0.5, max_backtracks: int = 40,
                     hessian_shift=0.0, equilibrate: bool = True,
                     callback: Optional[Callable] = None) -> ConstrainedResult:
    """Solve ``min f(x) s.t. c(x) = 0`` from ``x0`` (multipliers ``lam0``, default 0).

    Each iteration: KKT parts (grad_x L, c, hess_x L by ``jax.hessian``, G by
    ``jax.jacfwd``); sketch the Newton system ``K z = -g`` to the accuracy
    ``||K z + g|| <= theta_k ||g||`` with ``theta_k = theta * min(1, ||g||)^accuracy_power``
    (``sketch="exact"``: a dense solve); raise ``mu`` / tighten the accuracy until
    ``z`` is a sufficient descent direction of the exact augmented Lagrangian;
    Armijo backtracking on it.  Stops when ``||g|| <= tol``.

    ``hessian_shift``: B = H + delta I replaces H in K (the paper allows any B
    that is positive definite on the null space of G); a number is delta,
    ``"auto"`` is an inertia correction (as in interior-point codes): delta = 0
    when K has n positive and m negative eigenvalues (= H positive definite on
    null(G) for a full-rank G), else the smallest of 1e-4 s, 1e-3 s, ... (s =
    max(1, max |H_ij|)) that gives that inertia.  Near a strict local minimum
    (second-order sufficient conditions) delta = 0, so the local Newton rate is
    kept; far from it the shift keeps the step a descent direction.
    ``equilibrate``: sketch the symmetrically scaled system D K D y = -D g,
    z = D y, D = diag(||K_i||)^{-1/2} (Jacobi-type equilibration; the accuracy
    test is still on the unscaled residual).

    Returns :class:`ConstrainedResult` with ``history`` lists: ``kkt`` (||g|| at
    each iterate, the first at x0), ``feas`` (||c||), ``merit`` (with the mu used),
    ``mu``, ``step`` (accepted step size), ``sketch_iters`` (sketch-and-project
    iterations of the step), ``theta`` (final accuracy of the step), ``fallback``
    (1 where the merit gradient was used), ``shift`` (delta)."""
    _check_pos_float("tol", tol, allow_zero=True)
    _check_pos_int("max_iter", max_iter)
    _check_pos_int("max_sketch_iter", max_sketch_iter)
    _check_pos_int("max_backtracks", max_backtracks)
    if sketch not in SKETCHES:
        raise ValueError(f"sketch: unknown sketch {sketch!r}; allowed: {list(SKETCHES)}")
    for name, v in (("theta", theta), ("mu", mu), ("gamma", gamma), ("armijo", armijo), ("backtrack", backtrack)):
        _check_pos_float(name, v)
    for name, v in (("nu", nu), ("accuracy_power", accuracy_power)):
        _check_pos_float(name, v, allow_zero=True)
    if not (hessian_shift == "auto" or (not isinstance(hessian_shift, bool)
                                        and isinstance(hessian_shift, (int, float)) and hessian_shift >= 0)):
        raise ValueError(f"hessian_shift: must be a number >= 0 or 'auto', got {hessian_shift!r}")
    if not theta < 1:
        raise ValueError(f"theta: the sketch accuracy must be < 1 (a relative residual), got {theta}")
    if not rho > 1:
        raise ValueError(f"rho: the penalty growth factor must be > 1, got {rho}")
    if not (gamma < 1 and armijo < 1 and backtrack < 1):
        raise ValueError(f"gamma, armijo, backtrack: must lie in (0, 1), got {gamma}, {armijo}, {backtrack}")
    if not callable(f) or not callable(c):
        raise ValueError("f, c: must be callables x -> scalar and x -> (m,) constraint values")
    x = _as_vector("x0", x0)
    dt = x.dtype
    m_out = jax.eval_shape(c, x)
    if len(m_out.shape) != 1 or m_out.shape[0] < 1:
        raise ValueError(f"c: must return a 1-D array of m >= 1 constraints, got shape {m_out.shape}")
    m = m_out.shape[0]
    if m > x.shape[0]:
        raise ValueError(f"c: {m} constraints on {x.shape[0]} variables (need m <= n for a regular KKT point)")
    lam = jnp.zeros((m,), dt) if lam0 is None else _as_vector("lam0", lam0, dt)
    if lam.shape != (m,):
        raise ValueError(f"lam0: must have shape ({m},), got {lam.shape}")
    key = jax.random.PRNGKey(0) if key is None else key
    n = x.shape[0]
    N = n + m
    blk = default_block(N) if block is None else block
    _check_pos_int("block", blk)
    if blk > N:
        raise ValueError(f"block: must be <= n + m = {N}, got {blk}")

    P = _Problem(f, c)
    hist = {k: [] for k in ("kkt", "feas", "merit", "mu", "step", "sketch_iters", "theta", "fallback", "shift")}
    t0 = time.perf_counter()
    converged = False
    it = 0
    for it in range(max_iter + 1):
        gx, cx, H, G = P.kkt_parts(x, lam)
        g = jnp.concatenate([gx, cx])
        gn = float(jnp.linalg.norm(g))
        hist["kkt"].append(gn)
        hist["feas"].append(float(jnp.linalg.norm(cx)))
        if callback is not None:
            callback(it, x, lam, gn)
        if not math.isfinite(gn):
            break
        if gn <= tol:
            converged = True
            break
        if it == max_iter:
            break
        H_exact = H
        Zm = jnp.zeros((m, m), dt)
        if hessian_shift == "auto":
            delta = _inertia_shift(H, G)
        else:
            delta = float(hessian_shift)
        if delta > 0:
            H = H + delta * jnp.eye(n, dtype=dt)
        K = jnp.block([[H, G.T], [G, Zm]])
        if equilibrate:
            D = 1.0 / jnp.sqrt(jnp.maximum(jnp.linalg.norm(K, axis=1), jnp.finfo(dt).tiny))
        else:
            D = jnp.ones((N,), dt)
        Ks = D[:, None] * K * D[None, :]
        th = theta * min(1.0, gn) ** accuracy_power
        key, sub = jax.random.split(key)
        y = jnp.zeros((N,), dt)
        total_sk = 0
        direction = None
        gxn2 = float(jnp.dot(gx, gx))
        cn2 = float(jnp.dot(cx, cx))
        for _tighten in range(8):
            sub, s2 = jax.random.split(sub)
            # the scaled residual D (K z + g) is tested against th * min(D) * |g|: it bounds the unscaled one
            res = sketch_solve(Ks, -D * g, s2, z0=y, tol=th * gn * float(jnp.min(D)), max_iter=max_sketch_iter,
                               block=blk, sketch=sketch)
            y = res.z
            z = D * y
            total_sk += int(res.iterations)
            dx, dl = z[:n], z[n:]
            # D(mu) = d0 + mu * e along z (see the module doc)
            mg_x, mg_l = _merit_grad(gx, cx, H_exact, G, 0.0, nu)
            d0 = float(jnp.dot(mg_x, dx) + jnp.dot(mg_l, dl))
            e = float(jnp.dot(cx, G @ dx))
            target_coef = e + gamma * cn2          # need d0 + mu*e <= -gamma*(nu*|gx|^2 + mu*|c|^2)
            rhs = -gamma * nu * gxn2 - d0
            if d0 + mu * e <= -gamma * (nu * gxn2 + mu * cn2):
                direction = (dx, dl)
                break
            if target_coef < 0:
                mu_needed = rhs / target_coef
                mu = max(mu * rho, mu_needed * (1 + 1e-9))
                direction = (dx, dl)
                break
            if sketch == "exact" or int(res.iterations) >= max_sketch_iter:
                break                                # exact already, or the sketch budget is spent
            th = th / 10.0
        fallback = direction is None
        muj, nuj = jnp.asarray(mu, dt), jnp.asarray(nu, dt)
        phi0 = float(P.merit(x, lam, muj, nuj))
        mg_x, mg_l = _merit_grad(gx, cx, H_exact, G, mu, nu)
        if fallback:
            dx, dl = -mg_x, -mg_l
        else:
            dx, dl = direction
        slope = float(jnp.dot(mg_x, dx) + jnp.dot(mg_l, dl))
        if not slope < 0:                            # numerical corner: fall back to steepest descent
            dx, dl, fallback = -mg_x, -mg_l, True
            slope = float(-(jnp.dot(mg_x, mg_x) + jnp.dot(mg_l, mg_l)))
        alpha = 1.0
        # Armijo with a rounding allowance: near a solution the predicted decrease
        # (~ ||g||^2) falls below the merit's float resolution and a strict test rejects
        # every step (measured: stalls at ||g|| ~ 1e-10 in float64).
        slack = 64 * float(jnp.finfo(dt).eps) * max(1.0, abs(phi0))
        for _ in range(max_backtracks):
            phi = float(P.merit(x + alpha * dx, lam + alpha * dl, muj, nuj))
            if math.isfinite(phi) and phi <= phi0 + armijo * alpha * slope + slack:
                break
            alpha *= backtrack
        x = x + alpha * dx
        lam = lam + alpha * dl
        hist["merit"].append(phi0)
        hist["mu"].append(mu)
        hist["step"].append(alpha)
        hist["sketch_iters"].append(total_sk)
        hist["theta"].append(th)
        hist["fallback"].append(int(fallback))
        hist["shift"].append(delta)
    return ConstrainedResult(x=x, lam=lam, history=hist, converged=converged, iterations=it,
                             seconds=time.perf_counter() - t0)


# ----------------------------------------------------------------------------------------
# Baseline: quadratic penalty with increasing mu, L-BFGS inner solves
# ----------------------------------------------------------------------------------------
def _lbfgs_minimize(fun, x0, max_steps: int, gtol: float):
    opt = optax.lbfgs()
    vg = optax.value_and_grad_from_state(fun)

    def step(carry):
        x, state, k = carry
        value, grad = vg(x, state=state)
        updates, state = opt.update(grad, state, x, value=value, grad=grad, value_fn=fun)
        return optax.apply_updates(x, updates), state, k + 1

    def cond(carry):
        x, state, k = carry
        grad = optax.tree_utils.tree_get(state, "grad")
        gn = optax.tree_utils.tree_l2_norm(grad)
        return (k == 0) | ((k < max_steps) & (gn > gtol))

    x, _, k = jax.lax.while_loop(cond, step, (x0, opt.init(x0), jnp.zeros((), jnp.int32)))
    return x, k


def penalty_method(f: Callable, c: Callable, x0, *, mu0: float = 1.0, growth: float = 10.0, outer: int = 8,
                   inner_steps: int = 200, inner_tol: float = 1e-10, tol: float = 1e-8,
                   callback: Optional[Callable] = None) -> ConstrainedResult:
    """Quadratic penalty: for mu = mu0, mu0*growth, ... minimise
    ``f(x) + mu/2 ||c(x)||^2`` by optax L-BFGS (warm started, at most
    ``inner_steps`` iterations or gradient norm <= ``inner_tol``); multipliers
    ``lam = mu c(x)`` (the penalty problem's stationarity condition).  Stops when
    the KKT residual of (x, lam) is <= ``tol`` or after ``outer`` rounds.
    ``history``: ``kkt``, ``feas``, ``f``, ``mu``, ``inner_iters`` per round."""
    _check_pos_float("mu0", mu0)
    _check_pos_int("outer", outer)
    _check_pos_int("inner_steps", inner_steps)
    _check_pos_float("inner_tol", inner_tol, allow_zero=True)
    _check_pos_float("tol", tol, allow_zero=True)
    if not (isinstance(growth, (int, float)) and growth > 1):
        raise ValueError(f"growth: the penalty growth factor must be > 1, got {growth!r}")
    if not callable(f) or not callable(c):
        raise ValueError("f, c: must be callables x -> scalar and x -> (m,) constraint values")
    x = _as_vector("x0", x0)

    def pen(x_, mu_):
        cx = c(x_)
        return f(x_) + 0.5 * mu_ * jnp.dot(cx, cx)

    @jax.jit
    def solve(x_, mu_):
        return _lbfgs_minimize(lambda z: pen(z, mu_), x_, inner_steps, inner_tol)

    lag_grad = jax.jit(jax.grad(lambda x_, l_: f(x_) + jnp.dot(l_, c(x_))))
    cj = jax.jit(c)
    hist = {k: [] for k in ("kkt", "feas", "f", "mu", "inner_iters")}
    t0 = time.perf_counter()
    mu = float(mu0)
    converged = False
    lam = mu * cj(x)
    k = 0
    for k in range(outer):
        x, its = solve(x, jnp.asarray(mu, x.dtype))
        cx = cj(x)
        lam = mu * cx
        gx = lag_grad(x, lam)
        kkt = float(jnp.sqrt(jnp.dot(gx, gx) + jnp.dot(cx, cx)))
        hist["kkt"].append(kkt)
        hist["feas"].append(float(jnp.linalg.norm(cx)))
        hist["f"].append(float(f(x)))
        hist["mu"].append(mu)
        hist["inner_iters"].append(int(its))
        if callback is not None:
            callback(k, x, lam, kkt)
        if kkt <= tol:
            converged = True
            break
        mu *= growth
    return ConstrainedResult(x=x, lam=lam, history=hist, converged=converged, iterations=k + 1,
                             seconds=time.perf_counter() - t0)


__all__ = ["sketch_solve", "eal_sketch_solve", "penalty_method", "kkt_residual", "SketchResult",
           "ConstrainedResult", "SKETCHES", "default_block"]
