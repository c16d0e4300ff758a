"""Adaptive step-size DPM-Solver: DPM-Solver-12 and DPM-Solver-23 (Lu et al. 2022, Sec. 3.3 and
App. C: "DPM-Solver-12 / -23"), with the error control of the official code (thu-ml/dpm-solver,
``DPM_Solver.dpm_solver_adaptive``) and k-diffusion's ``DPMSolver.dpm_solver_adaptive``.

The integration variable is the half log-SNR lambda = log(alpha / sigma).  One trial step of size
h from lambda_s proposes two solutions of the probability-flow ODE at lambda_s + h:

* order 2 (DPM-Solver-12): x_low = DPM-Solver-1 (the first-order exponential integrator, Lu et al.
  Eq. (3.7)), x_high = DPM-Solver-2 with r1 = 1/2 (Alg. 1);
* order 3 (DPM-Solver-23): x_low = DPM-Solver-2 with r1 = 1/3, x_high = DPM-Solver-3 with
  r1 = 1/3, r2 = 2/3 (Alg. 2), which reuses x_low's intermediate evaluation.

Both solutions share their model evaluations: a trial costs ``order - 1`` evaluations besides
the one at the current point, which is made once per accepted step and reused by every trial
from that point (the official code re-evaluates it on every trial; its count is ``order`` per
trial).  Error control (Lu et al. 2022, App. C, Eq. (C.1)-(C.2), as in the official code):

    delta = max(atol, rtol * max(|x_low|, |x_prev|))          elementwise; x_prev: x_low of the
                                                               last accepted step (x_T at first)
    E     = max_b  sqrt(mean_i ((x_high - x_low) / delta)_bi^2)   norm="max" (official: per-sample
                                                               RMS, worst sample of the batch);
            sqrt(mean_bi (...)^2)                              norm="rms" (k-diffusion: RMS over the
                                                               whole batch)
    accept iff E <= 1;   h <- min(theta * h * E^(-1/order), lambda_end - lambda_s)

with theta = 0.9 and the exponent -1/order (the error estimate is the local error of the
lower-order method, O(h^order)).  Defaults are the official ones: h_init = 0.05 (in lambda),
atol = 0.0078, rtol = 0.05, theta = 0.9.  A non-finite E (overflow in a too-large step) is
treated as a rejection that shrinks h by 4 (not in the official code, which would loop forever).

One step size for the whole batch by default (``per_sample=False``, as the official code): the
result of a sample then depends on the rest of its batch.  ``per_sample=True`` vmaps the solve
over the batch so that each sample has its own step sizes (its result is independent of the
batch); under ``vmap`` the while loops run until the slowest sample is done, so the compute is
that of the largest per-sample NFE (about what the per-batch control spends anyway, since its E
is the worst sample's), while ``info.nfe`` reports each sample's own count.

NFE (exact, returned in ``info.nfe``): 1 per accepted step (the evaluation at its start point)
+ (order - 1) per trial step (accepted or rejected) + 1 if ``denoise``.  ``max_nfe`` is a hard
cap: when the remaining budget only allows one more trial (and the final denoising evaluation),
that trial goes straight to t_end and is accepted whatever its error (``info.cap_hit``), so the
solve always ends at t_end within max_nfe evaluations.

The solve runs in ``jax.lax.while_loop`` (an outer loop over accepted steps, an inner loop over
trials: no ``lax.cond``), so it is jit-able and vmappable.  Forward solves (t_start < t_end,
data to noise, e.g. for the likelihood) use the same formulas with h < 0.
"""
from __future__ import annotations

from typing import Literal, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

from samplax.solvers.base import SampleInfo, Solver, bcast, check_options, check_sample_inputs, evaluate

Array = jnp.ndarray
PREDICTIONS = ("noise", "data")
NORMS = ("max", "rms")


class AdaptiveInfo(NamedTuple):
    """What an adaptive solve did.  Scalars for a per-batch solve; one entry per sample (B,) for
    ``per_sample=True``.

    ``nfe``: model evaluations spent (exact); ``n_accept`` / ``n_reject``: accepted and
    rejected trial steps; ``cap_hit``: the max_nfe cap forced the last step (its error was not
    controlled); ``nonfinite``: the solve stopped on a non-finite model output or ended
    non-finite; ``lam_reached``: lambda where the solve stopped (lambda(t_end) unless it stopped
    early on a non-finite value)."""

    nfe: Array
    n_accept: Array
    n_reject: Array
    cap_hit: Array
    nonfinite: Array
    lam_reached: Array


