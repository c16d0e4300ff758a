"""Solver schedules: per-step decisions of the unified sampling framework, as data.

A :class:`SolverSchedule` chooses, for every step of an n-step solve (Liu et al.
2023, "A Unified Sampling Framework for Solver Searching of Diffusion
Probabilistic Models", USF):

* the time points ``times`` (t_0 = t_max > ... > t_min; with ``end="zero"`` a
  sigma = 0 node is appended, exactly as :func:`samplax.timesteps.time_grid`);
* the expansion ``order`` (1-3) of the exponential integrator (the number of
  model outputs the step combines: the current one and order - 1 past ones);
* the ``prediction`` type the step integrates (0 = data, 1 = noise);
* the ``derivative`` estimation: how the derivatives of the model output in
  lambda are estimated from the history and scaled (0 = DPM-Solver's
  "dpmsolver" differences, 1 = DPM-Solver's "taylor" differences, 2 = UniPC's
  B(h) = h weights (solved), 3 = UniPC's B(h) = e^h - 1 weights (its official
  constants));
* whether the UniC ``corrector`` refines the step with the model output at its
  end (no extra model call; never on the last step, which has no output);
* ``afs`` (static): the analytic first step (no model call at t_0).

:func:`schedule_table` compiles a schedule to a :class:`samplax.solvers.unified.Table`
(the coefficients of every step, traceable in all fields, so a batch of schedules
is one ``vmap`` and the time points can be learned by gradient).  The classic
multistep solvers are constant schedules: ``dpm_solver_pp(order=2)`` is order 2,
prediction data, derivative 0, no corrector (with its warm-up and
lower-order-final orders); ``unipc(order=2)`` is derivative 3 with the corrector
on every step but the last (and the step into t_min on a sigma = 0 grid).

The order of step i is used as given up to the available history (i + 1 model
outputs); a concrete schedule that asks for more is refused by
:func:`check_schedule` (a traced one is clipped).  The step into sigma = 0 is a
first-order (denoising) jump whatever its order says, as in every
lambda-based solver.
"""
from __future__ import annotations

import json
from typing import Optional

import flax.struct
import jax.numpy as jnp
import numpy as np

from samplax.solvers.multistep import _dpm_coeffs, _unipc_coeffs
from samplax.solvers.unified import Table, multistep_table
from samplax.timesteps import ENDS, Grid, grid_from_times

MAX_ORDER = 3
DERIVATIVES = ("dpmsolver", "taylor", "unipc_bh1", "unipc_bh2")
PREDICTIONS = ("data", "noise")
FORMAT = "samplax.solver_schedule/1"


@flax.struct.dataclass
class SolverSchedule:
    """Per-step decisions of an n-step solve (see the module doc).  ``times`` has
    n nodes with ``end="zero"`` (sigma = 0 is appended) and n + 1 otherwise."""

    times: jnp.ndarray
    order: jnp.ndarray
    prediction: jnp.ndarray
    derivative: jnp.ndarray
    corrector: jnp.ndarray
    end: str = flax.struct.field(pytree_node=False, default="zero")
    afs: bool = flax.struct.field(pytree_node=False, default=False)

    @property
    def n_steps(self) -> int:
        return self.order.shape[-1]

    @property
    def nfe(self) -> int:
        return self.n_steps + (1 if self.end == "denoise" else 0) - (1 if self.afs else 0)

    def grid(self, noise_schedule, dtype=None) -> Grid:
        return grid_from_times(noise_schedule, self.times, end=self.end, dtype=dtype or self.times.dtype)


def constant_schedule(times, order: int = 2, prediction: str = "data", derivative: str = "dpmsolver",
                      corrector: bool = False, end: str = "zero", afs: bool = False,
                      lower_order_final: bool = True) -> SolverSchedule:
    """The schedule of a classic multistep solver on given time points: ``order``
    with warm-up (and lower-order-final: the last step, or on a sigma = 0 grid the
    step into t_min, is first order; the one before at most second), the corrector
    on every step but the last (and, on a sigma = 0 grid, the step into t_min)."""
    times = jnp.asarray(times)
    n = times.shape[0] if end == "zero" else times.shape[0] - 1
    i = np.arange(n)
    p = np.minimum(order, i + 1)
    m = n - 1 if end == "zero" and n > 1 else n
    if lower_order_final:
        p = np.minimum(p, np.maximum(m - i, 1))
    if end == "zero" and n > 1:
        p[-1] = 1
    corr = np.full(n, bool(corrector))
    corr[-1] = False
    if corrector and end == "zero" and lower_order_final and n > 1:
        corr[-2] = False
    return SolverSchedule(times=times, order=jnp.asarray(p, jnp.int32),
                          prediction=jnp.full((n,), PREDICTIONS.index(prediction), jnp.int32),
                          derivative=jnp.full((n,), DERIVATIVES.index(derivative), jnp.int32),
                          corrector=jnp.asarray(corr), end=end, afs=afs)


