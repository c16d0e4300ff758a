"""Adaptive inference-time compute: best-of-N with mid-generation pruning and adaptive N.

Manvi, Singh, Ermon 2024, "Adaptive Inference-Time Compute: LLMs Can Predict if They Can Do Better,
Even Mid-Generation" (arXiv:2410.02725).  The LLM scores its own (partial) response with a
*capability-aware self-evaluation*: the probability that restarting would not give a better response
(trained to predict the win-or-tie probability against a fresh sample).  That one score drives
three things:

* best-of-N selection: return the candidate with the highest self-evaluation;
* early pruning: generate N candidates up to a prefix, score the prefixes, finish only the
  ``keep`` most promising (they prune 50-75% after 64-128 tokens with little loss);
* adaptive sampling: sample in batches of exponentially growing size (1, 2, 4, ...) and
  stop as soon as the predicted win-or-tie probability of the best response so far reaches a
  threshold (the model only resamples when it predicts a gain).

Here the self-evaluation is the toy LM's exact value function ``v(prefix) = P(the completion ends
with the right answer | question, prefix)`` (:func:`samplax.decoding.tasks.value_tables`, by
enumeration) plus Gaussian noise of standard deviation ``noise`` (an imperfect self-evaluator; 0 is an
oracle).  For a 0/1 reward the predicted win-or-tie probability of the current best ``s`` against a
fresh sample is ``1 - p_hat (1 - s)`` with ``p_hat`` the self-evaluation at the prompt (the model's
estimate of its own accuracy on the question: capability-aware).

Cost accounting (``DecodeInfo.target_calls``): the tokens the algorithm generates,
``n * prune_at + keep * (C - prune_at)`` for pruning (C = completion length), ``n_used * C`` for
adaptive N; ``extras["self_evals"]`` counts self-evaluation calls (one token each in the paper).  The
implementation draws every candidate to the end in one compiled program and discards the pruned
suffixes: the suffix of a candidate is drawn from its own keys given its prefix, so the kept candidates
are exactly those a stop-at-the-prefix implementation would produce.
"""
from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from samplax.decoding.base import Decoder, Problem, check_int, make_info, make_transform
from samplax.decoding.consistency import chunked, host, path_keys, paths_traced, task_log_probs
from samplax.decoding.tasks import value_tables

__all__ = ["best_of_n", "adaptive_best_of_n", "best_of_n_pick", "adaptive_pick", "self_eval_scores", "pick_correct_prob", "adaptive_schedule"]

_NOISE_TAG = 1 << 29


def _check_noise(noise) -> float:
    if isinstance(noise, bool) or not isinstance(noise, (int, float)) or not (noise >= 0 and math.isfinite(noise)):
        raise ValueError(f"noise: must be a finite number >= 0 (std of the self-evaluation noise), got {noise!r}")
    return float(noise)


def _task_problem(name: str, problem: Problem):
    if problem.task is None or problem.prompt is None:
        raise ValueError(f"{name}: needs a problem with a reasoning task and a prompt (the question)")
    return problem.task, np.asarray(problem.prompt)


def self_eval_scores(task, question, x, t: int, noise_draws, noise: float) -> np.ndarray:
    """float64[...]: the self-evaluation of the first t completion tokens of sequences ``x int[..., L]``:
    the exact ``P(correct | prefix)`` plus ``noise * noise_draws``."""
    P = task.prompt_length
    v = value_tables(task, question)[t]
    c = np.asarray(x, np.int64)[..., P:P + t]
    idx = np.sum(c * task.vocab_size ** np.arange(t - 1, -1, -1), axis=-1) if t else np.zeros(c.shape[:-1], np.int64)
    return v[idx] + noise * np.asarray(noise_draws, np.float64)


@functools.partial(jax.jit, static_argnums=1)
def _normals(keys, d):
    return jax.vmap(lambda k: jax.random.normal(jax.random.fold_in(k, _NOISE_TAG), (d,), jnp.float32))(keys)


def _draws(keys, n, C):
    """Standard normal self-evaluation noise ``[B, n, C + 1]`` (position 0 = the prompt; from each
    path's key ``fold_in(k, j)``) and one draw per key for the capability estimate, independent of
    the token draws (tag 2**29)."""
    keys = jnp.asarray(keys)
    z = chunked(lambda k: _normals(k, C + 1), path_keys(keys, n))
    z0 = chunked(lambda k: _normals(k, 1), keys)
    return np.asarray(z, np.float64).reshape(keys.shape[0], n, C + 1), np.asarray(z0, np.float64)[:, 0]


