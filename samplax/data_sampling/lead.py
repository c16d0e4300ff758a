"""LEAD: iterative, loss-aware data selection inside the training loop.

Lin, Qi, Zhu, Palpanas, Chai, Tang, Luo, "LEAD: Iterative Data Selection for Efficient LLM
Instruction Tuning" (arXiv:2505.07437, PVLDB 19(3), 2025).  Two parts, both run inside the
jitted train step here (no model call beyond the step's own forward/backward pass):

1. **Instance-level dynamic uncertainty (IDU)**, the per-example utility (paper Sec. 4):

   * the instantaneous uncertainty IU(theta_t, x) = L(theta_t, x), the example's training loss
     at the parameters before the update (for a token sequence: the mean per-token
     cross-entropy; here: whatever per-example loss the objective reports);
   * the gradient-based estimate of the loss change caused by the update, which corrects the
     mismatch between the parameters the loss was measured at and those the example will next
     be trained at.  The paper's estimate (its loss-change theorem) is a first-order Taylor
     step, Delta L' ~ -eta * || beta g_{t_k} + (1 - beta) g_{t-1} ||^2, written with the squared
     gradient norms delta_{t_k} (the chosen cluster's first visit), delta_{t-1} (the previous
     iteration) and the angle phi between the two gradients::

         Delta L' = -eta [beta^2 delta_tk + (1-beta)^2 delta_t1 + 2 beta (1-beta) sqrt(delta_tk delta_t1) cos phi]
         beta*    = (delta_t1 - c) / (delta_tk + delta_t1 - 2 c),   c = sqrt(delta_tk delta_t1) cos phi

     (beta* minimises the bracket: the minimum-norm point of the segment between the two
     gradients; we clip it to [0, 1]).  :func:`paper_loss_change` computes this.  Our train
     step reports the norm of the *very* gradient that moves the parameters
     (``stats["grad_norm"]``, ``stats["learning_rate"]``), so the default
     ``loss_change="batch"`` uses the exact first-order prediction of that step,
     Delta L' = -eta_t ||g_t||^2 (the paper's formula with beta = 0 and delta_{t-1} replaced
     by the current step's own squared norm).  This needs no per-example gradient: averaged
     over the batch, <grad l(x), g_t> = ||g_t||^2, so the estimate is the batch's, shared by
     its examples -- the same granularity as the paper's (one Delta L' per selected subset).
     ``loss_change="paper"`` uses the two-gradient formula; the cosine between the gradients
     is not available from the step's scalars, so ``cos_phi`` is an option (default 0);
     ``loss_change="none"`` drops the term;
   * exponential smoothing of the history (paper's IDU):
     ``IDU_t(x) = b IDU_{t'}(x) + (1 - b) [IU(theta_t, x) + Delta L'_t]`` at each visit t of x
     (t' its previous visit); ``b = smoothing``.  Never-seen examples carry
     ``initial_utility`` (default +inf: every example of a cluster is visited once before any
     is revisited -- our stand-in for the paper's offline warm-up scoring, which we do not
     have); the first visit sets IDU to the observation.

2. **Coarse-to-fine selection** (paper Sec. 5): a multi-armed bandit over clusters, then the
   highest-IDU examples of the chosen cluster.  The bandit is the EXP3 variant of the
   authors' code (their ``EXP3S``): ``p_i = (1 - gamma) w_i / sum w + gamma / K``; after a
   round on arm ``a`` with reward ``r``, the reward is rescaled with the min/max of all rewards
   so far, ``r' = 2 (r - lo) / (hi - lo) - 1`` (raw ``r`` while fewer than two rewards), and
   ``w_a <- w_a exp(gamma / K * r' / p_a)``.  We keep ``log w``.  The reward is the cluster's
   *utility change* (the released code leaves the reward at 0, so this is our reading of the
   paper's text): by default (``reward="example"``) the mean decrease of the IDU of the
   batch's examples since their previous visit, ``IDU_before(x) - (IU + Delta L')``, over the
   examples seen before (no round when none was); ``reward="cluster"``: the mean utility of
   the batch drawn from the cluster at its previous visit minus that of the batch drawn now.
   Within the chosen cluster the batch is the
   ``batch_size`` examples of highest IDU (ties broken at random), optionally skipping
   examples already used ``max_uses`` times (the authors' code excludes examples used 4
   times).

**Our mapping of an "iteration".**  The paper's iteration trains one pass over a
``sample_rate`` fraction of the chosen cluster, then updates utilities and the bandit.  Here
one iteration is one train step: each step draws ``arms_per_step`` clusters from the bandit
(default 1: the whole batch from one cluster, as in the paper) and takes the top
``batch_size / arms_per_step`` examples of each (an arm drawn twice gets twice the quota);
the stats of step k (per-example losses, gradient norm, learning rate) update the utilities
and the bandit -- one EXP3 round per drawn arm, rewarded by its group of the batch -- at step
k + 1.  ``arms_per_step > 1`` is our extension (mixed batches).  Every cluster must hold at
least ``batch_size`` examples.

**Clusters.**  The paper clusters instructions offline (embeddings + difficulty).  Here the
assignment is given: ``cluster_ids`` (one id per example), ``cluster_size`` (contiguous blocks
``index // cluster_size``, the layout of :func:`samplax.data` ``clusters_mix``; usable from a
config), or ``features`` + ``num_clusters`` (computed once with :func:`kmeans`, a small jitted
Lloyd's algorithm with k-means++ seeding).
"""
from __future__ import annotations

