"""Self-consistency (majority voting) and RPC: perplexity-weighted consistency with reasoning pruning.

Sample N reasoning paths for a question, extract each path's answer, and return the answer the
aggregator prefers:

* ``majority``: self-consistency (Wang et al. 2023, "Self-Consistency Improves Chain of Thought
  Reasoning in Language Models"): the most frequent answer.
* ``max_prob``: the "perplexity" method: the answer of the single most probable sampled path.
* ``pc``: Perplexity Consistency (Zhou et al. 2025, "A Theoretical Study on Bridging Internal
  Probability and Self-Consistency for LLM Reasoning", NeurIPS 2025, arXiv:2510.15444; an earlier
  version is arXiv:2502.00511): the confidence of answer y is the sum of the model probabilities
  ``p(t | x)`` of the *distinct* sampled paths t with answer y (duplicates count once); as N grows it
  tends to the answer's probability, like self-consistency, but by their analysis its estimation
  error falls exponentially in N instead of linearly.
* ``rpc``: PC after Reasoning Pruning (their second component): low-probability paths are dropped
  before the sum.  ``pruning="weibull"`` is the paper's automatic rule: fit a two-component Weibull mixture to the
  sampled path probabilities and drop a path that belongs rather to the low-mean component *and* lies
  below the mean sampled probability; ``pruning="mean"`` drops paths below ``tau`` times the mean
  sampled probability (its N -> infinity limit is exact: the threshold tends to ``tau * sum_t p(t)^2``);
  ``"none"`` is plain PC.

Ties are broken uniformly at random (the paper's evaluation gives 1/#ties credit, the same expectation).

Exact references (the toy task enumerates every path): :func:`majority_vote_probs` (the exact
distribution of the majority vote of N samples, by enumerating answer-count vectors),
:func:`pc_vote_probs_pairs` (the exact PC / RPC vote of N = 2 samples, by enumerating pairs) and
:func:`limit_vote_probs` (the N -> infinity limit of every aggregator).  The decoders
``majority_vote`` / ``rpc`` sample the N paths with :func:`samplax.decoding.tasks.sample_with_prompts`
(path j of key k uses ``fold_in(k, j)``; the same draws as :func:`samplax.decoding.base.sample`) and
aggregate on the host (float64 numpy).  The formulas come from the papers' abstracts and the authors'
released evaluation code, read for the rules (not copied).
"""
from __future__ import annotations

import functools
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from samplax.decoding.base import Decoder, Problem, check_int, identity, make_info, make_transform
from samplax.decoding.exact import exact_log_probs


def task_log_probs(problem: Problem, transform) -> np.ndarray:
    """float64[V**L]: the law of one sampled sequence given the prompt (the task's enumerated joint
    when the model is the task's own and the transform the identity; else by enumeration)."""
    task = problem.task
    if transform is identity and task is not None and problem.lm is task.lm:
        from samplax.decoding.tasks import prompt_log_probs
        return prompt_log_probs(task, problem.prompt)
    return exact_log_probs(problem.lm, transform, problem.prompt)

__all__ = ["METHODS", "PRUNINGS", "aggregate", "vote_scores", "majority_vote_probs", "pc_vote_probs_pairs", "limit_vote_probs",
           "sample_paths", "majority_vote", "rpc", "weibull_keep"]

METHODS = ("majority", "max_prob", "pc", "rpc")
PRUNINGS = ("none", "mean", "weibull")


def _check_method(method, pruning, tau):
    if method not in METHODS:
        raise ValueError(f"method: must be one of {METHODS}, got {method!r}")
    if pruning not in PRUNINGS:
        raise ValueError(f"pruning: must be one of {PRUNINGS}, got {pruning!r}")
    if isinstance(tau, bool) or not isinstance(tau, (int, float)) or not 0 <= tau:
        raise ValueError(f"tau: must be a number >= 0, got {tau!r}")


# ---------------------------------------------------------------------------------------
# Reasoning pruning with a two-component Weibull mixture (Zhou et al. 2025)
# ---------------------------------------------------------------------------------------
def _weibull_logpdf(x, k, lam):
    z = x / lam
    return np.log(k / lam) + (k - 1) * np.log(np.maximum(z, 1e-300)) - z ** k


