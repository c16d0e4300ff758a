"""Training-time data sampling: which examples (or prompts, trajectories, start states) a
learner trains on.  See :mod:`samplax.data_sampling.base` for the sampler protocol."""
from samplax.data_sampling.base import (SAMPLER_STREAM, SAMPLERS, DataSampler, draw_indices, epoch, epochs_of,
                                        fixed_subset, get_sampler, initial_stats, register_sampler, sampler_key,
                                        sampler_options, step_info, steps_for_epochs, uniform)
from samplax.data_sampling import lead as _lead  # noqa: F401,E402 (registers "lead")

__all__ = ["SAMPLER_STREAM", "SAMPLERS", "DataSampler", "draw_indices", "epoch", "epochs_of", "fixed_subset",
           "get_sampler", "initial_stats", "register_sampler", "sampler_key", "sampler_options", "step_info",
           "steps_for_epochs", "uniform"]
