"""A resumable solver-schedule search: ``run_search(config, workdir)``.

One run = one config (:func:`search_config`) -> a workdir holding::

    config.json            the config and its identity (a rerun of another config is refused)
    results.jsonl          one row per candidate evaluated for real (iteration, index, score,
                           metrics, the decoded schedule: times, logSNR, orders, predictions,
                           derivative estimation, corrector flags)
    checkpoints/<k>/       Orbax: the strategy state after k iterations (+ a checksummed meta)
    best_schedule.json     the best schedule (samplax.solvers.schedule.save_schedule), with
                           its held-out evaluation and the baselines' in ``meta``
    best_schedule.png      its time points on the logSNR axis, order / prediction / corrector per step
    search_progress.png    best score so far against the number of real evaluations
    summary.md, summary.json

The loop: ``state = strategy.init(fold_in(key, 2^31 - 1))``, then for i = done ..
iterations - 1: ``state, records = step(state, fold_in(key, i))`` (``step`` jitted once),
one row per record appended, and the state checkpointed every ``checkpoint_every``
iterations and at the last.  The run is a pure function of its config, so a process
killed at any moment (kill -9 included) and rerun restores the newest intact
checkpoint, drops the rows of the iterations after it (atomically) and ends with the
rows and the best schedule of an uninterrupted run.

Scoring uses ``n_search_samples`` start points (PRNG stream 2 of ``search.seed``); the
best schedule and the hand-designed baselines (DPM-Solver++(2M) and UniPC-bh2 order 2
on the logSNR grid at the same NFE) are compared on ``n_eval_samples`` held-out start
points (``search.eval_prior``: the sampling runs' stream 0 of ``search.eval_seed``, or
the problem file's benchmark start points), which the search never sees.  The
reference is the exact PF-ODE solution for the analytic mixtures, or a many-step
teacher solution (DPM-Solver++(3M), ``reference.teacher_steps``) for trained models.

Strategies are named in :data:`STRATEGIES` (one explicit dict of import specs, loaded
only when used): random, evolution, s3 (``samplax.search``), gradient
(``samplax.search.gradient``) and palm_mean (``samplax.search.palm``).
"""
from __future__ import annotations

import importlib
import inspect
import json
import math
import os
import time
from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from samplax import io as sio
from samplax.solvers.base import jit_cpu_fast
from samplax.experiment import cache as refcache
from samplax.experiment import loading
from samplax.experiment import results as store
from samplax.experiment.checkpoints import CheckpointDamaged, Checkpoints, resume_run
from samplax.experiment.config import _COMMON, Field, _check_tree, _choice, _nfe, _nonneg, _positive
from samplax.experiment.errors import ConfigError
from samplax.experiment.identity import identity, settings_hash
from samplax.experiment.progress import Progress
from samplax.experiment.registry import DTYPES
from samplax.schedules import prior_std
from samplax.solvers.schedule import (DERIVATIVES, PREDICTIONS, SolverSchedule, check_schedule, constant_schedule,
                                      effective_orders, save_schedule, schedule_table)
from samplax.solvers.unified import run_table
from samplax.timesteps import time_grid

CHECKPOINT_DIR = "checkpoints"
BEST_FILE = "best_schedule.json"
BEST_PNG = "best_schedule.png"
PROGRESS_PNG = "search_progress.png"
SUMMARY_MD = "summary.md"
SUMMARY_JSON = "summary.json"
DERIVED = (store.RESULTS_FILE, store.CONFIG_FILE, store.CONFIG_HISTORY_FILE, store.DAMAGED_FILE, CHECKPOINT_DIR,
           BEST_FILE, BEST_PNG, PROGRESS_PNG, SUMMARY_MD, SUMMARY_JSON)
INIT_FOLD = 2**31 - 1      # the strategy's init key: fold_in(key, INIT_FOLD); iteration i: fold_in(key, i)
SEARCH_STREAM = 2          # x_T of the search points: fold_in(fold_in(PRNGKey(search.seed), 2), i)
EVAL_STREAM = 0            # held-out points: fold_in(fold_in(PRNGKey(eval_seed), 0), i), as sampling runs
FIELDS = ("times", "order", "prediction", "derivative", "corrector")
SCORER_METRICS = ("mean_l2", "max_l2", "mode_flip")
ENDS = ("zero", "denoise")
EVAL_PRIORS = ("key", "problem")
REFERENCES = ("exact", "teacher")
BASELINES = (("dpm_solver_pp", dict(order=2)),
             ("unipc", dict(order=2, derivative="unipc_bh2", corrector=True)))


# ---------------------------------------------------------------------------------------
# The strategy registry: name -> where the factory lives and what it is given
# ---------------------------------------------------------------------------------------
class StrategyEntry(NamedTuple):
    """``factory``: "module:callable" (imported when used) or the callable;
    ``objective``: "score_fn" (a population scorer: random, evolution, s3) or "loss_fn"
    (a differentiable loss on a Table: gradient); ``section``: the config section with
    its options (None: only ``search.population``); ``space``: the search space class."""

    factory: object
    objective: str = "score_fn"
    section: Optional[str] = None
    space: object = "samplax.search.space:SearchSpace"


STRATEGIES = {
    "random": StrategyEntry("samplax.search.strategies:random_search"),
    "evolution": StrategyEntry("samplax.search.strategies:evolution", section="evolution"),
    "s3": StrategyEntry("samplax.search.s3:s3", section="s3"),
    "gradient": StrategyEntry("samplax.search.gradient:gradient_search", objective="loss_fn", section="gradient"),
    "palm_mean": StrategyEntry("samplax.search.palm:palm_mean", section="palm"),
}
SCORER = "samplax.search.evaluate:make_scorer"
LOSS = "samplax.search.gradient:make_loss"