import math
from typing import Dict, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from samplax.data_sampling.base import DataSampler, register_sampler

LOSS_CHANGES = ("batch", "paper", "none")
REWARDS = ("example", "cluster")


# ---------------------------------------------------------------------------------------
# Pieces (pure functions, tested one by one)
# ---------------------------------------------------------------------------------------
def paper_loss_change(learning_rate, delta_first, delta_prev, cos_phi):
    """The paper's loss-change estimate Delta L' (<= 0) from the squared gradient norms
    ``delta_first`` (cluster's first visit) and ``delta_prev`` (previous iteration) and the
    cosine of their angle, with the minimising weight beta* clipped to [0, 1].  Returns
    ``(delta_L, beta)``."""
    cross = jnp.sqrt(jnp.maximum(delta_first * delta_prev, 0.0)) * cos_phi
    denom = delta_first + delta_prev - 2.0 * cross
    beta = jnp.where(denom > 0, (delta_prev - cross) / jnp.where(denom > 0, denom, 1.0), 0.0)
    beta = jnp.clip(beta, 0.0, 1.0)
    sq = beta ** 2 * delta_first + (1 - beta) ** 2 * delta_prev + 2 * beta * (1 - beta) * cross
    return -learning_rate * sq, beta


def smooth_utility(old, observed, first_visit, smoothing):
    """IDU update: ``observed`` at a first visit, else ``b old + (1 - b) observed``."""
    return jnp.where(first_visit, observed, smoothing * old + (1.0 - smoothing) * observed)


def exp3_probs(log_w, gamma):
    """EXP3 arm probabilities ``(1 - gamma) softmax(log w) + gamma / K``."""
    k = log_w.shape[0]
    return (1.0 - gamma) * jax.nn.softmax(log_w) + gamma / k


def exp3_update(log_w, lo, hi, count, arm, reward, gamma):
    """One EXP3 update of arm ``arm`` with raw ``reward`` (authors' EXP3S): the reward history's
    min/max (lo, hi, count) is extended by ``reward`` first, the reward rescaled to [-1, 1] by it
    (raw while count < 2; 0 when hi == lo), then ``log w_a += gamma / K * r' / p_a`` with p
    the probabilities *before* the update.  Returns (log_w, lo, hi, count, r')."""
    k = log_w.shape[0]
    lo, hi, count = jnp.minimum(lo, reward), jnp.maximum(hi, reward), count + 1
    span = hi - lo
    scaled = jnp.where(span > 0, 2.0 * (reward - lo) / jnp.where(span > 0, span, 1.0) - 1.0, 0.0)
    scaled = jnp.where(count < 2, reward, scaled)
    p = exp3_probs(log_w, gamma)
    log_w = log_w.at[arm].add(gamma / k * scaled / p[arm])
    return log_w, lo, hi, count, scaled


