"""S^3: predictor-based search over solver schedules.

Liu et al. 2023, "A Unified Sampling Framework for Solver Searching of Diffusion
Probabilistic Models" (Sec. 4.2, S^3): evaluating a schedule for real is costly,
so a small MLP *predictor* learns, from the candidates evaluated so far, to map a
schedule's features to its metric; each stage then ranks many cheap candidates
(mutants of the current best) with the predictor and evaluates only the top ones
for real, which become training data for the next stage.  Here (one stage = one
``step``):

1. train the predictor (flax.linen MLP, optax Adam) for ``train_steps`` minibatch
   steps on the archive of every evaluated (features, log score) so far (a
   fixed-capacity ring buffer in the state, so shapes are static);
2. draw ``candidates`` children (crossover + mutation) of the ``parents`` best
   evaluated schedules and rank them by the predicted log score;
3. evaluate the ``top_k`` best-ranked for real, add them to the archive, keep the
   ``population`` best evaluated schedules as the parents' pool.

The first step evaluates ``top_k`` members of the initial population (random +
``seeds``) without a predictor.  The state is a dict of arrays (archive, elite
population, predictor parameters and optimizer state, counters).
"""
from __future__ import annotations

from typing import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from samplax.search.space import SearchSpace, take
from samplax.search.strategies import (Strategy, _best, _check_int, _check_rate, _clean, _concat, _evaluations,
                                       _keep_best, _update_best, initial_population, offspring)


class Predictor(nn.Module):
    """MLP from schedule features to a predicted (standardised) log score."""

    hidden: Sequence[int] = (64, 64)

    @nn.compact
    def __call__(self, x):
        for h in self.hidden:
            x = nn.gelu(nn.Dense(h)(x))
        return nn.Dense(1)(x)[..., 0]


def _targets(log_scores, valid):
    """Standardised targets; a non-finite score becomes the worst finite one + 1."""
    finite = valid & jnp.isfinite(log_scores)
    worst = jnp.max(jnp.where(finite, log_scores, -jnp.inf))
    worst = jnp.where(jnp.isfinite(worst), worst, 0.0)
    y = jnp.where(finite, log_scores, worst + 1.0)
    w = valid.astype(y.dtype)
    cnt = jnp.maximum(jnp.sum(w), 1.0)
    mu = jnp.sum(w * y) / cnt
    sd = jnp.sqrt(jnp.sum(w * (y - mu) ** 2) / cnt) + 1e-6
    return jnp.where(valid, (y - mu) / sd, 0.0)


def make_predictor(n_features: int, hidden: Sequence[int] = (64, 64), learning_rate: float = 3e-3,
                   ensemble: int = 4, loss: str = "rank"):
    """(module, optimizer, init_fn(key) -> (params, opt_state), train_fn, predict_fn).

    An ensemble of ``ensemble`` MLPs (independent initialisations and minibatches;
    the prediction is their mean).  ``train_fn(params, opt_state, key, features (C, F),
    log_scores (C,), valid (C,), steps, batch) -> (params, opt_state, loss)`` runs
    ``steps`` Adam steps on minibatches drawn from the valid rows (the first ones of
    the archive): ``loss="mse"`` regresses the standardised log score, ``loss="rank"``
    adds a pairwise logistic ranking loss over all pairs of the minibatch (the order
    of candidates is what the search uses).  ``predict_fn(params, features) -> (N,)``
    (lower = better)."""
    if loss not in ("mse", "rank"):
        raise ValueError(f"make_predictor.loss: unknown loss {loss!r}; allowed: ['mse', 'rank']")
    _check_int("make_predictor", "ensemble", ensemble)
    module = Predictor(tuple(hidden))
    opt = optax.adam(learning_rate)

    def init_fn(key):
        params = jax.vmap(lambda k: module.init(k, jnp.zeros((1, n_features), jnp.float32)))(
            jax.random.split(key, ensemble))
        return params, opt.init(params)

    def member(p, features):
        return module.apply(p, features.astype(jnp.float32))

    def predict_fn(params, features):
        return jnp.mean(jax.vmap(member, in_axes=(0, None))(params, features), 0)

    def train_fn(params, opt_state, key, features, log_scores, valid, steps: int, batch: int):
        y = _targets(log_scores, valid)
        n_valid = jnp.maximum(jnp.sum(valid.astype(jnp.int32)), 1)

        def loss_one(p, idx):
            pred = member(p, features[idx])
            out = jnp.mean((pred - y[idx]) ** 2)
            if loss == "rank":
                dy = y[idx][:, None] - y[idx][None, :]
                dp = pred[:, None] - pred[None, :]
                out = out + jnp.mean(jnp.where(dy > 0, jax.nn.softplus(-dp), 0.0)) * 2.0
            return out

        def loss_fn(p, idx):  # idx (E, batch)
            return jnp.sum(jax.vmap(loss_one)(p, idx))

        def body(carry, k):
            p, s = carry
            idx = jax.random.randint(k, (ensemble, batch), 0, n_valid)
            val, g = jax.value_and_grad(loss_fn)(p, idx)
            upd, s = opt.update(g, s, p)
            return (optax.apply_updates(p, upd), s), val / ensemble

        (params, opt_state), losses = jax.lax.scan(body, (params, opt_state), jax.random.split(key, steps))
        return params, opt_state, losses[-1] if steps else jnp.asarray(0.0)

    return module, opt, init_fn, train_fn, predict_fn


