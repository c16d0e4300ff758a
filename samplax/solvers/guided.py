"""Guidance as solver options: any solver of the registry run on a guided model, so configs and
sweeps reach the guidance wrappers of :mod:`samplax.models.guidance` (their strength is an
option, hence a sweep axis).

* :func:`with_model` -- a solver that runs ``base`` on ``wrap(model)``.  The base's step table
  is dropped (the table path would call the unwrapped model), so a multistep base runs its own
  per-step ``init``/``step``, which the tables are tested to reproduce.
* :func:`autoguided` -- autoguidance (Karras et al. 2024) on an analytic mixture: the bad model
  is the same mixture with its component standard deviations multiplied by ``bad_std`` (a
  wider, "worse" model).  NFE: two model calls per base evaluation.  A trained network's bad
  model is another checkpoint: that route is the benchmark's (benchmarks/guidance.py), not a
  solver option, since solvers do not read checkpoints.
* :func:`minority` -- minority guidance (Um et al. 2024): ``prepare(model, data)`` trains the
  minority classifier on the model's data (scores under the run's model, quantile levels,
  a small time-conditioned MLP with optax; the experiment runner caches the parameters per
  model and options), ``bind`` runs the base on
  :func:`~samplax.models.guidance.minority_guidance` with ``strength``.  NFE unchanged (the
  classifier's forward/backward pass is not a model call).
"""
from __future__ import annotations

import math
from typing import Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np

from samplax.solvers.base import ModelData, Solver

__all__ = ["with_model", "autoguided", "minority"]


def with_model(base: Solver, wrap: Callable, name: str, calls_per_evaluation: int = 1) -> Solver:
    """``base`` run on ``wrap(model)``; ``calls_per_evaluation`` model calls per evaluation of
    the wrapped model (2 for autoguidance) scale the NFE."""
    if base.smc is not None or base.prepare is not None:
        raise ValueError(f"base: {base.name} cannot be guided this way (a particle sampler or a model-dependent "
                         f"solver); allowed: an ODE/SDE solver of the registry")
    k = int(calls_per_evaluation)

    def init(model, grid, x):
        return base.init(wrap(model), grid, x)

    def step(model, grid, state, i, keys, last):
        return base.step(wrap(model), grid, state, i, keys, last)

    return base._replace(name=name, init=init, step=step, table=None, model_wrap=wrap,
                         nfe=lambda n_steps, end="zero": k * int(base.nfe(n_steps, end)))


def _base(base: str, order: Optional[int], afs: bool, who: str) -> Solver:
    from samplax.solvers.registry import SOLVERS, get_solver, solver_options
    if not isinstance(base, str) or base not in SOLVERS or base in ("autoguided", "minority"):
        raise ValueError(f"{who}: base: unknown or unsupported base solver {base!r}; allowed: "
                         f"{sorted(k for k in SOLVERS if k not in ('autoguided', 'minority'))}")
    kw = {} if order is None else {"order": order}
    if afs:
        if "afs" not in solver_options(base):
            raise ValueError(f"{who}: afs: base solver {base!r} has no analytic first step; allowed: afs=False")
        kw["afs"] = True
    return get_solver(base, **kw)


def _check_number(who: str, name: str, v, lo: float, strict: bool) -> float:
    ok = not isinstance(v, bool) and isinstance(v, (int, float, np.integer, np.floating)) and math.isfinite(float(v))
    if not ok or (float(v) <= lo if strict else float(v) < lo):
        raise ValueError(f"{who}: {name} must be a finite number {'>' if strict else '>='} {lo:g}, got {v!r}")
    return float(v)


def _analytic_parts(model, who: str):
    p = getattr(model, "params", None)
    from samplax.models.analytic import GaussianMixture
    if not (isinstance(p, tuple) and len(p) == 3 and isinstance(p[0], GaussianMixture)):
        raise ValueError(f"model: {who} builds its bad model from an analytic mixture (the gmm2d / gmm64d problems); "
                         f"allowed: those models (for a trained network use samplax.models.guidance.autoguidance "
                         f"with a second checkpoint)")
    return p