def _check(order, rtol, atol, h_init, theta, max_nfe, prediction, norm, denoise):
    if isinstance(order, (bool, np.bool_)) or order not in (2, 3):
        raise ValueError(f"order: must be 2 (DPM-Solver-12) or 3 (DPM-Solver-23), got {order!r}; allowed: 2, 3")
    for name, v, lo in (("rtol", rtol, 0.0), ("atol", atol, 0.0), ("h_init", h_init, None),
                        ("theta", theta, None)):
        if isinstance(v, jax.core.Tracer):
            continue
        ok = not isinstance(v, (bool, np.bool_, str)) and np.ndim(v) == 0 and np.isfinite(float(v))
        if not ok or (lo is not None and float(v) < lo) or (lo is None and float(v) <= 0):
            raise ValueError(f"{name}: must be a finite number {'>= 0' if lo is not None else '> 0'}, got {v!r}")
    if not isinstance(rtol, jax.core.Tracer) and not isinstance(atol, jax.core.Tracer) \
            and float(rtol) == 0 and float(atol) == 0:
        raise ValueError("atol: atol and rtol are both 0 (no step would ever be accepted); allowed: atol > 0 or rtol > 0")
    if not isinstance(theta, jax.core.Tracer) and float(theta) >= 1:
        raise ValueError(f"theta: the safety factor must lie in (0, 1), got {theta!r}")
    if isinstance(max_nfe, (bool, np.bool_)) or not isinstance(max_nfe, (int, np.integer)):
        raise ValueError(f"max_nfe: must be an integer, got {max_nfe!r}")
    need = order + int(bool(denoise))
    if max_nfe < need:
        raise ValueError(f"max_nfe: {max_nfe} is below the smallest possible solve ({need} evaluations: the start "
                         f"point, {order - 1} for one step{', 1 denoise' if denoise else ''}); allowed: >= {need}")
    if prediction not in PREDICTIONS:
        raise ValueError(f"prediction: unknown {prediction!r}; allowed: {list(PREDICTIONS)}")
    if norm not in NORMS:
        raise ValueError(f"norm: unknown {norm!r}; allowed: {list(NORMS)}")


def _pair(model, view, order, x, m, lam_s, a_s, s_s, lam_t, t_t, a_t, s_t):
    """(x_low, x_high) at lambda_t from (x, model output m) at lambda_s: the embedded pair of
    DPM-Solver-12 (order 2) or -23 (order 3), in noise (DPM-Solver, Lu et al. 2022 Eq. (3.7),
    Alg. 1-2) or data prediction (DPM-Solver++, Lu et al. 2022b Eq. (9), Alg. 1).  Makes
    ``order - 1`` model evaluations."""
    sch = model.schedule
    dt = x.dtype
    h = lam_t - lam_s
    data = view == "data"

    def coef(v):
        return bcast(jnp.asarray(v), x).astype(dt)

    def first(a_u, s_u, hu):
        # exact first-order exponential integrator from s to the point (a_u, s_u), lambda_s + hu
        if data:
            return coef(s_u / s_s) * x - coef(a_u * jnp.expm1(-hu)) * m
        return coef(a_u / a_s) * x - coef(s_u * jnp.expm1(hu)) * m

    def point(r):
        lam = lam_s + r * h
        t = sch.t_from_lambda(lam)
        return t, sch.alpha(t), sch.sigma(t)

    x_lin = first(a_t, s_t, h)
    phi1 = jnp.expm1(-h) if data else jnp.expm1(h)
    lead_t = a_t if data else s_t
    if order == 2:
        r1 = 0.5
        t1, a1, s1 = point(r1)
        m1 = evaluate(model, view, first(a1, s1, r1 * h), t1)
        x_high = x_lin - coef(0.5 / r1 * lead_t * phi1) * (m1 - m)
        return x_lin, x_high
    r1, r2 = 1.0 / 3.0, 2.0 / 3.0
    t1, a1, s1 = point(r1)
    t2, a2, s2 = point(r2)
    d1 = evaluate(model, view, first(a1, s1, r1 * h), t1) - m
    x_low = x_lin - coef(0.5 / r1 * lead_t * phi1) * d1  # DPM-Solver-2 with r1 = 1/3
    if data:
        phi22 = jnp.expm1(-r2 * h) / (r2 * h) + 1.0
        phi2 = jnp.expm1(-h) / h + 1.0
        u2 = first(a2, s2, r2 * h) + coef(r2 / r1 * a2 * phi22) * d1
        d2 = evaluate(model, view, u2, t2) - m
        x_high = x_lin + coef(a_t * phi2 / r2) * d2
    else:
        phi22 = jnp.expm1(r2 * h) / (r2 * h) - 1.0
        phi2 = jnp.expm1(h) / h - 1.0
        u2 = first(a2, s2, r2 * h) - coef(r2 / r1 * s2 * phi22) * d1
        d2 = evaluate(model, view, u2, t2) - m
        x_high = x_lin - coef(s_t * phi2 / r2) * d2
    return x_low, x_high


