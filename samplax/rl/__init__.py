"""Reinforcement learning on gymnax environments: environments, rollouts and offline data
sets (:mod:`samplax.rl.envs`), trajectory weighting and offline learners
(:mod:`samplax.rl.offline`), PPO (:mod:`samplax.rl.ppo`) and snapshot start states
(:mod:`samplax.rl.snapshot`).  The submodules are imported when used (gymnax is the ``rl``
extra: ``pip install -e ".[rl]"``)."""
