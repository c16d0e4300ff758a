"""A compact PPO for gymnax discrete-action environments, fully jitted.

Proximal Policy Optimization (Schulman et al. 2017, "Proximal Policy Optimization
Algorithms"): the clipped surrogate objective (their eq. 7)

    L_clip = E[min(r_t A_t, clip(r_t, 1 - eps, 1 + eps) A_t)],   r_t = pi(a_t|s_t) / pi_old(a_t|s_t),

plus a value loss and an entropy bonus (their eq. 9: L = -L_clip + c1 L_VF - c2 H), with
advantages from generalized advantage estimation (Schulman et al. 2016, "High-Dimensional
Continuous Control Using GAE", eq. 16):

    delta_t = r_t + gamma V(s_{t+1}) (1 - terminated_t) - V(s_t),
    A_t     = delta_t + gamma lambda (1 - ended_t) A_{t+1}.

``terminated`` (the environment's natural end: no bootstrap) and ``ended`` (terminated *or*
truncated by a time limit: the recursion stops, but ``V(s_{t+1})`` of the true last
observation is still bootstrapped) are kept apart, so a truncated episode -- the env's own
step limit, or the snapshot truncation of :mod:`samplax.rl.snapshot` -- is not mistaken for
a terminal one.

The environments are gymnax classic-control ones (their state is a pytree: what makes
snapshot starts possible).  The rollout here does its own resets: ``env.step_env`` (no
auto-reset) and, for each environment whose episode ended, a new start from a *starter*
``start(key, sampler, mask, active) -> (env_state, obs, from_snapshot, sampler)`` -- the
standard ``env.reset`` (``starter=None``) or a snapshot from a buffer
(:func:`samplax.rl.snapshot.snapshot_starter`); None means env.reset.  An episode that began from a snapshot is
truncated when its state's ``time`` reaches ``min(horizon, max_steps_in_episode)`` (the starter resets ``time`` to 0
when it restores a snapshot, so ``time`` counts the student's own steps); a standard one at
the env's ``max_steps_in_episode``.

:func:`make_ppo` returns ``init(key, sampler) -> PPOState`` and ``run(state, n) -> (state,
metrics)`` (``n`` updates in one ``lax.scan``), plus a greedy evaluation in the original
environment.  The key of update ``u`` is ``fold_in(state.key, u)``: a run cut into chunks
draws what an uninterrupted run draws.
"""
from __future__ import annotations

from typing import Any, Callable, NamedTuple, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

ENVS = ("CartPole-v1", "Acrobot-v1", "MountainCar-v0")


def make_env(name: str):
    """``(env, env_params)`` of a gymnax discrete-action classic-control environment."""
    if name not in ENVS:
        raise ValueError(f"make_env: env must be one of {ENVS}, got {name!r}")
    import gymnax

    return gymnax.make(name)


class PPOConfig(NamedTuple):
    """PPO hyper-parameters (CleanRL-like defaults for classic control)."""
    num_envs: int = 8
    num_steps: int = 128
    learning_rate: float = 2.5e-4
    anneal_lr: bool = True
    gamma: float = 0.99
    gae_lambda: float = 0.95
    clip_eps: float = 0.2
    vf_coef: float = 0.5
    ent_coef: float = 0.01
    max_grad_norm: float = 0.5
    update_epochs: int = 4
    num_minibatches: int = 4
    hidden: Sequence[int] = (64, 64)
    num_updates: int = 100  # the learning-rate annealing horizon


class ActorCritic(nn.Module):
    """Separate tanh MLPs for the policy logits and the value (orthogonal init)."""
    num_actions: int
    hidden: Sequence[int] = (64, 64)

    @nn.compact
    def __call__(self, obs):
        def mlp(x, out, scale):
            for h in self.hidden:
                x = jnp.tanh(nn.Dense(h, kernel_init=nn.initializers.orthogonal(np.sqrt(2)))(x))
            return nn.Dense(out, kernel_init=nn.initializers.orthogonal(scale))(x)

        logits = mlp(obs, self.num_actions, 0.01)
        value = mlp(obs, 1, 1.0)[..., 0]
        return logits, value