def _error(x_low, x_high, x_prev, rtol, atol, norm):
    """The scaled error E of a trial (see the module docstring)."""
    delta = jnp.maximum(atol, rtol * jnp.maximum(jnp.abs(x_low), jnp.abs(x_prev)))
    r = ((x_high - x_low) / delta).reshape(x_low.shape[0], -1)
    if norm == "rms":
        return jnp.sqrt(jnp.mean(r * r))
    return jnp.max(jnp.sqrt(jnp.mean(r * r, axis=1)))


class _Outer(NamedTuple):
    x: Array
    x_prev: Array
    lam: Array
    t: Array
    h: Array
    nfe: Array
    n_acc: Array
    n_rej: Array
    cap_hit: Array
    bad: Array
    done: Array


class _Inner(NamedTuple):
    h: Array
    accepted: Array
    x_low: Array
    x_high: Array
    lam_t: Array
    t_t: Array
    final: Array
    nfe: Array
    n_rej: Array
    cap_hit: Array


def _solve(model, x_T, t_start, t_end, order, rtol, atol, h_init, max_nfe, theta, view, norm, denoise):
    sch = model.schedule
    dt = x_T.dtype
    t0 = jnp.asarray(t_start, dt)
    t1 = jnp.asarray(t_end, dt)
    lam0, lam1 = sch.lambda_(t0), sch.lambda_(t1)
    sign = jnp.sign(lam1 - lam0)  # +1 towards the data (sampling), -1 towards the noise
    rtol, atol, theta = (jnp.asarray(v, dt) for v in (rtol, atol, theta))
    den = int(bool(denoise))
    extra = order - 1

    def outer_cond(st):
        return ~st.done & ~st.bad

    def outer_body(st):
        m = evaluate(model, view, st.x, st.t)
        nfe = st.nfe + 1
        bad = ~jnp.all(jnp.isfinite(m))
        a_s, s_s = sch.alpha(st.t), sch.sigma(st.t)

        def inner_cond(it):
            # st.done: under vmap (per_sample) the body also runs for samples already at t_end,
            # whose trials would have h = 0; they must not loop
            return ~it.accepted & ~bad & ~st.done

        def inner_body(it):
            rem = lam1 - st.lam  # signed
            # a normal trial only while the budget still allows a forced final trial after it
            # (the next start point's evaluation, its order - 1, the final denoise)
            normal = it.nfe + extra + 1 + extra + den <= max_nfe
            h = jnp.where(normal, sign * jnp.minimum(jnp.abs(it.h), jnp.abs(rem)), rem)
            final = jnp.abs(h) >= jnp.abs(rem)
            lam_t = jnp.where(final, lam1, st.lam + h)
            t_t = jnp.where(final, t1, sch.t_from_lambda(lam_t))
            a_t, s_t = sch.alpha(t_t), sch.sigma(t_t)
            x_low, x_high = _pair(model, view, order, st.x, m, st.lam, a_s, s_s, lam_t, t_t, a_t, s_t)
            err = _error(x_low, x_high, st.x_prev, rtol, atol, norm)
            finite = jnp.isfinite(err)
            accepted = (finite & (err <= 1)) | ~normal
            err_pos = jnp.maximum(err, jnp.asarray(1e-10, dt))
            h_next = jnp.where(finite, theta * jnp.abs(h) * err_pos ** (-1.0 / order), 0.25 * jnp.abs(h))
            return _Inner(h=h_next, accepted=accepted, x_low=x_low, x_high=x_high, lam_t=lam_t, t_t=t_t,
                          final=final, nfe=it.nfe + extra, n_rej=it.n_rej + (~accepted).astype(jnp.int32),
                          cap_hit=it.cap_hit | ~normal)

        it0 = _Inner(h=st.h, accepted=jnp.asarray(False), x_low=st.x, x_high=st.x, lam_t=st.lam, t_t=st.t,
                     final=jnp.asarray(False), nfe=nfe, n_rej=st.n_rej, cap_hit=st.cap_hit)
        it = jax.lax.while_loop(inner_cond, inner_body, it0)
        ok = it.accepted & ~bad
        return _Outer(x=jnp.where(ok, it.x_high, st.x), x_prev=jnp.where(ok, it.x_low, st.x_prev),
                      lam=jnp.where(ok, it.lam_t, st.lam), t=jnp.where(ok, it.t_t, st.t), h=it.h, nfe=it.nfe,
                      n_acc=st.n_acc + ok.astype(jnp.int32), n_rej=it.n_rej, cap_hit=it.cap_hit, bad=bad,
                      done=ok & it.final)

    zero = jnp.asarray(0, jnp.int32)
    st0 = _Outer(x=x_T, x_prev=x_T, lam=lam0, t=t0, h=jnp.asarray(h_init, dt), nfe=zero, n_acc=zero, n_rej=zero,
                 cap_hit=jnp.asarray(False), bad=jnp.asarray(False), done=lam0 == lam1)
    st = jax.lax.while_loop(outer_cond, outer_body, st0)
    x, nfe = st.x, st.nfe
    if den:
        x = model.data(x, st.t).astype(dt)
        nfe = nfe + 1
    bad = st.bad | ~jnp.all(jnp.isfinite(x))
    return x, AdaptiveInfo(nfe=nfe, n_accept=st.n_acc, n_reject=st.n_rej, cap_hit=st.cap_hit, nonfinite=bad,
                           lam_reached=st.lam)