def top_in_clusters(key, cluster_ids, arms, utility, uses, batch_size: int, max_uses: int, num_clusters: int):
    """Fine-grained selection: for each drawn arm (cluster) in ``arms`` (c,), the
    ``batch_size / c`` examples of that cluster with the highest ``utility`` (random tie break;
    an arm drawn twice gets twice the quota; with ``max_uses > 0`` examples used that often
    come last).  One sort of the data set by (cluster, spent, -utility, tie).  The result is
    grouped by cluster in increasing id: group j (positions ``[j B/c, (j+1) B/c)``) belongs to
    ``sort(arms)[j]``.  Every cluster must hold >= batch_size examples."""
    quota = jnp.bincount(arms, length=num_clusters) * (batch_size // arms.shape[0])
    counts = jnp.bincount(cluster_ids, length=num_clusters)
    starts = jnp.cumsum(counts) - counts
    spent = (uses >= max_uses).astype(jnp.int32) if max_uses > 0 else jnp.zeros_like(cluster_ids)
    tie = jax.random.uniform(key, utility.shape)
    order = jnp.lexsort((tie, -utility, spent, cluster_ids))  # the last key is the primary one
    cl = cluster_ids[order]
    chosen = jnp.arange(order.shape[0]) - starts[cl] < quota[cl]
    return order[jnp.nonzero(chosen, size=batch_size)[0]].astype(jnp.int32)


def kmeans(key, features, num_clusters: int, iters: int = 25) -> Tuple[jax.Array, jax.Array]:
    """Lloyd's k-means with k-means++ seeding, jitted: ``(centres (K, d), assignment (N,))``.
    An empty cluster keeps its previous centre."""
    x = jnp.asarray(features, jnp.float32).reshape(features.shape[0], -1)
    return _kmeans(key, x, int(num_clusters), int(iters))


@jax.jit
def _sq_dists(x, c):
    return jnp.sum(x * x, 1)[:, None] - 2.0 * x @ c.T + jnp.sum(c * c, 1)[None, :]


def _kmeans_impl(key, x, k, iters):
    n = x.shape[0]
    k0, key = jax.random.split(key)
    first = x[jax.random.randint(k0, (), 0, n)]
    centres = jnp.zeros((k, x.shape[1]), x.dtype).at[0].set(first)

    def seed(i, carry):
        centres, key = carry
        key, sub = jax.random.split(key)
        d = jnp.min(jnp.where(jnp.arange(k)[None, :] < i, _sq_dists(x, centres), jnp.inf), axis=1)
        d = jnp.maximum(d, 0.0)
        j = jax.random.categorical(sub, jnp.log(d + 1e-30))
        return centres.at[i].set(x[j]), key

    centres, _ = jax.lax.fori_loop(1, k, seed, (centres, key))

    def lloyd(_, centres):
        a = jnp.argmin(_sq_dists(x, centres), axis=1)
        one = jax.nn.one_hot(a, k, dtype=x.dtype)
        counts = one.sum(0)
        means = (one.T @ x) / jnp.maximum(counts, 1.0)[:, None]
        return jnp.where(counts[:, None] > 0, means, centres)

    centres = jax.lax.fori_loop(0, iters, lloyd, centres)
    return centres, jnp.argmin(_sq_dists(x, centres), axis=1).astype(jnp.int32)


_kmeans = jax.jit(_kmeans_impl, static_argnums=(2, 3))


# ---------------------------------------------------------------------------------------
# The sampler
# ---------------------------------------------------------------------------------------
def _err(option: str, message: str) -> ValueError:
    return ValueError(f"data sampler 'lead': option {option!r} {message}")


def _float_in(option: str, v, lo: float, hi: float, lo_open=False, hi_open=False) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)) or math.isnan(v):
        raise _err(option, f"must be a number, got {v!r}")
    v = float(v)
    if (v < lo or (lo_open and v == lo)) or (v > hi or (hi_open and v == hi)):
        raise _err(option, f"must be in {'(' if lo_open else '['}{lo}, {hi}{')' if hi_open else ']'}, got {v!r}")
    return v


def _nonneg_int(option: str, v) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 0:
        raise _err(option, f"must be an integer >= 0, got {v!r}")
    return int(v)


