"""Learning multistep solver coefficients subject to order conditions.

The method: an exponential-integrator linear multistep method in the data
prediction (DPM-Solver++ form, Lu et al. 2022, eq. (9)): on a fixed grid with
log-SNR ``lambda_i`` and step ``h_i = lambda_{i+1} - lambda_i`` the exact PF-ODE
step is

    x_{i+1} = (sigma_{i+1} / sigma_i) x_i + sigma_{i+1} int_{lambda_i}^{lambda_{i+1}} e^lambda x0_hat(lambda) dlambda,

and the method replaces x0_hat by the K most recent model outputs
``m_{i-j}`` (j = 0 .. K-1, those that exist):

    x_{i+1} = (sigma_{i+1} / sigma_i) x_i + sum_j c_{i,j} m_{i-j}.

**Order conditions** (derived here).  The quadrature is exact for every
x0_hat that is a polynomial of degree < p in lambda iff, for k = 0 .. p-1,

    sum_j c_{i,j} ((lambda_{i-j} - lambda_i) / h_i)^k = alpha_{i+1} I_k(h_i) / h_i^k,
    I_k(h) = int_0^h e^{u-h} u^k du,   I_0 = 1 - e^{-h},   I_k = h^k - k I_{k-1}

(substitute u = lambda - lambda_i; sigma_{i+1} e^{lambda_i} e^{u} = alpha_{i+1} e^{u-h}).
Then the local error is O(h^{p+1}) and the method has global order p (with
bounded coefficients: zero-stability holds since the x_i coefficient is the
exact propagator).  A step with fewer than p outputs available gets as many
conditions as it has outputs.  The step into sigma = 0 (``end="zero"``) has
h = inf and only I_0 = 1 is finite; there ``a = 0`` and the method extrapolates
x0_hat to sigma = 0: we impose polynomial exactness in sigma_tilde = sigma/alpha,
``sum_j c_j (sigma_tilde_{i-j} / sigma_tilde_i)^k = [k = 0]``.

The conditions are linear equalities ``A c = b`` in the coefficient vector (one
block per step).  With K > p there are K - p free directions per step, which
are learned to minimise the error against the exact PF-ODE solution of an
analytic problem (gmm2d), under the constraints, by

* :func:`samplax.optim.eal.eal_sketch_solve` (exact augmented Lagrangian +
  randomized sketching; feasibility to the solver's tolerance), or
* :func:`samplax.optim.eal.penalty_method` (quadratic penalty, L-BFGS inner
  solves; feasible only as mu -> inf).

The table runs through :func:`samplax.solvers.unified.run_table` (the one
multistep sampling program); see also :mod:`samplax.search.gradient` for learned
time points.  Entry point: :func:`run_constrained` (config
``configs/search_constrained.py``; ``python -m samplax.search.constrained``).
"""
from __future__ import annotations

import math
import os
import time
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from samplax.solvers.unified import Table, run_table
from samplax.timesteps import Grid, time_grid

METHODS = ("eal", "penalty")


# ----------------------------------------------------------------------------------------
# Order conditions
# ----------------------------------------------------------------------------------------
_GL = []


def _gauss_legendre():
    if not _GL:
        _GL.append(np.polynomial.legendre.leggauss(64))
    return _GL[0]


def exp_moments(h: float, p: int) -> np.ndarray:
    """``I_k(h) / h^k`` for k = 0 .. p-1, I_k(h) = int_0^h e^{u-h} u^k du (float64).
    The recursion I_k = h^k - k I_{k-1} loses digits for small h; there a
    64-point Gauss-Legendre rule (exact to rounding for these smooth integrands)."""
    h = float(h)
    if not (h > 0 and math.isfinite(h)):
        raise ValueError(f"h: the log-SNR step must be finite and > 0, got {h}")
    if h < 1.0:
        u, w = _gauss_legendre()
        s = 0.5 * (u + 1.0)                       # on [0, 1]: u = h s
        return np.array([0.5 * np.sum(w * np.exp(h * (s - 1.0)) * s ** k) * h for k in range(p)])
    out, prev = [], -math.expm1(-h)
    out.append(prev)
    for k in range(1, p):
        prev = h ** k - k * prev
        out.append(prev / h ** k)
    return np.array(out)


