"""Search strategies over a :class:`samplax.search.space.SearchSpace`: random and evolutionary.

A :class:`Strategy` is four pure functions (blackjax style):

* ``init(key) -> state``: a dict of arrays only (fixed shapes; PRNG keys as uint32
  arrays), so an Orbax checkpoint holds it and ``jax.jit`` takes it;
* ``step(state, key) -> (state, records)``: one iteration; ``records`` =
  ``dict(genotypes=batch, score=(P,), mean_l2=(P,), ...)``, the candidates evaluated
  for real in this iteration (everything the score function returned);
* ``best(state) -> (genotype, score)``;
* ``evaluations(state) -> int array``: real evaluations so far.

Each ``step`` is propose (jitted) -> ``score_fn`` -> update (jitted).  ``score_fn``
is the function of :func:`samplax.search.evaluate.make_scorer` (or any
``genotypes -> dict(score=(P,), ...)``, lower is better).  ``seeds`` (optional, a
batch of genotypes, e.g. :meth:`SearchSpace.from_schedule` of hand-designed solvers)
replace the first random members of the initial population.
"""
from __future__ import annotations

from typing import Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp

from samplax.search.space import SearchSpace, take


class Strategy(NamedTuple):
    init: Callable
    step: Callable
    best: Callable
    evaluations: Callable


def _check_int(who: str, name: str, v, lo: int = 1) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < lo:
        raise ValueError(f"{who}.{name}: must be an integer >= {lo}, got {v!r}")
    return v


def _check_rate(who: str, v) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0.0 <= float(v) <= 1.0:
        raise ValueError(f"{who}.mutation_rate: must be a number in [0, 1], got {v!r}")
    return float(v)


def initial_population(space: SearchSpace, key, size: int, seeds=None):
    """``size`` random genotypes, the first ones replaced by ``seeds`` (a batch)."""
    pop = jax.vmap(space.init)(jax.random.split(key, size))
    if seeds is not None:
        n = jax.tree.leaves(seeds)[0].shape[0]
        if n > size:
            raise ValueError(f"seeds: {n} seed genotypes do not fit a population of {size}")
        pop = jax.tree.map(lambda p, s: p.at[:n].set(jnp.asarray(s, p.dtype)), pop, seeds)
    return pop


def _clean(score):
    return jnp.where(jnp.isfinite(score), score, jnp.inf)


def _concat(a, b):
    return jax.tree.map(lambda x, y: jnp.concatenate([x, y], 0), a, b)


def _keep_best(genotypes, scores, k: int):
    """The k best (lowest score) of a batch, best first (stable for ties)."""
    order = jnp.argsort(scores, stable=True)[:k]
    return take(genotypes, order), scores[order]


def _update_best(state, genotypes, scores):
    i = jnp.argmin(scores)
    better = scores[i] < state["best_score"]
    best_g = jax.tree.map(lambda old, new: jnp.where(better, new[i], old), state["best_genotype"], genotypes)
    return best_g, jnp.where(better, scores[i], state["best_score"])


def _next_generation(state, rec, cand, score, pop, scores, n_new):
    """The state after evaluating ``cand`` (scores ``score``), with the survivors ``pop`` /
    ``scores``, and the records of the step."""
    best_g, best_s = _update_best(state, cand, score)
    new = dict(state, population=pop, scores=scores, best_genotype=best_g, best_score=best_s,
               n_eval=state["n_eval"] + n_new, generation=state["generation"] + 1)
    return new, dict(rec, genotypes=cand, score=score)


def _step_fn(propose, update, score_fn):
    def step(state, key):
        cand = propose(state, key)
        return update(state, cand, dict(score_fn(cand)))
    return step


def _common_state(space: SearchSpace, key, size, seeds):
    pop = initial_population(space, key, size, seeds)
    return dict(population=pop, scores=jnp.full((size,), jnp.inf, jnp.float32),
                best_genotype=take(pop, 0), best_score=jnp.asarray(jnp.inf, jnp.float32),
                n_eval=jnp.asarray(0, jnp.int32), generation=jnp.asarray(0, jnp.int32),
                key=jax.random.key_data(key) if jnp.issubdtype(key.dtype, jax.dtypes.prng_key) else key)


def _best(state):
    return state["best_genotype"], state["best_score"]


def _evaluations(state):
    return state["n_eval"]