def _resolve(spec, what: str):
    """The object of a "module:attr" spec (or ``spec`` itself when not a string)."""
    if not isinstance(spec, str):
        return spec
    module, attr = spec.split(":")
    try:
        return getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as e:
        raise ConfigError("config.search.strategy", f"{what} {spec} is not available in this installation "
                                                    f"({type(e).__name__}: {e})") from None


# ---------------------------------------------------------------------------------------
# Config
# ---------------------------------------------------------------------------------------
def search_config() -> ml_collections.ConfigDict:
    """Defaults of a search run (configs/search_*.py override a few fields)."""
    from samplax.experiment.config import sample_config

    c = ml_collections.ConfigDict()
    c.model = sample_config().model           # as configs/gmm.py: built-in, trained workdir or user factory
    c.nfe = 5
    c.end = "zero"                            # "zero" (last step jumps to sigma = 0) or "denoise"
    c.afs = False                             # analytic first step (saves one model evaluation)
    c.dtype = "float32"
    c.search = ml_collections.ConfigDict(dict(
        strategy="evolution",                 # one of STRATEGIES: random, evolution, s3, gradient, palm_mean
        iterations=20,
        population=64,                        # candidates per iteration (random, evolution, s3's archive seed)
        seed=0,                               # the strategy's PRNG and the search start points
        n_search_samples=256,                 # start points that score candidates
        n_eval_samples=4096,                  # held-out start points for the final comparison
        eval_prior="key",                     # "key": stream 0 of eval_seed; "problem": the benchmark's x_T
        eval_seed=0,
        searchable=FIELDS,                    # the per-step decisions searched (others: DPM-Solver++(2M))
        max_order=3,
        metric="mean_l2",                     # the score: mean_l2, max_l2 or mode_flip (GMMs)
        seed_baselines=True,                  # start from the hand-designed baselines (when supported)
        evolution=ml_collections.ConfigDict(dict(parents=16, mutation_rate=0.2, crossover=0.5)),
        s3=ml_collections.ConfigDict(dict(candidates=4096, top_k=64, hidden=(64, 64), train_steps=200, parents=16,
                                          mutation_rate=0.2)),
        gradient=ml_collections.ConfigDict(dict(learning_rate=1e-2, template="unipc", template_order=2,
                                                decay=True)),
        palm=ml_collections.ConfigDict(dict(batch=4, dims=4, radius=2.0, kernel="matern52", eps=1e-3,
                                            max_nodes=5000, explore=0.1, capacity=512)),
    ))
    c.reference = ml_collections.ConfigDict(dict(
        kind="exact",                         # "exact" (analytic GMMs) or "teacher" (trained / user models)
        exact_steps=1000,                     # RK4 steps (x2, Richardson) of the float64 exact reference
        teacher_steps=200,                    # DPM-Solver++(3M) steps of the teacher
    ))
    c.checkpoint_every = 5
    c.keep_checkpoints = 3
    return c


# fields that say how, not what: a rerun may change them
NON_IDENTITY_FIELDS = ("checkpoint_every", "keep_checkpoints")


def _fraction(path, v):
    if not (math.isfinite(v) and 0.0 <= v <= 1.0):
        raise ConfigError(path, f"must be a number in [0, 1], got {v!r}")


def _pos_float(path, v):
    if not (math.isfinite(v) and v > 0):
        raise ConfigError(path, f"must be a finite positive number, got {v!r}")


def _searchable(path, v):
    if len(v) == 0:
        raise ConfigError(path, f"must name at least one field; allowed: {list(FIELDS)}")
    for i, f in enumerate(v):
        if f not in FIELDS:
            raise ConfigError(f"{path}[{i}]", f"unknown field {f!r}; allowed: {list(FIELDS)}")
    if len(set(v)) != len(v):
        raise ConfigError(path, f"has duplicate entries: {tuple(v)!r}")


def _hidden(path, v):
    if len(v) == 0 or any(h < 1 for h in v):
        raise ConfigError(path, f"must be a non-empty tuple of positive layer widths, got {tuple(v)!r}")


def _order(path, v):
    if not 1 <= v <= 3:
        raise ConfigError(path, f"must be 1, 2 or 3, got {v!r}")


def _palm_explore(path, v):
    if not (math.isfinite(v) and 0.0 <= v <= 2.0):
        raise ConfigError(path, f"must be a number in [0, 2], got {v!r}")


def _samples(path, v):
    if not 1 <= v <= 2**24:
        raise ConfigError(path, f"must be an integer in [1, 2^24], got {v!r}")


SEARCH_SCHEMA = {
    "model": _COMMON["model"],
    "nfe": Field("int", check=_nfe),
    "end": Field("str", check=_choice(ENDS)),
    "afs": Field("bool"),
    "dtype": Field("str", check=_choice(DTYPES)),
    "search": {
        "strategy": Field("str"),
        "iterations": Field("int", check=_positive),
        "population": Field("int", check=_positive),
        "seed": Field("int", check=_nonneg),
        "n_search_samples": Field("int", check=_samples),
        "n_eval_samples": Field("int", check=_samples),
        "eval_prior": Field("str", check=_choice(EVAL_PRIORS)),
        "eval_seed": Field("int", check=_nonneg),
        "searchable": Field("tuple[str]", check=_searchable),
        "max_order": Field("int", check=_order),
        "metric": Field("str", check=_choice(SCORER_METRICS)),
        "seed_baselines": Field("bool"),
        "evolution": {"parents": Field("int", check=_positive), "mutation_rate": Field("float", check=_fraction),
                      "crossover": Field("float", check=_fraction)},
        "s3": {"candidates": Field("int", check=_positive), "top_k": Field("int", check=_positive),
               "hidden": Field("tuple[int]", check=_hidden), "train_steps": Field("int", check=_positive),
               "parents": Field("int", check=_positive), "mutation_rate": Field("float", check=_fraction)},
        "gradient": {"learning_rate": Field("float", check=_pos_float),
                     "template": Field("str", check=_choice(tuple(b for b, _ in BASELINES))),
                     "template_order": Field("int", check=_order), "decay": Field("bool")},
        "palm": {"batch": Field("int", check=_positive), "dims": Field("int", check=_nonneg),
                 "radius": Field("float", check=_pos_float), "kernel": Field("str", check=_choice(("se", "matern52"))),
                 "eps": Field("float", check=_pos_float), "max_nodes": Field("int", check=_positive),
                 "explore": Field("float", check=_palm_explore), "capacity": Field("int", check=_positive)},
    },
    "reference": {"kind": Field("str", check=_choice(REFERENCES)),
                  "exact_steps": Field("int", check=_positive), "teacher_steps": Field("int", check=_positive)},
    "checkpoint_every": Field("int", check=_positive),
    "keep_checkpoints": Field("int", check=_positive),
}