def _families():
    """[(prediction index, derivative index, predictor fn, corrector fn)] for all 8 combinations."""
    out = []
    for pi, pred in enumerate(PREDICTIONS):
        data = pred == "data"
        for di, der in enumerate(DERIVATIVES):
            if der in ("dpmsolver", "taylor"):
                pf = _dpm_coeffs(data, der, "exact")
                _, cf = _unipc_coeffs(data, "bh2", True)
            else:
                variant = der[-3:]
                pf, cf = _unipc_coeffs(data, variant, variant == "bh2")
            out.append((pi, di, pf, cf))
    return out


_FAMILIES = _families()


def effective_orders(sched: SolverSchedule) -> jnp.ndarray:
    """The order each step runs: min(order, i + 1), and 1 for the step into sigma = 0."""
    n = sched.n_steps
    i = jnp.arange(n)
    p = jnp.clip(jnp.minimum(sched.order, i + 1), 1, MAX_ORDER)
    if sched.end == "zero":
        p = jnp.where(i == n - 1, 1, p)
    return p.astype(jnp.int32)


def schedule_table(sched: SolverSchedule, noise_schedule, dtype=None) -> Table:
    """The :class:`Table` of a schedule (traceable; vmap it over a batch of schedules).

    Both model views are kept in the history (every step may change its
    prediction type), so the model is asked for both at each evaluation."""
    grid = sched.grid(noise_schedule, dtype)
    n = grid.n_steps
    k = MAX_ORDER
    orders = effective_orders(sched)
    corrected = jnp.asarray(sched.corrector, bool) & (jnp.arange(n) < n - 1)
    a = ca = jnp.zeros((n,), grid.t.dtype)
    c = cc = jnp.zeros((n, k, 2), grid.t.dtype)
    cw = jnp.zeros((n, 2), grid.t.dtype)
    for pi, di, pf, cf in _FAMILIES:
        tab = multistep_table(pf, grid, noise_schedule, k, PREDICTIONS[pi], orders, corrector_fn=cf,
                              corrected=corrected)
        on = (sched.prediction == pi) & (sched.derivative == di)
        a = jnp.where(on, tab.a, a)
        ca = jnp.where(on, tab.ca, ca)
        c = c.at[:, :, pi].set(jnp.where(on[:, None], tab.c, c[:, :, pi]))
        cc = cc.at[:, :, pi].set(jnp.where(on[:, None], tab.cc, cc[:, :, pi]))
        cw = cw.at[:, pi].set(jnp.where(on, tab.cw[:, 0], cw[:, pi]))
    return Table(t=grid.t, alpha=grid.alpha, sigma=grid.sigma, a=a, c=c.reshape(n, k * 2), ca=ca,
                 cc=cc.reshape(n, k * 2), cw=cw, corrected=corrected, orders=orders, views=PREDICTIONS, k=k,
                 has_corrector=True, afs=sched.afs, end=sched.end)


# ----------------------------------------------------------------------------------------
# Validation, files
# ----------------------------------------------------------------------------------------
class ScheduleError(ValueError):
    """A malformed or invalid solver schedule (the message names the field)."""


