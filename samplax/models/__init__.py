"""Models: the DiffusionModel type, exact analytic models, wrappers and the Flax networks."""
from samplax.models.analytic import PROBLEMS, Gaussian, GaussianMixture, load_problem, problem_start_points
from samplax.models.base import PREDICTIONS, DiffusionModel
from samplax.models.networks import (PRECONDS, TIME_INPUTS, MLPScoreNet, conditional_apply, edm_coefficients,
                                     edm_noise_conditioning, network_apply, network_model, sinusoidal_embedding)
from samplax.models.unet import UNet
from samplax.models.wrappers import classifier_free_guidance, dynamic_thresholding, static_clipping
from samplax.models.guidance import autoguidance, minority_guidance, minority_score, train_minority_classifier

__all__ = [
    "DiffusionModel", "PREDICTIONS", "GaussianMixture", "Gaussian", "load_problem", "problem_start_points",
    "PROBLEMS", "classifier_free_guidance", "dynamic_thresholding", "static_clipping",
    "MLPScoreNet", "UNet", "sinusoidal_embedding", "network_apply", "network_model", "conditional_apply",
    "edm_coefficients", "edm_noise_conditioning", "TIME_INPUTS", "PRECONDS",
]
__all__ += ["autoguidance", "minority_guidance", "minority_score", "train_minority_classifier"]
