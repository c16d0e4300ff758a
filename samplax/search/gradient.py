"""Gradient-based learning of solver schedules: time points and per-step coefficients.

The discrete decisions of a schedule (order, prediction type, derivative
estimation, corrector per step) are fixed by a template
(:class:`samplax.solvers.schedule.SolverSchedule`, e.g.
``constant_schedule(t, order=3)``); what is learned is

* the time points, monotone by construction: ``softmax(logits)`` are the
  fractions of the logSNR interval [lambda(t_max), lambda(t_min)] taken by the
  intervals between consecutive nodes, so t_0 = t_max and the last node = t_min
  exactly and the nodes are strictly decreasing for any logits (the same
  parameterisation as ``samplax.search.space.SearchSpace``'s ``logits`` field);
* optionally, additive per-step corrections ``delta`` on the table's predictor
  coefficients ``a``, ``c`` and corrector coefficients ``ca``, ``cc``
  (initialised at 0, with an L2 penalty), in the spirit of learned solver
  coefficients (e.g. Zhou et al. 2024 / Watson et al. 2022's learned samplers):
  the table is ``schedule_table(template with learned times) + delta``.

The loss differentiates through the one sampling program
(:func:`samplax.solvers.unified.run_table`) against reference x0 (the exact PF-ODE
solution for the analytic problems, or a many-step teacher solution) on a
training set of x_T, with optax; held-out x_T are only evaluated.

* :func:`learn_times`: the standalone loop (returns the schedule, the deltas and
  the loss history).
* :func:`gradient_search`: the same optimisation as a search ``Strategy``
  (``init / step / best / evaluations``; the state is a pytree of arrays).
"""
from __future__ import annotations

import dataclasses
import time
from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax

from samplax.solvers.schedule import SolverSchedule, schedule_table
from samplax.solvers.unified import Table, run_table

COEF_FIELDS = ("a", "c", "ca", "cc")

try:  # the shared Strategy type (samplax.search.strategies); a same-shaped local one otherwise
    from samplax.search.strategies import Strategy  # type: ignore
except Exception:  # pragma: no cover - depends on the merge state of samplax.search
    class Strategy(NamedTuple):
        init: Callable
        step: Callable
        best: Callable
        evaluations: Callable


# ----------------------------------------------------------------------------------------
# Time points <-> logits
# ----------------------------------------------------------------------------------------
def n_nodes(template: SolverSchedule) -> int:
    """Nodes from t_max to t_min (sigma = 0 not counted)."""
    return int(np.shape(template.times)[0])


def times_from_logits(noise_schedule, logits, dtype=None):
    """Strictly decreasing times from t_max to t_min (exact ends): the logSNR
    increments are ``softmax(logits) * (lambda(t_min) - lambda(t_max))``.
    ``logits`` has (nodes - 1,) entries.  Traceable and differentiable."""
    logits = jnp.asarray(logits)
    dtype = dtype or logits.dtype
    logits = logits.astype(dtype)
    t_max = jnp.asarray(noise_schedule.t_max, dtype)
    t_min = jnp.asarray(noise_schedule.t_min, dtype)
    if logits.shape[0] == 0:
        return t_max[None]
    lam_hi = noise_schedule.lambda_(t_max)
    lam_lo = noise_schedule.lambda_(t_min)
    frac = jnp.cumsum(jax.nn.softmax(logits))[:-1]
    inner = noise_schedule.t_from_lambda(lam_hi + (lam_lo - lam_hi) * frac).astype(dtype)
    return jnp.concatenate([t_max[None], inner, t_min[None]])


def logits_from_times(noise_schedule, times, dtype=None):
    """Logits whose :func:`times_from_logits` are ``times`` (centred log increments in
    logSNR).  ``times`` must run from t_max to t_min."""
    times = jnp.asarray(times)
    dtype = dtype or times.dtype
    times = times.astype(dtype)
    if times.shape[0] < 2:
        return jnp.zeros((0,), dtype)
    lam = noise_schedule.lambda_(times)
    z = jnp.log(jnp.maximum(jnp.diff(lam), jnp.finfo(dtype).tiny))
    return z - jnp.mean(z)