def order_conditions(grid: Grid, history: int, order: int):
    """The linear order conditions of an exponential multistep method on ``grid``.

    Returns ``(mask, A, b, rows_per_step)``: ``mask`` (n, history) bool, which
    coefficients c_{i,j} exist (j <= i); the coefficient vector is ``c[mask]``
    (row-major); ``A c = b`` are the conditions (see the module doc), ``rows_per_step``
    how many each step has (min(order, i + 1))."""
    if isinstance(history, bool) or not isinstance(history, (int, np.integer)) or history < 1:
        raise ValueError(f"history: must be an integer >= 1, got {history!r}")
    if isinstance(order, bool) or not isinstance(order, (int, np.integer)) or not 1 <= order <= history:
        raise ValueError(f"order: must be an integer in [1, history = {history}], got {order!r}")
    lam = np.asarray(grid.lam, np.float64)
    alpha = np.asarray(grid.alpha, np.float64)
    st = np.asarray(grid.sigma, np.float64) / alpha
    n = grid.n_steps
    mask = np.zeros((n, history), bool)
    for i in range(n):
        mask[i, :min(i + 1, history)] = True
    nvar = int(mask.sum())
    offs = np.concatenate([[0], np.cumsum(mask.sum(1))])
    rows_A, rows_b, per = [], [], []
    for i in range(n):
        q = min(order, i + 1)
        js = np.arange(min(i + 1, history))
        if grid.ends_at_zero and i == n - 1:
            nodes = st[i - js] / st[i]
            rhs = np.eye(q)[0]
        else:
            h = lam[i + 1] - lam[i]
            nodes = (lam[i - js] - lam[i]) / h
            rhs = alpha[i + 1] * exp_moments(h, q)
        for k in range(q):
            row = np.zeros(nvar)
            row[offs[i] + js] = nodes ** k
            rows_A.append(row)
            rows_b.append(rhs[k])
        per.append(q)
    return mask, np.array(rows_A), np.array(rows_b), per


def adams_coefficients(grid: Grid, history: int, order: int) -> np.ndarray:
    """The exponential Adams-Bashforth coefficients of ``order`` (each step uses its
    min(order, i + 1) newest outputs, the older of the ``history`` slots are 0):
    the unique solution of the order conditions on those slots.  Vector ``c[mask]``."""
    mask, A, b, per = order_conditions(grid, history, order)
    c = np.zeros(A.shape[1])
    offs = np.concatenate([[0], np.cumsum(mask.sum(1))])
    r = 0
    for i, q in enumerate(per):
        Ai = A[r:r + q, offs[i]:offs[i] + q]
        c[offs[i]:offs[i] + q] = np.linalg.solve(Ai, b[r:r + q])
        r += q
    return c


def coefficient_table(grid: Grid, coef, mask: np.ndarray, afs: bool = False) -> Table:
    """A :class:`Table` (data view, no corrector) of the exponential multistep method
    with coefficients ``coef`` (= c[mask], traceable) on ``grid``."""
    n, K = mask.shape
    coef = jnp.asarray(coef)
    dt = coef.dtype
    flat = np.flatnonzero(mask.reshape(-1))
    c = jnp.zeros((n * K,), dt).at[flat].set(coef).reshape(n, K)
    sig = jnp.asarray(grid.sigma, dt)
    a = sig[1:] / sig[:-1]
    return Table(t=jnp.asarray(grid.t, dt), alpha=jnp.asarray(grid.alpha, dt), sigma=sig, a=a, c=c, ca=a, cc=c,
                 cw=jnp.zeros((n, 1), dt), corrected=jnp.zeros((n,), bool),
                 orders=jnp.asarray(mask.sum(1), jnp.int32), views=("data",), k=K, has_corrector=False,
                 afs=afs, end=grid.end)