def adaptive_sample(model, x_T: Array, t_start, t_end, order: int = 3, rtol: float = 0.05, atol: float = 0.0078,
                    h_init: float = 0.05, max_nfe: int = 1000, theta: float = 0.9, prediction: str = "noise",
                    norm: str = "max", per_sample: bool = False, denoise: bool = False):
    """Solve the probability-flow ODE of ``model`` from x_T (B, ...) at ``t_start`` to ``t_end``
    with adaptive DPM-Solver-12 (``order=2``) or -23 (``order=3``); see the module docstring for
    the error control.  ``prediction``: "noise" (DPM-Solver, the paper's DPM-Solver-12/23) or
    "data" (the same pair in DPM-Solver++ form).  ``denoise``: end with x0_hat(x, t_end) (one more
    evaluation, counted), i.e. the jump to sigma = 0.  ``per_sample``: one step-size sequence per
    sample (vmapped) instead of one for the batch.

    Returns ``(x, AdaptiveInfo)``; pure, jit-able and vmappable (t_start, t_end, rtol, atol,
    h_init, theta may be traced; order, max_nfe, prediction, norm, per_sample, denoise are
    static)."""
    _check(order, rtol, atol, h_init, theta, max_nfe, prediction, norm, denoise)
    x_T = jnp.asarray(x_T)
    if not jnp.issubdtype(x_T.dtype, jnp.floating) or x_T.ndim < 2 or x_T.shape[0] < 1:
        raise ValueError(f"x_T: must be a floating-point array of shape (B, ...) with B >= 1, got "
                         f"{x_T.dtype} {tuple(x_T.shape)}")
    args = (order, rtol, atol, h_init, max_nfe, theta, prediction, norm, denoise)
    if not per_sample:
        return _solve(model, x_T, t_start, t_end, *args)
    x, info = jax.vmap(lambda xi: _solve(model, xi[None], t_start, t_end, *args))(x_T)
    return x[:, 0], info


