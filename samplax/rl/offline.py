"""Trajectory weighting of a mixed offline data set (Hong, Agrawal, Tachet des Combes and
Laroche, "Harnessing Mixed Offline Reinforcement Learning Datasets via Trajectory
Weighting", ICLR 2023), the weighted transition sampler, and two offline learners on
discrete actions: behaviour cloning and discrete CQL.

**Weights.**  A data set of ``N`` trajectories with returns ``G_i`` and lengths ``L_i``.
The paper resamples trajectories with a distribution ``W`` over them; in a deterministic
MDP with stochastic initial states the resampled data set is the data of a behaviour
policy whose return is ``sum_i W_i G_i`` (its central argument), which exceeds the data
set's mean return whenever ``W`` moves mass to high-return trajectories.  Its practical
rules are softmaxes with temperature ``alpha`` of a max-min normalised score (written here
as in the authors' public code, ``RW`` and ``AW`` of Improbable-AI/harness-offline-rl; the
paper's full text was not reachable from this session, so no equation numbers are cited):

* return weighting (RW): ``w_i = exp(Ghat_i / alpha)``, ``Ghat_i = (G_i - min G) /
  (max G - min G)``;
* advantage weighting (AW): ``w_i = exp(Ahat_i / alpha)`` with ``A_i = G_i - V(s_0^i)``,
  ``V`` a least-squares linear fit of the returns on the initial observations (so a
  trajectory is judged against others that started from similar states), max-min
  normalised like the returns.

A score that is constant over the data set normalises to 0 (every weight equal).
``alpha -> 0`` keeps only the best trajectories; ``alpha -> inf`` is uniform.

**Level.**  The authors' code gives every *transition* of trajectory ``i`` the weight
``w_i`` (a softmax over all transitions), so trajectory ``i`` is drawn with probability
``L_i w_i / sum_j L_j w_j``: ``level = "transition"`` (the default; with ``"uniform"``
weights this is ordinary uniform transition sampling, the baseline).  ``level =
"trajectory"`` draws trajectory ``i`` with probability ``w_i / sum_j w_j`` (the paper's
``W`` over trajectories, whatever their length).  ``uniform_mix = lambda`` (ours, not the
paper's; 0 by default) returns ``(1 - lambda) p + lambda u`` with ``u`` the uniform
distribution of the same level, a floor that keeps every trajectory in the batches.

**Sampler.**  :func:`trajectory_sampler` draws a batch by first drawing trajectories from
``p`` and then a step uniformly inside each drawn trajectory: transition ``(i, t)`` has
probability ``p_i / L_i``.  It has the shape of a :mod:`samplax.data_sampling` sampler:
``init() -> state`` (per-trajectory draw counts) and ``next_indices(key, state, stats) ->
(flat indices i * T + t, state)``, pure and jit-able.

**Learners** (:func:`make_learner`): ``"bc"`` (cross-entropy of policy logits on the data
actions) and ``"cql"`` (discrete CQL(H) of Kumar et al. 2020, "Conservative Q-Learning for
Offline Reinforcement Learning", the log-sum-exp variant: ``cql_alpha * E[logsumexp_a Q(s, a) - Q(s, a_data)]`` plus the
TD error to ``r + gamma (1 - terminal) max_a' Q_target(s', a')``, with a Polyak-averaged
target network).  We pick CQL as the offline RL learner because its discrete-action form
is exact (the log-sum-exp runs over the action set, no action sampling), it is one of the
three learners the paper combines with RW/AW, and it is a single Q-network (IQL needs
three networks and an extraction step).
"""
from __future__ import annotations

from typing import Any, Callable, Dict, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax

WEIGHTINGS = ("uniform", "return", "advantage")
LEVELS = ("transition", "trajectory")
LEARNERS = ("bc", "cql")


# ---------------------------------------------------------------------------------------
# Weights (Hong et al. 2023: RW and AW)
# ---------------------------------------------------------------------------------------
def max_min_normalise(x) -> np.ndarray:
    """``(x - min x) / (max x - min x)`` in float64; a constant ``x`` gives zeros."""
    x = np.asarray(x, np.float64)
    span = x.max() - x.min()
    return np.zeros_like(x) if span <= 0 else (x - x.min()) / span


