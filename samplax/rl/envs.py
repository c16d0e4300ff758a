"""gymnax environments by name, jitted batched rollouts of any policy, hand-written
controllers, mixed-quality offline data sets and a small Flax MLP.

* :func:`make_env` ``(name, max_steps=None) -> Env``: a gymnax classic-control task
  (``ENVS``) with its parameters, action count and observation size; ``max_steps`` caps the
  episode length (the env's ``max_steps_in_episode``).
* :func:`rollout` ``(env, policy, key, num_episodes) -> Trajectories``: one episode per row,
  ``vmap`` over episodes of a ``lax.scan`` over ``env.max_steps`` steps of the env's
  ``step_env`` (no auto-reset).  A policy is ``policy(obs, key) -> action`` for ONE
  observation.  Steps after the episode ended are padding: ``mask`` 0, reward 0.
  Episode ``i`` uses ``fold_in(key, i)`` only, so an episode does not change with the batch
  size.  Inside an episode key ``k``: ``k_reset, k_steps = split(k)``, and step ``t`` uses
  ``k_act, k_env = split(fold_in(k_steps, t))``.
* :func:`controller`: a near-optimal hand-written policy per env (CartPole: a linear
  rule on the pole angle and velocity, return 500 of 500; MountainCar: push along the
  velocity; Acrobot: torque along the second joint's velocity); :func:`epsilon_policy`
  mixes any policy with uniform random actions.
* :func:`mixed_dataset`: ``round(good_fraction * N)`` episodes of the epsilon-noisy
  controller ("good") and the rest of a (by default fully) random policy ("bad").
* :class:`MLP`: a Flax MLP (ReLU) from observations to one output per action (policy logits
  or Q-values); :func:`greedy_policy` turns its outputs into an argmax policy.
"""
from __future__ import annotations

from typing import Callable, NamedTuple, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

ENVS = ("CartPole-v1", "Acrobot-v1", "MountainCar-v0")


class Env(NamedTuple):
    """A gymnax environment with its parameters (``max_steps``: the episode cap)."""

    name: str
    env: object
    params: object
    num_actions: int
    obs_dim: int
    max_steps: int


class Trajectories(NamedTuple):
    """``N`` episodes padded to ``T = max_steps`` steps.

    obs, next_obs (N, T, d) float32; action (N, T) int32; reward (N, T) float32 (0 on
    padding); terminal (N, T) bool (the episode terminated at this step: no bootstrap from
    next_obs; a cut at ``T`` is not terminal); mask (N, T) float32 (1 on real steps);
    returns_to_go (N, T) the undiscounted sum of rewards from step t on; length (N,) int32;
    returns (N,) float32."""

    obs: jax.Array
    action: jax.Array
    reward: jax.Array
    next_obs: jax.Array
    terminal: jax.Array
    mask: jax.Array
    returns_to_go: jax.Array
    length: jax.Array
    returns: jax.Array


def make_env(name: str, max_steps: Optional[int] = None) -> Env:
    """The gymnax env ``name`` (one of ``ENVS``); ``max_steps`` caps episodes (default: the
    env's own ``max_steps_in_episode``).  ValueError names the argument and what is allowed."""
    if name not in ENVS:
        raise ValueError(f"make_env: name must be one of {list(ENVS)}, got {name!r}")
    import gymnax

    env, params = gymnax.make(name)
    if max_steps is not None:
        if isinstance(max_steps, bool) or not isinstance(max_steps, (int, np.integer)) or max_steps < 1:
            raise ValueError(f"make_env: max_steps must be a positive int or None, got {max_steps!r}")
        params = params.replace(max_steps_in_episode=int(max_steps))
    return Env(name, env, params, int(env.num_actions), int(np.prod(env.observation_space(params).shape)),
               int(params.max_steps_in_episode))


def rollout(env: Env, policy: Callable, key: jax.Array, num_episodes: int) -> Trajectories:
    """``num_episodes`` episodes of ``policy(obs, key) -> action`` (see the module doc)."""
    e, p, T = env.env, env.params, env.max_steps

    def episode(k):
        k_reset, k_steps = jax.random.split(k)
        obs0, s0 = e.reset_env(k_reset, p)

        def body(carry, t):
            obs, s, alive = carry
            k_act, k_env = jax.random.split(jax.random.fold_in(k_steps, t))
            a = jnp.asarray(policy(obs, k_act), jnp.int32)
            obs2, s2, r, term, _ = e.step_env(k_env, s, a, p)
            live = alive.astype(jnp.float32)
            out = (obs.astype(jnp.float32), a, r.astype(jnp.float32) * live, obs2.astype(jnp.float32),
                   jnp.logical_and(term, alive), live)
            return (obs2, s2, jnp.logical_and(alive, jnp.logical_not(term))), out

        _, (o, a, r, o2, term, m) = jax.lax.scan(body, (obs0, s0, jnp.asarray(True)), jnp.arange(T))
        rtg = jnp.cumsum(r[::-1])[::-1]
        return o, a, r, o2, term, m, rtg, jnp.sum(m).astype(jnp.int32), jnp.sum(r)

    keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.arange(num_episodes))
    return Trajectories(*jax.vmap(episode)(keys))