@dataclasses.dataclass(frozen=True)
class TimeSpace:
    """A minimal search space: the time points of ``template`` (its discrete choices
    fixed).  Genotype: ``dict(logits=(nodes - 1,))``.  Maps onto
    ``samplax.search.space.SearchSpace`` with ``searchable=("times",)``: the same
    ``logits`` field and decoding; :func:`gradient_search` accepts either."""

    noise_schedule: Any
    template: SolverSchedule

    def decode(self, g, dtype=None) -> SolverSchedule:
        times = times_from_logits(self.noise_schedule, g["logits"], dtype)
        return self.template.replace(times=times)

    def from_schedule(self, sched: SolverSchedule, dtype=None):
        return dict(logits=logits_from_times(self.noise_schedule, sched.times, dtype))


def _check_template(template, noise_schedule, name="template"):
    from samplax.solvers.schedule import ScheduleError, check_schedule

    if not isinstance(template, SolverSchedule):
        raise ScheduleError(f"{name}: must be a SolverSchedule (e.g. constant_schedule(times, order=2)), "
                            f"got {type(template).__name__}")
    check_schedule(template, noise_schedule, name=name)
    t = np.asarray(template.times, np.float64)
    if t.size > 1:
        tmax, tmin = float(noise_schedule.t_max), float(noise_schedule.t_min)
        tol = 1e-5 * max(1.0, abs(tmax))
        if abs(t[0] - tmax) > tol or abs(t[-1] - tmin) > tol:
            raise ScheduleError(f"{name}.times: must run from t_max = {tmax} to t_min = {tmin} (the learned "
                                f"times keep these ends), got [{t[0]}, {t[-1]}]")


# ----------------------------------------------------------------------------------------
# Coefficient corrections
# ----------------------------------------------------------------------------------------
def zero_deltas(tab: Table) -> dict:
    """Additive corrections for ``tab``'s a, c, ca, cc, all zero."""
    return {f: jnp.zeros_like(getattr(tab, f)) for f in COEF_FIELDS}


def apply_deltas(tab: Table, deltas: Optional[dict]) -> Table:
    """``tab`` with ``deltas`` added to its a, c, ca, cc (``None``: unchanged)."""
    if deltas is None:
        return tab
    return tab.replace(**{f: getattr(tab, f) + deltas[f].astype(getattr(tab, f).dtype) for f in COEF_FIELDS})


def deltas_penalty(deltas: Optional[dict]):
    if deltas is None:
        return 0.0
    return sum(jnp.sum(jnp.square(d)) for d in deltas.values())


# ----------------------------------------------------------------------------------------
# Losses
# ----------------------------------------------------------------------------------------
METRICS = ("mean_l2", "mse")


def sample_error(model, x_T, reference, tab: Table, metric: str = "mean_l2"):
    """Error of ``run_table(model, x_T, tab)`` to ``reference`` (B, ...):
    ``mean_l2`` = mean over samples of the Euclidean distance, ``mse`` = mean squared error."""
    x0, _ = run_table(model, x_T, tab, diagnostics=False)
    d = (x0 - reference.astype(x0.dtype)).reshape(x0.shape[0], -1)
    if metric == "mse":
        return jnp.mean(jnp.square(d))
    return jnp.mean(jnp.sqrt(jnp.sum(jnp.square(d), -1)))


def make_loss(model, x_T, reference, metric: str = "mean_l2") -> Callable:
    """``loss_fn(table) -> scalar`` (differentiable in the table's arrays)."""
    if metric not in METRICS:
        raise ValueError(f"metric: unknown metric {metric!r}; allowed: {list(METRICS)}")
    return lambda tab: sample_error(model, x_T, reference, tab, metric)


# ----------------------------------------------------------------------------------------
# The optimisation, as a search Strategy
# ----------------------------------------------------------------------------------------
def _optimizer(learning_rate, total_steps: Optional[int]):
    if isinstance(learning_rate, bool) or not isinstance(learning_rate, (int, float)) or not learning_rate > 0:
        raise ValueError(f"learning_rate: must be a positive number, got {learning_rate!r}")
    lr = learning_rate if not total_steps else optax.cosine_decay_schedule(learning_rate, total_steps, alpha=0.05)
    return optax.adam(lr)