# --- the samplax Solver form ---------------------------------------------------------------------
class AdaptiveState(NamedTuple):
    x: Array
    info: Optional[AdaptiveInfo]


def dpm_solver_adaptive(order: int = 3, rtol: float = 0.05, atol: float = 0.0078, h_init: float = 0.05,
                        theta: float = 0.9, prediction: Literal["noise", "data"] = "noise",
                        norm: Literal["max", "rms"] = "max", per_sample: bool = False, afs: bool = False) -> Solver:
    """Adaptive DPM-Solver-12 / -23 as a samplax :class:`Solver` (see :func:`adaptive_sample`).

    The grid only gives the interval: the solve runs from grid.t[0] to the last node above
    sigma = 0 (grid.t[-2] when the grid ends at sigma = 0, then the jump x0_hat there; grid.t[-1]
    otherwise, then the grid's own final denoise for end="denoise").  The interior nodes are
    ignored.  ``solver.nfe(n, end)`` is the NFE *cap* (n, +1 for end="denoise"), so the runner's
    ``steps_for_nfe(solver, nfe, end)`` turns the config's ``nfe`` into the cap; the NFE really
    spent is smaller and only known after the run: use :func:`sample_with_info` to get it
    (:func:`samplax.sample` returns the sample only).  ``afs`` exists because the experiment
    layer passes it to every solver; only False is supported."""
    check_options(dpm_solver_adaptive, locals())
    if afs:
        raise ValueError("afs: the adaptive solver has no analytic first step (its first evaluation is reused by "
                         "every trial from x_T); allowed: False")
    _check(order, rtol, atol, h_init, theta, order + 1, prediction, norm, True)
    opts = dict(order=order, rtol=rtol, atol=atol, h_init=h_init, theta=theta, prediction=prediction, norm=norm,
                per_sample=per_sample)

    def init(model, grid, x):
        return AdaptiveState(x=x, info=None)

    def step(model, grid, state, i, keys, last):
        if not last:  # every interior node is skipped
            return state
        n = grid.n_steps
        t_stop = grid.t[-2] if grid.ends_at_zero else grid.t[-1]
        x, info = adaptive_sample(model, state.x, grid.t[0], t_stop, max_nfe=n, denoise=grid.ends_at_zero, **opts)
        return AdaptiveState(x=x, info=info)

    def nfe(n, end):
        return n + (end == "denoise")

    init.adaptive_options = opts  # read by sample_with_info / is_adaptive
    return Solver(f"dpm_solver_adaptive{order}", init, step, nfe, order=order, min_steps=order + 1,
                  view="noise" if prediction == "noise" else "data")


def is_adaptive(solver: Solver) -> bool:
    """Whether ``solver`` came from :func:`dpm_solver_adaptive` (its realised NFE varies per run)."""
    return hasattr(solver.init, "adaptive_options")


def sample_with_info(solver: Solver, model, x_T: Array, grid, key=None):
    """``samplax.sample`` for an adaptive solver, also returning its :class:`AdaptiveInfo`:
    ``(x_0, SampleInfo, AdaptiveInfo)``, with ``info.nfe`` the NFE really spent (including the
    final jump / denoise of the grid's end)."""
    if not is_adaptive(solver):
        raise ValueError(f"solver: {solver.name} is not an adaptive solver (dpm_solver_adaptive)")
    x_T = jnp.asarray(x_T)
    check_sample_inputs(solver, x_T, grid)
    state = solver.step(model, grid, solver.init(model, grid, x_T), grid.n_steps - 1, None, True)
    x, info = state.x, state.info
    if grid.denoise:
        x = model.data(x, grid.t[-1]).astype(x.dtype)
        info = info._replace(nfe=info.nfe + 1, nonfinite=info.nonfinite | ~jnp.all(jnp.isfinite(x)))
    flat = x.reshape(x.shape[0], -1)
    n_bad = jnp.sum(~jnp.all(jnp.isfinite(flat), axis=1)).astype(jnp.int32)[None]
    sinfo = SampleInfo(first_nonfinite_step=jnp.where(n_bad[0] > 0, 0, -1), n_nonfinite=n_bad, trajectory=None)
    return x, sinfo, info


__all__ = ["AdaptiveInfo", "adaptive_sample", "dpm_solver_adaptive", "is_adaptive", "sample_with_info"]