def resolve_clusters(size: int, batch_size: int, cluster_size: int = 0, cluster_ids=None, features=None,
                     num_clusters: int = 0, kmeans_iters: int = 25, kmeans_seed: int = 0) -> np.ndarray:
    """The cluster id (0..K-1, int32) of each of ``size`` examples from exactly one of
    ``cluster_ids``, ``cluster_size`` or ``features`` + ``num_clusters``; ValueError naming the
    option otherwise, or when a cluster holds fewer than ``batch_size`` examples."""
    cluster_size = _nonneg_int("cluster_size", cluster_size)
    num_clusters = _nonneg_int("num_clusters", num_clusters)
    given = [n for n, v in (("cluster_ids", cluster_ids is not None), ("cluster_size", cluster_size > 0),
                            ("features", features is not None)) if v]
    if len(given) != 1:
        raise _err("cluster_size", "/ 'cluster_ids' / 'features' (+ 'num_clusters'): give exactly one way to "
                   f"assign clusters, got {given or 'none'}")
    if cluster_ids is not None:
        ids = np.asarray(cluster_ids)
        if ids.shape != (size,) or not np.issubdtype(ids.dtype, np.integer) or ids.min() < 0:
            raise _err("cluster_ids", f"must be {size} non-negative integers, got shape {ids.shape} {ids.dtype}")
        _, ids = np.unique(ids, return_inverse=True)
    elif cluster_size > 0:
        if size % cluster_size:
            raise _err("cluster_size", f"must divide the data set size {size}, got {cluster_size}")
        ids = np.arange(size) // cluster_size
    else:
        feats = np.asarray(features)
        if feats.shape[:1] != (size,):
            raise _err("features", f"must have {size} rows, got shape {feats.shape}")
        if not 1 <= num_clusters <= size:
            raise _err("num_clusters", f"must be in [1, {size}] with 'features', got {num_clusters}")
        iters = _nonneg_int("kmeans_iters", kmeans_iters)
        _, ids = kmeans(jax.random.PRNGKey(_nonneg_int("kmeans_seed", kmeans_seed)), feats, num_clusters, iters)
        _, ids = np.unique(np.asarray(ids), return_inverse=True)
    ids = ids.astype(np.int32)
    counts = np.bincount(ids)
    if counts.min() < batch_size:
        raise _err(given[0], f"gives a cluster of {counts.min()} examples; every cluster needs >= batch_size "
                   f"({batch_size}) examples")
    return ids


