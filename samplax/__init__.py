"""samplax: a JAX research framework for sampling experiments.

The handful of names a notebook needs::

    import samplax as sx
    gmm, schedule, info = sx.load_problem("gmm2d")
    model = gmm.model(schedule)
    grid = sx.time_grid(schedule, 10, "time_quadratic", end="zero")
    x0, info = jax.jit(lambda x: sx.sample(sx.get_solver("unipc", order=2), model, x, grid))(x_T)
"""
from samplax.models import DiffusionModel, Gaussian, GaussianMixture, load_problem, problem_start_points
from samplax.schedules import get_schedule
from samplax.solvers import SOLVERS, effective_orders, generate, get_solver, sample, stability_warning, steps_for_nfe
from samplax.timesteps import Grid, time_grid

__version__ = "0.1.0"

__all__ = [
    "DiffusionModel", "Gaussian", "GaussianMixture", "load_problem", "problem_start_points", "get_schedule",
    "SOLVERS", "get_solver", "sample", "generate", "steps_for_nfe", "effective_orders", "stability_warning",
    "Grid", "time_grid",
]
