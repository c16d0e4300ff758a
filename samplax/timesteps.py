"""Time grids: where a solver evaluates the model.

A :class:`Grid` holds the nodes t_0 = t_max > t_1 > ... > t_n of an n-step
solve together with alpha, sigma and lambda at each node (solvers only read
these arrays, so a batch of grids is one ``vmap``).  Two ways to end:

* ``end="zero"``: the last node is sigma = 0 (alpha = 1, lambda = +inf); the
  last step is a pure denoising jump, never a division by zero.  The spacing
  places n nodes from t_max to t_min and sigma = 0 is appended (k-diffusion's
  and diffusers' convention), so n steps.
* ``end="denoise"``: n steps from t_max to t_min, then one final evaluation
  x0_hat(x, t_min), counted in the NFE (the official codes' ``denoise_to_zero``).
* ``end="t_min"``: n steps from t_max to t_min and nothing else (for
  convergence studies between fixed noise levels).

Spacings (``SPACINGS``): time-uniform, time-quadratic (uniform in sqrt(t), the
official DPM-Solver default for discrete schedules), logSNR-uniform, Karras rho
(uniform in sigma_tilde^(1/rho), sigma_tilde = sigma / alpha), log-sigma uniform
(uniform in log sigma(t), which for alpha = 1 schedules equals logSNR), and the
diffusers integer spacings ``leading`` / ``trailing`` / ``linspace`` on a
discrete schedule's training indices.  An explicit grid is validated: strictly
decreasing, within [t_min, t_max] of the schedule.
"""
from __future__ import annotations

from typing import Optional, Sequence

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from samplax.schedules import NoiseSchedule, VPDiscrete

SPACINGS = ("time_uniform", "time_quadratic", "logsnr", "karras", "log_sigma", "leading", "trailing", "linspace")
ENDS = ("zero", "denoise", "t_min")


@flax.struct.dataclass
class Grid:
    """Nodes of an n-step solve (arrays of length n + 1) and how it ends."""

    t: jnp.ndarray
    alpha: jnp.ndarray
    sigma: jnp.ndarray
    lam: jnp.ndarray
    end: str = flax.struct.field(pytree_node=False, default="t_min")

    @property
    def n_steps(self) -> int:
        return self.t.shape[-1] - 1

    @property
    def ends_at_zero(self) -> bool:
        return self.end == "zero"

    @property
    def denoise(self) -> bool:
        return self.end == "denoise"

    @property
    def sigma_tilde(self) -> jnp.ndarray:
        """sigma / alpha at each node (0 at a sigma = 0 end)."""
        return self.sigma / self.alpha

    @property
    def log_alpha(self) -> jnp.ndarray:
        return jnp.log(self.alpha)


def _spacing_times(schedule: NoiseSchedule, n_nodes: int, spacing: str, t_max: float, t_min: float,
                   rho: float, dtype) -> np.ndarray:
    k = np.arange(n_nodes, dtype=np.float64) / (n_nodes - 1)
    if spacing in ("time_uniform", "time_quadratic"):
        if spacing == "time_uniform":
            t = t_max + (t_min - t_max) * k
        else:
            t = (np.sqrt(t_max) + (np.sqrt(t_min) - np.sqrt(t_max)) * k) ** 2
        t[0], t[-1] = t_max, t_min  # exact ends (80 + (0.002 - 80) is not 0.002)
        return t
    if spacing in ("logsnr", "karras", "log_sigma"):
        f = lambda t: np.asarray(schedule.lambda_(jnp.asarray(t, dtype)), np.float64)  # noqa: E731
        if spacing == "logsnr":
            lam = f(t_max) + (f(t_min) - f(t_max)) * k
        elif spacing == "karras":
            smax, smin = np.exp(-f(t_max)), np.exp(-f(t_min))
            lam = -rho * np.log(smax ** (1 / rho) + (smin ** (1 / rho) - smax ** (1 / rho)) * k)
        else:
            ls = lambda t: float(schedule.log_sigma(jnp.asarray(t, dtype)))  # noqa: E731
            log_sig = ls(t_max) + (ls(t_min) - ls(t_max)) * k
            return _t_from_log_sigma(schedule, log_sig, t_min, t_max, dtype)
        t = np.array(schedule.t_from_lambda(jnp.asarray(lam, dtype)), np.float64)
        t[0], t[-1] = t_max, t_min  # exact ends, whatever the rounding of the inverse
        return t
    raise AssertionError(spacing)