def lead(size: int, batch_size: int, cluster_size: int = 0, cluster_ids=None, features=None,
         num_clusters: int = 0, kmeans_iters: int = 25, kmeans_seed: int = 0, smoothing: float = 0.5,
         gamma: float = 0.1, loss_change: str = "batch", cos_phi: float = 0.0,
         initial_utility: float = float("inf"), max_uses: int = 0, reward: str = "example",
         arms_per_step: int = 1) -> DataSampler:
    """LEAD (module docstring): per-example IDU state, an EXP3 bandit over clusters and
    top-IDU selection within the chosen cluster, all in ``next_indices`` (pure, jit-able).

    Options: the cluster assignment (``cluster_size`` | ``cluster_ids`` | ``features`` +
    ``num_clusters``, ``kmeans_iters``, ``kmeans_seed``); ``smoothing`` b in [0, 1) (weight of
    the history in IDU); ``gamma`` in (0, 1] (EXP3 exploration); ``loss_change`` in
    ("batch", "paper", "none") and ``cos_phi`` in [-1, 1] (for "paper"); ``initial_utility``
    (IDU of a never-seen example; +inf: unseen first); ``max_uses`` (0: no cap); ``reward`` in
    ("example", "cluster"): the bandit's reward, the utility change of the group's revisited
    examples since their last visit (``IDU_before - (IU + Delta L')``, mean; no round when none
    was seen before) or the change of the cluster's group-mean utility since the cluster's last
    visit; ``arms_per_step`` (a divisor of batch_size)."""
    ids = resolve_clusters(size, batch_size, cluster_size, cluster_ids, features, num_clusters, kmeans_iters,
                           kmeans_seed)
    k = int(ids.max()) + 1
    smoothing = _float_in("smoothing", smoothing, 0.0, 1.0, hi_open=True)
    gamma = _float_in("gamma", gamma, 0.0, 1.0, lo_open=True)
    cos_phi = _float_in("cos_phi", cos_phi, -1.0, 1.0)
    if loss_change not in LOSS_CHANGES:
        raise _err("loss_change", f"must be one of {LOSS_CHANGES}, got {loss_change!r}")
    if isinstance(initial_utility, bool) or not isinstance(initial_utility, (int, float, np.floating)) \
            or math.isnan(initial_utility):
        raise _err("initial_utility", f"must be a number (inf allowed), got {initial_utility!r}")
    initial_utility = float(initial_utility)
    max_uses = _nonneg_int("max_uses", max_uses)
    if reward not in REWARDS:
        raise _err("reward", f"must be one of {REWARDS}, got {reward!r}")
    arms_per_step = _nonneg_int("arms_per_step", arms_per_step)
    if arms_per_step < 1 or batch_size % arms_per_step:
        raise _err("arms_per_step", f"must be a positive divisor of batch_size ({batch_size}), got {arms_per_step}")
    cid = jnp.asarray(ids)

    per = batch_size // arms_per_step

    def init() -> Dict[str, jax.Array]:
        f32, i32 = jnp.float32, jnp.int32
        return dict(idu=jnp.full((size,), initial_utility, f32), last_step=jnp.full((size,), -1, i32),
                    uses=jnp.zeros((size,), i32), log_w=jnp.zeros((k,), f32),
                    arms=jnp.full((arms_per_step,), -1, i32),
                    reward_lo=jnp.asarray(jnp.inf, f32), reward_hi=jnp.asarray(-jnp.inf, f32),
                    rewards=jnp.zeros((), i32), last_reward=jnp.zeros((), f32),
                    cluster_utility=jnp.zeros((k,), f32), visits=jnp.zeros((k,), i32),
                    g2_first=jnp.zeros((k,), f32), g2_prev=jnp.zeros((), f32))

    def observe(state, stats):
        """Fold the previous step's stats into the utilities and the bandit (one EXP3 round per
        drawn arm, in the order of the batch's groups)."""
        idx, loss = stats["indices"].astype(jnp.int32), stats["loss"].astype(jnp.float32)
        lr = stats["learning_rate"].astype(jnp.float32)
        g2 = jnp.square(stats["grad_norm"].astype(jnp.float32))
        arms = jnp.maximum(state["arms"], 0)
        first_visit = state["visits"][arms] == 0  # (c,)
        if loss_change == "batch":
            dl = jnp.broadcast_to(-lr * g2, arms.shape)
        elif loss_change == "paper":
            later, _ = paper_loss_change(lr, state["g2_first"][arms], state["g2_prev"], cos_phi)
            dl = jnp.where(first_visit, -lr * state["g2_prev"], later)
        else:
            dl = jnp.zeros(arms.shape, jnp.float32)
        observed = loss + jnp.repeat(dl, per)
        old, was_seen = state["idu"][idx], state["last_step"][idx] >= 0
        s = dict(state)
        s["idu"] = state["idu"].at[idx].set(smooth_utility(old, observed, ~was_seen, smoothing))
        s["last_step"] = state["last_step"].at[idx].set(stats["step"].astype(jnp.int32))
        obs_g, old_g, seen_g = (a.reshape(arms_per_step, per) for a in (observed, old, was_seen))

        def one_round(j, c):
            arm, utility = arms[j], jnp.mean(obs_g[j])
            if reward == "cluster":
                value, rewarded = c["cluster_utility"][arm] - utility, c["visits"][arm] > 0
            else:
                n_seen = jnp.sum(seen_g[j])
                value = jnp.sum(jnp.where(seen_g[j], old_g[j] - obs_g[j], 0.0)) / jnp.maximum(n_seen, 1)
                rewarded = n_seen > 0
            upd = exp3_update(c["log_w"], c["reward_lo"], c["reward_hi"], c["rewards"], arm, value, gamma)
            new = dict(c)
            for name, v in zip(("log_w", "reward_lo", "reward_hi", "rewards", "last_reward"), upd):
                new[name] = jnp.where(rewarded, v, c[name])
            new["cluster_utility"] = c["cluster_utility"].at[arm].set(utility)
            new["g2_first"] = jnp.where(c["visits"][arm] == 0, c["g2_first"].at[arm].set(g2), c["g2_first"])
            new["visits"] = c["visits"].at[arm].add(1)
            return new

        names = ("log_w", "reward_lo", "reward_hi", "rewards", "last_reward", "cluster_utility", "visits", "g2_first")
        s.update(jax.lax.fori_loop(0, arms_per_step, one_round, {n: state[n] for n in names}))
        s["g2_prev"] = g2
        live = stats["valid"] & (state["arms"][0] >= 0)
        return jax.tree_util.tree_map(lambda a, b: jnp.where(live, a, b), s, state)

    def next_indices(key, state, stats):
        state = observe(state, stats)
        k_arm, k_tie = jax.random.split(key)
        p = exp3_probs(state["log_w"], gamma)
        arms = jnp.sort(jax.random.categorical(k_arm, jnp.log(p), shape=(arms_per_step,)).astype(jnp.int32))
        idx = top_in_clusters(k_tie, cid, arms, state["idu"], state["uses"], batch_size, max_uses, k)
        state = dict(state, arms=arms, uses=state["uses"].at[idx].add(1))
        return idx, state

    options = dict(num_clusters=k, cluster_sizes=np.bincount(ids).tolist(), smoothing=smoothing, gamma=gamma,
                   loss_change=loss_change, cos_phi=cos_phi, initial_utility=initial_utility, max_uses=max_uses,
                   reward=reward, arms_per_step=arms_per_step)
    return DataSampler("lead", init, next_indices, options, None, size, batch_size)


register_sampler("lead", lead)

__all__ = ["lead", "paper_loss_change", "smooth_utility", "exp3_probs", "exp3_update", "top_in_clusters", "kmeans",
           "resolve_clusters", "LOSS_CHANGES", "REWARDS"]
