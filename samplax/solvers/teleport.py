"""Gaussian-score teleportation: skip the high-noise part of a solve analytically.

Wang & Vastola, "The Unreasonable Effectiveness of Gaussian Score Approximation for
Diffusion Models and its Applications" (TMLR 2024, arXiv:2412.09726).  At high noise the
learned score is dominated by the score of the Gaussian N(mu, C) with the data's mean and
covariance (the paper's Sec. 4-5), and the probability-flow ODE of that Gaussian has a
closed-form solution (Sec. 3, "Gaussian model": the solution written in the eigenbasis of
C).  Teleportation (Sec. 6) replaces the first steps of a sampler by that closed form: x_T
is moved from the prior time to a switch time t_s at zero model evaluations, and an
ordinary solver runs from t_s.

The closed form, in our variables.  With u = x / alpha and sigma_tilde = sigma / alpha the
PF-ODE is du / dsigma_tilde = eps_hat(u; sigma_tilde) for every schedule (Karras et al.
2022, Eq. 3 with s = 1; samplax.models.analytic).  For N(mu, C), C = V diag(lam) V^T,
eps_hat(u; s) = s (C + s^2 I)^{-1} (u - mu), so each eigen-coordinate
c_k = v_k . (u - mu) obeys dc_k / ds = s c_k / (lam_k + s^2), i.e.

    c_k(s2) = c_k(s1) sqrt((lam_k + s2^2) / (lam_k + s1^2)),
    u(s2) = mu + (C + s2^2 I)^{1/2} (C + s1^2 I)^{-1/2} (u(s1) - mu)

(the paper's solution with sigma_T -> s1, sigma_t -> s2; the part of u - mu outside the
span of the given eigenvectors, eigenvalue 0, scales by s2 / s1).  Multiplying by alpha2
and writing v_k(t) = alpha^2 lam_k + sigma^2 (the marginal variance along v_k at t):

    x2 = alpha2 mu + V diag(sqrt(v_k(t2) / v_k(t1))) V^T (x1 - alpha1 mu),

the map that whitens the marginal at t1 and colours it with the marginal at t2.  This form
divides by neither alpha nor sigma2, so it is exact to round-off in float32 and float64 at
sigma2 = 0 (the end of a solve), at alpha1 ~ 6e-3 (the discrete VP prior) and on VE / EDM
(alpha = 1, sigma up to 80).  Only sigma1 = 0 with lam_k = 0 is undefined (a jump out of
the data level): that ratio is taken as 1.

The switch time (``switch=None``): the Gaussian model's denoiser D_G is compared with the
model's own D on ``n_probes`` prior draws x_T (no data needed) carried by the Gaussian flow
to a ladder of noise levels, uniform in logSNR lambda.  Since du / dlog(sigma_tilde) = u - D,
a denoiser error delta at level s moves u by delta dlog(s), and the (Gaussian) flow from s to
sigma = 0 multiplies eigen-mode k of that perturbation by w_k(s) = sqrt(lam_k / (lam_k + s^2))
(its exact linearisation for the Gaussian model): the propagated discrepancy is
e(lambda) = RMS_probes |W(s) V^T (D(x) - D_G(x))| / sqrt(tr C).  (W matters: at the largest
noise levels a network's x0 prediction is ill-conditioned -- its noise error divided by alpha --
but the flow damps it by sqrt(lam) / s.)  The switch is the largest lambda whose accumulated
E(lambda) = int_{lambda_max}^{lambda} e dlambda stays <= ``tolerance``: a first-order estimate
of the jump's error at sigma = 0 relative to the data scale sqrt(tr C).  A fixed switch is
given as a logSNR lambda (``switch_kind="lambda"``), a sigma_tilde, or a time t.
"""
from __future__ import annotations

import math
from typing import Literal, Optional

import jax
import jax.numpy as jnp
import numpy as np

from samplax.solvers.base import ModelData, Solver

SWITCH_KINDS = ("lambda", "sigma_tilde", "t")
N_LEVELS = 48  # noise levels on the switch rule's ladder