@functools.lru_cache(maxsize=4096)
def pick_correct_prob(k: int, n: int, noise: float) -> float:
    """P(best-of-n picks a correct candidate | k of the n are correct) when final scores are
    1 + noise*N(0,1) (correct) and noise*N(0,1) (wrong): ``P(max of k N(1, s^2) > max of n-k N(0, s^2))``
    by quadrature (exact 0/1 without noise)."""
    from scipy.stats import norm
    if k == 0:
        return 0.0
    if k == n or noise == 0:
        return 1.0
    s = np.linspace(1 - 9 * noise, 1 + 9 * noise, 4001)
    dens = k * norm.pdf(s, 1, noise) * norm.cdf(s, 1, noise) ** (k - 1)
    return float(np.trapezoid(dens * norm.cdf(s, 0, noise) ** (n - k), s))


# ---------------------------------------------------------------------------------------
# Best-of-N with mid-generation pruning
# ---------------------------------------------------------------------------------------
def best_of_n_pick(task, question, x, z, noise: float, prune_at: int = 0, keep: int = 1) -> np.ndarray:
    """int[B]: the candidate best-of-n returns from candidates ``x int[B, n, L]`` with self-evaluation
    noise ``z [B, n, C + 1]``: with ``prune_at > 0`` only the ``keep`` best prefixes (self-evaluated after
    ``prune_at`` completion tokens) are finished; the pick is the best finished one."""
    B, n = x.shape[:2]
    C = task.completion_length
    alive = np.ones((B, n), bool)
    if prune_at:
        s_mid = self_eval_scores(task, question, x, prune_at, z[..., prune_at], noise)
        order = np.argsort(-s_mid, axis=1, kind="stable")
        alive = np.zeros((B, n), bool)
        np.put_along_axis(alive, order[:, :keep], True, 1)
    s_end = self_eval_scores(task, question, x, C, z[..., C], noise)
    return np.argmax(np.where(alive, s_end, -np.inf), axis=1)


def adaptive_pick(task, question, x, z, z0, noise: float, threshold: float, sched):
    """``(pick int[B], used int[B])``: adaptive sampling over candidates ``x int[B, n_max, L]`` checked at
    the cumulative counts ``sched``: stop at the first check where ``1 - p_hat (1 - best) >= threshold``
    (``best``: the highest clipped self-evaluation so far; ``p_hat``: the clipped self-evaluation at the
    prompt, noise ``z0 [B]``); pick the best of the used candidates."""
    C = task.completion_length
    n_max = x.shape[1]
    s = self_eval_scores(task, question, x, C, z[..., C], noise)                   # [B, n_max]
    p_hat = np.clip(value_tables(task, question)[0][0] + noise * z0, 0.0, 1.0)     # [B]
    best = np.maximum.accumulate(np.clip(s, 0.0, 1.0), axis=1)[:, np.asarray(sched) - 1]
    stop = 1.0 - p_hat[:, None] * (1.0 - best) >= threshold
    stop[:, -1] = True
    used = np.asarray(sched)[np.argmax(stop, axis=1)]
    pick = np.argmax(np.where(np.arange(n_max)[None, :] < used[:, None], s, -np.inf), axis=1)
    return pick, used


def best_of_n(n: int = 8, prune_at: int = 0, keep: int = 1, noise: float = 0.25, temperature: float = 1.0) -> Decoder:
    """Best-of-n by self-evaluation, with early pruning (Manvi et al. 2024) when
    ``prune_at > 0``: after ``prune_at`` completion tokens only the ``keep`` candidates with the highest
    self-evaluation are finished.  Exact target (``prune_at = 0``): with ``k ~ Binomial(n, p_c)`` correct
    candidates the pick is correct with :func:`pick_correct_prob`, and given correct (wrong) it is
    distributed as ``p(. | correct)`` (``p(. | wrong)``)."""
    n = check_int("n", n, 1)
    prune_at = check_int("prune_at", prune_at, 0)
    keep = check_int("keep", keep, 1)
    if keep > n:
        raise ValueError(f"keep: must be <= n = {n}, got {keep}")
    noise = _check_noise(noise)
    transform = make_transform(temperature)

    def run(problem: Problem, keys):
        task, q = _task_problem("best_of_n", problem)
        C = task.completion_length
        if prune_at >= C:
            raise ValueError(f"prune_at: must be < the completion length {C} (0 switches pruning off), got {prune_at}")
        keys = jnp.asarray(keys)
        B = keys.shape[0]
        x, lp, flat = paths_traced(problem, keys, n, transform)
        z = _normals(flat, C + 1).reshape(B, n, C + 1)

        def pick_host(x, z):
            return best_of_n_pick(task, q, np.asarray(x), np.asarray(z, np.float64), noise, prune_at, keep).astype(np.int32)
        pick = host(pick_host, jax.ShapeDtypeStruct((B,), jnp.int32), x, z)
        rows = jnp.arange(B)
        n_fin = keep if prune_at else n
        tokens = n * prune_at + n_fin * (C - prune_at)
        evals = (n if prune_at else 0) + n_fin
        out = x[rows, pick]
        info = make_info(B, tokens, lp[rows, pick],
                         extras={"answer": out[:, -1], "n_samples": jnp.full((B,), n_fin, jnp.int32),
                                 "self_evals": jnp.full((B,), evals, jnp.int32)})
        return out, info

    def target(problem: Problem):
        if prune_at:
            raise ValueError("best_of_n: the exact output distribution is enumerated for prune_at = 0 only")
        from scipy.stats import binom
        task, q = _task_problem("best_of_n", problem)
        logq = task_log_probs(problem, transform)
        qv = np.exp(logq)
        right = (np.arange(logq.size) % task.vocab_size) == task.correct(q)
        pc = float(qv[right].sum())
        ks = np.arange(n + 1)
        p_pick = float(np.sum(binom.pmf(ks, n, pc) * np.array([pick_correct_prob(int(k), n, noise) for k in ks])))
        with np.errstate(divide="ignore", invalid="ignore"):
            out = np.where(right, np.log(qv) - np.log(pc) + np.log(p_pick),
                           np.log(qv) - np.log1p(-pc) + np.log1p(-p_pick))
        return np.where(qv > 0, out, -np.inf)

    return Decoder("best_of_n", run, dict(n=n, prune_at=prune_at, keep=keep, noise=noise, temperature=temperature),
                   target, needs=("task", "prompt"))