def validate_search(config) -> dict:
    """Schema and cross-field checks of a search config (no files, no model loaded);
    returns it as a plain dict.  One ConfigError naming the field."""
    if isinstance(config, ml_collections.ConfigDict):
        values = config.to_dict()
    elif isinstance(config, dict):
        values = json.loads(json.dumps(config, default=list))
    else:
        raise ConfigError("config", f"must be an ml_collections.ConfigDict (e.g. search_config()), got "
                                    f"{type(config).__name__}")
    _check_tree(SEARCH_SCHEMA, values, "config")
    s = values["search"]
    if s["strategy"] not in STRATEGIES:
        raise ConfigError("config.search.strategy", f"unknown strategy {s['strategy']!r}; allowed: "
                                                    f"{sorted(STRATEGIES)}")
    steps = n_steps(values)
    if steps < 1:
        raise ConfigError("config.nfe", f"{values['nfe']} evaluations make no step with end={values['end']!r}, "
                                        f"afs={values['afs']}; allowed: nfe >= {2 if values['end'] == 'denoise' else 1}")
    entry = STRATEGIES[s["strategy"]]
    if entry.section == "evolution" and s["evolution"]["parents"] > s["population"]:
        raise ConfigError("config.search.evolution.parents", f"must be <= config.search.population "
                                                             f"({s['population']}), got {s['evolution']['parents']}")
    if entry.section == "s3":
        if s["s3"]["top_k"] > s["s3"]["candidates"]:
            raise ConfigError("config.search.s3.top_k", f"must be <= config.search.s3.candidates "
                                                        f"({s['s3']['candidates']}), got {s['s3']['top_k']}")
        if s["s3"]["parents"] > s["population"]:
            raise ConfigError("config.search.s3.parents", f"must be <= config.search.population "
                                                          f"({s['population']}), got {s['s3']['parents']}")
    if entry.section == "palm":
        if "times" not in s["searchable"]:
            raise ConfigError("config.search.searchable", "the 'palm_mean' strategy moves the time points: must "
                                                          f"include 'times', got {tuple(s['searchable'])!r}")
        if s["palm"]["capacity"] < s["palm"]["batch"] + 1:
            raise ConfigError("config.search.palm.capacity", f"must be >= config.search.palm.batch + 1 "
                                                             f"({s['palm']['batch'] + 1}), got {s['palm']['capacity']}")
    if entry.objective == "loss_fn" and s["metric"] != "mean_l2":
        raise ConfigError("config.search.metric", f"the {s['strategy']!r} strategy differentiates 'mean_l2'; got "
                                                  f"{s['metric']!r}")
    if s["eval_prior"] == "problem" and values["model"]["name"] not in ("gmm2d", "gmm64d"):
        raise ConfigError("config.search.eval_prior", f"'problem' (the benchmark start points) exists for gmm2d and "
                                                      f"gmm64d, not model {values['model']['name']!r}; allowed: 'key'")
    if s["metric"] == "mode_flip" and values["model"]["name"] not in ("gmm2d", "gmm64d"):
        raise ConfigError("config.search.metric", "'mode_flip' needs a Gaussian mixture (gmm2d, gmm64d)")
    return values


def n_steps(cfg: dict) -> int:
    return cfg["nfe"] - (1 if cfg["end"] == "denoise" else 0) + (1 if cfg["afs"] else 0)


def search_identity(cfg: dict) -> dict:
    """The config without the fields that do not change results, and without the option
    sections of the strategies not run."""
    out = identity(cfg, NON_IDENTITY_FIELDS)
    section = STRATEGIES[cfg["search"]["strategy"]].section
    for name in ("evolution", "s3", "gradient", "palm"):
        if name != section:
            out["search"].pop(name, None)
    if STRATEGIES[cfg["search"]["strategy"]].objective == "loss_fn":
        out["search"].pop("population", None)
        out["search"].pop("seed_baselines", None)
    return out


# ---------------------------------------------------------------------------------------
# Start points and references
# ---------------------------------------------------------------------------------------
def start_points(seed: int, stream: int, n: int, shape, dtype, scale: float = 1.0) -> np.ndarray:
    """x_T of samples 0..n-1: N(0, scale^2 I) from fold_in(fold_in(PRNGKey(seed), stream), i)."""
    shape = tuple(int(v) for v in shape)

    @jax.jit
    def draw(seed):
        k = jax.random.fold_in(jax.random.PRNGKey(seed), stream)
        return jax.vmap(lambda i: jax.random.normal(jax.random.fold_in(k, i), shape, dtype))(jnp.arange(n))
    return np.asarray(draw(jnp.uint32(seed))) * np.asarray(scale, np.dtype(dtype))