# ---------------------------------------------------------------------------------------
# The closed-form jump
# ---------------------------------------------------------------------------------------
def gaussian_jump(mean, eigvals, eigvecs, x, alpha1, sigma1, alpha2, sigma2):
    """Exact probability-flow ODE solution of the Gaussian N(mean, V diag(eigvals) V^T)
    from x at (alpha1, sigma1) to (alpha2, sigma2) (see the module doc):
    x2 = alpha2 mean + V diag(sqrt(v2 / v1)) V^T (x - alpha1 mean) + sigma2 / sigma1 P_perp (x - alpha1 mean),
    v = alpha^2 eigvals + sigma^2, P_perp the projection onto the complement of span(V).

    ``x``: (B, ...) whose trailing axes flatten to d; ``mean`` (d,); ``eigvals`` (r,) (negative
    values, round-off of an eigensolver, are taken as 0); ``eigvecs`` (d, r) orthonormal
    columns, r <= d.  The alphas / sigmas are scalars (traceable; the same for every sample).
    Computed in x's dtype; no model evaluation.  Schedule-independent: (alpha, sigma) of any
    two schedules describe the same noise level when sigma / alpha agree."""
    x = jnp.asarray(x)
    dt = x.dtype
    shape = x.shape
    xf = x.reshape(shape[0], -1)
    mean, lam, vecs = (jnp.asarray(a, dt) for a in (mean, eigvals, eigvecs))
    lam = jnp.maximum(lam, 0)
    a1, s1, a2, s2 = (jnp.asarray(a, dt) for a in (alpha1, sigma1, alpha2, sigma2))
    v1 = a1 * a1 * lam + s1 * s1
    v2 = a2 * a2 * lam + s2 * s2
    gain = jnp.sqrt(jnp.where(v1 > 0, v2 / jnp.where(v1 > 0, v1, 1), 1))
    r = xf - a1 * mean
    c = r @ vecs  # (B, r) eigen-coordinates
    out = a2 * mean + (c * gain) @ vecs.T
    if vecs.shape[1] < vecs.shape[0]:  # the complement of span(V): eigenvalue 0
        perp = r - c @ vecs.T
        out = out + jnp.where(s1 > 0, s2 / jnp.where(s1 > 0, s1, 1), 1) * perp
    return out.reshape(shape)


def gaussian_denoiser(mean, eigvals, eigvecs, x, alpha, sigma):
    """E[x0 | x_t = x] under N(mean, V diag(eigvals) V^T) (the paper's Gaussian score,
    written as a denoiser): mean + V diag(alpha lam / v) V^T (x - alpha mean), v = alpha^2 lam +
    sigma^2 (directions outside span(V) have lam = 0 and contribute nothing)."""
    x = jnp.asarray(x)
    dt = x.dtype
    shape = x.shape
    mean, lam, vecs = (jnp.asarray(a, dt) for a in (mean, eigvals, eigvecs))
    lam = jnp.maximum(lam, 0)
    a, s = jnp.asarray(alpha, dt), jnp.asarray(sigma, dt)
    c = (x.reshape(shape[0], -1) - a * mean) @ vecs
    return (mean + (c * (a * lam / (a * a * lam + s * s))) @ vecs.T).reshape(shape)


def gaussian_model(mean, eigvals, eigvecs, schedule):
    """The Gaussian N(mean, V diag(eigvals) V^T) as a DiffusionModel (prediction
    ``data_noise``: x0_hat from :func:`gaussian_denoiser`, eps_hat = (x - alpha x0_hat) / sigma;
    defined where sigma > 0)."""
    from samplax.models.base import DiffusionModel

    def apply(params, x, t):
        m, lam, vecs = params
        t = jnp.asarray(t, x.dtype)
        a, s = schedule.alpha(t), schedule.sigma(t)
        x0 = gaussian_denoiser(m, lam, vecs, x, a, s)
        return x0, (x - a * x0) / s

    params = tuple(jnp.asarray(a) for a in (mean, eigvals, eigvecs))
    return DiffusionModel(apply=apply, params=params, schedule=schedule, prediction="data_noise")


# ---------------------------------------------------------------------------------------
# The Gaussian fit of the data
# ---------------------------------------------------------------------------------------
def empirical_moments(x0) -> tuple:
    """(mean (d,), covariance (d, d)) of data samples x0 (n, ...), float64: the sample mean and
    a Ledoit-Wolf-shrunk sample covariance (Ledoit & Wolf 2004, the analytic shrinkage
    intensity towards (tr S / d') I), so the estimate is positive definite on the data's
    support even when n < d.  Coordinates with exactly zero sample variance (constant pixels,
    e.g. the digits' corners) are kept out of the shrinkage: their rows and columns stay 0, so
    the Gaussian model (and its PF-ODE) keeps them at their constant value."""
    x = np.asarray(x0, np.float64).reshape(len(x0), -1)
    n, d = x.shape
    if n < 2:
        raise ValueError(f"n_fit_samples: {n} data samples cannot give a covariance; allowed: at least 2")
    mu = x.mean(0)
    xc = x - mu
    live = np.ptp(x, axis=0) > 0
    cov = np.zeros((d, d))
    z = xc[:, live]
    dl = z.shape[1]
    if dl:
        s = z.T @ z / n
        m = np.trace(s) / dl
        d2 = np.sum((s - m * np.eye(dl)) ** 2)
        # b2 = sum_k |z_k z_k^T - S|_F^2 / n^2 = (sum_k |z_k|^4 / n - |S|_F^2) / n, without the n x d x d array
        b2 = min(d2, max(0.0, (np.sum(np.sum(z ** 2, 1) ** 2) / n - np.sum(s ** 2)) / n))
        shrink = b2 / d2 if d2 > 0 else 1.0
        s = shrink * m * np.eye(dl) + (1 - shrink) * s * n / (n - 1)
        cov[np.ix_(live, live)] = s
    return mu, cov