# ----------------------------------------------------------------------------------------
# Learning under the conditions
# ----------------------------------------------------------------------------------------
def learn_coefficients(model, grid: Grid, x_train, ref_train, history: int = 3, order: int = 2,
                       method: str = "eal", afs: bool = False, init: Optional[np.ndarray] = None,
                       eal_options: Optional[dict] = None, penalty_options: Optional[dict] = None):
    """Learn the coefficients of the exponential multistep method (``history``
    outputs, order conditions up to ``order``) on ``grid``, minimising the mean
    squared error of ``run_table`` from ``x_train`` to ``ref_train`` subject to
    ``A c = b``.  ``method``: ``"eal"`` or ``"penalty"``.  Start: the exponential
    Adams method of ``order`` (feasible) unless ``init``.

    Returns ``(coef, info)``: ``info`` = dict(mask, A, b, result (ConstrainedResult),
    constraint_residual (max |A c - b|), train_mse)."""
    if method not in METHODS:
        raise ValueError(f"method: unknown method {method!r}; allowed: {list(METHODS)}")
    if np.shape(x_train) != np.shape(ref_train):
        raise ValueError(f"ref_train: shape {np.shape(ref_train)} does not match x_train {np.shape(x_train)}")
    from samplax.optim.eal import eal_sketch_solve, penalty_method

    mask, A, b, _ = order_conditions(grid, history, order)
    c0 = adams_coefficients(grid, history, order) if init is None else np.asarray(init, np.float64)
    if c0.shape != (A.shape[1],):
        raise ValueError(f"init: must have shape ({A.shape[1]},) (the coefficients c[mask]), got {c0.shape}")
    x_train = jnp.asarray(x_train)
    dt = x_train.dtype
    ref = jnp.asarray(ref_train, dt)
    scale = 1.0 / np.linalg.norm(A, axis=1)      # unit rows: the same constraint set, a better-scaled K
    Aj, bj = jnp.asarray(A * scale[:, None], dt), jnp.asarray(b * scale, dt)

    def f(coef):
        x0, _ = run_table(model, x_train, coefficient_table(grid, coef, mask, afs), diagnostics=False)
        return jnp.mean(jnp.sum(jnp.square(x0 - ref).reshape(x0.shape[0], -1), -1))

    def cons(coef):
        return Aj @ coef - bj

    if method == "eal":
        res = eal_sketch_solve(f, cons, jnp.asarray(c0, dt), **(eal_options or {}))
    else:
        res = penalty_method(f, cons, jnp.asarray(c0, dt), **(penalty_options or {}))
    coef = np.asarray(res.x, np.float64)
    info = dict(mask=mask, A=A, b=b, result=res, constraint_residual=float(np.max(np.abs(A @ coef - b))),
                train_mse=float(f(res.x)))
    return coef, info


def sample_errors(model, grid: Grid, coef, mask, x_T, reference, afs: bool = False) -> dict:
    """mean / max Euclidean error of the method's samples to ``reference``."""
    x_T = jnp.asarray(x_T)
    x0, _ = run_table(model, x_T, coefficient_table(grid, jnp.asarray(coef, x_T.dtype), mask, afs),
                      diagnostics=False)
    d = np.linalg.norm(np.asarray(x0, np.float64) - np.asarray(reference, np.float64), axis=-1)
    return dict(mean_l2=float(np.mean(d)), max_l2=float(np.max(d)))


# ----------------------------------------------------------------------------------------
# Config entry point
# ----------------------------------------------------------------------------------------
def constrained_config():
    """Defaults of a constrained coefficient-learning run (configs/search_constrained.py)."""
    import ml_collections

    c = ml_collections.ConfigDict()
    c.kind = "constrained_coefficients"
    c.problem = "gmm2d"               # an analytic problem (exact PF-ODE reference)
    c.nfe = 5
    c.spacing = "time_quadratic"      # the fixed grid (samplax.timesteps.SPACINGS)
    c.afs = True                      # analytic first step (NFE = steps - 1 on a sigma = 0 grid)
    c.history = 3                     # K: model outputs per step
    c.order = 2                       # p: order conditions kept (p <= K)
    c.methods = ("eal", "penalty")
    c.n_train = 512
    c.n_eval = 4096                   # held-out start points (the problem's benchmark x_T)
    c.seed = 0
    c.reference_steps = 1000
    c.eal = ml_collections.ConfigDict(dict(tol=1e-9, max_iter=40, sketch="kaczmarz", theta=0.5,
                                           accuracy_power=1.0, nu=1e-4, hessian_shift="auto"))
    c.penalty = ml_collections.ConfigDict(dict(mu0=1.0, growth=10.0, outer=8, inner_steps=200))
    return c


def validate_constrained(config) -> dict:
    """Checked plain dict of a constrained config; bad fields raise ConfigError naming them."""
    from samplax.experiment.config import ConfigError
    from samplax.models.analytic import PROBLEMS
    from samplax.optim.eal import SKETCHES
    from samplax.timesteps import SPACINGS

    cfg = config.to_dict() if hasattr(config, "to_dict") else dict(config)

    def need(name, ok, allowed):
        if not ok:
            raise ConfigError(f"config.{name}", f"got {cfg.get(name)!r}; allowed: {allowed}")

    def is_int(v, lo):
        return not isinstance(v, bool) and isinstance(v, (int, np.integer)) and v >= lo

    need("problem", cfg.get("problem") in PROBLEMS, list(PROBLEMS))
    need("nfe", is_int(cfg.get("nfe"), 2), "an integer >= 2")
    need("spacing", cfg.get("spacing") in SPACINGS and cfg.get("spacing") not in ("leading", "trailing",
                                                                                  "linspace"),
         [s for s in SPACINGS if s not in ("leading", "trailing", "linspace")])
    need("afs", isinstance(cfg.get("afs"), bool), "True or False")
    need("history", is_int(cfg.get("history"), 1) and cfg["history"] <= 6, "an integer in [1, 6]")
    need("order", is_int(cfg.get("order"), 1) and cfg["order"] <= cfg["history"], "an integer in [1, history]")
    methods = tuple(cfg.get("methods") or ())
    need("methods", len(methods) > 0 and all(m in METHODS for m in methods), f"a non-empty subset of {METHODS}")
    for name in ("n_train", "n_eval", "reference_steps"):
        need(name, is_int(cfg.get(name), 1), "an integer >= 1")
    need("seed", is_int(cfg.get("seed"), 0), "an integer >= 0")
    eal = cfg.get("eal") or {}
    if eal.get("sketch", "kaczmarz") not in SKETCHES:
        raise ConfigError("config.eal.sketch", f"got {eal.get('sketch')!r}; allowed: {list(SKETCHES)}")
    return cfg