def _exact_reference(loaded, x_T: np.ndarray, steps: int, key: dict) -> np.ndarray:
    def compute():
        with jax.enable_x64(True):
            gmm = loaded.gmm.astype(jnp.float64)
            sched = loading.registry.MODELS[loaded.problem](jnp.float64).schedule if loaded.user is None else \
                jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), loaded.schedule)
            return np.asarray(gmm.ode_solution(jnp.asarray(x_T, jnp.float64), float(sched.t_max), None, sched,
                                               n_steps=steps))
    return refcache.cached_array("search_ref", dict(key, kind="exact", steps=steps), compute)


def teacher_solution(model, noise_schedule, x_T, n_steps: int = 200):
    """A many-step teacher x_0 from x_T: DPM-Solver++(3M), ``n_steps`` logSNR steps to sigma = 0."""
    from samplax.solvers import dpm_solver_pp, sample

    grid = time_grid(noise_schedule, n_steps, "logsnr", end="zero", dtype=jnp.asarray(x_T).dtype)
    x0, _ = jax.jit(lambda x: sample(dpm_solver_pp(order=3), model, x, grid))(jnp.asarray(x_T))
    return np.asarray(x0)


def _references(cfg, loaded, x_T: np.ndarray, key: dict) -> np.ndarray:
    r = cfg["reference"]
    if r["kind"] == "exact":
        return _exact_reference(loaded, x_T, r["exact_steps"], key)
    model_key = dict(key, kind="teacher", steps=r["teacher_steps"], model=cfg["model"], trained=bool(loaded.trained),
                     user=loaded.user)
    return refcache.cached_array("search_ref", model_key,
                                 lambda: teacher_solution(loaded.model, loaded.schedule, x_T, r["teacher_steps"]))


# ---------------------------------------------------------------------------------------
# Scoring and evaluation
# ---------------------------------------------------------------------------------------
def _sample_errors(x0, reference):
    d = (x0 - reference).reshape(x0.shape[0], -1)
    return jnp.sqrt(jnp.sum(d * d, axis=-1))


def _default_scorer(model, noise_schedule, space, x_T, reference, metric: str = "mean_l2", reference_mode=None,
                    mode_fn=None):
    """A population scorer (the protocol's ``make_scorer``) used when samplax.search is
    not installed: exact error of ``run_table(schedule_table(decode(g)))`` per candidate."""
    x_T = jnp.asarray(x_T)
    reference = jnp.asarray(reference, x_T.dtype)

    def one(g):
        sched = space.decode(g, dtype=x_T.dtype)
        x0, _ = run_table(model, x_T, schedule_table(sched, noise_schedule, dtype=x_T.dtype), diagnostics=False)
        err = _sample_errors(x0, reference)
        ok = jnp.all(jnp.isfinite(err))
        inf = jnp.asarray(jnp.inf, x_T.dtype)
        out = dict(mean_l2=jnp.where(ok, jnp.mean(err), inf), max_l2=jnp.where(ok, jnp.max(err), inf))
        if mode_fn is not None:
            out["mode_flip"] = jnp.where(ok, jnp.mean((mode_fn(x0) != reference_mode).astype(x_T.dtype)), inf)
        out["score"] = out[metric]
        return out
    return jax.jit(jax.vmap(one))


def _default_loss(model, x_T, reference, metric: str = "mean_l2"):
    x_T = jnp.asarray(x_T)
    reference = jnp.asarray(reference, x_T.dtype)
    return lambda tab: jnp.mean(_sample_errors(run_table(model, x_T, tab, diagnostics=False)[0], reference))


def _make_scorer(model, noise_schedule, space, x_T, reference, metric, gmm):
    try:
        make = _resolve(SCORER, "the scorer")
    except ConfigError:
        make = _default_scorer
    kwargs = {}
    params = inspect.signature(make).parameters
    if gmm is not None and "mode_fn" in params:
        mode_fn = _mode_fn(gmm)
        kwargs = dict(reference_mode=np.asarray(mode_fn(jnp.asarray(reference, jnp.float32))), mode_fn=mode_fn)
    return make(model, noise_schedule, space, jnp.asarray(x_T), jnp.asarray(reference), metric=metric, **kwargs)


def _mode_fn(gmm):
    def mode(x0):
        return jnp.argmax(gmm.astype(x0.dtype).component_log_posterior(x0, 0.0), axis=-1)
    return mode


@jax.jit
def _run_schedule(model, noise_schedule, sched, x_T):
    return run_table(model, x_T, schedule_table(sched, noise_schedule, dtype=x_T.dtype), diagnostics=False)[0]


@jax.jit
def _modes(gmm, x0):
    return jnp.argmax(gmm.component_log_posterior(x0, 0.0), axis=-1)


def evaluate_schedule(model, noise_schedule, sched: SolverSchedule, x_T, reference, gmm=None) -> dict:
    """mean_l2 / max_l2 (and mode_flip for a mixture) of a schedule's samples from x_T
    against ``reference`` (errors in float64 on the host); non-finite samples give None."""
    x0 = np.asarray(_run_schedule(model, noise_schedule, sched, jnp.asarray(x_T)), np.float64)
    ref = np.asarray(reference, np.float64)
    err = np.sqrt(np.sum((x0 - ref).reshape(len(x0), -1) ** 2, axis=-1))
    if not np.all(np.isfinite(err)):
        return dict(mean_l2=None, max_l2=None, n_nonfinite=int(np.sum(~np.isfinite(err))))
    out = dict(mean_l2=float(err.mean()), max_l2=float(err.max()))
    if gmm is not None:  # the most likely component at noise level 0 (float32), sample vs reference
        g32 = gmm.astype(jnp.float32)
        mode = lambda x: np.asarray(_modes(g32, jnp.asarray(x, jnp.float32)))  # noqa: E731
        out["mode_flip"] = float(np.mean(mode(x0) != mode(ref)))
    return out