def _t_from_log_sigma(schedule, log_sig, t_min, t_max, dtype):
    # Invert log sigma(t) (monotone) by bisection in float64 numpy via the schedule.
    lo = np.full_like(log_sig, t_min)
    hi = np.full_like(log_sig, t_max)
    for _ in range(100):
        mid = 0.5 * (lo + hi)
        val = np.asarray(schedule.log_sigma(jnp.asarray(mid, dtype)), np.float64)
        lo, hi = np.where(val < log_sig, mid, lo), np.where(val < log_sig, hi, mid)
    t = 0.5 * (lo + hi)
    t[0], t[-1] = t_max, t_min
    return t


def _integer_spacing(schedule: VPDiscrete, n_nodes: int, spacing: str) -> np.ndarray:
    """diffusers' integer training indices (descending), as continuous times (i+1)/N."""
    big_n = schedule.num_train_timesteps
    if spacing == "linspace":
        idx = np.linspace(0, big_n - 1, n_nodes).round()[::-1]
    elif spacing == "leading":
        ratio = big_n // n_nodes
        idx = (np.arange(0, n_nodes) * ratio).round()[::-1]
    else:  # trailing
        ratio = big_n / n_nodes
        idx = np.round(np.arange(big_n, 0, -ratio)) - 1
    idx = idx.astype(np.float64)
    if np.any(np.diff(idx) >= 0):
        raise ValueError(f"n_steps: spacing {spacing!r} with {n_nodes} nodes repeats a training index "
                         f"(N = {big_n}); use fewer steps; allowed: at most N distinct training indices")
    return (idx + 1.0) / big_n


def _is_traced(v) -> bool:
    return isinstance(v, jax.core.Tracer)


def _real(name: str, v, what: str) -> float:
    """``v`` as a finite Python float, or a ValueError naming ``name`` (bools and
    strings are not numbers)."""
    arr = None if isinstance(v, (bool, np.bool_)) else np.asarray(v) if np.ndim(v) == 0 else None
    if arr is None or arr.dtype.kind not in "iuf":
        raise ValueError(f"{name}: {v!r} is not a real number; allowed: {what}")
    out = float(arr)
    if not np.isfinite(out):
        raise ValueError(f"{name}: {out} is not finite; allowed: {what}")
    return out


def _check_interval(schedule: NoiseSchedule, t_max, t_min) -> None:
    """Concrete t_max / t_min must lie in the schedule's time range with t_max > t_min
    (outside it alpha, sigma or lambda are NaN or meaningless).  Traced values are
    not checked (grids built under jit by searches)."""
    lo, hi = float(schedule.t_min), float(schedule.t_max)
    tol = 1e-6 * max(1.0, abs(hi))  # float32 copies of the ends (e.g. float(grid.t[0])) pass
    rng = f"the schedule's time range [{lo}, {hi}]"
    if not _is_traced(t_max):
        v = _real("t_max", t_max, f"a finite time in {rng}")
        if not lo - tol <= v <= hi + tol:
            raise ValueError(f"t_max: {v} is outside {rng}; allowed: t_min < t_max <= {hi}")
    if not _is_traced(t_min):
        v = _real("t_min", t_min, f"a finite time in {rng}")
        if not lo - tol <= v <= hi + tol:
            extra = " (at t <= 0 sigma = 0 and lambda = +inf)" if v <= 0 < lo else ""
            raise ValueError(f"t_min: {v} is outside {rng}{extra}; allowed: {lo} <= t_min < t_max")
    if not (_is_traced(t_max) or _is_traced(t_min)) and not float(t_max) > float(t_min):
        raise ValueError(f"t_min: {float(t_min)} is not below t_max = {float(t_max)} (need t_max > t_min); "
                         f"allowed: {lo} <= t_min < t_max <= {hi}")