def check_schedule(sched: SolverSchedule, noise_schedule=None, nfe: Optional[int] = None,
                   name: str = "schedule") -> None:
    """Refuse a malformed schedule with one :class:`ScheduleError` naming the field:
    times not strictly decreasing, not finite or outside the noise schedule's
    range; per-step arrays of the wrong length; an order outside 1..3 or beyond
    the available history (order of step i <= i + 1); an unknown prediction or
    derivative code; an ``nfe`` that the schedule does not spend."""
    if sched.end not in ENDS:
        raise ScheduleError(f"{name}.end: unknown end {sched.end!r}; allowed: {list(ENDS)}")
    t = np.asarray(sched.times, np.float64)
    if t.ndim != 1 or t.size < 1:
        raise ScheduleError(f"{name}.times: must be a 1-D array of times, got shape {t.shape}")
    n = t.size if sched.end == "zero" else t.size - 1
    if n < 1:
        raise ScheduleError(f"{name}.times: {t.size} node(s) make no step with end={sched.end!r}; allowed: at least "
                            f"{1 if sched.end == 'zero' else 2} nodes")
    if not np.all(np.isfinite(t)):
        raise ScheduleError(f"{name}.times: must be finite, got {np.array2string(t, precision=6, threshold=12)}")
    if np.any(np.diff(t) >= 0):
        raise ScheduleError(f"{name}.times: must be strictly decreasing (from high noise to low), got "
                            f"{np.array2string(t, precision=6, threshold=12)}")
    if noise_schedule is not None:
        lo, hi = float(noise_schedule.t_min), float(noise_schedule.t_max)
        tol = 1e-6 * max(1.0, abs(hi))
        if t[0] > hi + tol or t[-1] < lo - tol:
            raise ScheduleError(f"{name}.times: must lie within the noise schedule's range [{lo}, {hi}], got "
                                f"[{t[-1]}, {t[0]}]")
    for field in ("order", "prediction", "derivative", "corrector"):
        v = np.asarray(getattr(sched, field))
        if v.shape != (n,):
            raise ScheduleError(f"{name}.{field}: must have one entry per step ({n} steps for {t.size} time points "
                                f"with end={sched.end!r}), got shape {v.shape}")
    order = np.asarray(sched.order)
    if order.dtype.kind not in "iu" or np.any(order < 1) or np.any(order > MAX_ORDER):
        raise ScheduleError(f"{name}.order: must be integers in 1..{MAX_ORDER}, got {order.tolist()}")
    hist = np.arange(n) + 1
    if np.any(order > hist):
        i = int(np.argmax(order > hist))
        raise ScheduleError(f"{name}.order: step {i} asks for order {int(order[i])} but only {i + 1} model "
                            f"output(s) exist by then; allowed: order of step i <= i + 1")
    for field, allowed in (("prediction", PREDICTIONS), ("derivative", DERIVATIVES)):
        v = np.asarray(getattr(sched, field))
        if v.dtype.kind not in "iu" or np.any(v < 0) or np.any(v >= len(allowed)):
            raise ScheduleError(f"{name}.{field}: must be codes in 0..{len(allowed) - 1} "
                                f"({', '.join(f'{i} = {a}' for i, a in enumerate(allowed))}), got {v.tolist()}")
    if np.asarray(sched.corrector).dtype != bool:
        raise ScheduleError(f"{name}.corrector: must be booleans, got dtype {np.asarray(sched.corrector).dtype}")
    if sched.afs and n < 1:
        raise ScheduleError(f"{name}.afs: needs at least one step")
    if nfe is not None and sched.nfe != nfe:
        raise ScheduleError(f"{name}: spends {sched.nfe} model evaluations ({n} steps, end={sched.end!r}, "
                            f"afs={sched.afs}), not nfe={nfe}; allowed: a schedule of matching length")


def check_table(tab: Table, name: str = "table") -> None:
    """Refuse a concrete table with non-finite coefficients (naming the first bad step)."""
    for field in ("a", "c", "ca", "cc", "cw"):
        v = np.asarray(getattr(tab, field))
        bad = ~np.isfinite(v.reshape(v.shape[0], -1)).all(axis=1)
        if np.any(bad):
            raise ScheduleError(f"{name}.{field}: non-finite coefficient at step {int(np.argmax(bad))}; allowed: "
                                f"finite numbers")


def schedule_to_dict(sched: SolverSchedule, **meta) -> dict:
    return {"format": FORMAT, "end": sched.end, "afs": bool(sched.afs),
            "times": [float(v) for v in np.asarray(sched.times, np.float64)],
            "order": [int(v) for v in np.asarray(sched.order)],
            "prediction": [PREDICTIONS[int(v)] for v in np.asarray(sched.prediction)],
            "derivative": [DERIVATIVES[int(v)] for v in np.asarray(sched.derivative)],
            "corrector": [bool(v) for v in np.asarray(sched.corrector)], "meta": meta}


