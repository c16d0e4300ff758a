"""Config name -> object: one explicit dict per kind, all in this file.

The experiment layer resolves every string of a config here and nowhere else.
"""
from __future__ import annotations

from typing import Callable, NamedTuple, Optional, Tuple

import jax.numpy as jnp

from samplax.experiment.errors import ConfigError
from samplax.models.analytic import load_problem
from samplax.solvers.registry import SOLVERS  # noqa: F401  (the solver registry lives with the solvers)
from samplax.timesteps import ENDS  # noqa: F401
from samplax.timesteps import SPACINGS as _LIBRARY_SPACINGS

#: grid spacings a config may name: the library's, and "file" (the time points of a
#: schedule file, ``config.grid.file``: e.g. a search's best_schedule.json)
SPACINGS = _LIBRARY_SPACINGS + ("file",)


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
    dataset: object = None          # reference data of the metrics when there is no exact mixture
    user: Optional[dict] = None     # a user factory: its spec and source digest


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


DTYPES = {"float32": jnp.float32, "float64": jnp.float64}

# x_T: "key" draws N(0, s^2 I) per sample from fold_in(fold_in(PRNGKey(seed), 0), global_index), with
# s = samplax.schedules.prior_std(schedule, t_max) (1 for VP schedules, ~sigma_max for VE/EDM)
# (samplax.generate's convention); "problem" uses the problem file's numpy start points
# (numpy.random.default_rng(dim)), the ones the published reference numbers were computed on.
PRIORS = ("key", "problem")
