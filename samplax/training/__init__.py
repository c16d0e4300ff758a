"""Training of score models: losses (and, next, the train step, EMA and checkpoints)."""
from samplax.training.losses import TARGETS, denoising_loss, diffusion_target, sample_times

__all__ = ["TARGETS", "denoising_loss", "diffusion_target", "sample_times"]
