"""Models: the DiffusionModel type, exact analytic models and wrappers."""
from samplax.models.analytic import PROBLEMS, Gaussian, GaussianMixture, load_problem, problem_start_points
from samplax.models.base import PREDICTIONS, DiffusionModel
from samplax.models.wrappers import classifier_free_guidance, dynamic_thresholding, static_clipping

__all__ = [
    "DiffusionModel", "PREDICTIONS", "GaussianMixture", "Gaussian", "load_problem", "problem_start_points",
    "PROBLEMS", "classifier_free_guidance", "dynamic_thresholding", "static_clipping",
]