def gradient_search(space, loss_fn: Callable, template: Optional[SolverSchedule] = None,
                    learning_rate: float = 1e-2, learn_coefficients: bool = False,
                    coef_penalty: float = 1e-3, coef_scale: float = 0.1,
                    total_steps: Optional[int] = None) -> Strategy:
    """Gradient descent on a schedule's time points (and coefficient corrections), as a
    search Strategy.

    ``space``: anything with ``decode(genotype) -> SolverSchedule`` and
    ``from_schedule(schedule) -> genotype`` whose genotype is a dict with a float
    ``logits`` entry: ``samplax.search.space.SearchSpace`` or :class:`TimeSpace`.
    Only ``logits`` is differentiated; the genotype's other (discrete) fields stay
    as ``template`` sets them (default: ``space.template`` for a TimeSpace, else
    ``space.decode`` of a zero-logit default).  ``loss_fn(table) -> scalar`` (e.g.
    :func:`make_loss`).  Coefficient corrections are parameterised as
    ``coef_scale * u`` (so Adam's step sizes suit both parts) with penalty
    ``coef_penalty * |delta|^2``; a cosine-decayed learning rate over
    ``total_steps`` when given.

    State (arrays only): ``params`` (genotype logits, coefficient parameters),
    ``opt`` (optax state), ``iteration``, ``best_params``, ``best_score``.
    ``step(state, key)`` evaluates the current candidate (loss and gradient: one
    real evaluation), records it, and takes one optimizer step;
    ``records = dict(genotypes=<the candidate, batch of 1>, score=(1,), deltas=...)``."""
    if template is None:
        template = getattr(space, "template", None)
    if template is None:
        raise ValueError("template: gradient_search needs the schedule whose discrete choices stay fixed "
                         "(template=constant_schedule(times, order=...)), or a TimeSpace")
    geno0 = space.from_schedule(template)
    dtype = jnp.asarray(geno0["logits"]).dtype
    base_tab = schedule_table(space.decode(geno0), space.noise_schedule)
    opt = _optimizer(learning_rate, total_steps)

    def split(params):
        g = dict(geno0, logits=params["logits"])
        deltas = None
        if learn_coefficients:
            deltas = {f: coef_scale * params["u"][f] for f in COEF_FIELDS}
        return g, deltas

    def objective(params):
        g, deltas = split(params)
        tab = apply_deltas(schedule_table(space.decode(g), space.noise_schedule), deltas)
        err = loss_fn(tab)
        return err + coef_penalty * deltas_penalty(deltas), err

    def init(key=None):
        params = {"logits": jnp.asarray(geno0["logits"], dtype)}
        if learn_coefficients:
            params["u"] = {f: jnp.zeros_like(v) for f, v in zero_deltas(base_tab).items()}
        return dict(params=params, opt=opt.init(params), iteration=jnp.zeros((), jnp.int32),
                    best_params=params, best_score=jnp.asarray(jnp.inf, dtype))

    def step(state, key=None):
        (total, err), grads = jax.value_and_grad(objective, has_aux=True)(state["params"])
        ok = jnp.isfinite(total) & jax.tree.reduce(lambda a, b: a & b,
                                                   jax.tree.map(lambda g: jnp.all(jnp.isfinite(g)), grads))
        grads = jax.tree.map(lambda g: jnp.where(ok, g, 0.0), grads)
        updates, opt_state = opt.update(grads, state["opt"], state["params"])
        params = optax.apply_updates(state["params"], updates)
        score = jnp.where(jnp.isfinite(err), err, jnp.inf)
        better = score < state["best_score"]
        best_params = jax.tree.map(lambda new, old: jnp.where(better, new, old), state["params"],
                                   state["best_params"])
        g, deltas = split(state["params"])
        records = dict(genotypes=jax.tree.map(lambda a: a[None], g), score=score[None], loss=total[None])
        if deltas is not None:
            records["deltas"] = jax.tree.map(lambda a: a[None], deltas)
        new = dict(params=params, opt=opt_state, iteration=state["iteration"] + 1, best_params=best_params,
                   best_score=jnp.minimum(score, state["best_score"]))
        return new, records

    def best(state):
        g, _ = split(state["best_params"])
        return g, state["best_score"]

    def evaluations(state):
        return state["iteration"]

    strat = Strategy(init=init, step=step, best=best, evaluations=evaluations)
    return strat