# ---------------------------------------------------------------------------------------
# GAE and the PPO loss
# ---------------------------------------------------------------------------------------
def gae(rewards, values, next_values, terminated, ended, gamma: float, lam: float):
    """(advantages, returns) of a (T, ...) rollout (GAE eq. 16; module docstring).

    ``next_values[t]`` is V of the observation reached by step t (before any reset);
    ``terminated[t]``: the episode ended naturally at t (no bootstrap); ``ended[t]``:
    ended for any reason (the recursion restarts).  returns = advantages + values."""
    term = terminated.astype(values.dtype)
    cont = 1.0 - ended.astype(values.dtype)
    deltas = rewards + gamma * next_values * (1.0 - term) - values

    def back(carry, x):
        delta, c = x
        a = delta + gamma * lam * c * carry
        return a, a

    _, adv = jax.lax.scan(back, jnp.zeros_like(values[0]), (deltas, cont), reverse=True)
    return adv, adv + values


class LossInfo(NamedTuple):
    loss: jax.Array
    policy_loss: jax.Array
    value_loss: jax.Array
    entropy: jax.Array
    approx_kl: jax.Array
    clip_fraction: jax.Array


def ppo_loss(logits, values, actions, old_logp, advantages, returns, clip_eps: float, vf_coef: float,
             ent_coef: float, normalize: bool = True) -> LossInfo:
    """The PPO loss of a minibatch from the new policy's ``logits`` and ``values``.

    policy_loss = -mean(min(r A, clip(r, 1-eps, 1+eps) A)) (A normalised over the minibatch
    when ``normalize``), value_loss = 0.5 mean((returns - V)^2), entropy = mean H(pi);
    loss = policy_loss + vf_coef value_loss - ent_coef entropy."""
    logp_all = jax.nn.log_softmax(logits)
    logp = jnp.take_along_axis(logp_all, actions[..., None], axis=-1)[..., 0]
    if normalize:
        advantages = (advantages - advantages.mean()) / (advantages.std() + 1e-8)
    log_ratio = logp - old_logp
    ratio = jnp.exp(log_ratio)
    pg = -jnp.mean(jnp.minimum(ratio * advantages, jnp.clip(ratio, 1.0 - clip_eps, 1.0 + clip_eps) * advantages))
    vf = 0.5 * jnp.mean((returns - values) ** 2)
    ent = jnp.mean(-jnp.sum(jnp.exp(logp_all) * logp_all, axis=-1))
    approx_kl = jnp.mean((ratio - 1.0) - log_ratio)  # the k3 estimator of KL(old || new)
    clip_frac = jnp.mean((jnp.abs(ratio - 1.0) > clip_eps).astype(jnp.float32))
    return LossInfo(pg + vf_coef * vf - ent_coef * ent, pg, vf, ent, approx_kl, clip_frac)


# ---------------------------------------------------------------------------------------
# Environments: vectorised steps and starts
# ---------------------------------------------------------------------------------------
def tree_where(mask, a, b):
    """Per-environment select between two batched pytrees (mask (N,))."""
    return jax.tree.map(lambda x, y: jnp.where(mask.reshape(mask.shape + (1,) * (x.ndim - 1)), x, y), a, b)


class PPOState(NamedTuple):
    """Everything a PPO run carries between updates (a pytree: the Orbax checkpoint)."""
    params: Any
    opt_state: Any
    env_state: Any       # batched gymnax env state (N,)
    obs: jax.Array       # (N, obs_dim) the current observations
    ep_return: jax.Array  # (N,) return of the running episodes so far
    from_snapshot: jax.Array  # (N,) bool: the running episode began at a snapshot
    sampler: Any         # the snapshot sampler state (buffer, counters), or () for none
    key: jax.Array       # the run's base key; update u uses fold_in(key, u)
    update: jax.Array    # int32 (), updates done


class UpdateMetrics(NamedTuple):
    """Per-update diagnostics (the scan's output)."""
    losses: LossInfo             # the loss terms, averaged over the update's minibatches
    return_sum: jax.Array        # sum of returns of the episodes that began at env.reset and ended
    episodes: jax.Array          # how many such episodes ended
    snapshot_episodes: jax.Array  # episodes that began at a snapshot and ended
    snapshot_starts: jax.Array   # starts drawn from snapshots in this update