def advantages(returns, first_obs) -> np.ndarray:
    """``G_i - V(s_0^i)`` with ``V`` the least-squares linear fit (with intercept) of the
    returns on the initial observations (the paper's AW baseline)."""
    g = np.asarray(returns, np.float64)
    s0 = np.asarray(first_obs, np.float64).reshape(len(g), -1)
    design = np.concatenate([s0, np.ones((len(g), 1))], axis=1)
    coef, *_ = np.linalg.lstsq(design, g, rcond=None)
    return g - design @ coef


def trajectory_log_weights(returns, method: str = "return", alpha: float = 0.1,
                           first_obs=None) -> np.ndarray:
    """``log w_i``: 0 for "uniform", ``Ghat_i / alpha`` for "return" (RW), ``Ahat_i /
    alpha`` for "advantage" (AW, needs ``first_obs``)."""
    g = np.asarray(returns, np.float64)
    if g.ndim != 1 or len(g) == 0:
        raise ValueError(f"trajectory_log_weights: returns must be a non-empty 1-D array, got shape {g.shape}")
    if method not in WEIGHTINGS:
        raise ValueError(f"trajectory_log_weights: method must be one of {list(WEIGHTINGS)}, got {method!r}")
    if method == "uniform":
        return np.zeros_like(g)
    if not float(alpha) > 0:
        raise ValueError(f"trajectory_log_weights: alpha must be > 0, got {alpha!r}")
    if method == "return":
        return max_min_normalise(g) / float(alpha)
    if first_obs is None:
        raise ValueError("trajectory_log_weights: method 'advantage' needs first_obs (the initial observations)")
    return max_min_normalise(advantages(g, first_obs)) / float(alpha)


def trajectory_probabilities(returns, lengths, method: str = "return", alpha: float = 0.1,
                             level: str = "transition", uniform_mix: float = 0.0, first_obs=None) -> np.ndarray:
    """The probability ``p_i`` (float64, sums to 1) that a draw picks trajectory ``i``
    (module doc): ``w_i / sum w`` for level "trajectory", ``L_i w_i / sum L w`` for
    "transition", then mixed with the same level's uniform ``u`` as ``(1 - lambda) p +
    lambda u``."""
    if level not in LEVELS:
        raise ValueError(f"trajectory_probabilities: level must be one of {list(LEVELS)}, got {level!r}")
    if not 0.0 <= float(uniform_mix) <= 1.0:
        raise ValueError(f"trajectory_probabilities: uniform_mix must be in [0, 1], got {uniform_mix!r}")
    logw = trajectory_log_weights(returns, method, alpha, first_obs)
    lengths = np.asarray(lengths, np.float64)
    if lengths.shape != logw.shape or np.any(lengths < 1):
        raise ValueError(f"trajectory_probabilities: lengths must be {logw.shape} positive numbers")
    base = np.log(lengths) if level == "transition" else np.zeros_like(logw)
    z = logw + base
    p = np.exp(z - z.max())
    p /= p.sum()
    u = np.exp(base - base.max())
    u /= u.sum()
    lam = float(uniform_mix)
    return (1.0 - lam) * p + lam * u


def behaviour_return(probs, returns) -> float:
    """``sum_i p_i G_i``: the expected return of a trajectory the sampler draws, the return
    of the resampled data set's behaviour policy in a deterministic MDP (Hong et al.)."""
    return float(np.dot(np.asarray(probs, np.float64), np.asarray(returns, np.float64)))


# ---------------------------------------------------------------------------------------
# Sampler
# ---------------------------------------------------------------------------------------
class TrajectorySampler(NamedTuple):
    """The fields of :class:`samplax.data_sampling.base.DataSampler`: ``init() -> state``,
    ``next_indices(key, state, stats) -> (indices (B,) int32, state)``."""

    name: str
    init: Callable[[], Any]
    next_indices: Callable
    options: Dict[str, Any]
    stats_fn: Optional[Callable] = None
    size: int = 0
    batch_size: int = 0