def schedule_from_dict(d: dict, name: str = "schedule") -> SolverSchedule:
    """A schedule from :func:`schedule_to_dict`'s form (names or codes for prediction and
    derivative); malformed content raises :class:`ScheduleError` naming the field."""
    if not isinstance(d, dict):
        raise ScheduleError(f"{name}: must be a mapping with times, order, prediction, derivative, corrector")
    missing = [f for f in ("times", "order") if f not in d]
    if missing:
        raise ScheduleError(f"{name}: missing field(s) {missing}; a schedule has times, order, prediction, "
                            f"derivative, corrector, end, afs")
    end = d.get("end", "zero")
    afs = d.get("afs", False)
    if not isinstance(afs, bool):
        raise ScheduleError(f"{name}.afs: must be true or false, got {afs!r}")
    n = len(d["order"])

    def codes(field, allowed, default):
        vals = d.get(field, [default] * n)
        if not isinstance(vals, (list, tuple)):
            raise ScheduleError(f"{name}.{field}: must be a list, got {vals!r}")
        out = []
        for v in vals:
            if isinstance(v, str) and v in allowed:
                out.append(allowed.index(v))
            elif isinstance(v, int) and not isinstance(v, bool) and 0 <= v < len(allowed):
                out.append(v)
            else:
                raise ScheduleError(f"{name}.{field}: {v!r} is not one of {list(allowed)}")
        return np.asarray(out, np.int32)

    try:
        times = np.asarray(d["times"], np.float64)
        order = np.asarray(d["order"])
    except (TypeError, ValueError) as e:
        raise ScheduleError(f"{name}.times / order: not numeric arrays ({e})") from None
    if order.dtype.kind == "f" and np.all(np.isfinite(order)) and np.all(order == np.round(order)):
        order = order.astype(np.int32)
    corr = d.get("corrector", [False] * n)
    if not isinstance(corr, (list, tuple)) or not all(isinstance(v, bool) for v in corr):
        raise ScheduleError(f"{name}.corrector: must be a list of true/false, got {corr!r}")
    sched = SolverSchedule(times=times, order=order, prediction=codes("prediction", PREDICTIONS, "data"),
                           derivative=codes("derivative", DERIVATIVES, "dpmsolver"),
                           corrector=np.asarray(corr, bool), end=end, afs=afs)
    check_schedule(sched, name=name)
    return sched


def save_schedule(path, sched: SolverSchedule, **meta) -> None:
    """Write a schedule as JSON (atomically) for a later config or notebook to load."""
    from samplax.io import atomic_write_text

    atomic_write_text(path, json.dumps(schedule_to_dict(sched, **meta), indent=1))


def load_schedule(path, noise_schedule=None, nfe: Optional[int] = None) -> SolverSchedule:
    """Read a schedule written by :func:`save_schedule` (validated; see :func:`check_schedule`)."""
    from samplax.io import as_path

    p = as_path(path)
    try:
        d = json.loads(p.read_text())
    except FileNotFoundError:
        raise ScheduleError(f"schedule file: {path} does not exist") from None
    except json.JSONDecodeError as e:
        raise ScheduleError(f"schedule file: {path} is not JSON ({e})") from None
    sched = schedule_from_dict(d, name=f"schedule file {path}")
    check_schedule(sched, noise_schedule, nfe, name=f"schedule file {path}")
    return sched


# ----------------------------------------------------------------------------------------
# A schedule file as a solver (the registry's "schedule")
# ----------------------------------------------------------------------------------------
def schedule_solver(file: str = "", afs: bool = False):
    """The solver of a schedule file (:func:`save_schedule`): its per-step orders,
    prediction types, derivative estimates and corrector flags, on the grid it is given
    (whose length and end must match the file's; ``grid.spacing="file"`` in a config
    uses the file's own time points).  ``afs`` must equal the file's.  NFE = the file's."""
    from samplax.solvers.base import Solver, check_options

    check_options(schedule_solver, locals())
    if not file:
        raise ValueError("file: the schedule solver needs the path of a schedule file (save_schedule / a search's "
                         "best_schedule.json); allowed: an existing file")
    sched = load_schedule(file)
    if bool(afs) != bool(sched.afs):
        raise ValueError(f"afs: {afs} differs from the schedule file's afs={sched.afs} ({file}); allowed: {sched.afs}")
    n_file = sched.n_steps

    def table(grid, noise_schedule):
        if grid.n_steps != n_file or grid.end != sched.end:
            raise ValueError(f"grid: the schedule file {file} has {n_file} steps ending {sched.end!r}, the grid "
                             f"{grid.n_steps} ending {grid.end!r}; allowed: a grid of the file's length and end "
                             f"(grid.spacing='file' uses its time points)")
        times = grid.t[:-1] if grid.ends_at_zero else grid.t
        return schedule_table(sched.replace(times=times), noise_schedule, dtype=grid.t.dtype)

    def nfe(n_steps, end):
        return n_steps + (1 if end == "denoise" else 0) - (1 if afs else 0)

    def step_orders(grid, i):
        p = effective_orders(sched)[i]
        return p, p

    def unsupported(*a, **k):
        raise NotImplementedError("the schedule solver runs as a step table only (samplax.solvers.sample)")

    return Solver(name="schedule", init=unsupported, step=unsupported, nfe=nfe, order=int(np.max(sched.order)),
                  min_steps=n_file, view="both", step_orders=step_orders, table=table)