# ---------------------------------------------------------------------------------------
# Adaptive N
# ---------------------------------------------------------------------------------------
def adaptive_schedule(n_max: int, growth: str = "exponential"):
    """The cumulative sample counts at which adaptive sampling checks whether to stop: batches of
    1, 2, 4, ... (``"exponential"``, as Manvi et al.: fewer sequential rounds) or 1, 2, 3, ...
    (``"linear"``), capped at n_max."""
    if growth not in ("exponential", "linear"):
        raise ValueError(f"growth: must be 'exponential' or 'linear', got {growth!r}")
    out, total, b = [], 0, 1
    while total < n_max:
        total = min(total + b, n_max)
        out.append(total)
        b = 2 * b if growth == "exponential" else 1
    return np.array(out)


def adaptive_best_of_n(n_max: int = 16, threshold: float = 0.9, noise: float = 0.25, growth: str = "exponential",
                       temperature: float = 1.0) -> Decoder:
    """Adaptive sampling (Manvi et al. 2024): sample in batches (``adaptive_schedule``) and
    stop when the predicted win-or-tie probability of the best response so far, ``1 - p_hat (1 - s)``
    (``s`` its self-evaluation, ``p_hat`` the self-evaluation at the prompt, both clipped to [0, 1]),
    reaches ``threshold``, or at n_max samples; return the best response by self-evaluation."""
    n_max = check_int("n_max", n_max, 1)
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0 < threshold <= 1:
        raise ValueError(f"threshold: must be a number in (0, 1], got {threshold!r}")
    noise = _check_noise(noise)
    sched = adaptive_schedule(n_max, growth)
    transform = make_transform(temperature)

    def run(problem: Problem, keys):
        task, q = _task_problem("adaptive_best_of_n", problem)
        C = task.completion_length
        keys = jnp.asarray(keys)
        B = keys.shape[0]
        x, lp, flat = paths_traced(problem, keys, n_max, transform)
        z = _normals(flat, C + 1).reshape(B, n_max, C + 1)
        z0 = _normals(keys, 1)[:, 0]

        def pick_host(x, z, z0):
            pick, used = adaptive_pick(task, q, np.asarray(x), np.asarray(z, np.float64), np.asarray(z0, np.float64),
                                       noise, threshold, sched)
            return pick.astype(np.int32), used.astype(np.int32)
        shape = jax.ShapeDtypeStruct((B,), jnp.int32)
        pick, used = host(pick_host, (shape, shape), x, z, z0)
        rows = jnp.arange(B)
        out = x[rows, pick]
        info = make_info(B, used * C, lp[rows, pick],
                         extras={"answer": out[:, -1], "n_samples": used, "self_evals": used + 1})
        return out, info

    def target(problem: Problem):
        raise ValueError("adaptive_best_of_n: the exact output distribution is not enumerated (the stopping "
                         "rule couples the noisy scores); see docs/decoding_evaluation.md for the measured accuracy")

    return Decoder("adaptive_best_of_n", run, dict(n_max=n_max, threshold=threshold, noise=noise, growth=growth,
                                                   temperature=temperature), target, needs=("task", "prompt"))
