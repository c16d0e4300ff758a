"""Reinforcement learning on gymnax environments: PPO (:mod:`samplax.rl.ppo`) and snapshot
start states (:mod:`samplax.rl.snapshot`).  The submodules are imported when used (gymnax is
an optional dependency)."""
