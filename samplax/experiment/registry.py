"""Config name -> object: one explicit dict per kind, all in this file.

The experiment layer resolves every string of a config here and nowhere else.
"""
from __future__ import annotations

from typing import NamedTuple

import jax.numpy as jnp

from samplax.models.analytic import load_problem
from samplax.solvers.registry import SOLVERS  # noqa: F401  (the solver registry lives with the solvers)
from samplax.timesteps import ENDS, SPACINGS  # noqa: F401


class LoadedModel(NamedTuple):
    """What a run needs of a model: the DiffusionModel, its schedule and, for
    analytic problems, the exact mixture (``gmm``) that the metrics use."""

    model: object
    schedule: object
    gmm: object
    problem: str
    dim: int
    info: dict


def _analytic(problem: str):
    def load(dtype) -> LoadedModel:
        gmm, schedule, info = load_problem(problem, dtype=dtype)
        return LoadedModel(gmm.model(schedule), schedule, gmm, problem, int(info["dim"]), info)
    return load


# model name -> loader(dtype) -> LoadedModel.  Learned (Flax) models join here.
MODELS = {
    "gmm2d": _analytic("gmm2d"),
    "gmm64d": _analytic("gmm64d"),
}

DTYPES = {"float32": jnp.float32, "float64": jnp.float64}

# x_T: "key" draws N(0, I) per sample from fold_in(fold_in(PRNGKey(seed), 0), global_index)
# (samplax.generate's convention); "problem" uses the problem file's numpy start points
# (numpy.random.default_rng(dim)), the ones the published reference numbers were computed on.
PRIORS = ("key", "problem")
