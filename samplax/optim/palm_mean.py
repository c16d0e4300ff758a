"""PALM-Mean: epsilon-global minimisation of a GP posterior mean over a box by
spatial branch-and-bound with piecewise-analytic lower bounds.

Tang, Kudva, Tsay & Paulson 2026, "An Efficient Spatial Branch-and-Bound Algorithm
for Global Optimization of Gaussian Process Posterior Mean Functions"
(arXiv:2605.00855).  What the paper does (abstract / method summary): in a
reduced-space spatial B&B over the box (branching on the d inputs only), each
node's lower bound replaces the locally important kernel terms by a *sign-aware*
relaxation in a scalar distance variable and bounds the remaining terms
analytically in closed form; the node bounds are valid and the algorithm is
epsilon-globally convergent.  Only the abstract of the paper was readable here,
so the construction below is our own reading of it, not the paper's equations.

The objective (a stationary kernel; see :mod:`samplax.optim.gp`)::

    m(x) = c + sum_i a_i phi(r_i(x)),   r_i(x) = sum_j (x_j - X_ij)^2 / l_j^2,

with phi convex and decreasing in r (SE, Matern-5/2).  On a box B = [lo, hi]:

* distance range (exact, separable): ``r_i^min = sum_j dist(X_ij, [lo_j, hi_j])^2 / l_j^2``,
  ``r_i^max = sum_j max((lo_j - X_ij)^2, (hi_j - X_ij)^2) / l_j^2``;
* **analytic bound** (:func:`lower_bound` with ``method="analytic"``): each term
  separately, ``a_i phi(r_i^max)`` if a_i > 0 else ``a_i phi(r_i^min)``;
* **sign-aware relaxation** (``method="palm"``): every term is replaced by a
  function *linear in its distance variable r_i*, valid on [r_i^min, r_i^max]:
  for a_i < 0 (a_i phi concave) the secant of phi over [r^min, r^max] (phi
  convex lies below it, so a_i times it is below a_i phi); for a_i > 0 (a_i phi
  convex) a tangent at r0 in [r^min, r^max] (below phi everywhere).  The sum of
  ``w_i r_i(x) + c_i`` is a *separable* quadratic in x, minimised exactly over the
  box coordinate by coordinate (vertex or end points) -- the relaxed node
  problem solved in closed form, with no LP / MILP solver.  The tangents start
  at r^max (which already dominates the analytic bound term by term) and are
  re-placed at the distances of the relaxation's minimiser (``refine`` rounds,
  each a valid bound; the best is kept) -- a Kelley-type tightening of the
  piecewise-linear (max of tangents) underestimator of the convex terms.

Both bounds are valid for every box and tend to the true minimum over the box
as it shrinks (secant and tangent errors are O(width^2)), so best-first B&B
with bisection of the widest (lengthscale-scaled) side converges to an
epsilon-global minimum (``upper - lower <= eps``).  Upper bounds: m at each
child's centre and at its relaxation minimiser; a new incumbent is polished by
L-BFGS-B.  :func:`multistart_lbfgs` is the local baseline.

Everything here is numpy float64 (small sequential work with no compilation).
"""
from __future__ import annotations

import heapq
import time
from typing import NamedTuple, Optional

import numpy as np

from samplax.optim.gp import GP, check_kernel, profile, profile_grad

METHODS = ("palm", "analytic")


class PosteriorMean(NamedTuple):
    """``m(x) = const + sum_i weights_i phi(r_i(x))`` (phi with unit signal variance)."""

    kernel: str
    centres: np.ndarray      # (n, d)
    weights: np.ndarray      # (n,)
    lengthscales: np.ndarray  # (d,)
    const: float


class BnBResult(NamedTuple):
    x: np.ndarray            # (d,) the best point found (the argmin within eps)
    upper: float             # m(x)
    lower: float             # a certified lower bound of min_B m
    gap: float               # upper - lower
    nodes: int               # boxes bounded
    iterations: int          # batches popped
    converged: bool          # gap <= eps
    seconds: float
    root_lower: float        # the root box's bound


def posterior_mean_terms(gp: GP) -> PosteriorMean:
    """The expanded posterior mean of a fitted :class:`samplax.optim.gp.GP`."""
    return PosteriorMean(gp.kernel, np.asarray(gp.X, np.float64), np.asarray(gp.alpha, np.float64) * gp.signal_var,
                         np.asarray(gp.lengthscales, np.float64), float(gp.mean))