def weibull_keep(probs) -> np.ndarray:
    """bool[N]: the paths Reasoning Pruning keeps.  A two-component Weibull mixture is fitted by
    maximum likelihood to the sampled path probabilities (mixture weight in [0.2, 0.8], as the paper's
    released evaluation); a path is dropped when it is more likely under the component of lower mean
    *and* its probability is below the mean sampled probability."""
    from scipy.optimize import minimize
    from scipy.special import gamma

    p = np.asarray(probs, np.float64)
    if p.size < 3 or np.ptp(p) <= 1e-12 * max(p.max(), 1e-300):
        return np.ones(p.shape, bool)
    scale = p.max()
    x = p / scale                                       # the fit is scale-free; keeps the optimiser sane

    def nll(th):
        w, k1, l1, k2, l2 = th
        a = np.log(w) + _weibull_logpdf(x, k1, l1)
        b = np.log1p(-w) + _weibull_logpdf(x, k2, l2)
        return -np.sum(np.logaddexp(a, b))
    with np.errstate(all="ignore"):   # derivative-free Powell: robust where a component's pdf underflows
        res = minimize(nll, [0.5, 1.0, 1.0, 1.5, 2.0], method="Powell",
                       bounds=[(0.2, 0.8), (0.01, None), (0.01, None), (0.01, None), (0.01, None)])
    w, k1, l1, k2, l2 = res.x
    if l1 * gamma(1 + 1 / k1) < l2 * gamma(1 + 1 / k2):   # component 1 = the high-mean one
        w, k1, l1, k2, l2 = 1 - w, k2, l2, k1, l1
    with np.errstate(all="ignore"):
        high = np.log(w) + _weibull_logpdf(x, k1, l1)
        low = np.log1p(-w) + _weibull_logpdf(x, k2, l2)
    return ~((low > high) & (p < p.mean()))


# ---------------------------------------------------------------------------------------
# Aggregation (host, vectorised over repeats)
# ---------------------------------------------------------------------------------------
def vote_scores(answers, path_ids, log_p, n_answers: int, method: str = "rpc", pruning: str = "mean",
                tau: float = 1.0) -> np.ndarray:
    """float64[R, m]: each answer's vote score in each row.  ``answers int[R, N]`` (the answer of each
    sampled path), ``path_ids int[R, N]`` (equal ids = the same path; PC counts a path once),
    ``log_p float[R, N]`` (``log p(path | question)``).  ``majority``: counts; ``max_prob``: the largest
    path probability with that answer; ``pc`` / ``rpc``: the summed probability of the distinct (kept)
    paths."""
    _check_method(method, pruning, tau)
    a = np.asarray(answers, np.int64)
    ids = np.asarray(path_ids, np.int64)
    lp = np.asarray(log_p, np.float64)
    if a.ndim != 2 or ids.shape != a.shape or lp.shape != a.shape:
        raise ValueError(f"aggregate: answers, path_ids and log_p must be [R, N] of one shape, got "
                         f"{a.shape}, {ids.shape}, {lp.shape}")
    R, N = a.shape
    onehot = a[..., None] == np.arange(n_answers)                       # [R, N, m]
    if method == "majority":
        return onehot.sum(1).astype(np.float64)
    p = np.exp(lp)
    if method == "max_prob":
        return np.max(np.where(onehot, p[..., None], 0.0), axis=1)
    order = np.argsort(ids, axis=1, kind="stable")
    sid = np.take_along_axis(ids, order, 1)
    first_sorted = np.concatenate([np.ones((R, 1), bool), sid[:, 1:] != sid[:, :-1]], axis=1)
    first = np.empty_like(first_sorted)
    np.put_along_axis(first, order, first_sorted, 1)                    # one copy of each distinct path
    keep = first
    if method == "rpc" and pruning == "mean":
        keep = keep & (p >= tau * p.mean(1, keepdims=True) * (1 - RTOL))
    elif method == "rpc" and pruning == "weibull":
        keep = keep & np.stack([weibull_keep(p[r]) for r in range(R)])
    score = np.einsum("rn,rnm->rm", p * keep, onehot)
    # every path pruned (impossible for tau <= 1): fall back to PC
    return np.where(score.sum(1, keepdims=True) > 0, score, np.einsum("rn,rnm->rm", p * first, onehot))


#: relative tolerance of ties and of the pruning threshold: path probabilities come from float32 sampling
#: (a few ulps of error), and equal exact probabilities must stay equal
RTOL = 1e-5