def trajectory_sampler(probs, lengths, max_len: int, batch_size: int, name: str = "trajectory",
                       options: Optional[dict] = None) -> TrajectorySampler:
    """Draw ``batch_size`` transitions: trajectory ``i ~ probs`` (categorical), then step
    ``t`` uniform in ``[0, L_i)``; the index is ``i * max_len + t`` (a row of the
    trajectories flattened to ``(N * max_len, ...)``).  The state counts the draws of each
    trajectory (int32 (N,)); ``stats`` is ignored.  ``probs`` and ``lengths`` may be traced
    arrays (a sampler built inside ``jit`` / ``vmap``, e.g. one compiled training function
    for many data sets); concrete ones are checked."""
    if isinstance(probs, jax.core.Tracer) or isinstance(lengths, jax.core.Tracer):  # built inside a jit / vmap
        logp, lens = jnp.log(jnp.asarray(probs, jnp.float32)), jnp.asarray(lengths, jnp.int32)
        n = int(logp.shape[-1])
    else:
        probs = np.asarray(probs, np.float64)
        n = len(probs)
        lengths_np = np.asarray(lengths, np.int64)
        if lengths_np.shape != (n,) or np.any(lengths_np < 1) or np.any(lengths_np > max_len):
            raise ValueError(f"trajectory_sampler: lengths must be {n} ints in [1, {max_len}]")
        with np.errstate(divide="ignore"):
            logp = jnp.asarray(np.log(probs), jnp.float32)
        lens = jnp.asarray(lengths_np, jnp.int32)
    if int(batch_size) < 1:
        raise ValueError(f"trajectory_sampler: batch_size must be >= 1, got {batch_size!r}")
    b = int(batch_size)

    def init():
        return dict(draws=jnp.zeros((n,), jnp.int32))

    def next_indices(key, state, stats=None):
        k_traj, k_step = jax.random.split(key)
        traj = jax.random.categorical(k_traj, logp, shape=(b,)).astype(jnp.int32)
        length = lens[traj]
        t = jnp.minimum(jnp.floor(jax.random.uniform(k_step, (b,)) * length).astype(jnp.int32), length - 1)
        draws = state["draws"] + jnp.zeros((n,), jnp.int32).at[traj].add(1)
        return traj * max_len + t, dict(draws=draws)

    return TrajectorySampler(name, init, next_indices, dict(options or {}), None, n * int(max_len), b)


# ---------------------------------------------------------------------------------------
# Learners
# ---------------------------------------------------------------------------------------
class Batch(NamedTuple):
    obs: jax.Array
    action: jax.Array
    reward: jax.Array
    next_obs: jax.Array
    terminal: jax.Array


def flat_transitions(trajs) -> Batch:
    """The (N * T, ...) transition arrays of :class:`samplax.rl.envs.Trajectories`."""
    n, t = trajs.action.shape
    return Batch(trajs.obs.reshape(n * t, -1), trajs.action.reshape(-1), trajs.reward.reshape(-1),
                 trajs.next_obs.reshape(n * t, -1), trajs.terminal.reshape(-1).astype(jnp.float32))


def gather(data: Batch, indices) -> Batch:
    return jax.tree.map(lambda x: x[indices], data)


class LearnerState(NamedTuple):
    params: Any
    target_params: Any  # CQL's target network (BC: a copy, never used)
    opt_state: Any


class Learner(NamedTuple):
    """``init(key) -> LearnerState``; ``update(state, batch) -> (state, metrics)``;
    ``apply(params, obs) -> (..., num_actions)`` (logits for BC, Q-values for CQL)."""

    name: str
    init: Callable
    update: Callable
    apply: Callable