def baseline_schedules(cfg: dict, noise_schedule, dtype) -> dict:
    """name -> the hand-designed baseline schedules (logSNR grid, the run's NFE/end/AFS)."""
    grid = time_grid(noise_schedule, n_steps(cfg), "logsnr", end=cfg["end"], dtype=dtype)
    t = grid.t[:-1] if cfg["end"] == "zero" else grid.t
    return {f"{name} o{opts['order']}": constant_schedule(t, end=cfg["end"], afs=cfg["afs"], **opts)
            for name, opts in BASELINES}


def schedule_summary(sched: SolverSchedule, noise_schedule) -> dict:
    """JSON-able per-step decisions of a concrete schedule (orders as run)."""
    t = np.asarray(sched.times, np.float64)
    lam = np.asarray(noise_schedule.lambda_(jnp.asarray(sched.times)), np.float64)
    return dict(times=t.tolist(), lambdas=lam.tolist(), order=np.asarray(effective_orders(sched)).tolist(),
                prediction=[PREDICTIONS[int(v)] for v in np.asarray(sched.prediction)],
                derivative=[DERIVATIVES[int(v)] for v in np.asarray(sched.derivative)],
                corrector=[bool(v) for v in np.asarray(sched.corrector)])


def concrete(sched: SolverSchedule) -> SolverSchedule:
    """A host (numpy) copy with the dtypes check_schedule expects."""
    return SolverSchedule(times=np.asarray(sched.times, np.float64), order=np.asarray(sched.order, np.int32),
                          prediction=np.asarray(sched.prediction, np.int32),
                          derivative=np.asarray(sched.derivative, np.int32),
                          corrector=np.asarray(sched.corrector, bool), end=sched.end, afs=sched.afs)


# ---------------------------------------------------------------------------------------
# Setup: config -> model, space, points, references, strategy (nothing written)
# ---------------------------------------------------------------------------------------
class Setup(NamedTuple):
    cfg: dict
    ident: dict
    config_hash: str
    loaded: object
    space: object
    strategy: object
    baselines: dict
    x_search: np.ndarray
    ref_search: np.ndarray
    x_eval: np.ndarray
    ref_eval: np.ndarray
    dtype: object
    memo: dict  # the baselines' metrics, computed once per run


OPTIONAL_ARGUMENTS = ("seeds",)  # passed only to factories that take them


def _call(fn, what: str, *args, **kwargs):
    accepted = inspect.signature(fn).parameters
    if not any(p.kind == p.VAR_KEYWORD for p in accepted.values()):
        kwargs = {k: v for k, v in kwargs.items() if k in accepted or k not in OPTIONAL_ARGUMENTS}
    try:
        return fn(*args, **kwargs)
    except (TypeError, ValueError) as e:
        raise ConfigError("config.search", f"{what}: {e}") from None


def setup(config) -> Setup:
    """Validate ``config`` and build everything the run needs; ConfigError on bad input."""
    cfg = validate_search(config)
    s = cfg["search"]
    dtype = DTYPES[cfg["dtype"]]
    model_cfg = loading.resolve_model(cfg["model"])
    loaded = loading.load_model(model_cfg, dtype)
    cfg["model"] = model_cfg
    ident = search_identity(cfg)
    exact_ok = loaded.gmm is not None and loaded.trained is None and loaded.info.get("exact_schedule", True)
    if cfg["reference"]["kind"] == "exact" and not exact_ok:
        raise ConfigError("config.reference.kind", f"'exact' needs an analytic mixture (gmm2d, gmm64d); model "
                                                   f"{cfg['model']['name']!r} here is not one: use 'teacher'")
    if s["metric"] == "mode_flip" and loaded.gmm is None:
        raise ConfigError("config.search.metric", "'mode_flip' needs a Gaussian mixture model")
    entry = STRATEGIES[s["strategy"]]
    space_cls = _resolve(entry.space, "the search space")
    space = _call(space_cls, "search space", loaded.schedule, cfg["nfe"], end=cfg["end"], afs=cfg["afs"],
                  max_order=s["max_order"], searchable=tuple(s["searchable"]))
    scale = prior_std(loaded.schedule)
    key = dict(problem=cfg["model"]["name"], dtype=cfg["dtype"])
    x_search = start_points(s["seed"], SEARCH_STREAM, s["n_search_samples"], loaded.shape, dtype, scale)
    ref_search = _references(cfg, loaded, x_search, dict(key, seed=s["seed"], stream=SEARCH_STREAM,
                                                         n=s["n_search_samples"], scale=scale))
    if s["eval_prior"] == "problem":
        from samplax.models.analytic import problem_start_points

        x_eval = problem_start_points(loaded.info, s["n_eval_samples"]).astype(np.dtype(cfg["dtype"]))
        ekey = dict(key, prior="problem", n=s["n_eval_samples"])
    else:
        x_eval = start_points(s["eval_seed"], EVAL_STREAM, s["n_eval_samples"], loaded.shape, dtype, scale)
        ekey = dict(key, seed=s["eval_seed"], stream=EVAL_STREAM, n=s["n_eval_samples"], scale=scale)
    ref_eval = _references(cfg, loaded, x_eval, ekey)
    baselines = baseline_schedules(cfg, loaded.schedule, dtype)
    factory = _resolve(entry.factory, f"strategy {s['strategy']!r}")
    options = dict(cfg["search"][entry.section]) if entry.section else {}
    if "hidden" in options:
        options["hidden"] = tuple(options["hidden"])
    if entry.objective == "loss_fn":
        try:
            make_loss = _resolve(LOSS, "the loss")
        except ConfigError:
            make_loss = _default_loss
        loss_fn = make_loss(loaded.model, jnp.asarray(x_search), jnp.asarray(ref_search))
        name = options.pop("template")
        order = options.pop("template_order")
        decay = options.pop("decay")
        base = dict(BASELINES)[name]
        grid = time_grid(loaded.schedule, n_steps(cfg), "logsnr", end=cfg["end"], dtype=dtype)
        t = grid.t[:-1] if cfg["end"] == "zero" else grid.t
        template = constant_schedule(t, end=cfg["end"], afs=cfg["afs"], **dict(base, order=order))
        strategy = _call(factory, f"strategy {s['strategy']!r}", space, loss_fn, template=template,
                         total_steps=s["iterations"] if decay else None, **options)
    else:
        score_fn = _make_scorer(loaded.model, loaded.schedule, space, x_search, ref_search, s["metric"], loaded.gmm)
        seeds = None
        if s["seed_baselines"] and hasattr(space, "from_schedule"):
            gs = [space.from_schedule(b) for b in baselines.values()]
            seeds = jax.tree.map(lambda *xs: jnp.stack(xs), *gs)
        kwargs = dict(options, population=s["population"])
        if seeds is not None:
            kwargs["seeds"] = seeds
        strategy = _call(factory, f"strategy {s['strategy']!r}", space, score_fn, **kwargs)
    return Setup(cfg, ident, settings_hash(ident), loaded, space, strategy, baselines, x_search, ref_search,
                 x_eval, ref_eval, dtype, {})