def _top(score):
    return score >= score.max(1, keepdims=True) * (1 - RTOL)


def aggregate(answers, path_ids, log_p, n_answers: int, method: str = "rpc", pruning: str = "mean",
              tau: float = 1.0, tie_u=None, rng: Optional[np.random.Generator] = None) -> np.ndarray:
    """int[R]: the voted answer of each row (:func:`vote_scores`), ties broken uniformly at random by
    ``tie_u float[R, n_answers]`` (uniform draws; else ``rng`` draws them)."""
    score = vote_scores(answers, path_ids, log_p, n_answers, method, pruning, tau)
    if tie_u is None:
        tie_u = (rng or np.random.default_rng(0)).random(score.shape)
    return np.argmax(np.where(_top(score), np.asarray(tie_u), -1.0), axis=1)


# ---------------------------------------------------------------------------------------
# Exact references
# ---------------------------------------------------------------------------------------
def majority_vote_probs(answer_probs, n: int) -> np.ndarray:
    """float64[m]: the exact probability that the majority vote of n i.i.d. answers (distribution
    ``answer_probs``), ties broken uniformly, is each answer -- a sum over every answer-count vector of
    its multinomial probability, split evenly over the tied maxima."""
    from scipy.special import gammaln
    pi = np.asarray(answer_probs, np.float64)
    m = pi.size
    n = check_int("n", n, 1)
    c = np.indices((n + 1,) * (m - 1)).reshape(m - 1, -1).T
    c = np.concatenate([c, n - c.sum(1, keepdims=True)], axis=1)
    c = c[c[:, -1] >= 0]                                                   # [K, m] count vectors
    with np.errstate(divide="ignore"):
        logpi = np.log(pi)
    terms = np.where(c > 0, c * logpi, 0.0)
    logw = gammaln(n + 1) - gammaln(c + 1).sum(1) + terms.sum(1)
    w = np.exp(logw)
    win = c == c.max(1, keepdims=True)
    return np.sum(w[:, None] * win / win.sum(1, keepdims=True), axis=0)


def pc_vote_probs_pairs(log_p, answers, n_answers: int, method: str = "pc", pruning: str = "none",
                        tau: float = 1.0) -> np.ndarray:
    """float64[m]: the exact distribution of the vote of N = 2 sampled paths (every ordered pair of
    paths enumerated, ties split evenly), for ``pc`` / ``rpc`` with ``"none"`` or ``"mean"`` pruning
    and for ``max_prob``.  ``log_p float[T]``: every path's log-probability, ``answers int[T]``."""
    _check_method(method, pruning, tau)
    if pruning == "weibull":
        raise ValueError("pc_vote_probs_pairs: the Weibull fit needs >= 3 paths (it keeps every path of a pair)")
    lp = np.asarray(log_p, np.float64)
    ans = np.asarray(answers, np.int64)
    p = np.exp(lp)
    T = p.size
    i, j = np.meshgrid(np.arange(T), np.arange(T), indexing="ij")
    i, j = i.ravel(), j.ravel()
    w = p[i] * p[j]
    A = np.stack([ans[i], ans[j]], 1)
    ids = np.stack([i, j], 1)
    LP = np.stack([lp[i], lp[j]], 1)
    good = w > 0
    top = _top(vote_scores(A[good], ids[good], LP[good], n_answers, method, pruning, tau))
    return np.sum(w[good, None] * top / top.sum(1, keepdims=True), axis=0)


def limit_vote_probs(log_p, answers, n_answers: int, method: str = "rpc", pruning: str = "mean",
                     tau: float = 1.0) -> np.ndarray:
    """float64[m]: the N -> infinity limit of the vote (a point mass on the winner, split evenly over
    ties).  ``majority`` and ``pc``: the most probable answer; ``max_prob``: the answer of the most
    probable path; ``rpc`` with ``"mean"``: the answer with the most mass on paths with ``p(t) >= tau
    sum_s p(s)^2`` (the limit of tau times the mean sampled probability).  Weibull pruning has no
    closed-form limit (use a large N)."""
    _check_method(method, pruning, tau)
    lp = np.asarray(log_p, np.float64)
    ans = np.asarray(answers, np.int64)
    p = np.exp(lp)
    if method == "max_prob":
        top = p >= p.max() * (1 - RTOL)
        return np.bincount(ans[top], minlength=n_answers) / top.sum()
    keep = np.ones_like(p, bool)
    if method == "rpc":
        if pruning == "weibull":
            raise ValueError("limit_vote_probs: the Weibull pruning limit has no closed form; use pruning='mean'")
        if pruning == "mean":
            keep = p >= tau * np.sum(p * p) * (1 - RTOL)
    score = np.bincount(ans, weights=p * keep, minlength=n_answers)
    win = score >= score.max() * (1 - RTOL)
    return win / win.sum()