def eigh_psd(cov) -> tuple:
    """(eigvals (d,) descending, clipped at 0, eigvecs (d, d)) of a symmetric covariance, float64."""
    c = np.asarray(cov, np.float64)
    lam, vecs = np.linalg.eigh(0.5 * (c + c.T))
    order = np.argsort(lam)[::-1]
    return np.maximum(lam[order], 0.0), vecs[:, order]


def gaussian_fit(data: ModelData, n_fit_samples: int, seed: int = 0) -> tuple:
    """(mean, eigvals, eigvecs) of the data: exact moments when ``data.moments`` gives them,
    else :func:`empirical_moments` of ``n_fit_samples`` data samples (all of them when fewer)."""
    mom = data.moments() if data.moments is not None else None
    if mom is None:
        try:
            x0 = data.samples(n_fit_samples, seed)
        except ValueError:  # fewer data points than asked for: use them all
            x0 = None
        if x0 is None:
            raise ValueError(f"n_fit_samples: {n_fit_samples} data samples are not available from the model's data")
        mom = empirical_moments(x0)
    mean, cov = (np.asarray(a, np.float64) for a in mom)
    lam, vecs = eigh_psd(cov)
    return mean.reshape(-1), lam, vecs


# ---------------------------------------------------------------------------------------
# The switch time
# ---------------------------------------------------------------------------------------
def _f(schedule, fn, t) -> float:
    with jax.ensure_compile_time_eval():
        return float(getattr(schedule, fn)(jnp.asarray(t, jnp.float32)))


def switch_time(schedule, switch: float, switch_kind: str, t_prior: float) -> float:
    """The time of a fixed switch given as a logSNR lambda, a sigma_tilde or a time t; it must
    lie strictly inside (t_min, t_prior] of the schedule (ValueError naming ``switch``)."""
    with jax.ensure_compile_time_eval():
        if switch_kind == "lambda":
            t = float(schedule.t_from_lambda(jnp.asarray(float(switch))))
        elif switch_kind == "sigma_tilde":
            if not switch > 0:
                raise ValueError(f"switch: sigma_tilde must be > 0, got {switch}")
            t = float(schedule.t_from_lambda(jnp.asarray(-math.log(switch))))
        else:
            t = float(switch)
    lo = float(schedule.t_min)
    tol = 1e-6 * max(1.0, abs(t_prior))
    if not (math.isfinite(t) and lo < t <= t_prior + tol):
        raise ValueError(f"switch: {switch_kind} = {switch} is time t = {t}, outside the schedule's range "
                         f"({lo}, {t_prior}]; allowed: a noise level between the end of the schedule and its prior "
                         f"time (lambda in [{_f(schedule, 'lambda_', t_prior):.4g}, "
                         f"{_f(schedule, 'lambda_', lo):.4g}))")
    return min(t, t_prior)


def probe_errors(model, mean, eigvals, eigvecs, t_prior: float, lams, n_probes: int, seed: int = 0,
                 prior_scale: float = 1.0, shape=None):
    """e(lambda) of the switch rule (module doc) at each logSNR in ``lams``: RMS over
    ``n_probes`` prior draws (N(0, prior_scale^2 I) at t_prior, carried by the Gaussian flow)
    of |W V^T (model.data - Gaussian denoiser)|, W = diag(sqrt(lam_k / (lam_k + s^2))) the
    Gaussian flow's damping from s = sigma / alpha to 0, divided by sqrt(tr C).
    n_probes x len(lams) model evaluations, in float32."""
    schedule = model.schedule
    d = mean.shape[0]
    shape = tuple(shape or (d,))
    x_T = prior_scale * np.random.default_rng(seed).standard_normal((n_probes, d))
    a0, s0 = _f(schedule, "alpha", t_prior), _f(schedule, "sigma", t_prior)
    scale = math.sqrt(max(float(np.sum(eigvals)), 1e-300))
    stats = tuple(jnp.asarray(a, jnp.float32) for a in (mean, np.maximum(eigvals, 0), eigvecs))

    @jax.jit
    def one(lam_):
        t = schedule.t_from_lambda(lam_)
        a, s = schedule.alpha(t), schedule.sigma(t)
        x = gaussian_jump(*stats, jnp.asarray(x_T, jnp.float32), a0, s0, a, s)
        dm = model.data(x.reshape((n_probes,) + shape), t).reshape(n_probes, d)
        dg = gaussian_denoiser(*stats, x, a, s)
        st = s / a
        w = jnp.sqrt(stats[1] / (stats[1] + st * st))
        return jnp.sqrt(jnp.mean(jnp.sum(((dm - dg) @ stats[2] * w) ** 2, -1)))

    return np.array([float(one(jnp.asarray(v, jnp.float32))) for v in lams]) / scale