# ---------------------------------------------------------------------------------------
# Rows
# ---------------------------------------------------------------------------------------
def _decoder(st: "Setup"):
    """jit(genotypes -> (schedules, lambdas, effective orders)), compiled once per run."""
    if "decode" not in st.memo:
        ns = st.loaded.schedule

        def one(g):
            sched = st.space.decode(g)
            return sched, ns.lambda_(sched.times), effective_orders(sched)
        st.memo["decode"] = jax.jit(jax.vmap(one))
    return st.memo["decode"]


def record_rows(st: Setup, iteration: int, records: dict, n_before: int) -> list:
    """One row per candidate of ``records`` (host values)."""
    rec = jax.device_get(records)
    scores = np.asarray(rec["score"], np.float64).reshape(-1)
    p = scores.shape[0]
    metrics = {k: np.asarray(v, np.float64) for k, v in rec.items()
               if k not in ("genotypes", "score") and np.ndim(v) == 1 and np.shape(v)[0] == p}
    scheds, lams, orders = jax.device_get(_decoder(st)(rec["genotypes"]))
    times, pred = np.asarray(scheds.times, np.float64), np.asarray(scheds.prediction)
    der, corr = np.asarray(scheds.derivative), np.asarray(scheds.corrector, bool)
    rows = []
    for j in range(p):
        summary = dict(times=times[j].tolist(), lambdas=np.asarray(lams[j], np.float64).tolist(),
                       order=np.asarray(orders[j]).tolist(), prediction=[PREDICTIONS[int(v)] for v in pred[j]],
                       derivative=[DERIVATIVES[int(v)] for v in der[j]], corrector=corr[j].tolist())
        m = {k: float(v[j]) for k, v in metrics.items()}
        m["score"] = float(scores[j])
        rows.append(dict(hash=settings_hash(dict(config=st.config_hash, iteration=iteration, index=j)), run="search",
                         strategy=st.cfg["search"]["strategy"], iteration=iteration, index=j,
                         evaluation=n_before + j, score=float(scores[j]), metrics=m,
                         schedule=summary, nfe=st.cfg["nfe"],
                         problem=st.cfg["model"]["name"]))
    return rows


def _row_bytes(row: dict) -> bytes:
    return (json.dumps(sio.json_clean(row), sort_keys=True, allow_nan=False) + "\n").encode()


def keep_rows_before(path, iteration: int) -> int:
    """Rewrite ``path`` (atomically) with the complete rows of iterations < ``iteration``,
    one per (iteration, index); returns the number of rows kept."""
    if not sio.exists(path):
        return 0
    keep, seen = [], set()
    for row in store.read_rows(path):
        it, ix = row.get("iteration"), row.get("index")
        if isinstance(it, int) and isinstance(ix, int) and it < iteration and (it, ix) not in seen \
                and isinstance(row.get("metrics"), dict):
            seen.add((it, ix))
            keep.append(row)
    keep.sort(key=lambda r: (r["iteration"], r["index"]))
    sio.atomic_write_bytes(path, b"".join(_row_bytes(r) for r in keep))
    return len(keep)


# ---------------------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------------------
def run_search(config, workdir, restart: bool = False, report: bool = True) -> dict:
    """Run (or resume) the search of ``config`` in ``workdir``; returns the summary dict.

    Raises, before writing anything: ConfigError (bad config or workdir),
    WorkdirConflict (a workdir of another config), WorkdirLocked (in use),
    CheckpointMismatch / CheckpointDamaged (a checkpoint of another config; none intact).
    ``restart`` deletes the workdir's search files first."""
    refcache.enable_compilation_cache()
    st = setup(config)
    wd = store.check_workdir(workdir)
    ckpt_dir = wd / CHECKPOINT_DIR
    fresh = st.strategy.init(jax.random.fold_in(jax.random.PRNGKey(st.cfg["search"]["seed"]), INIT_FOLD))
    restored, damaged = resume_run(wd, ckpt_dir, st.ident, st.ident, None, fresh, restart)
    with store.WorkdirLock(wd):
        store.open_run(wd, "search", st.cfg, st.ident, restart, DERIVED)
        return _run_locked(st, wd, fresh, restored, damaged, report)