# ---------------------------------------------------------------------------------------
# Decoders
# ---------------------------------------------------------------------------------------
def _path_ids(x, P, V):
    c = np.asarray(x, np.int64)[..., P:]
    return np.sum(c * V ** np.arange(c.shape[-1] - 1, -1, -1), axis=-1)


CHUNK = 4096   # every compiled helper runs on blocks of this many rows: one compile per program


def chunked(fn, *arrays, chunk: int = CHUNK):
    """``fn`` applied to fixed-size blocks of the leading axis of ``arrays`` (the last block padded by
    repeating row 0), outputs concatenated and trimmed: one compiled shape whatever the batch."""
    n = arrays[0].shape[0]
    outs = []
    for i in range(0, n, chunk):
        blk = [a[i:i + chunk] for a in arrays]
        pad = chunk - blk[0].shape[0]
        if pad:
            blk = [jnp.concatenate([b, jnp.broadcast_to(b[:1], (pad,) + b.shape[1:])]) for b in blk]
        out = fn(*blk)
        outs.append(jax.tree_util.tree_map(lambda o: np.asarray(o)[:chunk - pad], out))
    return jax.tree_util.tree_map(lambda *o: np.concatenate(o), *outs)


_fold_in = jax.jit(jax.vmap(jax.random.fold_in))


@functools.partial(jax.jit, static_argnums=1)
def _uniforms(keys, m):
    return jax.vmap(lambda k: jax.random.uniform(jax.random.fold_in(k, 1 << 30), (m,)))(keys)


def tie_draws(keys, m: int) -> np.ndarray:
    """Uniform tie-break draws ``[B, m]`` from ``fold_in(key, 2**30)`` (independent of the token draws)."""
    keys = jnp.asarray(keys)
    return chunked(lambda k: _uniforms(k, m), keys)


def path_keys(keys, n: int):
    """``fold_in(k, j)`` for every key k and j < n, flattened to ``[B * n]`` (path-major within a key)."""
    keys = jnp.asarray(keys)
    B = keys.shape[0]
    rep = jnp.repeat(keys, n, axis=0)
    j = jnp.tile(jnp.arange(n, dtype=jnp.uint32), B)
    return jnp.asarray(chunked(_fold_in, rep, j))


def sample_paths(problem: Problem, keys, n: int, transform=None):
    """N sampled paths per key: tokens ``int[B, N, L]`` and ``log p`` of their generated parts
    ``[B, N]`` (numpy), and the model calls per path.  Path j of key k uses the key ``fold_in(k, j)``
    (:func:`samplax.decoding.tasks.sample_with_prompts`: one compiled program for every question)."""
    from samplax.decoding.tasks import sample_with_prompts
    keys = jnp.asarray(keys)
    B = keys.shape[0]
    flat = path_keys(keys, n)
    prompts = jnp.broadcast_to(jnp.asarray(problem.prompt, jnp.int32), (B * n, len(problem.prompt)))
    tf = transform if transform is not None else make_transform()
    x, lp = chunked(lambda k, p: sample_with_prompts(problem.lm, k, p, tf), flat, prompts)
    L = problem.lm.length
    return x.reshape(B, n, L), np.asarray(lp, np.float64).reshape(B, n), L


def paths_traced(problem: Problem, keys, n: int, transform):
    """:func:`sample_paths` as a traceable function (the decoders run under ``jax.jit``): tokens
    ``int32[B, n, L]``, ``log p [B, n]`` and the path keys ``[B * n]`` (the same draws)."""
    from samplax.decoding.tasks import sample_with_prompts
    keys = jnp.asarray(keys)
    B = keys.shape[0]
    flat = jax.vmap(lambda k: jax.vmap(lambda j: jax.random.fold_in(k, j))(jnp.arange(n, dtype=jnp.uint32)))(keys)
    flat = flat.reshape((B * n,) + flat.shape[2:])
    prompts = jnp.broadcast_to(jnp.asarray(problem.prompt, jnp.int32), (B * n, len(problem.prompt)))
    x, lp = sample_with_prompts(problem.lm, flat, prompts, transform)
    return x.reshape(B, n, -1), lp.reshape(B, n), flat


