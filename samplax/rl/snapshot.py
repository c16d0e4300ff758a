"""Snapshot start states for on-policy RL (Zhao et al. 2024, "Snapshot Reinforcement
Learning: Leveraging Prior Trajectories for Efficiency", arXiv:2403.00673).

SnapshotRL (their §3) changes only the *environment*: a student agent's episodes may
begin at states ("snapshots") of a teacher's (an earlier agent's) trajectories instead of
at ``env.reset``, during the early phase of training; evaluation stays in the original
environment.  Their baseline S3RL (§4) adds two pieces, both here:

* **Status classification** (SC): the teacher's snapshots are grouped by their state
  features (the paper embeds them with t-SNE and clusters with K-means; our classic-control
  observations have 2-6 dimensions, so we run K-means directly on the standardised
  observations).  A snapshot start draws a cluster uniformly among the non-empty clusters
  and then a snapshot uniformly inside it, so every *status* of the teacher is started from
  equally often, however long the teacher lingered in it:

      P(snapshot i) = 1 / (K_nonempty * n_{c(i)})                       ("cluster")

  against the plain rule P(i) = 1 / M over the M valid snapshots ("uniform").
* **Student trajectory truncation** (STT): an episode that began at a snapshot is cut
  after ``horizon`` steps (a truncation, bootstrapped by PPO's GAE, not a termination), so
  the student spends its samples near the snapshot's status instead of replaying the
  teacher's whole tail.

Restoring a snapshot is exact because a gymnax env state is a pytree of arrays
(:func:`restore`): physics fields are copied bit for bit; the step counter ``time`` is set
to 0 (``reset_time=True``, the default used in training) so that ``time`` counts the
student's own steps -- the env's ``max_steps_in_episode`` limit and the STT horizon then
both measure the student's episode, never the teacher's elapsed time (with
``reset_time=False`` the state round-trips completely, ``time`` included).  None of the
classic-control dynamics depend on ``time``.

The sampler state :class:`SnapshotSampler` (the buffer -- env states, observations,
validity, clusters, selection log-probabilities -- and the counter of snapshot starts) is a
pytree of arrays, so it is saved in the run's Orbax checkpoint.
"""
from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from samplax.rl.ppo import make_env, tree_where

SELECTIONS = ("cluster", "uniform")
TEACHERS = ("heuristic", "ppo")


class SnapshotSampler(NamedTuple):
    """The snapshot buffer and its counters (a pytree: goes in the checkpoint)."""
    states: Any            # env-state pytree, leading axis M
    obs: jax.Array         # (M, obs_dim) float32
    valid: jax.Array       # (M,) bool: a state the teacher actually visited (not past its episode's end)
    cluster: jax.Array     # (M,) int32 cluster (status) of each snapshot
    log_probs: jax.Array   # (M,) float32 log P(snapshot i) of the selection rule (-inf when invalid)
    draws: jax.Array       # int32 (): snapshot starts drawn so far
    prob: jax.Array        # float32 (): chance that a start (while snapshots are active) is a snapshot


# ---------------------------------------------------------------------------------------
# Teachers and their trajectories
# ---------------------------------------------------------------------------------------
def heuristic_policy(env_name: str, epsilon: float) -> Callable:
    """A hand-written mediocre teacher ``policy(key, obs) -> action`` with probability
    ``epsilon`` of a uniformly random action: MountainCar pushes along its velocity (energy
    pumping); CartPole pushes toward the pole's fall (3 theta + theta_dot); Acrobot torques
    along the first joint's angular velocity."""
    if not 0.0 <= epsilon <= 1.0:
        raise ValueError(f"heuristic_policy: epsilon must be in [0, 1], got {epsilon!r}")
    rules = {
        "MountainCar-v0": (3, lambda o: jnp.where(o[..., 1] >= 0, 2, 0)),
        "CartPole-v1": (2, lambda o: (3.0 * o[..., 2] + o[..., 3] > 0).astype(jnp.int32)),
        "Acrobot-v1": (3, lambda o: jnp.where(o[..., 4] >= 0, 2, 0)),
    }
    if env_name not in rules:
        raise ValueError(f"heuristic_policy: env must be one of {sorted(rules)}, got {env_name!r}")
    n_act, rule = rules[env_name]

    def policy(key, obs):
        k1, k2 = jax.random.split(key)
        rand = jax.random.randint(k1, obs.shape[:-1], 0, n_act)
        return jnp.where(jax.random.uniform(k2, obs.shape[:-1]) < epsilon, rand, rule(obs)).astype(jnp.int32)

    return policy


