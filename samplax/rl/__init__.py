"""Reinforcement learning on gymnax environments: environments, rollouts and offline data
sets (:mod:`samplax.rl.envs`), trajectory weighting and offline learners
(:mod:`samplax.rl.offline`)."""