def random_search(space: SearchSpace, score_fn: Callable, population: int = 64, seeds=None) -> Strategy:
    """Uniformly random candidates (``population`` per step); keeps the best."""
    _check_int("random_search", "population", population)

    def init(key):
        return _common_state(space, key, population, seeds)

    @jax.jit
    def propose(state, key):
        cand = jax.vmap(space.init)(jax.random.split(key, population))
        # The first step evaluates the initial population (random + seeds).
        first = state["generation"] == 0
        return jax.tree.map(lambda p, c: jnp.where(first, p, c), state["population"], cand)

    @jax.jit
    def update(state, cand, rec):
        score = _clean(rec["score"]).astype(jnp.float32)
        return _next_generation(state, rec, cand, score, cand, score, population)

    return Strategy(init, _step_fn(propose, update, score_fn), _best, _evaluations)


def offspring(space: SearchSpace, key, parents, n: int, mutation_rate: float, crossover: float = 0.5):
    """``n`` children of a batch of parents: two parents drawn uniformly, uniform
    crossover with probability ``crossover`` (else the first parent), then
    :meth:`SearchSpace.mutate`."""
    n_par = jax.tree.leaves(parents)[0].shape[0]
    ks, kx, km = jax.random.split(key, 3)
    u = jax.random.uniform(ks, (3, n))
    ia = jnp.minimum(jnp.floor(u[0] * n_par), n_par - 1).astype(jnp.int32)
    ib = jnp.minimum(jnp.floor(u[1] * n_par), n_par - 1).astype(jnp.int32)
    a, b = take(parents, ia), take(parents, ib)
    mixed = jax.vmap(space.crossover)(jax.random.split(kx, n), a, b)
    use = u[2] < crossover
    child = jax.tree.map(lambda m, p: jnp.where(use.reshape((n,) + (1,) * (p.ndim - 1)), m, p), mixed, a)
    return jax.vmap(lambda k, g: space.mutate(k, g, mutation_rate))(jax.random.split(km, n), child)


def evolution(space: SearchSpace, score_fn: Callable, population: int = 64, parents: int = 16,
              mutation_rate: float = 0.2, crossover: float = 0.5, seeds=None) -> Strategy:
    """(mu + lambda) evolution with elitism: each step, ``population`` children of
    the ``parents`` best (crossover + mutation) are evaluated, and the
    ``population`` best of parents' generation and children survive (so the best
    score never increases).  The first step evaluates the initial population."""
    _check_int("evolution", "population", population)
    _check_int("evolution", "parents", parents)
    if parents > population:
        raise ValueError(f"evolution.parents: must be <= population ({population}), got {parents}")
    mutation_rate = _check_rate("evolution", mutation_rate)

    def init(key):
        return _common_state(space, key, population, seeds)

    @jax.jit
    def propose(state, key):
        par = take(state["population"], jnp.arange(parents))  # the population is kept sorted
        kids = offspring(space, key, par, population, mutation_rate, crossover)
        first = state["generation"] == 0  # the first step evaluates the initial population
        return jax.tree.map(lambda p, c: jnp.where(first, p, c), state["population"], kids)

    @jax.jit
    def update(state, cand, rec):
        score = _clean(rec["score"]).astype(jnp.float32)
        old_scores = jnp.where(state["generation"] == 0, jnp.inf, state["scores"])
        pop, scores = _keep_best(_concat(state["population"], cand), jnp.concatenate([old_scores, score]),
                                 population)
        return _next_generation(state, rec, cand, score, pop, scores, population)

    return Strategy(init, _step_fn(propose, update, score_fn), _best, _evaluations)


def run(strategy: Strategy, key, n_steps: int, state=None, callback: Optional[Callable] = None, jit: bool = False):
    """Run ``n_steps`` iterations with ``key_i = fold_in(key, i)`` (the runner's
    convention); ``callback(i, state, records)`` after each.  Returns the state.

    ``step`` is jit-able as a whole, but each strategy already compiles its
    proposal and update separately around the (jitted) score function, so with
    ``jit=False`` strategies sharing a score function share its compiled program."""
    step = jax.jit(strategy.step) if jit else strategy.step
    if state is None:
        state = strategy.init(jax.random.fold_in(key, 2**31 - 1))
    start = int(state["generation"])
    for i in range(start, start + n_steps):
        state, rec = step(state, jax.random.fold_in(key, i))
        if callback is not None:
            callback(i, state, rec)
    return state