def make_learner(name: str, net, obs_dim: int, optimizer: optax.GradientTransformation, gamma: float = 0.99,
                 cql_alpha: float = 1.0, target_tau: float = 0.005) -> Learner:
    """Behaviour cloning (``"bc"``) or discrete CQL(H) (``"cql"``) on a Flax ``net``."""
    if name not in LEARNERS:
        raise ValueError(f"make_learner: name must be one of {list(LEARNERS)}, got {name!r}")

    def init(key):
        params = net.init(key, jnp.zeros((1, obs_dim), jnp.float32))
        return LearnerState(params, jax.tree.map(jnp.copy, params), optimizer.init(params))

    def bc_loss(params, target_params, batch):
        logp = jax.nn.log_softmax(net.apply(params, batch.obs), axis=-1)
        nll = -jnp.take_along_axis(logp, batch.action[:, None], axis=-1)[:, 0]
        return jnp.mean(nll), dict(nll=jnp.mean(nll))

    def cql_loss(params, target_params, batch):
        q = net.apply(params, batch.obs)
        q_a = jnp.take_along_axis(q, batch.action[:, None], axis=-1)[:, 0]
        q_next = jax.lax.stop_gradient(net.apply(target_params, batch.next_obs)).max(axis=-1)
        target = batch.reward + gamma * (1.0 - batch.terminal) * q_next
        td = 0.5 * jnp.mean((q_a - target) ** 2)
        gap = jnp.mean(jax.nn.logsumexp(q, axis=-1) - q_a)
        return td + cql_alpha * gap, dict(td=td, cql_gap=gap, q_mean=jnp.mean(q_a))

    loss_fn = bc_loss if name == "bc" else cql_loss

    def update(state: LearnerState, batch: Batch):
        (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params, state.target_params, batch)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        target = state.target_params
        if name == "cql":
            target = optax.incremental_update(params, target, target_tau)
        return LearnerState(params, target, opt_state), dict(aux, loss=loss, grad_norm=optax.global_norm(grads))

    return Learner(name, init, update, net.apply)


# ---------------------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------------------
class OfflineState(NamedTuple):
    """Everything a run needs to continue: the step, the learner and the sampler state."""

    step: jax.Array
    learner: LearnerState
    sampler: Any


def step_key(seed: int, step) -> jax.Array:
    """The key of step ``step``: ``fold_in(PRNGKey(seed), step)`` (the sampler's draw;
    ``seed`` may be traced)."""
    return jax.random.fold_in(jax.random.PRNGKey(seed), step)


def make_train_chunk(learner: Learner, sampler: TrajectorySampler, num_steps: int):
    """``chunk(state, data, seed) -> (state, metrics)``: ``num_steps`` steps in one
    ``lax.scan``; step ``k`` draws its batch with :func:`step_key` ``(seed, k)``, so a
    run is a pure function of the seed and the data, cut into chunks at the same steps."""

    def one(carry, _):
        state, data, seed = carry
        idx, sampler_state = sampler.next_indices(step_key(seed, state.step), state.sampler, None)
        lstate, metrics = learner.update(state.learner, gather(data, idx))
        return (OfflineState(state.step + 1, lstate, sampler_state), data, seed), metrics

    def chunk(state: OfflineState, data: Batch, seed):
        (state, _, _), metrics = jax.lax.scan(one, (state, data, jnp.asarray(seed, jnp.int32)), None,
                                              length=num_steps)
        return state, metrics

    return chunk


def init_state(learner: Learner, sampler: TrajectorySampler, seed: int) -> OfflineState:
    """Step 0: the network initialised with ``fold_in(PRNGKey(seed), 2**31 - 1)``."""
    return OfflineState(jnp.zeros((), jnp.int32), learner.init(jax.random.fold_in(jax.random.PRNGKey(seed),
                                                                                   2 ** 31 - 1)), sampler.init())


__all__ = ["WEIGHTINGS", "LEVELS", "LEARNERS", "max_min_normalise", "advantages", "trajectory_log_weights",
           "trajectory_probabilities", "behaviour_return", "TrajectorySampler", "trajectory_sampler", "Batch",
           "flat_transitions", "gather", "LearnerState", "Learner", "make_learner", "OfflineState", "step_key",
           "make_train_chunk", "init_state"]