def collect_trajectories(env_name: str, policy: Callable, key, num_episodes: int):
    """Run ``num_episodes`` teacher episodes from env.reset for the env's full step limit
    (no auto-reset); returns (states (E*T,), obs (E*T, d), valid (E*T,), returns (E,)):
    the state *before* each step t, valid while the episode had not ended."""
    env, params = make_env(env_name)
    max_steps = int(params.max_steps_in_episode)
    k0, k1 = jax.random.split(key)
    obs, st = jax.vmap(env.reset_env, in_axes=(0, None))(jax.random.split(k0, num_episodes), params)

    def step(c, k):
        st, obs, alive, ret = c
        ka, ks = jax.random.split(k)
        a = policy(ka, obs)
        obs2, st2, r, term, _ = jax.vmap(env.step_env, in_axes=(0, 0, 0, None))(
            jax.random.split(ks, num_episodes), st, a, params)
        out = (st, obs, alive)
        ret = ret + jnp.where(alive, r, 0.0)
        alive = alive & ~term & (st2.time < max_steps)
        return (st2, obs2, alive, ret), out

    c0 = (st, obs, jnp.ones((num_episodes,), bool), jnp.zeros((num_episodes,), jnp.float32))
    (_, _, _, ret), (states, obs_all, valid) = jax.lax.scan(step, c0, jax.random.split(k1, max_steps))
    flat = lambda x: x.reshape((-1,) + x.shape[2:])  # noqa: E731  (T, E, ...) -> (T*E, ...)
    return jax.tree.map(flat, states), flat(obs_all).astype(jnp.float32), flat(valid), ret


# ---------------------------------------------------------------------------------------
# Status classification (K-means) and the selection rule
# ---------------------------------------------------------------------------------------
def kmeans(key, x, valid, k: int, iters: int = 50):
    """K-means (Lloyd) of the valid rows of ``x`` on standardised features; returns (labels
    (M,) int32, -1 for invalid rows).  Initial centres: k distinct valid rows drawn at random."""
    if k < 1:
        raise ValueError(f"kmeans: k must be >= 1, got {k!r}")
    v = valid.astype(x.dtype)
    cnt = jnp.maximum(v.sum(), 1.0)
    mu = (x * v[:, None]).sum(0) / cnt
    sd = jnp.sqrt((((x - mu) ** 2) * v[:, None]).sum(0) / cnt) + 1e-8
    z = (x - mu) / sd
    # k distinct valid rows: the k smallest of (uniform noise, invalid rows pushed to +inf)
    noise = jnp.where(valid, jax.random.uniform(key, valid.shape), jnp.inf)
    centres = z[jnp.argsort(noise)[:k]]

    def assign(c):
        d = jnp.sum((z[:, None, :] - c[None]) ** 2, -1)
        return jnp.argmin(d, axis=1)

    def body(c, _):
        lab = assign(c)
        onehot = jax.nn.one_hot(lab, k) * v[:, None]
        n = onehot.sum(0)
        new = (onehot.T @ z) / jnp.maximum(n, 1.0)[:, None]
        return jnp.where(n[:, None] > 0, new, c), None

    centres, _ = jax.lax.scan(body, centres, None, length=iters)
    return jnp.where(valid, assign(centres), -1).astype(jnp.int32)