def s3(space: SearchSpace, score_fn: Callable, population: int = 64, candidates: int = 4096, top_k: int = 64,
       hidden: Sequence[int] = (64, 64), train_steps: int = 200, parents: int = 16, mutation_rate: float = 0.2,
       crossover: float = 0.5, archive: int = 4096, batch: int = 256, learning_rate: float = 3e-3,
       seeds=None) -> Strategy:
    """S^3 predictor-based search (see the module doc); ``top_k`` real evaluations per step."""
    for name, v in (("population", population), ("candidates", candidates), ("top_k", top_k),
                    ("parents", parents), ("archive", archive), ("batch", batch)):
        _check_int("s3", name, v)
    _check_int("s3", "train_steps", train_steps, lo=0)
    if top_k > candidates:
        raise ValueError(f"s3.top_k: must be <= candidates ({candidates}), got {top_k}")
    if parents > population:
        raise ValueError(f"s3.parents: must be <= population ({population}), got {parents}")
    if top_k > archive:
        raise ValueError(f"s3.archive: must hold at least one stage (top_k = {top_k}), got {archive}")
    mutation_rate = _check_rate("s3", mutation_rate)
    n_feat = space.n_features
    _, _, pinit, ptrain, ppredict = make_predictor(n_feat, hidden, learning_rate)
    init_size = max(population, top_k)

    def init(key):
        kp, kq = jax.random.split(key)
        pop = initial_population(space, kp, init_size, seeds)
        params, opt_state = pinit(kq)
        return dict(pool=pop, population=take(pop, jnp.arange(population)),
                    scores=jnp.full((population,), jnp.inf, jnp.float32),
                    best_genotype=take(pop, 0), best_score=jnp.asarray(jnp.inf, jnp.float32),
                    archive_features=jnp.zeros((archive, n_feat), jnp.float32),
                    archive_log_score=jnp.zeros((archive,), jnp.float32),
                    archive_count=jnp.asarray(0, jnp.int32),
                    params=params, opt_state=opt_state, loss=jnp.asarray(0.0, jnp.float32),
                    n_eval=jnp.asarray(0, jnp.int32), generation=jnp.asarray(0, jnp.int32))

    @jax.jit
    def propose(state, key):
        kt, kc = jax.random.split(key)
        first = state["generation"] == 0
        valid = jnp.arange(archive) < jnp.minimum(state["archive_count"], archive)
        params, opt_state, loss = ptrain(state["params"], state["opt_state"], kt, state["archive_features"],
                                         state["archive_log_score"], valid, train_steps, batch)
        par = take(state["population"], jnp.arange(parents))
        kids = offspring(space, kc, par, candidates, mutation_rate, crossover)
        pred = ppredict(params, jax.vmap(space.features)(kids))
        pred = jnp.where(jnp.isfinite(pred), pred, jnp.inf)
        order = jnp.argsort(pred, stable=True)[:top_k]
        initial = take(state["pool"], jnp.arange(top_k))
        cand = jax.tree.map(lambda a, b: jnp.where(first, a, b), initial, take(kids, order))
        return cand, dict(params=params, opt_state=opt_state, loss=loss.astype(jnp.float32),
                          predicted=jnp.where(first, jnp.nan, pred[order]))

    @jax.jit
    def update(state, cand, rec, aux):
        score = _clean(rec["score"]).astype(jnp.float32)
        idx = (state["archive_count"] + jnp.arange(top_k)) % archive  # ring buffer
        feats = state["archive_features"].at[idx].set(jax.vmap(space.features)(cand))
        logs = state["archive_log_score"].at[idx].set(jnp.log(score))
        pop, scores = _keep_best(_concat(state["population"], cand), jnp.concatenate([state["scores"], score]),
                                 population)
        best_g, best_s = _update_best(state, cand, score)
        new = dict(state, population=pop, scores=scores, best_genotype=best_g, best_score=best_s,
                   archive_features=feats, archive_log_score=logs, archive_count=state["archive_count"] + top_k,
                   params=aux["params"], opt_state=aux["opt_state"], loss=aux["loss"],
                   n_eval=state["n_eval"] + top_k, generation=state["generation"] + 1)
        return new, dict(rec, genotypes=cand, score=score, predicted=aux["predicted"])

    def step(state, key):
        cand, aux = propose(state, key)
        return update(state, cand, dict(score_fn(cand)), aux)

    return Strategy(init, step, _best, _evaluations)


def spearman(a, b) -> float:
    """Spearman rank correlation of two 1-D arrays (no tie correction)."""
    import numpy as np

    ra = np.argsort(np.argsort(np.asarray(a)))
    rb = np.argsort(np.argsort(np.asarray(b)))
    return float(np.corrcoef(ra, rb)[0, 1])
