"""Training-time data sampling: which examples (or prompts, trajectories, start states) a
learner trains on.  See :mod:`samplax.data_sampling.base` for the sampler protocol."""
from samplax.data_sampling.base import (SAMPLER_STREAM, SAMPLERS, DataSampler, draw_indices, epoch,
                                        fixed_subset, get_sampler, initial_stats, register_sampler, sampler_key,
                                        sampler_options, step_info, steps_for_epochs, uniform)
from samplax.data_sampling.rs2 import RS2Budget, apply_rs2_budget, rs2, rs2_budget  # registers "rs2"
from samplax.data_sampling import lead as _lead  # noqa: F401 (registers "lead"; the module stays .lead)

__all__ = ["SAMPLER_STREAM", "SAMPLERS", "DataSampler", "draw_indices", "epoch", "fixed_subset",
           "get_sampler", "initial_stats", "register_sampler", "sampler_key", "sampler_options", "step_info",
           "steps_for_epochs", "uniform",
           "rs2", "RS2Budget", "rs2_budget", "apply_rs2_budget"]
