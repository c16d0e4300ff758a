"""Config name -> object: one explicit dict per kind, all in this file.

The experiment layer resolves every string of a config here and nowhere else.
"""
from __future__ import annotations

import functools
import math
import os
from typing import Callable, NamedTuple, Optional, Tuple

import jax
import jax.numpy as jnp

from samplax.experiment.errors import ConfigError
from samplax.models.analytic import load_problem
from samplax.solvers.registry import SOLVERS  # noqa: F401  (the solver registry lives with the solvers)
from samplax.timesteps import ENDS, SPACINGS  # noqa: F401


class LoadedModel(NamedTuple):
    """What a run needs of a model: the DiffusionModel, its schedule and, when the data
    distribution is an analytic problem, the exact mixture (``gmm``) that the metrics
    use -- also for a network trained on that problem's samples.

    ``shape`` is one sample's shape (``(dim,)`` for vectors); ``relabel(model, idx)``,
    when set, returns the model with the class labels of the samples ``idx`` (guided
    class-conditional networks); ``trained`` describes the checkpoint of a learned model
    (None for analytic ones)."""

    model: object
    schedule: object
    gmm: object
    problem: str
    dim: int
    info: dict
    shape: Tuple[int, ...] = ()
    relabel: Optional[Callable] = None
    trained: Optional[dict] = None


def _analytic(problem: str):
    def load(dtype) -> LoadedModel:
        gmm, schedule, info = load_problem(problem, dtype=dtype)
        return LoadedModel(gmm.model(schedule), schedule, gmm, problem, int(info["dim"]), info, (int(info["dim"]),))
    return load


def _learned_only(name: str):
    def load(dtype) -> LoadedModel:
        raise ConfigError("config.model.checkpoint", f"model {name!r} is a learned model: set it to the workdir of "
                          f"a training run (python -m experiments.train ...)")
    return load


# model name -> loader(dtype) -> LoadedModel of the analytic model.  Every data set of
# samplax.data can be the data of a trained network (config.model.checkpoint); those
# without an analytic model raise when no checkpoint is given.
MODELS = {
    "gmm2d": _analytic("gmm2d"),
    "gmm64d": _analytic("gmm64d"),
    "digits": _learned_only("digits"),
    "two_moons": _learned_only("two_moons"),
    "checkerboard": _learned_only("checkerboard"),
    "swiss_roll": _learned_only("swiss_roll"),
    "rings": _learned_only("rings"),
}
PARAMS = ("ema", "params")


def resolve_model(model_cfg: dict) -> dict:
    """The model section with the checkpoint made absolute and its step fixed (latest
    when unset), so a row names exactly the parameters it used."""
    m = dict(model_cfg)
    if not m.get("checkpoint"):
        for f in ("step", "guidance"):
            if m.get(f) is not None:
                raise ConfigError(f"config.model.{f}", "only applies to a trained model (config.model.checkpoint)")
        return m
    from samplax.experiment.trainer import latest_checkpoint_step

    path = os.path.abspath(m["checkpoint"])
    try:
        step = latest_checkpoint_step(path) if m.get("step") is None else m["step"]
    except (FileNotFoundError, ValueError) as e:
        raise ConfigError("config.model.checkpoint", str(e)) from None
    m.update(checkpoint=path, step=int(step))
    return m


@functools.lru_cache(maxsize=8)
def _trained(path: str, step: int, which: str):
    from samplax.experiment.trainer import load_trained

    try:
        return load_trained(path, step, which)
    except (FileNotFoundError, ValueError) as e:
        raise ConfigError("config.model.checkpoint", str(e)) from None


def load_model(model_cfg: dict, dtype) -> LoadedModel:
    """The LoadedModel of a (resolved) model section: analytic, or trained from a checkpoint."""
    name = model_cfg["name"]
    if not model_cfg.get("checkpoint"):
        return MODELS[name](dtype)
    from samplax.experiment.trainer import num_classes, precond, prediction, trained_model
    from samplax.models.networks import conditional_apply
    from samplax.models.wrappers import classifier_free_guidance

    tr = _trained(model_cfg["checkpoint"], int(model_cfg["step"]), model_cfg.get("params") or "ema")
    s = tr.setup
    if s.cfg["data"]["name"] != name:
        raise ConfigError("config.model.name", f"the checkpoint {tr.checkpoint} was trained on data "
                          f"{s.cfg['data']['name']!r}, not {name!r}")
    params = jax.tree.map(lambda a: jnp.asarray(a, dtype), tr.params)
    k = num_classes(s.cfg, s.dataset)
    w = model_cfg.get("guidance")
    relabel = None
    if k == 0:
        if w is not None:
            raise ConfigError("config.model.guidance", "the checkpoint's model is not class-conditional")
        model = trained_model(s, params)
    elif w is None:  # unconditional: the null label
        model = trained_model(s, params, labels=jnp.int32(k))
    else:  # classifier-free guidance with scale w, sample i of class i mod k
        cond = conditional_apply(s.net, s.schedule, s.cfg["model"]["time_input"], precond=precond(s.cfg),
                                 sigma_data=s.cfg["model"]["sigma_data"])
        model = classifier_free_guidance(cond, params, s.schedule, prediction(s.cfg), jnp.zeros((), jnp.int32),
                                         jnp.int32(k), jnp.asarray(w, dtype))

        def relabel(m, idx):
            inner, _, null, scale = m.params
            return m.replace(params=(inner, (idx % k).astype(jnp.int32), null, scale))
    trained = dict(checkpoint=tr.checkpoint, step=tr.step, params=model_cfg.get("params") or "ema",
                   guidance=w, data=name, train_config=s.cfg)
    shape = tuple(int(v) for v in s.dataset.shape)
    dim = math.prod(shape)
    if name in ("gmm2d", "gmm64d"):
        gmm, schedule, info = load_problem(name, dtype=dtype)
        info = dict(info, exact_schedule=s.cfg["schedule"]["name"] == "problem")
        return LoadedModel(model, s.schedule, gmm, name, dim, info, shape, relabel, trained)
    return LoadedModel(model, s.schedule, None, name, dim, dict(dim=dim), shape, relabel, trained)

DTYPES = {"float32": jnp.float32, "float64": jnp.float64}

# x_T: "key" draws N(0, s^2 I) per sample from fold_in(fold_in(PRNGKey(seed), 0), global_index), with
# s = samplax.schedules.prior_std(schedule, t_max) (1 for VP schedules, ~sigma_max for VE/EDM)
# (samplax.generate's convention); "problem" uses the problem file's numpy start points
# (numpy.random.default_rng(dim)), the ones the published reference numbers were computed on.
PRIORS = ("key", "problem")