def host(fn, out_shapes, *args):
    """``fn`` (numpy, on the host) inside a traced decoder, by ``jax.pure_callback`` (rows independent:
    under ``vmap`` it is called on the stacked batch)."""
    return jax.pure_callback(fn, out_shapes, *args, vmap_method="legacy_vectorized")


def _voting_decoder(name, method, n, pruning, tau, temperature):
    n = check_int("n", n, 1)
    _check_method(method, pruning, tau)
    transform = make_transform(temperature)

    def run(problem: Problem, keys):
        if problem.task is None or problem.prompt is None:
            raise ValueError(f"{name}: needs a problem with a reasoning task and a prompt (the question)")
        task = problem.task
        keys = jnp.asarray(keys)
        B = keys.shape[0]
        P, V, L = len(problem.prompt), problem.lm.vocab_size, problem.lm.length
        x, lp, _ = paths_traced(problem, keys, n, transform)
        tie_u = _uniforms(keys, task.n_answers)

        def vote_host(x, lp, tie_u):
            x = np.asarray(x)
            # PC / RPC weigh paths by the model's own probability: the untransformed log p
            return aggregate(task.answer(x), _path_ids(x, P, V), np.asarray(lp, np.float64), task.n_answers,
                             method, pruning, tau, tie_u=np.asarray(tie_u)).astype(np.int32)
        vote = host(vote_host, jax.ShapeDtypeStruct((B,), jnp.int32), x, lp, tie_u)
        match = x[..., -1] == vote[:, None]
        if method == "majority":   # the first path with the voted answer: given the vote it is ~ p(. | answer)
            pick = jnp.argmax(match, axis=1)
        else:                      # the most probable sampled path with the voted answer
            pick = jnp.argmax(jnp.where(match, lp, -jnp.inf), axis=1)
        rows = jnp.arange(B)
        info = make_info(B, n * L, lp[rows, pick],
                         extras={"answer": vote, "n_samples": jnp.full((B,), n, jnp.int32)})
        return x[rows, pick], info

    def target(problem: Problem):
        if method != "majority":
            raise ValueError(f"{name}: the exact output distribution of {method!r} voting is not enumerable "
                             f"for N > 2 (use pc_vote_probs_pairs / limit_vote_probs for the vote)")
        task = problem.task
        logq = task_log_probs(problem, transform)
        seq_ans = np.arange(logq.size) % problem.lm.vocab_size     # the answer is the last token
        q = np.exp(logq)
        pa = np.bincount(seq_ans, weights=q, minlength=task.n_answers)
        vote = majority_vote_probs(pa, n)
        with np.errstate(divide="ignore", invalid="ignore"):
            out = np.where(q > 0, np.log(q) - np.log(pa[seq_ans]) + np.log(vote[seq_ans]), -np.inf)
        return out

    opts = dict(n=n, temperature=temperature)
    if method != "majority":
        opts.update(method=method, pruning=pruning, tau=tau)
    return Decoder(name, run, opts, target, needs=("task", "prompt"))


def majority_vote(n: int = 8, temperature: float = 1.0) -> Decoder:
    """Self-consistency: the majority answer of n sampled paths (returns the first path with it).
    Exact target: ``sum_a P(vote = a) p(x | answer a)`` with the vote's law from
    :func:`majority_vote_probs` (given the answers, each path is distributed as p(. | its answer))."""
    return _voting_decoder("majority_vote", "majority", n, "none", 1.0, temperature)


def rpc(n: int = 8, method: str = "rpc", pruning: str = "mean", tau: float = 1.0, temperature: float = 1.0) -> Decoder:
    """RPC (Zhou et al. 2025): perplexity consistency over n sampled paths after reasoning pruning;
    ``method`` also takes ``"pc"`` (no pruning) and ``"max_prob"``.  Returns the most probable sampled
    path with the voted answer."""
    return _voting_decoder("rpc", method, n, pruning, tau, temperature)