def best_deltas(state, coef_scale: float = 0.1) -> Optional[dict]:
    """The coefficient corrections of a :func:`gradient_search` state's best candidate."""
    u = state["best_params"].get("u")
    return None if u is None else {f: coef_scale * u[f] for f in COEF_FIELDS}


def learn_times(model, noise_schedule, template: SolverSchedule, x_train, ref_train, steps: int = 300,
                learning_rate: float = 2e-2, learn_coefficients: bool = False, coef_penalty: float = 1e-3,
                coef_scale: float = 0.1, metric: str = "mean_l2", x_val=None, ref_val=None,
                val_every: int = 0, log: Optional[Callable] = None):
    """Learn the time points (and optionally coefficient corrections) of ``template``
    on (``x_train``, ``ref_train``).  Returns ``(schedule, deltas, history)``:
    the schedule with the learned times (the best training loss seen), the
    corrections (``None`` without ``learn_coefficients``; apply them with
    :func:`apply_deltas` to ``schedule_table(schedule, noise_schedule)``) and
    ``history = dict(train=[...], val=[(iteration, value), ...], seconds=...)``.

    Only ``x_train`` enters the gradient; ``x_val`` / ``ref_val`` (a disjoint set)
    are evaluated every ``val_every`` iterations and at the end."""
    _check_template(template, noise_schedule)
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 1:
        raise ValueError(f"steps: must be an integer >= 1, got {steps!r}")
    if np.shape(x_train) != np.shape(ref_train):
        raise ValueError(f"ref_train: shape {np.shape(ref_train)} does not match x_train {np.shape(x_train)}")
    dtype = jnp.asarray(x_train).dtype
    template = template.replace(times=jnp.asarray(template.times, dtype))
    space = TimeSpace(noise_schedule, template)
    loss_fn = make_loss(model, jnp.asarray(x_train), jnp.asarray(ref_train), metric)
    strat = gradient_search(space, loss_fn, template, learning_rate=learning_rate,
                            learn_coefficients=learn_coefficients, coef_penalty=coef_penalty,
                            coef_scale=coef_scale, total_steps=steps)
    step = jax.jit(strat.step)
    xv = None if x_val is None else jnp.asarray(x_val, dtype)
    rv = None if x_val is None else jnp.asarray(ref_val, dtype)

    def _val(params):
        tab = schedule_table(space.decode(dict(logits=params["logits"])), noise_schedule)
        if learn_coefficients:
            tab = apply_deltas(tab, {f: coef_scale * params["u"][f] for f in COEF_FIELDS})
        return sample_error(model, xv, rv, tab, metric)

    val_fn = None if x_val is None else jax.jit(_val)

    state = strat.init(None)
    hist = dict(train=[], val=[])
    t0 = time.perf_counter()
    for it in range(steps):
        if val_fn is not None and val_every and it % val_every == 0:
            hist["val"].append((it, float(val_fn(state["params"]))))
        state, rec = step(state, None)
        hist["train"].append(float(rec["score"][0]))
        if log is not None and (it % max(steps // 10, 1) == 0):
            log(f"[learn_times] iter {it}: train {hist['train'][-1]:.5g}")
    jax.block_until_ready(state)
    if val_fn is not None:
        hist["val"].append((steps, float(val_fn(state["best_params"]))))
    hist["seconds"] = time.perf_counter() - t0
    g, _ = strat.best(state)
    sched = space.decode(g)
    return sched, best_deltas(state, coef_scale) if learn_coefficients else None, hist


def learned_table(schedule: SolverSchedule, noise_schedule, deltas: Optional[dict] = None) -> Table:
    """The table a learned schedule (and corrections) runs with."""
    return apply_deltas(schedule_table(schedule, noise_schedule), deltas)