def _run_locked(st: Setup, wd, fresh, restored, damaged, report: bool) -> dict:
    s = st.cfg["search"]
    total = s["iterations"]
    key = jax.random.PRNGKey(s["seed"])
    path = wd / store.RESULTS_FILE
    with Checkpoints(wd / CHECKPOINT_DIR, st.ident, keep=st.cfg["keep_checkpoints"], every=st.cfg["checkpoint_every"],
                     final_step=total) as ckpt:
        state, start = ckpt.start(restored, damaged, fresh)
        if restored is not None:
            logging.info("search: resuming after iteration %d from %s", start, ckpt.path(start))
        kept = keep_rows_before(path, start)
        logging.info("search: %d rows of the %d iterations done kept in %s", kept, start, path)
        step = jit_cpu_fast(st.strategy.step)  # compiled with samplax's CPU options (YNNPACK fusions off)
        progress = Progress(total - start, "iterations", every_s=5.0, desc=f"search {s['strategy']}")
        t0 = time.perf_counter()
        compile_s = 0.0
        for i in range(start, total):
            n_before = int(st.strategy.evaluations(state))
            if i == start:
                progress.compiling("search step")
                c0 = time.perf_counter()
            state, records = step(state, jax.random.fold_in(key, i))
            rows = record_rows(st, i, records, n_before)
            if i == start:
                compile_s = time.perf_counter() - c0
                progress.compiled()
            for row in rows:
                sio.append_line(path, _row_bytes(row))
            done = i + 1
            if ckpt.should_save(done):
                ckpt.save(done, state, dict(iteration=done, evaluations=int(st.strategy.evaluations(state))))
                if done < total and report:
                    write_outputs(st, wd, state, done, final=False)
            _, best = st.strategy.best(state)
            progress.update(1, f"best {float(best):.4g} after {int(st.strategy.evaluations(state))} evaluations")
        progress.close()
        run_s = time.perf_counter() - t0
    summary = write_outputs(st, wd, state, total, final=True, report=report,
                            timing=dict(resumed_from=start, wall_s=run_s, compile_s=compile_s))
    if report:
        print(summary["text"], flush=True)
    return summary


# ---------------------------------------------------------------------------------------
# Outputs: the best schedule, its evaluation, pictures, summary
# ---------------------------------------------------------------------------------------
def best_schedule(st: Setup, state) -> tuple:
    g, score = st.strategy.best(state)
    scheds, _, _ = _decoder(st)(jax.tree.map(lambda a: jnp.asarray(a)[None], g))
    return concrete(jax.device_get(jax.tree.map(lambda a: a[0], scheds))), float(score)


def write_outputs(st: Setup, wd, state, done: int, final: bool = True, report: bool = True, timing=None) -> dict:
    """Evaluate the best schedule and the baselines on the held-out points; write
    best_schedule.json (+ PNG), search_progress.png and the summaries."""
    cfg, s = st.cfg, st.cfg["search"]
    sched, score = best_schedule(st, state)
    check_schedule(sched, st.loaded.schedule, cfg["nfe"], name="best schedule")
    ns, model = st.loaded.schedule, st.loaded.model
    gmm = st.loaded.gmm if cfg["reference"]["kind"] == "exact" else None
    best_eval = evaluate_schedule(model, ns, sched, st.x_eval, st.ref_eval, gmm)
    if "baselines" not in st.memo:
        st.memo["baselines"] = {name: dict(eval=evaluate_schedule(model, ns, b, st.x_eval, st.ref_eval, gmm),
                                           search=evaluate_schedule(model, ns, b, st.x_search, st.ref_search, gmm))
                                for name, b in st.baselines.items()}
    base = st.memo["baselines"]
    evaluations = int(st.strategy.evaluations(state))
    meta = dict(problem=cfg["model"]["name"], nfe=cfg["nfe"], end=cfg["end"], afs=cfg["afs"],
                strategy=s["strategy"], iterations=done, evaluations=evaluations, score=score, metric=s["metric"],
                n_search_samples=s["n_search_samples"], eval=best_eval, eval_prior=s["eval_prior"],
                n_eval_samples=s["n_eval_samples"], baselines={k: v["eval"] for k, v in base.items()},
                config_hash=st.config_hash, final=final)
    save_schedule(wd / BEST_FILE, sched, **sio.json_clean(meta))
    rows = store.read_rows(wd / store.RESULTS_FILE)
    summary = dict(meta, schedule=schedule_summary(sched, ns), baselines_search={k: v["search"] for k, v in
                                                                                   base.items()},
                   workdir=os.fspath(wd), **(timing or {}))
    summary["text"] = summary_text(summary)
    if report:
        plot_schedule(wd / BEST_PNG, sched, ns, st.baselines, title=f"{cfg['model']['name']} NFE {cfg['nfe']}: "
                      f"best of {s['strategy']} ({evaluations} evaluations)")
        plot_progress(wd / PROGRESS_PNG, rows, {k: v["search"].get(s["metric"]) for k, v in base.items()},
                      s["metric"])
        sio.atomic_write_text(wd / SUMMARY_MD, summary_markdown(summary))
        sio.atomic_write_json(wd / SUMMARY_JSON, summary)
    return summary


def _fmt(v) -> str:
    return "—" if v is None else f"{v:.4g}"


def summary_text(sm: dict) -> str:
    """The one-paragraph summary printed at the end."""
    best = sm["eval"].get("mean_l2")
    parts = [f"{k} {_fmt(v.get('mean_l2'))}" for k, v in sm["baselines"].items()]
    hand = [v.get("mean_l2") for v in sm["baselines"].values() if v.get("mean_l2") is not None]
    ratio = (f" ({min(hand) / best:.2f}x lower than the best baseline)" if best and hand and best < min(hand)
             else (" (no better than the best baseline)" if hand and best is not None else ""))
    took = f" in {sm['wall_s']:.0f} s" if sm.get("wall_s") is not None else ""
    return (f"search {sm['strategy']} on {sm['problem']} at NFE {sm['nfe']} (end={sm['end']}, afs={sm['afs']}): "
            f"{sm['iterations']} iterations, {sm['evaluations']} evaluations{took}; best {sm['metric']} "
            f"{_fmt(sm['score'])} on the {sm['n_search_samples']} search points; on {sm['n_eval_samples']} held-out "
            f"points ({sm['eval_prior']}) mean_l2 {_fmt(best)}, max_l2 {_fmt(sm['eval'].get('max_l2'))}"
            + (f", mode_flip {_fmt(sm['eval'].get('mode_flip'))}" if "mode_flip" in sm["eval"] else "")
            + f" vs {', '.join(parts)}{ratio}. Best schedule: {os.path.join(sm['workdir'], BEST_FILE)}")