def make_mean(kernel: str, centres, weights, lengthscales, const: float = 0.0) -> PosteriorMean:
    """A :class:`PosteriorMean` from its parts (checked)."""
    check_kernel(kernel, "make_mean.kernel")
    centres = np.asarray(centres, np.float64)
    weights = np.asarray(weights, np.float64)
    ls = np.asarray(lengthscales, np.float64)
    if centres.ndim != 2 or weights.shape != (centres.shape[0],):
        raise ValueError(f"make_mean.centres / weights: need (n, d) and (n,), got {centres.shape} and {weights.shape}")
    if ls.shape != (centres.shape[1],) or not np.all(ls > 0):
        raise ValueError(f"make_mean.lengthscales: need {centres.shape[1]} positive values, got {ls!r}")
    return PosteriorMean(kernel, centres, weights, ls, float(const))


def evaluate(pm: PosteriorMean, x):
    """m(x) for x (..., d)."""
    x = np.asarray(x, np.float64)
    flat = x.reshape(-1, pm.centres.shape[1])
    d = (flat[:, None, :] - pm.centres[None]) / pm.lengthscales
    r = np.sum(d * d, -1)
    return (pm.const + profile(pm.kernel, r, 1.0, np) @ pm.weights).reshape(x.shape[:-1])


def value_and_grad(pm: PosteriorMean, x):
    """m(x) and its gradient at one point x (d,)."""
    diff = (np.asarray(x, np.float64)[None] - pm.centres) / pm.lengthscales
    r = np.sum(diff * diff, -1)
    v = pm.const + profile(pm.kernel, r, 1.0, np) @ pm.weights
    g = (pm.weights * profile_grad(pm.kernel, r, 1.0, np)) @ (2.0 * diff / pm.lengthscales)
    return float(v), g


def _check_box(lo, hi, d, who):
    lo = np.asarray(lo, np.float64)
    hi = np.asarray(hi, np.float64)
    if lo.shape[-1:] != (d,) or hi.shape != lo.shape:
        raise ValueError(f"{who}.lo / hi: need arrays of shape (..., {d}), got {lo.shape} and {hi.shape}")
    if not (np.all(np.isfinite(lo)) and np.all(np.isfinite(hi)) and np.all(lo <= hi)):
        raise ValueError(f"{who}.lo / hi: need finite lo <= hi")
    return lo, hi


def distance_range(pm: PosteriorMean, lo, hi):
    """(r_min, r_max), each (B, n), of r_i(x) over boxes lo, hi (B, d)."""
    c = pm.centres[None]                     # (1, n, d)
    l2 = pm.lengthscales ** 2
    a, b = lo[:, None, :], hi[:, None, :]
    near = np.clip(c, a, b) - c
    far = np.maximum((a - c) ** 2, (b - c) ** 2)
    return np.sum(near * near / l2, -1), np.sum(far / l2, -1)


def _min_separable(A, Bc, lo, hi):
    """min over the box and argmin of sum_j A_j t_j^2 + B_j t_j (A, B, lo, hi: (B, d))."""
    cands = [lo, hi]
    with np.errstate(divide="ignore", invalid="ignore"):
        v = np.where(A > 0, -Bc / (2 * np.where(A > 0, A, 1.0)), lo)
    cands.append(np.clip(v, lo, hi))
    vals = np.stack([A * t * t + Bc * t for t in cands])  # (3, B, d)
    k = np.argmin(vals, axis=0)
    t = np.take_along_axis(np.stack(cands), k[None], 0)[0]
    return np.sum(np.min(vals, axis=0), -1), t