def selection_log_probs(cluster, valid, k: int, selection: str):
    """log P(snapshot i) of a selection rule (module docstring): "cluster" (S3RL's status
    classification: a uniform cluster, then a uniform member) or "uniform" (over the valid
    snapshots); -inf for invalid ones."""
    if selection not in SELECTIONS:
        raise ValueError(f"selection_log_probs: selection must be one of {SELECTIONS}, got {selection!r}")
    if selection == "uniform":
        p = valid / jnp.maximum(valid.sum(), 1)
    else:
        sizes = jnp.zeros((k,), jnp.float32).at[jnp.where(valid, cluster, 0)].add(valid.astype(jnp.float32))
        nonempty = jnp.sum(sizes > 0)
        p = jnp.where(valid, 1.0 / (nonempty * sizes[jnp.clip(cluster, 0, k - 1)]), 0.0)
    return jnp.where(valid, jnp.log(p), -jnp.inf).astype(jnp.float32)


def build_sampler(env_name: str, key, *, teacher_policy: Callable, num_episodes: int, num_clusters: int,
                  selection: str, prob: float) -> SnapshotSampler:
    """Collect the teacher's trajectories and build the buffer (clusters and selection
    rule); ``prob``: chance that a start during the snapshot phase is a snapshot."""
    if not 0.0 <= prob <= 1.0:
        raise ValueError(f"build_sampler: prob must be in [0, 1], got {prob!r}")
    k_col, k_km = jax.random.split(key)
    states, obs, valid, _ = collect_trajectories(env_name, teacher_policy, k_col, num_episodes)
    cluster = kmeans(k_km, obs, valid, num_clusters)
    log_p = selection_log_probs(cluster, valid, num_clusters, selection)
    return SnapshotSampler(states, obs, valid, cluster, log_p, jnp.zeros((), jnp.int32),
                           jnp.asarray(prob, jnp.float32))


# ---------------------------------------------------------------------------------------
# Restoring snapshots: the starter PPO calls
# ---------------------------------------------------------------------------------------
def restore(snapshot_state, reset_time: bool = True):
    """The env state to start from: the snapshot itself, with its step counter ``time`` set
    to 0 when ``reset_time`` (module docstring)."""
    if not reset_time:
        return snapshot_state
    return snapshot_state.replace(time=jnp.zeros_like(snapshot_state.time))


def draw(key, sampler: SnapshotSampler, n: int):
    """Indices (n,) of n snapshots drawn i.i.d. from the selection rule."""
    return jax.random.categorical(key, sampler.log_probs, shape=(n,))


def snapshot_starter(env, env_params, n: int) -> Callable:
    """``start(key, sampler, mask, active)`` for :func:`samplax.rl.ppo.make_ppo`: each of the
    n environments starts at a snapshot with probability ``sampler.prob`` when ``active``
    (the snapshot phase), else at env.reset; ``mask`` marks the environments that actually
    restart (only those count in ``sampler.draws``)."""

    def start(key, sampler: SnapshotSampler, mask, active):
        k_reset, k_pick, k_coin = jax.random.split(key, 3)
        obs_r, st_r = jax.vmap(env.reset_env, in_axes=(0, None))(jax.random.split(k_reset, n), env_params)
        idx = draw(k_pick, sampler, n)
        st_s = restore(jax.tree.map(lambda x: x[idx], sampler.states))
        obs_s = jax.vmap(lambda s: env.get_obs(s, env_params))(st_s).astype(jnp.float32)
        use = active & (jax.random.uniform(k_coin, (n,)) < sampler.prob)
        state = tree_where(use, st_s, st_r)
        obs = jnp.where(use[:, None], obs_s, obs_r.astype(jnp.float32))
        sampler = sampler._replace(draws=sampler.draws + jnp.sum(use & mask).astype(jnp.int32))
        return state, obs, use, sampler

    return start


def empirical_frequencies(key, sampler: SnapshotSampler, n: int) -> np.ndarray:
    """Counts (M,) of n draws (for tests of the selection rule)."""
    idx = np.asarray(draw(key, sampler, n))
    return np.bincount(idx, minlength=sampler.log_probs.shape[0])


__all__ = ["SELECTIONS", "TEACHERS", "SnapshotSampler", "heuristic_policy", "collect_trajectories", "kmeans",
           "selection_log_probs", "build_sampler", "restore", "draw", "snapshot_starter", "empirical_frequencies"]