def autoguided(base: str = "dpm_solver_pp", order: Optional[int] = None, scale: float = 2.0,
               bad_std: float = 1.5, afs: bool = False) -> Solver:
    """Autoguidance on an analytic mixture: D_w = D_bad + scale (D_good - D_bad), the bad model
    the mixture with stds x ``bad_std`` (>= 1; 1 = no guidance whatever the scale)."""
    from samplax.models.guidance import autoguidance
    b = _base(base, order, afs, "autoguided")
    w = _check_number("autoguided", "scale", scale, 0.0, strict=False)
    inflate = _check_number("autoguided", "bad_std", bad_std, 1.0, strict=False)

    def wrap(model):
        gmm, label, schedule = _analytic_parts(model, "autoguided")
        bad_gmm = gmm.replace(stds=gmm.stds * jnp.asarray(inflate, gmm.stds.dtype))
        bad = model.replace(params=(bad_gmm, label, schedule))
        return autoguidance(model, bad, w)

    return with_model(b, wrap, f"autoguided({b.name}, w={w:g}, bad_std={inflate:g})", calls_per_evaluation=2)


def _flatten(params) -> dict:
    """Flax parameters -> {"p/params/Dense_0/kernel": array, ...} (the runner stores stats as flat npz)."""
    from flax.traverse_util import flatten_dict
    return {"p/" + k: np.asarray(v) for k, v in flatten_dict(params, sep="/").items()}


def _unflatten(stats: dict):
    """The inverse of :func:`_flatten` (no template needed: the keys carry the structure)."""
    from flax.traverse_util import unflatten_dict
    return unflatten_dict({k[2:]: jnp.asarray(v) for k, v in stats.items() if k.startswith("p/")}, sep="/")


def minority(base: str = "dpm_solver_pp", order: Optional[int] = None, strength: float = 1.0, levels: int = 10,
             target_level: Optional[int] = None, classifier_steps: int = 4000, n_train: int = 20000,
             score_t: float = 0.06, seed: int = 0, afs: bool = False) -> Solver:
    """Minority guidance towards ``target_level`` (default the most unique of ``levels``
    quantile levels of the minority score) with ``strength`` (0 = the base model)."""
    from samplax.models.guidance import (MinorityClassifier, minority_classifier_apply, minority_guidance,
                                         train_minority_classifier)
    b = _base(base, order, afs, "minority")
    w = _check_number("minority", "strength", strength, 0.0, strict=False)
    for nm, v, lo in (("levels", levels, 2), ("classifier_steps", classifier_steps, 1), ("n_train", n_train, 16),
                      ("seed", seed, 0)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < lo:
            raise ValueError(f"minority: {nm} must be an integer >= {lo}, got {v!r}")
    if target_level is not None and (isinstance(target_level, bool) or not isinstance(target_level, (int, np.integer))
                                     or not 0 <= target_level < levels):
        raise ValueError(f"minority: target_level must be None (the last level) or an integer in 0..{levels - 1}, "
                         f"got {target_level!r}")
    _check_number("minority", "score_t", score_t, 0.0, strict=True)
    name = f"minority({b.name}, w={w:g})"
    module = MinorityClassifier(int(levels))

    def prepare(model, data: Optional[ModelData]) -> dict:
        if data is None:
            raise ValueError("data: minority guidance trains its classifier on the model's data; allowed: "
                             "samplax.solvers.model_data(x0=...) or model_data(gmm=...)")
        x0 = np.asarray(data.samples(int(n_train), int(seed)), np.float32)
        _, params, info = train_minority_classifier(jax.random.PRNGKey(int(seed)), model, x0, int(levels),
                                                    score_t=float(score_t), steps=int(classifier_steps))
        out = _flatten(params)
        out.update(thresholds=np.asarray(info["thresholds"], np.float64),
                   final_accuracy=np.float64(info["final_accuracy"]))
        return out

    def bind(stats) -> Solver:
        params = _unflatten(stats)
        if not params:
            raise ValueError("stats: no classifier parameters; allowed: the dict minority's prepare returns")

        def wrap(model):
            return minority_guidance(model, minority_classifier_apply(module, model.schedule), params, w,
                                     target_level)

        return with_model(b, wrap, name)

    def unprepared(*_a, **_k):
        raise ValueError("solver: minority guidance depends on the model's data (its classifier) and has not been "
                         "prepared; allowed: samplax.solvers.prepare_solver(solver, model, data) first")

    return b._replace(name=name, init=unprepared, step=unprepared, table=None, prepare=prepare, bind=bind)


# options that only change bind(), not the trained classifier: rows differing in them share one
# preparation in the runner's statistics cache
minority.bind_options = ("base", "order", "afs", "strength", "target_level")