def summary_markdown(sm: dict) -> str:
    lines = [f"# Search: {sm['strategy']} on {sm['problem']}, NFE {sm['nfe']}", "", sm["text"], "",
             f"## Held-out evaluation ({sm['n_eval_samples']} start points, {sm['eval_prior']})", "",
             "| schedule | mean_l2 | max_l2 | mode_flip | search-set mean_l2 |", "| --- | ---: | ---: | ---: | ---: |",
             f"| best ({sm['strategy']}) | {_fmt(sm['eval'].get('mean_l2'))} | {_fmt(sm['eval'].get('max_l2'))} | "
             f"{_fmt(sm['eval'].get('mode_flip'))} | {_fmt(sm['score']) if sm['metric'] == 'mean_l2' else '—'} |"]
    for k, v in sm["baselines"].items():
        lines.append(f"| {k} (logSNR grid) | {_fmt(v.get('mean_l2'))} | {_fmt(v.get('max_l2'))} | "
                     f"{_fmt(v.get('mode_flip'))} | {_fmt(sm['baselines_search'][k].get('mean_l2'))} |")
    sc = sm["schedule"]
    lines += ["", "## Best schedule", "", "| step | t | logSNR | order | prediction | derivative | corrector |",
              "| ---: | ---: | ---: | ---: | --- | --- | :---: |"]
    for i in range(len(sc["order"])):
        lines.append(f"| {i} | {sc['times'][i]:.5g} | {sc['lambdas'][i]:.4g} | {sc['order'][i]} | "
                     f"{sc['prediction'][i]} | {sc['derivative'][i]} | {'yes' if sc['corrector'][i] else ''} |")
    lines += ["", f"Load it: `samplax.solvers.schedule.load_schedule('{BEST_FILE}')`; config hash "
                  f"`{sm['config_hash']}`.", ""]
    return "\n".join(lines)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _save_fig(fig, path) -> None:
    sio.atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=100, format="png"), suffix=".png")


def plot_schedule(path, sched: SolverSchedule, noise_schedule, baselines: dict, title: str = "") -> None:
    """Time points on the logSNR axis (best vs baselines), then order, prediction type
    and corrector per step."""
    plt = _pyplot()
    fig, (ax0, ax1) = plt.subplots(2, 1, figsize=(8, 5), gridspec_kw=dict(height_ratios=(1, 1.4)))
    rows = [("best", sched)] + list(baselines.items())
    for y, (name, sc) in enumerate(rows):
        lam = np.asarray(noise_schedule.lambda_(jnp.asarray(sc.times)), np.float64)
        ax0.plot(lam, np.full(lam.shape, -y), "o-", ms=5, color="C3" if y == 0 else "0.5")
    ax0.set_yticks([-y for y in range(len(rows))], [n for n, _ in rows])
    ax0.set_xlabel("logSNR lambda(t) of the time points (sigma = 0 node not shown)")
    ax0.set_ylim(-len(rows) + 0.5, 0.5)
    orders = np.asarray(effective_orders(sched))
    pred = np.asarray(sched.prediction)
    corr = np.asarray(sched.corrector, bool) & (np.arange(len(orders)) < len(orders) - 1)  # as schedule_table
    der = np.asarray(sched.derivative)
    steps = np.arange(len(orders))
    ax1.bar(steps, orders, color=["C0" if p == 0 else "C1" for p in pred], edgecolor="k")
    for i in steps:
        ax1.text(i, orders[i] + 0.08, DERIVATIVES[int(der[i])] + (" +UniC" if corr[i] else ""), ha="center",
                 fontsize=7, rotation=90 if len(steps) > 8 else 0)
    ax1.set_ylim(0, 4.6)
    ax1.set_yticks([1, 2, 3])
    ax1.set_xticks(steps)
    ax1.set_xlabel("step (blue: data prediction, orange: noise prediction; +UniC: corrector)")
    ax1.set_ylabel("order")
    if title:
        ax0.set_title(title, fontsize=10)
    fig.tight_layout()
    _save_fig(fig, path)
    plt.close(fig)


def plot_progress(path, rows: list, baselines: dict, metric: str) -> None:
    """Best score so far against the number of real evaluations (log y), with the
    baselines' scores on the search points."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    rows = sorted((r for r in rows if isinstance(r.get("evaluation"), int)), key=lambda r: r["evaluation"])
    ev = np.asarray([r["evaluation"] + 1 for r in rows], np.float64)
    sc = np.asarray([r["score"] if r.get("score") is not None else np.inf for r in rows], np.float64)
    if len(sc):
        ax.step(ev, np.minimum.accumulate(sc), where="post", color="C3", label="best so far")
    for k, (name, v) in enumerate(baselines.items()):
        if v is not None:
            ax.axhline(v, ls="--", color=f"C{k}", label=name)
    ax.set_xlabel("evaluations")
    ax.set_ylabel(f"{metric} (search points)")
    if np.any(np.isfinite(sc) & (sc > 0)):
        ax.set_yscale("log")
    ax.legend(fontsize=8)
    fig.tight_layout()
    _save_fig(fig, path)
    plt.close(fig)


__all__ = ["run_search", "search_config", "validate_search", "setup", "STRATEGIES", "StrategyEntry",
           "evaluate_schedule", "baseline_schedules", "schedule_summary", "teacher_solution", "keep_rows_before",
           "plot_schedule", "plot_progress", "CheckpointDamaged"]