def auto_switch(model, mean, eigvals, eigvecs, t_prior: float, tolerance: float, n_probes: int,
                shape=None) -> dict:
    """The switch rule (module doc): the largest lambda on a ladder of N_LEVELS levels uniform in
    logSNR from lambda(t_prior) to lambda(t_min) whose accumulated denoiser discrepancy
    E(lambda) <= tolerance.  Returns t_switch and the ladder (lambda, e, E) for reports."""
    from samplax.schedules import prior_std
    schedule = model.schedule
    lam0, lam1 = _f(schedule, "lambda_", t_prior), _f(schedule, "lambda_", schedule.t_min)
    lams = np.linspace(lam0, lam1, N_LEVELS)
    e = probe_errors(model, mean, eigvals, eigvecs, t_prior, lams, n_probes, prior_scale=prior_std(schedule, t_prior),
                     shape=shape)
    acc = np.concatenate([[0.0], np.cumsum(0.5 * (e[1:] + e[:-1]) * np.diff(lams))])
    k = int(np.nonzero(acc <= tolerance)[0].max())  # acc is non-decreasing and acc[0] = 0
    t_sw = t_prior if k == 0 else min(_f(schedule, "t_from_lambda", lams[k]), t_prior)
    return dict(t_switch=t_sw, probe_lambda=lams, probe_error=e, probe_accumulated=acc)


# ---------------------------------------------------------------------------------------
# The wrapper solver
# ---------------------------------------------------------------------------------------
def _unprepared(*_args, **_kw):
    raise ValueError("solver: teleport depends on the model's data (its Gaussian fit) and has not been prepared; "
                     "allowed: samplax.solvers.prepare_solver(solver, model, data) first")