def concat(parts: Sequence[Trajectories]) -> Trajectories:
    """Episodes of several :class:`Trajectories` (same env and cap) stacked in order."""
    return Trajectories(*[jnp.concatenate(xs, axis=0) for xs in zip(*parts)])


# ---------------------------------------------------------------------------------------
# Policies
# ---------------------------------------------------------------------------------------
def _cartpole(obs):  # push toward the side the pole falls to, with velocity feedback
    return (obs[2] + 0.5 * obs[3] + 0.1 * obs[0] + 0.3 * obs[1] > 0).astype(jnp.int32)


def _mountaincar(obs):  # accelerate along the velocity: pumps energy (about -120 of -200)
    return jnp.where(obs[1] >= 0, 2, 0).astype(jnp.int32)


def _acrobot(obs):  # torque along the second joint's angular velocity (about -80 of -500)
    return jnp.where(obs[5] > 0, 2, 0).astype(jnp.int32)


_CONTROLLERS = {"CartPole-v1": _cartpole, "MountainCar-v0": _mountaincar, "Acrobot-v1": _acrobot}


def controller(name: str) -> Callable:
    """The hand-written near-optimal policy ``(obs, key) -> action`` of env ``name``."""
    if name not in _CONTROLLERS:
        raise ValueError(f"controller: name must be one of {sorted(_CONTROLLERS)}, got {name!r}")
    rule = _CONTROLLERS[name]
    return lambda obs, key: rule(obs)


def random_policy(num_actions: int) -> Callable:
    """Uniform random actions."""
    return lambda obs, key: jax.random.randint(key, (), 0, num_actions)


def epsilon_policy(policy: Callable, epsilon: float, num_actions: int) -> Callable:
    """With probability ``epsilon`` a uniform random action, else ``policy``'s action; the
    action probabilities are ``(1 - eps) 1[a = policy(s)] + eps / num_actions``."""
    if not 0.0 <= float(epsilon) <= 1.0:
        raise ValueError(f"epsilon_policy: epsilon must be in [0, 1], got {epsilon!r}")

    def act(obs, key):
        k_coin, k_rand, k_pol = jax.random.split(key, 3)
        explore = jax.random.uniform(k_coin) < epsilon
        return jnp.where(explore, jax.random.randint(k_rand, (), 0, num_actions),
                         jnp.asarray(policy(obs, k_pol), jnp.int32))
    return act


def mixed_dataset(env: Env, key: jax.Array, num_trajectories: int, good_fraction: float,
                  good_epsilon: float = 0.0, bad_epsilon: float = 1.0):
    """``(trajectories, is_good)``: ``n_good = round(good_fraction * num_trajectories)``
    episodes of the epsilon-noisy controller (``good_epsilon``) first, then the others of
    the controller with ``bad_epsilon`` (1.0: a random policy).  Good episodes use
    ``fold_in(key, 1)``, bad ones ``fold_in(key, 2)``.  ``is_good`` is a bool (N,) array."""
    if isinstance(num_trajectories, bool) or not isinstance(num_trajectories, (int, np.integer)) \
            or num_trajectories < 1:
        raise ValueError(f"mixed_dataset: num_trajectories must be a positive int, got {num_trajectories!r}")
    if not 0.0 <= float(good_fraction) <= 1.0:
        raise ValueError(f"mixed_dataset: good_fraction must be in [0, 1], got {good_fraction!r}")
    n_good = int(round(float(good_fraction) * num_trajectories))
    base = controller(env.name)
    parts = []
    if n_good:
        parts.append(rollout(env, epsilon_policy(base, good_epsilon, env.num_actions), jax.random.fold_in(key, 1),
                             n_good))
    if num_trajectories - n_good:
        parts.append(rollout(env, epsilon_policy(base, bad_epsilon, env.num_actions), jax.random.fold_in(key, 2),
                             num_trajectories - n_good))
    is_good = np.arange(num_trajectories) < n_good
    return (parts[0] if len(parts) == 1 else concat(parts)), is_good


# ---------------------------------------------------------------------------------------
# Networks
# ---------------------------------------------------------------------------------------
class MLP(nn.Module):
    """Observations (..., d) -> (..., num_outputs): ReLU hidden layers ``hidden``."""

    hidden: Sequence[int]
    num_outputs: int

    @nn.compact
    def __call__(self, x):
        x = jnp.asarray(x, jnp.float32)
        for width in self.hidden:
            x = nn.relu(nn.Dense(width)(x))
        return nn.Dense(self.num_outputs)(x)


def greedy_policy(apply_fn: Callable, params) -> Callable:
    """``(obs, key) -> argmax_a apply_fn(params, obs)[a]`` (logits or Q-values)."""
    return lambda obs, key: jnp.argmax(apply_fn(params, obs), axis=-1).astype(jnp.int32)


__all__ = ["ENVS", "Env", "Trajectories", "make_env", "rollout", "concat", "controller", "random_policy",
           "epsilon_policy", "mixed_dataset", "MLP", "greedy_policy"]
