"""Scoring candidate schedules: one compiled program for a whole population.

:func:`make_scorer` returns ``score_fn(genotypes) -> dict`` that decodes every
genotype of a batch, compiles it to a :class:`samplax.solvers.unified.Table`
(:func:`samplax.solvers.schedule.schedule_table`) and runs
:func:`samplax.solvers.unified.run_table` from the same start points, all under
one ``vmap`` (one compiled program whatever the decisions of each candidate).
The error of a sample is the Euclidean (L2) distance to its reference over the
sample dimensions; a candidate's ``mean_l2`` / ``max_l2`` are the mean / max
over samples.  Lower is better; a candidate with any non-finite sample scores
+inf in every metric.

References: for the analytic Gaussian mixtures the exact probability-flow ODE
solution from the same x_T (``gmm.ode_solution``, float64); for a trained model
a many-step teacher solution (:func:`teacher_reference`).
"""
from __future__ import annotations

from typing import Callable, Optional

import jax
import jax.numpy as jnp

from samplax.solvers.schedule import schedule_table
from samplax.solvers.base import jit_cpu_fast
from samplax.solvers.unified import run_table

METRICS = ("mean_l2", "max_l2", "mode_flip")


def sample_errors(x0, reference):
    """(B,) Euclidean distance over all but the leading axis."""
    d = (x0 - reference).reshape(x0.shape[0], -1)
    return jnp.sqrt(jnp.sum(d * d, axis=-1))


def make_scorer(model, noise_schedule, space, x_T, reference, metric: str = "mean_l2",
                reference_mode=None, mode_fn: Optional[Callable] = None, jit: bool = True):
    """``score_fn(genotypes) -> dict(score, mean_l2, max_l2[, mode_flip])``, each (P,).

    ``x_T`` (B, ...) start points and ``reference`` (B, ...) their reference x_0
    (cast to x_T's dtype: use float32 for searches).  ``reference_mode`` (B,) int
    and ``mode_fn(x0) -> (B,) int`` add ``mode_flip``, the fraction of samples whose
    mode differs from their reference's (for a Gaussian mixture: the argmax of
    ``gmm.component_log_posterior(x0, 0.0)``).  ``metric`` selects ``score``:
    "mean_l2", "max_l2" or "mode_flip" (needs the mode)."""
    if metric not in METRICS:
        raise ValueError(f"make_scorer.metric: unknown metric {metric!r}; allowed: {list(METRICS)}")
    has_mode = reference_mode is not None and mode_fn is not None
    if metric == "mode_flip" and not has_mode:
        raise ValueError("make_scorer.metric: 'mode_flip' needs reference_mode and mode_fn")
    if (reference_mode is None) != (mode_fn is None):
        raise ValueError("make_scorer.reference_mode / mode_fn: give both or neither")
    x_T = jnp.asarray(x_T)
    if not jnp.issubdtype(x_T.dtype, jnp.floating):
        raise ValueError(f"make_scorer.x_T: must be floating point, got {x_T.dtype}")
    reference = jnp.asarray(reference, x_T.dtype)
    if reference.shape != x_T.shape:
        raise ValueError(f"make_scorer.reference: must have x_T's shape {x_T.shape}, got {reference.shape}")
    ref_mode = None if reference_mode is None else jnp.asarray(reference_mode, jnp.int32)
    if ref_mode is not None and ref_mode.shape != x_T.shape[:1]:
        raise ValueError(f"make_scorer.reference_mode: must have shape {x_T.shape[:1]}, got {ref_mode.shape}")
    dtype = x_T.dtype

    def one(g):
        sched = space.decode(g, dtype=dtype)
        tab = schedule_table(sched, noise_schedule, dtype=dtype)
        x0, _ = run_table(model, x_T, tab, diagnostics=False)
        err = sample_errors(x0, reference)
        ok = jnp.all(jnp.isfinite(err))
        inf = jnp.asarray(jnp.inf, dtype)
        out = dict(mean_l2=jnp.where(ok, jnp.mean(err), inf), max_l2=jnp.where(ok, jnp.max(err), inf))
        if has_mode:
            flip = jnp.mean((mode_fn(x0) != ref_mode).astype(dtype))
            out["mode_flip"] = jnp.where(ok, flip, inf)
        out["score"] = out[metric]
        return out

    def score_fn(genotypes):
        return jax.vmap(one)(genotypes)

    return jit_cpu_fast(score_fn) if jit else score_fn  # YNNPACK fusions off on CPU: ~10x faster here


def gmm_mode_fn(gmm):
    """The most likely mixture component of x0 at noise level 0 (argmax posterior)."""
    def mode(x0):
        return jnp.argmax(gmm.astype(x0.dtype).component_log_posterior(x0, 0.0), axis=-1)
    return mode


def teacher_reference(model, noise_schedule, x_T, n_steps: int = 200, spacing: str = "logsnr",
                      order: int = 3):
    """A many-step teacher x_0 from x_T for trained models: DPM-Solver++(3M) with
    ``n_steps`` steps on a ``spacing`` grid ending at sigma = 0 (in x_T's dtype)."""
    from samplax.solvers import dpm_solver_pp, sample
    from samplax.timesteps import time_grid

    if isinstance(n_steps, bool) or not isinstance(n_steps, int) or n_steps < 1:
        raise ValueError(f"teacher_reference.n_steps: must be an integer >= 1, got {n_steps!r}")
    x_T = jnp.asarray(x_T)
    grid = time_grid(noise_schedule, n_steps, spacing, end="zero", dtype=x_T.dtype)
    x0, _ = jax.jit(lambda x: sample(dpm_solver_pp(order=order), model, x, grid))(x_T)
    return x0


def gmm_reference(problem: str, x_T, n_steps: int = 2000):
    """(reference x0 float64 (B, d), its mode (B,) int32) for a GMM
    problem: the exact PF-ODE solution from x_T (``gmm.ode_solution`` in float64)."""
    import numpy as np

    from samplax.models import load_problem

    with jax.enable_x64(True):
        gmm, schedule, _ = load_problem(problem, dtype=jnp.float64)
        x0 = gmm.ode_solution(jnp.asarray(x_T, jnp.float64), 1.0, None, schedule, n_steps=n_steps)
        mode = jnp.argmax(gmm.component_log_posterior(x0, 0.0), axis=-1)
        x0, mode = np.asarray(x0, np.float64), np.asarray(mode, np.int32)
    return x0, mode