def time_grid(schedule: NoiseSchedule, n_steps: int, spacing: str = "logsnr", end: str = "zero",
              t_max: Optional[float] = None, t_min: Optional[float] = None, rho: float = 7.0,
              times: Optional[Sequence[float]] = None, dtype=None) -> Grid:
    """Build an ``n_steps`` grid from ``t_max`` (default schedule.t_max) towards
    ``t_min`` (default schedule.t_min) with a named ``spacing``, or from explicit
    ``times`` (then ``spacing`` and ``n_steps`` are taken from them: pass the
    nodes down to t_min; with end="zero" sigma = 0 is appended).

    Bad arguments raise a ValueError whose message starts with the argument's name
    (``t_max: 2.0 is outside the schedule's time range [0.001, 1.0]; allowed: ...``):
    ``t_max`` / ``t_min`` outside [schedule.t_min, schedule.t_max] or not t_max > t_min,
    a non-finite or non-positive ``rho``, an unknown ``spacing`` / ``end``, an
    ``n_steps`` that is not an integer >= 1.  Values that are JAX tracers are not checked:
    traced ``times`` (learned or searched time points under ``jit`` / ``grad`` / ``vmap``)
    give a grid that is differentiable in them."""
    if not isinstance(end, str) or end not in ENDS:
        raise ValueError(f"end: unknown end {end!r}; allowed: {list(ENDS)}")
    dtype = dtype or jnp.result_type(float)
    t_max = schedule.t_max if t_max is None else t_max
    t_min = schedule.t_min if t_min is None else t_min
    if times is not None and any(_is_traced(v) for v in jax.tree_util.tree_leaves(times)):
        # traced times (a learned or searched grid under jit / grad / vmap): not checked here
        return grid_from_times(schedule, jnp.asarray(times), end=end, dtype=dtype)
    if times is not None:
        t = np.asarray(times, dtype=np.float64)
        if t.ndim != 1 or t.size < 2:
            raise ValueError(f"times: must be a 1-D sequence of at least 2 times, got shape {t.shape}")
        if not np.all(np.isfinite(t)) or np.any(np.diff(t) >= 0):
            raise ValueError("times: must be finite and strictly decreasing; "
                             f"got {np.array2string(t, precision=6, threshold=12)}")
        lo, hi = min(schedule.t_min, schedule.t_max), schedule.t_max
        tol = 1e-9 * max(1.0, abs(hi))
        if t[0] > hi + tol or t[-1] < lo - tol:
            raise ValueError(f"times: must lie within [t_min, t_max] = [{lo}, {hi}], "
                             f"got [{t[-1]}, {t[0]}]")
    else:
        if not isinstance(spacing, str) or spacing not in SPACINGS:
            raise ValueError(f"spacing: unknown spacing {spacing!r}; allowed: {list(SPACINGS)}")
        if isinstance(n_steps, (bool, np.bool_)) or not isinstance(n_steps, (int, np.integer)) or n_steps < 1:
            raise ValueError(f"n_steps: must be a positive integer, got {n_steps!r}; allowed: integers >= 1")
        _check_interval(schedule, t_max, t_min)
        t_max, t_min = float(t_max), float(t_min)
        if not _is_traced(rho):
            rho = _real("rho", rho, "a finite number > 0")
            if not rho > 0:
                raise ValueError(f"rho: must be positive, got {rho}; allowed: a finite number > 0")
        n_nodes = n_steps if end == "zero" else n_steps + 1
        if end == "zero" and n_nodes == 1:
            t = np.array([t_max])
        elif spacing in ("leading", "trailing", "linspace"):
            if not isinstance(schedule, VPDiscrete):
                raise ValueError(f"spacing: {spacing!r} needs a discrete schedule (VPDiscrete), got "
                                 f"{type(schedule).__name__}; allowed for it: "
                                 f"{[s for s in SPACINGS if s not in ('leading', 'trailing', 'linspace')]}")
            t = _integer_spacing(schedule, n_nodes, spacing)
        else:
            t = _spacing_times(schedule, n_nodes, spacing, t_max, t_min, rho, dtype)
        if not np.all(np.isfinite(t)):
            raise ValueError(f"t_min: the {spacing!r} grid from t_max = {t_max} to t_min = {t_min} has non-finite "
                             f"times {t.tolist()}; allowed: a range where the schedule's lambda is finite")
    return grid_from_times(schedule, t, end=end, dtype=dtype)


def grid_from_times(schedule: NoiseSchedule, t, end: str = "zero", dtype=None) -> Grid:
    """A Grid through the given (already validated) nodes; with end="zero" a
    sigma = 0 node is appended.  Works on traced ``t`` too (for learned grids)."""
    dtype = dtype or jnp.result_type(float)
    t = jnp.asarray(t, dtype)
    alpha, sigma, lam = schedule.alpha(t), schedule.sigma(t), schedule.lambda_(t)
    if end == "zero":
        one = jnp.ones((1,), dtype)
        t = jnp.concatenate([t, jnp.full((1,), schedule.t_zero, dtype)])
        alpha = jnp.concatenate([alpha, one])
        sigma = jnp.concatenate([sigma, 0 * one])
        lam = jnp.concatenate([lam, jnp.full((1,), jnp.inf, dtype)])
    return Grid(t=t, alpha=alpha, sigma=sigma, lam=lam, end=end)