def run_constrained(config, workdir: Optional[str] = None, log=print, restart: bool = False) -> dict:
    """Learn the coefficients with each of ``config.methods`` and evaluate them on
    held-out start points against the exact PF-ODE solution; writes
    ``<workdir>/constrained.json`` (atomically) when ``workdir`` is given.  float64 throughout.
    Also ``python -m experiments.search --config=configs/search_constrained.py --workdir=DIR``
    (the config's ``kind``; ``restart`` is accepted for that entrypoint and has nothing to resume)."""
    from samplax.models.analytic import load_problem, problem_start_points
    from samplax.search.evaluate import gmm_reference

    cfg = validate_constrained(config)
    out = dict(config=cfg, methods={})
    with jax.enable_x64(True):
        gmm, sch, info = load_problem(cfg["problem"], dtype=jnp.float64)
        model = gmm.model(sch)
        n_steps = cfg["nfe"] + (1 if cfg["afs"] else 0)
        grid = time_grid(sch, n_steps, cfg["spacing"], end="zero", dtype=jnp.float64)
        x_tr = np.asarray(jax.random.normal(jax.random.PRNGKey(cfg["seed"]), (cfg["n_train"], info["dim"])),
                          np.float64)
        ref_tr, _ = gmm_reference(cfg["problem"], x_tr, n_steps=cfg["reference_steps"])
        x_ev = problem_start_points(info, cfg["n_eval"])
        ref_ev, _ = gmm_reference(cfg["problem"], x_ev, n_steps=cfg["reference_steps"])
        mask, A, b, _ = order_conditions(grid, cfg["history"], cfg["order"])
        c0 = adams_coefficients(grid, cfg["history"], cfg["order"])
        out["init"] = dict(coef=c0.tolist(), **sample_errors(model, grid, c0, mask, x_ev, ref_ev, cfg["afs"]),
                           constraint_residual=float(np.max(np.abs(A @ c0 - b))))
        out["n_variables"], out["n_constraints"] = int(A.shape[1]), int(A.shape[0])
        for method in cfg["methods"]:
            t0 = time.perf_counter()
            coef, inf = learn_coefficients(model, grid, x_tr, ref_tr, cfg["history"], cfg["order"], method,
                                           cfg["afs"], eal_options=dict(cfg.get("eal") or {}),
                                           penalty_options=dict(cfg.get("penalty") or {}))
            secs = time.perf_counter() - t0
            res = inf["result"]
            row = dict(coef=coef.tolist(), constraint_residual=inf["constraint_residual"], train_mse=inf["train_mse"],
                       seconds=secs, iterations=res.iterations, converged=bool(res.converged),
                       history={k: [float(v) for v in vals] for k, vals in res.history.items()},
                       **sample_errors(model, grid, coef, mask, x_ev, ref_ev, cfg["afs"]))
            out["methods"][method] = row
            log(f"{method}: held-out mean L2 {row['mean_l2']:.5f} (init {out['init']['mean_l2']:.5f}), "
                f"constraint residual {row['constraint_residual']:.2e}, {secs:.1f} s, {res.iterations} iterations")
    if workdir:
        from samplax.io import atomic_write_json
        os.makedirs(workdir, exist_ok=True)
        atomic_write_json(os.path.join(workdir, "constrained.json"), out)  # never half-written
    return out


def main(argv=None):
    import argparse
    import importlib.util

    ap = argparse.ArgumentParser(description="Learn multistep coefficients under order conditions")
    ap.add_argument("--config", default="configs/search_constrained.py")
    ap.add_argument("--workdir", default=None)
    a = ap.parse_args(argv)
    spec = importlib.util.spec_from_file_location("_constrained_cfg", a.config)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    run_constrained(mod.get_config(), a.workdir)


if __name__ == "__main__":  # pragma: no cover
    main()


__all__ = ["exp_moments", "order_conditions", "adams_coefficients", "coefficient_table", "learn_coefficients",
           "sample_errors", "constrained_config", "validate_constrained", "run_constrained", "METHODS"]