class PPO(NamedTuple):
    init: Callable       # (key, sampler) -> PPOState
    rollout: Callable    # (state, key) -> (carry, transitions): one rollout of num_steps, no update
    run: Callable        # (state, n: static) -> (state, UpdateMetrics stacked over n)
    evaluate: Callable   # (params, key, num_episodes: static, greedy: static) -> (num_episodes,) returns
    network: ActorCritic
    env: Any
    env_params: Any
    config: PPOConfig


def make_ppo(env_name: str, cfg: PPOConfig, starter: Callable = None, horizon: int = 0,
             snapshot_updates: int = 0) -> PPO:
    """PPO on ``env_name``.  ``starter(env, env_params, num_envs) -> start`` builds the episode
    starter (None: standard resets); ``horizon`` > 0 truncates episodes that began at a
    snapshot after that many steps; snapshots are allowed during the first
    ``snapshot_updates`` updates only (afterwards every start is env.reset)."""
    env, env_params = make_env(env_name)
    n, t = cfg.num_envs, cfg.num_steps
    batch = n * t
    if batch % cfg.num_minibatches:
        raise ValueError(f"make_ppo: num_envs*num_steps={batch} must be divisible by num_minibatches="
                         f"{cfg.num_minibatches}")
    max_steps = int(env_params.max_steps_in_episode)
    snap_limit = min(horizon, max_steps) if horizon > 0 else max_steps  # STT: episodes begun at a snapshot
    net = ActorCritic(env.num_actions, tuple(cfg.hidden))

    def std_start(key, sampler, mask, active):
        del mask, active
        obs, state = jax.vmap(env.reset_env, in_axes=(0, None))(jax.random.split(key, n), env_params)
        return state, obs, jnp.zeros((n,), bool), sampler

    start = std_start if starter is None else starter(env, env_params, n)
    steps_per_opt = cfg.update_epochs * cfg.num_minibatches
    lr = (optax.linear_schedule(cfg.learning_rate, 0.0, cfg.num_updates * steps_per_opt) if cfg.anneal_lr
          else cfg.learning_rate)
    tx = optax.chain(optax.clip_by_global_norm(cfg.max_grad_norm), optax.adam(lr, eps=1e-5))

    def init(key, sampler=()) -> PPOState:
        k_par, k_start, k_run = jax.random.split(key, 3)
        obs_dim = env.observation_space(env_params).shape
        params = net.init(k_par, jnp.zeros(obs_dim, jnp.float32))
        state, obs, snap, sampler = start(k_start, sampler, jnp.ones((n,), bool), snapshot_updates > 0)
        return PPOState(params, tx.init(params), state, obs.astype(jnp.float32), jnp.zeros((n,), jnp.float32),
                        snap, sampler, k_run, jnp.zeros((), jnp.int32))

    def env_step(carry, key, params, active):
        env_state, obs, ep_ret, snap, sampler = carry
        k_act, k_step, k_start = jax.random.split(key, 3)
        logits, value = net.apply(params, obs)
        action = jax.random.categorical(k_act, logits)
        logp = jnp.take_along_axis(jax.nn.log_softmax(logits), action[:, None], axis=-1)[:, 0]
        next_obs, next_state, reward, terminated, _ = jax.vmap(env.step_env, in_axes=(0, 0, 0, None))(
            jax.random.split(k_step, n), env_state, action, env_params)
        next_obs = next_obs.astype(jnp.float32)
        limit = jnp.where(snap, snap_limit, max_steps)
        truncated = (next_state.time >= limit) & ~terminated
        ended = terminated | truncated
        ret = ep_ret + reward
        s_state, s_obs, s_snap, sampler = start(k_start, sampler, ended, active)
        carry = (tree_where(ended, s_state, next_state), jnp.where(ended[:, None], s_obs.astype(jnp.float32),
                                                                   next_obs),
                 jnp.where(ended, 0.0, ret), jnp.where(ended, s_snap, snap), sampler)
        out = dict(obs=obs, action=action, logp=logp, value=value, reward=reward.astype(jnp.float32),
                   terminated=terminated, ended=ended, next_obs=next_obs,
                   std_done=ended & ~snap, snap_done=ended & snap, ret=ret,
                   snap_start=ended & s_snap, from_snapshot=snap, time=next_state.time)
        return carry, out

    def loss_fn(params, mb):
        logits, values = net.apply(params, mb["obs"])
        info = ppo_loss(logits, values, mb["action"], mb["logp"], mb["adv"], mb["ret"], cfg.clip_eps,
                        cfg.vf_coef, cfg.ent_coef)
        return info.loss, info

    def rollout(state: PPOState, key):
        """num_steps steps of the num_envs environments under the current policy."""
        active = state.update < snapshot_updates
        carry0 = (state.env_state, state.obs, state.ep_return, state.from_snapshot, state.sampler)
        return jax.lax.scan(lambda c, k: env_step(c, k, state.params, active), carry0, jax.random.split(key, t))

    def update(state: PPOState, _):
        key = jax.random.fold_in(state.key, state.update)
        k_roll, k_perm = jax.random.split(key)
        carry, tr = rollout(state, k_roll)
        _, next_values = net.apply(state.params, tr["next_obs"])
        adv, ret = gae(tr["reward"], tr["value"], next_values, tr["terminated"], tr["ended"], cfg.gamma,
                       cfg.gae_lambda)
        flat = dict(obs=tr["obs"], action=tr["action"], logp=tr["logp"], adv=adv, ret=ret)
        flat = jax.tree.map(lambda x: x.reshape((batch,) + x.shape[2:]), flat)

        def epoch(c, k):
            perm = jax.random.permutation(k, batch)
            mbs = jax.tree.map(lambda x: x[perm].reshape((cfg.num_minibatches, -1) + x.shape[1:]), flat)

            def minibatch(c2, mb):
                params, opt = c2
                grads, info = jax.grad(loss_fn, has_aux=True)(params, mb)
                upd, opt = tx.update(grads, opt, params)
                return (optax.apply_updates(params, upd), opt), info

            return jax.lax.scan(minibatch, c, mbs)

        (params, opt), infos = jax.lax.scan(epoch, (state.params, state.opt_state),
                                            jax.random.split(k_perm, cfg.update_epochs))
        info = jax.tree.map(jnp.mean, infos)
        env_state, obs, ep_ret, snap, sampler = carry
        m = UpdateMetrics(info, jnp.sum(jnp.where(tr["std_done"], tr["ret"], 0.0)),
                          jnp.sum(tr["std_done"]).astype(jnp.int32), jnp.sum(tr["snap_done"]).astype(jnp.int32),
                          jnp.sum(tr["snap_start"]).astype(jnp.int32))
        return PPOState(params, opt, env_state, obs, ep_ret, snap, sampler, state.key, state.update + 1), m

    def run(state: PPOState, num: int):
        return jax.lax.scan(update, state, None, length=num)

    def evaluate(params, key, num_episodes: int, greedy: bool = False):
        """Returns of ``num_episodes`` episodes in the original environment (env.reset, the
        env's own step limit) under the policy's sampled actions, or its argmax ones when
        ``greedy``."""
        obs, st = jax.vmap(env.reset_env, in_axes=(0, None))(jax.random.split(key, num_episodes), env_params)

        def step(c, k):
            st, obs, total, alive = c
            logits, _ = net.apply(params, obs.astype(jnp.float32))
            a = jnp.argmax(logits, axis=-1) if greedy else jax.random.categorical(jax.random.fold_in(k, 2), logits)
            obs, st2, r, term, _ = jax.vmap(env.step_env, in_axes=(0, 0, 0, None))(
                jax.random.split(k, num_episodes), st, a, env_params)
            total = total + jnp.where(alive, r, 0.0)
            alive = alive & ~term & (st2.time < max_steps)
            return (st2, obs, total, alive), None

        c0 = (st, obs, jnp.zeros((num_episodes,), jnp.float32), jnp.ones((num_episodes,), bool))
        (_, _, total, _), _ = jax.lax.scan(step, c0, jax.random.split(jax.random.fold_in(key, 1), max_steps))
        return total

    return PPO(jax.jit(init), jax.jit(rollout), jax.jit(run, static_argnums=1), jax.jit(evaluate, static_argnums=(2, 3)), net, env,
               env_params, cfg)


__all__ = ["ENVS", "make_env", "PPOConfig", "ActorCritic", "gae", "ppo_loss", "LossInfo", "tree_where",
           "PPOState", "UpdateMetrics", "PPO", "make_ppo"]