def _relaxation(pm: PosteriorMean, rmin, rmax, r0, lo, hi):
    """The sign-aware linear-in-r relaxation's minimum and minimiser over each box."""
    a = pm.weights[None]
    phi = lambda r: profile(pm.kernel, r, 1.0, np)  # noqa: E731
    span = rmax - rmin
    tiny = span <= 1e-12 * (1.0 + rmax)
    sec = np.where(tiny, profile_grad(pm.kernel, rmin, 1.0, np),
                   (phi(rmax) - phi(rmin)) / np.where(tiny, 1.0, span))
    tan = profile_grad(pm.kernel, r0, 1.0, np)
    neg = a < 0
    slope = np.where(neg, sec, tan)
    base = np.where(neg, phi(rmin) - sec * rmin, phi(r0) - tan * r0)
    w = a * slope                                # (B, n): coefficient of r_i(x)
    const = pm.const + np.sum(a * base, -1)      # (B,)
    l2 = pm.lengthscales ** 2
    A = np.sum(w, -1)[:, None] / l2              # (B, d)
    Bc = -2.0 * (w @ pm.centres) / l2
    C = np.sum(w @ (pm.centres ** 2) / l2, -1)
    val, x = _min_separable(A, Bc, lo, hi)
    return const + C + val, x


def lower_bound(pm: PosteriorMean, lo, hi, method: str = "palm", refine: int = 2):
    """Lower bounds of m over boxes ``lo, hi`` ((B, d) or (d,)); returns (bounds, points):
    ``points`` are the relaxation's minimisers (the box centres for "analytic")."""
    if method not in METHODS:
        raise ValueError(f"lower_bound.method: unknown method {method!r}; allowed: {list(METHODS)}")
    if isinstance(refine, bool) or not isinstance(refine, int) or refine < 0:
        raise ValueError(f"lower_bound.refine: must be an integer >= 0, got {refine!r}")
    d = pm.centres.shape[1]
    lo, hi = _check_box(lo, hi, d, "lower_bound")
    single = lo.ndim == 1
    lo, hi = np.atleast_2d(lo), np.atleast_2d(hi)
    rmin, rmax = distance_range(pm, lo, hi)
    a = pm.weights[None]
    safety = 1e-12 * (1.0 + np.sum(np.abs(pm.weights)) + abs(pm.const))
    if method == "analytic":
        phi = profile(pm.kernel, np.where(a > 0, rmax, rmin), 1.0, np)
        lb = pm.const + np.sum(a * phi, -1) - safety
        x = 0.5 * (lo + hi)
    else:
        lb, x = _relaxation(pm, rmin, rmax, rmax, lo, hi)
        for _ in range(refine):
            diff = (x[:, None, :] - pm.centres[None]) / pm.lengthscales
            r0 = np.clip(np.sum(diff * diff, -1), rmin, rmax)
            lb2, x2 = _relaxation(pm, rmin, rmax, r0, lo, hi)
            better = lb2 > lb
            lb = np.where(better, lb2, lb)
            x = np.where(better[:, None], x2, x)
        lb = lb - safety
    return (lb[0], x[0]) if single else (lb, x)


def local_minimize(pm: PosteriorMean, x0, lo, hi, maxiter: int = 200):
    """L-BFGS-B from x0 within the box; returns (x, m(x))."""
    from scipy.optimize import minimize

    res = minimize(lambda x: value_and_grad(pm, x), np.asarray(x0, np.float64), jac=True, method="L-BFGS-B",
                   bounds=list(zip(lo, hi)), options=dict(maxiter=maxiter))
    x = np.clip(res.x, lo, hi)
    return x, float(evaluate(pm, x))


def multistart_lbfgs(pm: PosteriorMean, lo, hi, n_starts: int = 8, seed: int = 0, starts=None):
    """The baseline: L-BFGS-B from ``n_starts`` uniform random points (or ``starts``);
    returns (best x, best value, all local minima values)."""
    d = pm.centres.shape[1]
    lo, hi = _check_box(lo, hi, d, "multistart_lbfgs")
    if lo.ndim != 1:
        raise ValueError("multistart_lbfgs.lo / hi: one box, shape (d,)")
    if starts is None:
        if isinstance(n_starts, bool) or not isinstance(n_starts, int) or n_starts < 1:
            raise ValueError(f"multistart_lbfgs.n_starts: must be an integer >= 1, got {n_starts!r}")
        starts = np.random.default_rng(seed).uniform(lo, hi, (n_starts, d))
    found = [local_minimize(pm, s, lo, hi) for s in np.asarray(starts, np.float64)]
    vals = np.array([v for _, v in found])
    i = int(np.argmin(vals))
    return found[i][0], float(vals[i]), vals