def teleport(base: str = "dpm_solver_pp", order: Optional[int] = None, switch: Optional[float] = None,
             switch_kind: Literal["lambda", "sigma_tilde", "t"] = "lambda", tolerance: float = 1e-3,
             n_fit_samples: int = 20000, n_probes: int = 64, afs: bool = False) -> Solver:
    """Gaussian-score teleportation (Wang & Vastola 2024, Sec. 6) in front of the registry
    solver ``base`` (with ``order`` when given).

    ``prepare(model, data)`` fits N(mu, C) to the data (exact moments when ``data.moments``
    has them, else :func:`empirical_moments` of ``n_fit_samples`` samples), and picks the
    switch time: the fixed ``switch`` (a logSNR lambda, a sigma_tilde = sigma / alpha or a time
    t, per ``switch_kind``) or, when ``switch`` is None, the switch rule with ``tolerance``
    (relative accumulated denoiser discrepancy on ``n_probes`` prior draws; n_probes x 48
    model evaluations, once).  It returns {mean, eigvals, eigvecs, t_switch, t_prior} as numpy
    arrays (+ the rule's ladder when it ran).

    ``bind(stats)`` gives a Solver whose ``t_start`` is t_switch: build its grid from there
    (``time_grid(schedule, n, t_max=solver.t_start)``) while x_T is drawn at the prior time
    t_prior (the schedule's t_max).  Its ``init`` moves x_T from t_prior to grid.t[0] with
    :func:`gaussian_jump` (0 NFE), then it is the base solver: NFE = the base solver's on the
    grid (exact), order = the base's.  The bound solver runs the base's own init / step
    (not its coefficient table).

    ``afs=True`` (the "Gaussian first step", our analogue of AFS): the model output the base
    solver needs at t_switch is taken from the Gaussian model instead of the network, one
    model evaluation fewer (NFE = the base's with afs); only for bases with an ``afs``
    option.  (The base's own AFS, the zero-mean / no-spread limit, is valid only at t_max.)"""
    from samplax.solvers.registry import SOLVERS, get_solver
    if not isinstance(base, str) or base not in SOLVERS or base == "teleport":
        raise ValueError(f"base: unknown or unsupported base solver {base!r}; allowed: "
                         f"{sorted(k for k in SOLVERS if k != 'teleport')}")
    if afs not in (True, False):
        raise ValueError(f"afs: {afs!r}; allowed: True or False")
    from samplax.solvers.registry import solver_options
    if afs and "afs" not in solver_options(base):
        raise ValueError(f"afs: base solver {base!r} has no analytic first step; allowed: afs=False, or a base "
                         f"with an afs option")
    kw = {} if order is None else {"order": order}
    base_solver = get_solver(base, **kw)
    nfe = get_solver(base, afs=True, **kw).nfe if afs else base_solver.nfe
    if base_solver.prepare is not None:
        raise ValueError(f"base: {base!r} needs its own preparation; allowed: a solver that needs none")
    if switch_kind not in SWITCH_KINDS:
        raise ValueError(f"switch_kind: {switch_kind!r}; allowed: {list(SWITCH_KINDS)}")
    if switch is not None and (isinstance(switch, bool) or not math.isfinite(float(switch))):
        raise ValueError(f"switch: {switch!r} is not a finite number; allowed: a finite number or None (the rule)")
    if isinstance(tolerance, bool) or not (math.isfinite(float(tolerance)) and tolerance > 0):
        raise ValueError(f"tolerance: {tolerance!r}; allowed: a finite number > 0")
    for nm, v, lo in (("n_fit_samples", n_fit_samples, 2), ("n_probes", n_probes, 1)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < lo:
            raise ValueError(f"{nm}: {v!r}; allowed: an integer >= {lo}")
    name = f"teleport({base_solver.name})"

    def prepare(model, data: Optional[ModelData]) -> dict:
        if data is None:
            raise ValueError("data: teleport needs the model's data (ModelData: samples or exact moments) for its "
                             "Gaussian fit; allowed: samplax.solvers.model_data(x0=...) or model_data(gmm=...)")
        mean, lam, vecs = gaussian_fit(data, int(n_fit_samples))
        if data.shape and int(np.prod(data.shape)) != mean.shape[0]:
            raise ValueError(f"data: moments of dimension {mean.shape[0]} for samples of shape {data.shape}")
        schedule = model.schedule
        t_prior = float(schedule.t_max)
        out = dict(mean=mean, eigvals=lam, eigvecs=vecs, t_prior=np.float64(t_prior))
        if switch is None:
            rule = auto_switch(model, mean, lam, vecs, t_prior, float(tolerance), int(n_probes), shape=data.shape)
            out.update({k: np.asarray(v, np.float64) for k, v in rule.items()})
        else:
            out["t_switch"] = np.float64(switch_time(schedule, float(switch), switch_kind, t_prior))
        return out

    def bind(stats) -> Solver:
        missing = {"mean", "eigvals", "eigvecs", "t_switch", "t_prior"} - set(stats)
        if missing:
            raise ValueError(f"stats: missing {sorted(missing)}; allowed: the dict teleport's prepare returns")
        mean, lam, vecs = (np.asarray(stats[k], np.float64) for k in ("mean", "eigvals", "eigvecs"))
        t_prior, t_sw = float(stats["t_prior"]), float(stats["t_switch"])

        def init(model, grid, x):
            tp = jnp.asarray(t_prior, grid.t.dtype)
            a1, s1 = model.schedule.alpha(tp), model.schedule.sigma(tp)
            x = gaussian_jump(mean, lam, vecs, x, a1, s1, grid.alpha[0], grid.sigma[0]).astype(x.dtype)
            # with afs, the base's first model output comes from the Gaussian model (no network call)
            return base_solver.init(gaussian_model(mean, lam, vecs, model.schedule) if afs else model, grid, x)

        return base_solver._replace(name=name, init=init, nfe=nfe, table=None, prepare=None, bind=None,
                                    t_start=t_sw)

    return base_solver._replace(name=name, init=_unprepared, step=_unprepared, nfe=nfe, table=None,
                                prepare=prepare, bind=bind, t_start=None)


__all__ = ["teleport", "gaussian_jump", "gaussian_denoiser", "gaussian_model", "empirical_moments", "gaussian_fit", "eigh_psd",
           "switch_time", "auto_switch", "probe_errors", "SWITCH_KINDS"]


# the base solver does not enter the Gaussian fit or the switch rule (see prepare): rows differing
# only in it share one preparation in the runner's statistics cache
teleport.bind_options = ("base", "order", "afs")
