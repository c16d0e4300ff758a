"""The "palm_mean" search strategy: a GP surrogate of the score over a low-dimensional
time-grid parameterisation, its posterior mean minimised epsilon-globally by
PALM-Mean (:func:`samplax.optim.palm_mean.branch_and_bound`), the argmin evaluated,
repeat.

Search space (stated choice): the discrete decisions of a schedule (order,
prediction, derivative estimation, corrector per step) are fixed by a *template*
-- the best genotype of the initial design (``population`` candidates: the
``seeds``, e.g. the hand-designed baselines, then random genotypes of ``space``)
-- and only its time points move, through a D-dimensional embedding of the
logits (the softmax logSNR increments of :class:`samplax.search.space.SearchSpace`)::

    logits(z) = template.logits + radius * P z,   z in [-1, 1]^D,

where the columns of P are the Legendre polynomials P_1..P_D evaluated at the
m - 1 interval positions (mapped to [-1, 1]): smooth reshapings of the grid
(P_1 moves resolution from one end to the other, P_2 to / from the middle, ...;
P_0 is left out since the softmax ignores a constant).  ``dims = 0`` (or D >= m - 1)
uses the full logits (P = identity).

Loop: iterations 0 .. ceil(population / batch) - 1 evaluate the initial design
(``batch`` candidates each); then every iteration fits a GP
(:func:`samplax.optim.gp.fit_gp`, ``kernel``) to the (z, log score) pairs so far
(the template at z = 0 included), minimises its posterior mean over the box by
branch-and-bound (``eps``, at most ``max_nodes`` boxes) and evaluates the argmin
plus ``batch - 1`` Gaussian perturbations of it (std ``explore``, clipped to the
box); a proposed argmin within 1e-6 of an evaluated z is replaced by a perturbation
(pure exploitation of the mean would otherwise re-evaluate a point).

The step is jittable (the run loop of :mod:`samplax.experiment.search` jits it): the
GP fit and the branch-and-bound run on the host through ``jax.pure_callback``.
State (arrays only, fixed shapes): the design, the template, a ``capacity`` buffer of
(z, score) pairs, the best genotype / score and counters.  Records add ``mean_pred``
(the GP mean at each candidate, in log score), ``bnb_gap`` and ``bnb_nodes`` (of
the iteration's branch-and-bound) to the score function's metrics.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from samplax.search.space import take
from samplax.search.strategies import Strategy, _check_int, _clean, _update_best, initial_population

LOG_FLOOR = 1e-12


def _check_pos(name, v):
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not (math.isfinite(v) and v > 0):
        raise ValueError(f"palm_mean.{name}: must be a positive number, got {v!r}")
    return float(v)


def legendre_basis(m: int, dims: int) -> np.ndarray:
    """(m, D) Legendre P_1..P_D at m points of [-1, 1] (identity when D >= m or D = 0)."""
    if dims == 0 or dims >= m:
        return np.eye(m, dtype=np.float32)
    s = np.linspace(-1.0, 1.0, m) if m > 1 else np.zeros(1)
    return np.stack([np.polynomial.legendre.Legendre.basis(k)(s) for k in range(1, dims + 1)], 1).astype(np.float32)


def propose(Z, scores, n: int, seed: int, batch: int, kernel: str, eps: float, max_nodes: int, explore: float,
            min_data: int):
    """Host side: (batch, D) candidates in [-1, 1]^D and (mean_pred (batch,), gap, nodes)."""
    from samplax.optim.gp import fit_gp, posterior_mean
    from samplax.optim.palm_mean import branch_and_bound, posterior_mean_terms

    Z = np.asarray(Z, np.float64)[:n]
    s = np.asarray(scores, np.float64)[:n]
    D = Z.shape[1]
    rng = np.random.default_rng(seed)
    lo, hi = -np.ones(D), np.ones(D)
    ok = np.isfinite(s)
    if int(ok.sum()) < min_data:
        return rng.uniform(-1, 1, (batch, D)), np.full(batch, np.nan), np.nan, 0.0
    y = np.log(np.maximum(s[ok], LOG_FLOOR))
    Zf = Z[ok]
    if (~ok).any():  # failed candidates: as bad as the worst finite one (kept out of the fit otherwise)
        Zf = np.concatenate([Zf, Z[~ok]])
        y = np.concatenate([y, np.full(int((~ok).sum()), y.max())])
    gp = fit_gp(Zf, y, kernel)
    res = branch_and_bound(posterior_mean_terms(gp), lo, hi, eps=eps, max_nodes=max_nodes)
    x = np.asarray(res.x, np.float64)
    if np.min(np.max(np.abs(Zf - x), axis=1)) < 1e-6:
        x = np.clip(x + explore * rng.standard_normal(D), lo, hi)
    cands = [x] + [np.clip(x + explore * rng.standard_normal(D), lo, hi) for _ in range(batch - 1)]
    cands = np.stack(cands)
    return cands, posterior_mean(gp, cands), res.gap, float(res.nodes)


def palm_mean(space, score_fn, population: int = 16, seeds=None, batch: int = 4, dims: int = 4,
              radius: float = 2.0, kernel: str = "matern52", eps: float = 1e-3, max_nodes: int = 5000,
              explore: float = 0.1, capacity: int = 512) -> Strategy:
    """GP + PALM-Mean search over a ``space`` (:class:`samplax.search.space.SearchSpace`);
    see the module doc.  ``population``: initial design size (seeds first)."""
    from samplax.optim.gp import check_kernel

    _check_int("palm_mean", "population", population)
    _check_int("palm_mean", "batch", batch)
    _check_int("palm_mean", "dims", dims, lo=0)
    _check_int("palm_mean", "max_nodes", max_nodes)
    _check_int("palm_mean", "capacity", capacity)
    radius, eps = _check_pos("radius", radius), _check_pos("eps", eps)
    if isinstance(explore, bool) or not isinstance(explore, (int, float)) or not 0 <= explore <= 2:
        raise ValueError(f"palm_mean.explore: must be a number in [0, 2], got {explore!r}")
    check_kernel(kernel, "palm_mean.kernel")
    m1 = int(space.n_nodes) - 1
    if m1 < 1:
        raise ValueError(f"palm_mean: the space has no interior time point to move (nfe={space.nfe})")
    if "times" not in tuple(getattr(space, "searchable", ("times",))):
        raise ValueError("palm_mean: the space must search 'times' (the strategy moves the time points)")
    P = jnp.asarray(legendre_basis(m1, dims))
    D = int(P.shape[1])
    n_design_steps = -(-population // batch)
    n_design = n_design_steps * batch
    if capacity < batch + 1:
        raise ValueError(f"palm_mean.capacity: must be >= batch + 1 ({batch + 1}), got {capacity}")
    min_data = min(D + 1, 4)
    out_shapes = (jax.ShapeDtypeStruct((batch, D), jnp.float32), jax.ShapeDtypeStruct((batch,), jnp.float32),
                  jax.ShapeDtypeStruct((), jnp.float32), jax.ShapeDtypeStruct((), jnp.float32))

    def host(Z, s, n, seed):
        c, mp, gap, nodes = propose(Z, s, int(n), int(seed), batch, kernel, eps, max_nodes, explore, min_data)
        return (np.asarray(c, np.float32), np.asarray(mp, np.float32), np.float32(gap), np.float32(nodes))

    def embed(template, z):
        logits = template["logits"] + (radius * (P @ z)).astype(template["logits"].dtype)
        return dict(template, logits=logits)

    def init(key):
        design = initial_population(space, key, n_design, seeds)
        g0 = take(design, 0)
        return dict(design=design, design_scores=jnp.full((n_design,), jnp.inf, jnp.float32), template=g0,
                    z=jnp.zeros((capacity, D), jnp.float32), zs=jnp.full((capacity,), jnp.inf, jnp.float32),
                    nz=jnp.asarray(0, jnp.int32), best_genotype=g0, best_score=jnp.asarray(jnp.inf, jnp.float32),
                    n_eval=jnp.asarray(0, jnp.int32), generation=jnp.asarray(0, jnp.int32))

    def step(state, key):
        gen = state["generation"]
        in_design = gen < n_design_steps
        idx = jnp.minimum(gen, n_design_steps - 1) * batch + jnp.arange(batch)
        dcand = take(state["design"], idx)
        seed = jax.random.randint(key, (), 0, 2**31 - 1)
        zc, mp, gap, nodes = jax.lax.cond(
            in_design, lambda: (jnp.zeros((batch, D), jnp.float32), jnp.full((batch,), jnp.nan, jnp.float32),
                                jnp.asarray(jnp.nan, jnp.float32), jnp.asarray(0.0, jnp.float32)),
            lambda: jax.pure_callback(host, out_shapes, state["z"], state["zs"], state["nz"], seed))
        gcand = jax.vmap(lambda z: embed(state["template"], z))(zc)
        cand = jax.tree.map(lambda a, b: jnp.where(in_design, a, b), dcand, gcand)
        rec = dict(score_fn(cand))
        score = _clean(rec["score"]).astype(jnp.float32)
        # design bookkeeping; at the last design step the template = best design genotype (z = 0)
        dsc = state["design_scores"].at[idx].set(jnp.where(in_design, score, state["design_scores"][idx]))
        last = gen == n_design_steps - 1
        ib = jnp.argmin(dsc)
        template = jax.tree.map(lambda t, d: jnp.where(last, d[ib], t), state["template"], state["design"])
        # the (z, score) buffer
        z, zs, nz = state["z"], state["zs"], state["nz"]
        z = jnp.where(last, z.at[0].set(0.0), z)
        zs = jnp.where(last, zs.at[0].set(dsc[ib]), zs)
        nz = jnp.where(last, 1, nz)
        room = (~in_design) & (nz + batch <= capacity)
        start = jnp.minimum(nz, capacity - batch)
        z = jnp.where(room, jax.lax.dynamic_update_slice(z, zc, (start, 0)), z)
        zs = jnp.where(room, jax.lax.dynamic_update_slice(zs, score, (start,)), zs)
        nz = jnp.where(room, nz + batch, nz)
        best_g, best_s = _update_best(state, cand, score)
        new = dict(state, design_scores=dsc, template=template, z=z, zs=zs, nz=nz, best_genotype=best_g,
                   best_score=best_s, n_eval=state["n_eval"] + batch, generation=gen + 1)
        rec.update(genotypes=cand, score=score, mean_pred=mp, bnb_gap=jnp.full((batch,), gap),
                   bnb_nodes=jnp.full((batch,), nodes))
        return new, rec

    def best(state):
        return state["best_genotype"], state["best_score"]

    def evaluations(state):
        return state["n_eval"]

    return Strategy(init, step, best, evaluations)


__all__ = ["palm_mean", "legendre_basis", "propose"]