def branch_and_bound(pm: PosteriorMean, lo, hi, eps: float = 1e-4, max_nodes: int = 20000, batch: int = 16,
                     method: str = "palm", refine: int = 2, local: bool = True,
                     time_limit: Optional[float] = None) -> BnBResult:
    """epsilon-global minimisation of ``pm`` over the box [lo, hi] (best-first B&B).

    Each iteration pops the ``batch`` open boxes with the lowest bounds, bisects
    each along its widest side (in lengthscale units), bounds the children
    (:func:`lower_bound`), updates the incumbent from the children's centres and
    relaxation minimisers (polished by L-BFGS-B when ``local``) and prunes boxes
    whose bound is >= upper - eps.  Stops when upper - (lowest open bound) <= eps
    (``converged``) or after ``max_nodes`` bounded boxes / ``time_limit`` seconds
    (then ``gap`` is the certified remaining gap)."""
    d = pm.centres.shape[1]
    lo, hi = _check_box(lo, hi, d, "branch_and_bound")
    if lo.ndim != 1:
        raise ValueError("branch_and_bound.lo / hi: one box, shape (d,)")
    if not (isinstance(eps, (int, float)) and not isinstance(eps, bool) and eps > 0 and np.isfinite(eps)):
        raise ValueError(f"branch_and_bound.eps: must be a positive number, got {eps!r}")
    for name, v in (("max_nodes", max_nodes), ("batch", batch)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"branch_and_bound.{name}: must be an integer >= 1, got {v!r}")
    if method not in METHODS:
        raise ValueError(f"branch_and_bound.method: unknown method {method!r}; allowed: {list(METHODS)}")
    t0 = time.perf_counter()
    lb0, xr = lower_bound(pm, lo, hi, method, refine)
    cands = np.stack([0.5 * (lo + hi), xr])
    vals = evaluate(pm, cands)
    k = int(np.argmin(vals))
    best_x, best_v = cands[k], float(vals[k])
    if local:
        best_x, best_v = min([(best_x, best_v)] + [local_minimize(pm, c, lo, hi) for c in cands], key=lambda t: t[1])
    heap = [(float(lb0), 0, lo, hi)]
    nodes, counter, it = 1, 1, 0
    pruned = np.inf
    scale = pm.lengthscales
    while heap:
        if heap[0][0] >= best_v - eps:
            break
        if nodes >= max_nodes or (time_limit is not None and time.perf_counter() - t0 > time_limit):
            break
        it += 1
        popped = [heapq.heappop(heap) for _ in range(min(batch, len(heap)))]
        pruned = min([pruned] + [p[0] for p in popped if p[0] >= best_v - eps])
        popped = [p for p in popped if p[0] < best_v - eps]
        if not popped:
            continue
        clo, chi = [], []
        for _, _, a, b in popped:
            j = int(np.argmax((b - a) / scale))
            mid = 0.5 * (a[j] + b[j])
            b1 = b.copy(); b1[j] = mid  # noqa: E702
            a2 = a.copy(); a2[j] = mid  # noqa: E702
            clo += [a, a2]
            chi += [b1, b]
        clo, chi = np.stack(clo), np.stack(chi)
        lbs, xs = lower_bound(pm, clo, chi, method, refine)
        nodes += len(lbs)
        pts = np.concatenate([0.5 * (clo + chi), xs])
        vals = evaluate(pm, pts)
        k = int(np.argmin(vals))
        if vals[k] < best_v:
            best_x, best_v = pts[k], float(vals[k])
            if local:
                x2, v2 = local_minimize(pm, best_x, lo, hi)
                if v2 < best_v:
                    best_x, best_v = x2, v2
        for lb, a, b in zip(lbs, clo, chi):
            if lb < best_v - eps:
                heapq.heappush(heap, (float(lb), counter, a, b))
                counter += 1
            else:
                pruned = min(pruned, float(lb))
    # certified: every part of the box is in an open box or was dropped with its bound
    lower = min([best_v, pruned] + ([heap[0][0]] if heap else []))
    gap = best_v - lower
    converged = gap <= eps + 1e-15
    return BnBResult(np.asarray(best_x), best_v, float(lower), float(gap), nodes, it, bool(converged),
                     time.perf_counter() - t0, float(lb0))


__all__ = ["PosteriorMean", "BnBResult", "METHODS", "posterior_mean_terms", "make_mean", "evaluate",
           "value_and_grad", "distance_range", "lower_bound", "local_minimize", "multistart_lbfgs",
           "branch_and_bound"]
