"""Confidence-based parallel unmasking: the rules dLLM decoders use, as configs of ONE driver.

Every sampler here is the same loop (:func:`_driver`): a ``lax.while_loop`` that, while a sample
still has a MASK, calls the model once (batched over the samples), draws a token for every
position with :func:`samplax.discrete.base.categorical` (or takes the argmax when ``greedy``),
scores the masked positions (:func:`_scorer`), asks the sampler's *rule* how many of the current
candidates to commit (``n``), and commits the ``n`` highest-scoring candidates.  A rule is a small
pure function of one sample's scores; the common decoders are then settings:

==================  ==========================================================================
``threshold``       every candidate whose score clears ``threshold``, at least the best one
                    (Fast-dLLM, Wu et al. 2025, Sec. 3.3 "confidence-aware parallel decoding")
``topk``            a fixed ``k`` per step (MaskGIT-style, top-k confidence)
``llada``           LLaDA (Nie et al. 2025, Sec. 2.4 and App. B.3, Alg. 4/5): ``steps`` split
                    evenly over semi-autoregressive blocks of ``block_length``; within the
                    current block the number per step is ``m // s`` (+1 for the first ``m % s``
                    steps), ``m`` the block's masked count at its start, ``s`` the steps per
                    block; "low_confidence" commits the most confident, "random" random ones
``fast_dllm``       Fast-dLLM's threshold rule or its factor rule (Wu et al. 2025, Sec. 3.3,
                    Thm. 1): with candidate scores sorted c_1 >= c_2 >= ..., commit the largest
                    n with (n + 1)(1 - c_n) < factor, at least one; with or without blocks
``sched``           SchED (Mohamed et al. 2025, Sec. 3): early exit once the mean confidence of
                    the still-masked positions reaches a threshold tau(p) that relaxes with the
                    progress p = step / steps; LLaDA's transfer schedule (or the same relaxing
                    threshold per position) until then
``saber``           Saber (Dong et al. 2025): an unmasking threshold that relaxes with the
                    running confidence of the tokens drafted so far (adaptive acceleration),
                    and backtracking that remasks earlier drafts whose probability, re-evaluated
                    under the current context, dropped by more than ``drop``
==================  ==========================================================================

Conventions (samplax/discrete spec): ``run(model, x, keys) -> (x_out, DecodeInfo)``; only MASK
positions of ``x`` are decoded, revealed ones (a prompt, an infill context) are never changed;
per-sample randomness uses ``fold_in(sample_key, step)``; ``nfe`` counts the model calls made while
the sample still had a MASK.  Every rule commits at least one token per step and never remasks
more than it commits (Saber), so a sample finishes within ``#MASK <= L`` steps; the loop also stops
after ``L`` iterations as a guard.

Scores (``kind``) live in [0, 1] so that thresholds in (0, 1] mean the same for every kind:
"max_prob" max_v p, "margin" p_1 - p_2, "neg_entropy" exp(-H) (the inverse perplexity; the order
is that of -H), "token_prob" p(drawn token) (what the LLaDA / Fast-dLLM reference code calls the
confidence: with sampled tokens it depends on the draw), "random" uniform (LLaDA's random
remasking).  Exactness: a rule that commits ONE token per step, chosen by a score that depends on
the conditionals only (max_prob, margin, neg_entropy, random) samples exactly from an exact model
(the chain rule in an adaptively chosen order); committing several tokens per step, or ordering by
"token_prob", does not.
"""
from __future__ import annotations

from typing import Callable, Literal, NamedTuple, Optional

import jax
import jax.numpy as jnp

from samplax.discrete import base
from samplax.discrete.base import DecodeInfo, DiscreteSampler

Array = jnp.ndarray

KINDS = ("max_prob", "margin", "neg_entropy", "token_prob", "random")
SCHEDULES = ("linear", "cosine", "exp")

Kind = Literal["max_prob", "margin", "neg_entropy", "token_prob", "random"]
Precision = Literal["high", "float64", "float32"]


# ----------------------------------------------------------------------------- option checks
def _check_kind(name: str, kind, allowed=KINDS) -> None:
    if kind not in allowed:
        raise ValueError(f"kind: unknown confidence kind {kind!r} ({name}); allowed: {list(allowed)}")


def _check_unit(name: str, option: str, v) -> None:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not (0.0 < float(v) <= 1.0):
        raise ValueError(f"{option}: must be a number in (0, 1] ({name}), got {v!r}")


def _check_int(name: str, option: str, v, allow_none: bool = False) -> None:
    if v is None and allow_none:
        return
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise ValueError(f"{option}: must be an integer >= 1{' or None' if allow_none else ''} "
                         f"({name}), got {v!r}")


def _check_common(name: str, kind, block_length, greedy, precision) -> None:
    _check_kind(name, kind)
    _check_int(name, "block_length", block_length, allow_none=True)
    if not isinstance(greedy, bool):
        raise ValueError(f"greedy: must be a bool ({name}), got {greedy!r}")
    base.check_precision(precision)


def _blocks(name: str, block_length: Optional[int], L: int) -> int:
    """The block length used for a sequence of length ``L`` (None: one block); checked statically."""
    bl = L if block_length is None else block_length
    if L % bl:
        raise ValueError(f"block_length: {bl} must divide the sequence length L = {L} ({name})")
    return bl


# ----------------------------------------------------------------------------- scores
def _scorer(kind: str) -> Callable:
    """score(key, logp[L, V], tokens[L]) -> float[L] in [0, 1] (dispatched once, here)."""
    if kind == "token_prob":
        return lambda key, logp, tok: jnp.exp(jnp.take_along_axis(logp, tok[:, None], -1)[:, 0])
    if kind == "random":
        return lambda key, logp, tok: jax.random.uniform(key, tok.shape, dtype=logp.dtype)
    if kind == "neg_entropy":
        return lambda key, logp, tok: jnp.exp(base.confidence(logp, "neg_entropy"))
    if kind == "margin":
        return _margin
    return lambda key, logp, tok: base.confidence(logp, kind)


def _margin(key, logp, tok):
    """``base.confidence(logp, "margin")`` (p_1 - p_2, two max passes)."""
    return base.confidence(logp, "margin")


def candidate_rank(score: Array, cand: Array) -> Array:
    """int32[L]: each candidate's rank by score, 0 the best (ties: lower position first); >= L for
    non-candidates.  Pairwise comparisons for short sequences (a sort of 8 keys per sample costs more
    than the 64 comparisons on CPU), a stable argsort for long ones; the shape decides, statically."""
    L = score.shape[-1]
    s = jnp.where(cand, score, -jnp.inf)
    if L <= 64:
        i = jnp.arange(L)
        ahead = (s[None, :] > s[:, None]) | ((s[None, :] == s[:, None]) & (i[None, :] < i[:, None]))
        rank = jnp.sum(ahead & cand[None, :], axis=1).astype(jnp.int32)
    else:
        order = jnp.argsort(-s, stable=True)
        rank = jnp.zeros((L,), jnp.int32).at[order].set(jnp.arange(L, dtype=jnp.int32))
    return jnp.where(cand, rank, L)


def top_n_mask(score: Array, cand: Array, n) -> Array:
    """bool[L]: the ``n`` highest-scoring candidates (ties: lower position first)."""
    return cand & (candidate_rank(score, cand) < n)


# ----------------------------------------------------------------------------- counting rules
# Each takes one sample's candidate scores (already -inf outside the candidates) and returns the
# number to commit; the driver clips it to [1, #candidates].
def threshold_count(score: Array, cand: Array, tau) -> Array:
    """#{candidates with score >= tau}, at least 1 (Fast-dLLM Sec. 3.3: the most confident token
    is always decoded so that every step makes progress)."""
    return jnp.maximum(jnp.sum(cand & (score >= tau)), 1)


def factor_count(score: Array, cand: Array, factor) -> Array:
    """Fast-dLLM's factor rule (Wu et al. 2025, Sec. 3.3 after Thm. 1): with the candidate scores
    sorted c_1 >= c_2 >= ..., the largest n with (n + 1)(1 - c_n) < factor, at least 1.  The
    condition is monotone in n (c_n falls, 1 - factor / (n + 1) rises; float products are monotone
    too), so it holds exactly on a prefix, and n is the number of candidates at which it holds, the
    candidate of rank r taking n = r + 1."""
    r = candidate_rank(score, cand)
    ok = cand & ((r + 2).astype(score.dtype) * (1.0 - score) < factor)
    return jnp.maximum(jnp.sum(ok), 1)


def sched_tau(p, schedule: str, tau_high: float, tau_low: float, rate: float):
    """SchED's progress-aware threshold tau(p), p in [0, 1], non-increasing from tau_high to
    (about) tau_low (Mohamed et al. 2025, Sec. 3, the smooth schedule family):
    linear  tau_high + (tau_low - tau_high) p;
    cosine  tau_low + (tau_high - tau_low) (1 + cos(pi p)) / 2;
    exp     tau_low + (tau_high - tau_low) exp(-rate p)."""
    p = jnp.clip(p, 0.0, 1.0)
    if schedule == "linear":
        return tau_high + (tau_low - tau_high) * p
    if schedule == "cosine":
        return tau_low + (tau_high - tau_low) * 0.5 * (1.0 + jnp.cos(jnp.pi * p))
    return tau_low + (tau_high - tau_low) * jnp.exp(-rate * p)


def llada_count(n_start, i_in_block, steps_per_block: int):
    """LLaDA's number of tokens to transfer at step ``i`` of a block that had ``n_start`` masked
    tokens at its start (Nie et al. 2025, App. B.3: the linear schedule's expected count per step,
    the remainder spread over the first steps)."""
    q, r = n_start // steps_per_block, n_start % steps_per_block
    return q + (i_in_block < r).astype(q.dtype)


def saber_tau(conf_sum, conf_cnt, tau_high: float, tau_low: float):
    """Saber's adaptive threshold: tau_high - (tau_high - tau_low) * cbar, cbar the running mean
    confidence of the tokens drafted so far (0 before the first draft), so decoding is cautious
    while the context is uncertain and accelerates as confident context builds up."""
    cbar = jnp.where(conf_cnt > 0, conf_sum / jnp.maximum(conf_cnt, 1), 0.0)
    return tau_high - (tau_high - tau_low) * cbar


def saber_remask(drop: Array, checked: Array, n_new, delta) -> Array:
    """bool[L]: the checked earlier drafts whose probability dropped by more than ``delta``, at
    most ``n_new - 1`` of them (the largest drops first), so each step still decodes >= 1 token
    net and the sample finishes within #MASK steps."""
    want = checked & (drop > delta)
    return top_n_mask(drop, want, jnp.maximum(n_new - 1, 0))


# ----------------------------------------------------------------------------- the driver
class _Rule(NamedTuple):
    """A rule, built per sequence length by a factory's ``make(L)``.

    init() -> aux (one sample's rule state);
    count(score[L], masked[L], cand[L], step, aux) -> (n, cand, aux): how many candidates to commit
        (the driver clips to [1, #cand]); it may widen the candidates (SchED's early exit);
    after(aux, commit[L], score[L], tokp[L]) -> aux: bookkeeping after the commit (Saber);
    verify: None, or verify(model, x_after[B, L], aux[B], n_new[B], active[B]) -> (x, aux, extra_nfe)
        a batched second look that may remask earlier drafts (Saber's backtracking)."""
    init: Callable
    count: Callable
    after: Callable = lambda aux, commit, score, tokp: aux
    verify: Optional[Callable] = None


class _State(NamedTuple):
    x: Array
    step: Array
    nfe: Array
    nonfinite: Array
    aux: object
    it: Array


def _driver(name: str, make_rule: Callable, kind: str, block_length: Optional[int], greedy: bool,
            precision: str) -> Callable:
    score_fn = _scorer(kind)

    def run(model, x, keys):
        x = jnp.asarray(x, jnp.int32)
        B, L = x.shape
        M = model.mask_id
        bl = _blocks(name, block_length, L)
        rule = make_rule(L)
        block_of = jnp.arange(L) // bl

        def propose(key, step, x1, logp1, aux):
            kstep = jax.random.fold_in(key, step)
            k_tok, k_score = jax.random.split(kstep) if kind == "random" else (kstep, None)
            if greedy:
                tok = jnp.argmax(logp1, axis=-1).astype(jnp.int32)
            else:
                tok = base.categorical(k_tok, logp1, precision=precision).astype(jnp.int32)
            masked = x1 == M
            score = score_fn(k_score, logp1, tok)
            cur = jnp.min(jnp.where(masked, block_of, L))
            cand = masked & (block_of == cur)
            n, cand, aux = rule.count(score, masked, cand, step, aux)
            n = jnp.clip(n, 1, jnp.sum(cand))
            commit = top_n_mask(score, cand, n)
            tokp = jnp.exp(jnp.take_along_axis(logp1, tok[:, None], -1)[:, 0])
            aux = rule.after(aux, commit, score, tokp)
            return jnp.where(commit, tok, x1), aux, jnp.sum(commit)

        def body(s: _State) -> _State:
            active = jnp.any(s.x == M, axis=1)
            t = jnp.mean((s.x == M).astype(jnp.float32), axis=1)
            logp = model(s.x, t)
            nonfinite = base.first_step(s.nonfinite, active & base.nonfinite_any(logp, s.x == M), s.step)
            x_new, aux_new, n_new = jax.vmap(propose)(keys, s.step, s.x, logp, s.aux)
            extra = jnp.zeros((B,), jnp.int32)
            if rule.verify is not None:
                x_new, aux_new, extra = rule.verify(model, x_new, aux_new, n_new, active)
            keep = lambda new, old: jnp.where(active.reshape((B,) + (1,) * (new.ndim - 1)), new, old)
            return _State(x=keep(x_new, s.x),
                          step=s.step + active.astype(jnp.int32),
                          nfe=s.nfe + active.astype(jnp.int32) * (1 + extra),
                          nonfinite=nonfinite,
                          aux=jax.tree_util.tree_map(keep, aux_new, s.aux),
                          it=s.it + 1)

        def cond(s: _State):
            return jnp.any(s.x == M) & (s.it < L)

        zeros = jnp.zeros((B,), jnp.int32)
        aux0 = jax.vmap(lambda _: rule.init())(jnp.arange(B))
        s = jax.lax.while_loop(cond, body, _State(x, zeros, zeros, zeros - 1, aux0, jnp.int32(0)))
        return s.x, DecodeInfo(nfe=s.nfe, steps=s.step, nonfinite_step=s.nonfinite)

    return run


def _sampler(name, make_rule, options, kind, block_length, greedy, precision, extra_calls=False,
             max_calls=None) -> DiscreteSampler:
    run = _driver(name, make_rule, kind, block_length, greedy, precision)
    return DiscreteSampler(name=name, run=run, options=dict(options), extra_calls=extra_calls,
                           max_calls=max_calls if max_calls is not None else (lambda L: L))


def _no_aux():
    return jnp.zeros((), jnp.int32)


# ----------------------------------------------------------------------------- factories
def confidence_threshold(threshold: float = 0.9, kind: Kind = "max_prob",
                         block_length: Optional[int] = None, greedy: bool = False,
                         precision: Precision = "high") -> DiscreteSampler:
    """Per step, commit every candidate (masked, in the current block) whose score >= threshold,
    and at least the most confident one (Fast-dLLM, Wu et al. 2025, Sec. 3.3).  threshold = 1 with
    a conditional-only kind commits one token per step in max-score order (exact on an exact model
    unless some conditional is a point mass).  NFE <= #MASK <= L."""
    name = "confidence_threshold"
    _check_unit(name, "threshold", threshold)
    _check_common(name, kind, block_length, greedy, precision)
    tau = float(threshold)

    def make(L):
        return _Rule(init=_no_aux,
                     count=lambda s, m, c, step, aux: (threshold_count(s, c, tau), c, aux))
    return _sampler(name, make, dict(threshold=threshold, kind=kind, block_length=block_length,
                                     greedy=greedy, precision=precision),
                    kind, block_length, greedy, precision)


def topk(k: int = 1, kind: Kind = "max_prob", block_length: Optional[int] = None,
         greedy: bool = False, precision: Precision = "high") -> DiscreteSampler:
    """Commit the k highest-scoring candidates per step (fewer at the end of a block).
    k = 1 with kind "random" is exact random-order ancestral decoding on an exact model.
    NFE = sum over blocks of ceil(#MASK in block / k)."""
    name = "topk"
    _check_int(name, "k", k)
    _check_common(name, kind, block_length, greedy, precision)

    def make(L):
        return _Rule(init=_no_aux, count=lambda s, m, c, step, aux: (jnp.int32(k), c, aux))
    return _sampler(name, make, dict(k=k, kind=kind, block_length=block_length, greedy=greedy,
                                     precision=precision), kind, block_length, greedy, precision)


class _BlockAux(NamedTuple):
    blk: Array       # the block the counters refer to (-1: none yet)
    n_start: Array   # masked candidates in that block when it became current
    i: Array         # steps taken in that block


def _llada_rule(name: str, steps: int, bl: int, L: int):
    n_blocks = L // bl
    if steps % n_blocks:
        raise ValueError(f"steps: {steps} must be a multiple of the number of blocks "
                         f"L / block_length = {n_blocks} ({name})")
    spb = steps // n_blocks
    block_of = jnp.arange(L) // bl

    def init():
        return _BlockAux(jnp.int32(-1), jnp.int32(0), jnp.int32(0))

    def count(score, masked, cand, step, aux):
        cur = jnp.min(jnp.where(masked, block_of, L)).astype(jnp.int32)
        fresh = cur != aux.blk
        n_start = jnp.where(fresh, jnp.sum(cand), aux.n_start).astype(jnp.int32)
        i = jnp.where(fresh, 0, aux.i).astype(jnp.int32)
        n = jnp.where(i < spb, llada_count(n_start, i, spb), L)
        return n, cand, _BlockAux(cur, n_start, i + 1)
    return init, count, spb


def llada(steps: int = 64, block_length: Optional[int] = None,
          remasking: Literal["low_confidence", "random"] = "low_confidence",
          kind: Kind = "token_prob", greedy: bool = False,
          precision: Precision = "high") -> DiscreteSampler:
    """LLaDA's sampler (Nie et al. 2025, Sec. 2.4, App. B.3 Alg. 4 "low-confidence remasking" /
    Alg. 5 "random remasking", semi-autoregressive blocks): ``steps`` split evenly over the
    L / block_length blocks (steps a multiple of the block count); in the current block, step i of s
    commits m // s tokens (+1 for i < m % s), m the block's masked count at its start: the
    highest-``kind`` ones ("low_confidence"; LLaDA's reference code scores the drawn token's
    probability, kind "token_prob") or uniformly random ones ("random").
    NFE = sum over blocks of min(s, m) <= steps."""
    name = "llada"
    _check_int(name, "steps", steps)
    if remasking not in ("low_confidence", "random"):
        raise ValueError(f"remasking: unknown {remasking!r} ({name}); allowed: ['low_confidence', 'random']")
    _check_common(name, kind, block_length, greedy, precision)
    score_kind = "random" if remasking == "random" else kind

    def make(L):
        init, count, _ = _llada_rule(name, steps, _blocks(name, block_length, L), L)
        return _Rule(init=init, count=count)
    return _sampler(name, make, dict(steps=steps, block_length=block_length, remasking=remasking,
                                     kind=kind, greedy=greedy, precision=precision),
                    score_kind, block_length, greedy, precision,
                    max_calls=lambda L: min(steps, L))


def fast_dllm(threshold: Optional[float] = 0.9, factor: Optional[float] = None,
              block_length: Optional[int] = None, kind: Kind = "token_prob", greedy: bool = False,
              precision: Precision = "high") -> DiscreteSampler:
    """Fast-dLLM's confidence-aware parallel decoding (Wu et al. 2025, Sec. 3.3): the threshold rule
    (``threshold``; every candidate with score >= threshold, at least one) or, when ``factor`` is
    given, the factor rule of Thm. 1's corollary (largest n with (n + 1)(1 - c_n) < factor over the
    sorted scores, at least one); blocks as in LLaDA (Fast-dLLM decodes a block until it has no MASK,
    its KV cache being irrelevant to the samples).  The reference code scores the drawn token's
    probability (kind "token_prob").  NFE <= #MASK <= L."""
    name = "fast_dllm"
    if factor is None:
        if threshold is None:
            raise ValueError(f"threshold: give threshold (a number in (0, 1]) or factor (> 0) ({name})")
        _check_unit(name, "threshold", threshold)
    else:
        if isinstance(factor, bool) or not isinstance(factor, (int, float)) or not factor > 0:
            raise ValueError(f"factor: must be a number > 0 or None ({name}), got {factor!r}")
    _check_common(name, kind, block_length, greedy, precision)

    def make(L):
        if factor is None:
            f = lambda s, m, c, step, aux: (threshold_count(s, c, float(threshold)), c, aux)
        else:
            f = lambda s, m, c, step, aux: (factor_count(s, c, float(factor)), c, aux)
        return _Rule(init=_no_aux, count=f)
    return _sampler(name, make, dict(threshold=None if factor is not None else threshold,
                                     factor=factor, block_length=block_length, kind=kind,
                                     greedy=greedy, precision=precision),
                    kind, block_length, greedy, precision)


def sched(steps: int = 64, schedule: Literal["linear", "cosine", "exp"] = "cosine",
          tau_high: float = 0.9, tau_low: float = 0.3, rate: float = 4.0,
          transfer: Literal["llada", "threshold"] = "llada", block_length: Optional[int] = None,
          kind: Kind = "margin", greedy: bool = False, precision: Precision = "high") -> DiscreteSampler:
    """SchED (Mohamed et al. 2025, "Fast-Decoding Diffusion Language Models via Progress-Aware
    Confidence Schedules", Sec. 3 and Alg. 1): before each step's commit compare the mean score of
    all still-masked positions (the remaining answer span) with tau(p), p = step / steps the decoding
    progress (steps already taken); once mean >= tau(p), commit every remaining position at once
    (early exit) and stop.  tau is :func:`sched_tau` (linear / cosine / exp, non-increasing from
    tau_high towards tau_low).  Between exits the tokens are transferred by LLaDA's schedule
    (``transfer="llada"``: ``steps``, ``block_length``, highest scores first; the paper's setting,
    NFE <= steps) or, ``transfer="threshold"``, by the same relaxing threshold applied per position
    (every candidate with score >= tau(p), at least one; NFE <= #MASK).  The paper aggregates top-2
    logit margins over the whole answer region; here the models return a one-hot at revealed
    positions, so the mean runs over the masked ones, and the margin is p_1 - p_2 in [0, 1] (kind
    "margin"), so tau_low <= tau_high lie in (0, 1]."""
    name = "sched"
    _check_int(name, "steps", steps)
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule: unknown {schedule!r} ({name}); allowed: {list(SCHEDULES)}")
    if transfer not in ("llada", "threshold"):
        raise ValueError(f"transfer: unknown {transfer!r} ({name}); allowed: ['llada', 'threshold']")
    _check_unit(name, "tau_high", tau_high)
    _check_unit(name, "tau_low", tau_low)
    if tau_low > tau_high:
        raise ValueError(f"tau_low: {tau_low} must be <= tau_high = {tau_high} ({name})")
    if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not rate > 0:
        raise ValueError(f"rate: must be a number > 0 ({name}), got {rate!r}")
    _check_common(name, kind, block_length, greedy, precision)

    def make(L):
        if transfer == "llada":
            init_b, count_b, _ = _llada_rule(name, steps, _blocks(name, block_length, L), L)
        else:
            init_b, count_b = _no_aux, None

        def init():
            return init_b()

        def count(score, masked, cand, step, aux):
            tau = sched_tau(step / steps, schedule, float(tau_high), float(tau_low), float(rate))
            if count_b is None:
                n, cand_b, aux = threshold_count(score, cand, tau), cand, aux
            else:
                n, cand_b, aux = count_b(score, masked, cand, step, aux)
            mean = jnp.sum(jnp.where(masked, score, 0.0)) / jnp.maximum(jnp.sum(masked), 1)
            exit_now = mean >= tau
            return jnp.where(exit_now, L, n), jnp.where(exit_now, masked, cand_b), aux
        return _Rule(init=init, count=count)
    return _sampler(name, make, dict(steps=steps, schedule=schedule, tau_high=tau_high,
                                     tau_low=tau_low, rate=rate, transfer=transfer,
                                     block_length=block_length, kind=kind, greedy=greedy,
                                     precision=precision),
                    kind, block_length, greedy, precision,
                    max_calls=(lambda L: min(steps, L)) if transfer == "llada" else None)


class _SaberAux(NamedTuple):
    conf_sum: Array   # sum of the scores of all tokens drafted so far
    conf_cnt: Array   # how many
    prev: Array       # bool[L]: drafted at the previous step (checked at this one)
    drafted: Array    # bool[L]: drafted at this step
    tokp: Array       # float[L]: p(token) when it was drafted


def saber(tau_high: float = 0.9, tau_low: float = 0.5, backtrack: bool = True, drop: float = 0.3,
          block_length: Optional[int] = None, kind: Kind = "token_prob", greedy: bool = False,
          precision: Precision = "high") -> DiscreteSampler:
    """Saber (Dong et al. 2025, "Saber: An Efficient Sampling with Adaptive Acceleration and
    Backtracking Enhanced Remasking for Diffusion Language Model", Sec. 3), as reconstructed here:

    * adaptive acceleration: commit every candidate whose score >= tau_t, at least one, with
      tau_t = tau_high - (tau_high - tau_low) * cbar_t, cbar_t the running mean score of all tokens
      drafted so far (:func:`saber_tau`);
    * backtracking (``backtrack``): after step t's drafts, each token drafted at step t - 1 is
      re-evaluated under the current context, p_now(x_i) = p(x_i | every other committed token),
      one leave-one-out model row per checked token; those with p_draft - p_now > drop are
      remasked, at most n_t - 1 of them (largest drops first; :func:`saber_remask`).  The prompt is
      never checked.  Step bound: every step decodes >= 1 token net, so a sample takes <= #MASK <= L
      steps; NFE = steps + #checked <= L + L^2 (``max_calls``), extra_calls is True.
    The leave-one-out rows are the honest price of "re-evaluated under the current context" for a
    model that returns a one-hot at revealed positions (a dLLM reads them off its free logits)."""
    name = "saber"
    _check_unit(name, "tau_high", tau_high)
    _check_unit(name, "tau_low", tau_low)
    if tau_low > tau_high:
        raise ValueError(f"tau_low: {tau_low} must be <= tau_high = {tau_high} ({name})")
    if not isinstance(backtrack, bool):
        raise ValueError(f"backtrack: must be a bool ({name}), got {backtrack!r}")
    if isinstance(drop, bool) or not isinstance(drop, (int, float)) or not 0.0 <= drop < 1.0:
        raise ValueError(f"drop: must be a number in [0, 1) ({name}), got {drop!r}")
    _check_common(name, kind, block_length, greedy, precision)

    def make(L):
        def init():
            return _SaberAux(jnp.zeros((), jnp.float32), jnp.int32(0), jnp.zeros((L,), bool),
                             jnp.zeros((L,), bool), jnp.zeros((L,), jnp.float32))

        def count(score, masked, cand, step, aux):
            tau = saber_tau(aux.conf_sum, aux.conf_cnt, float(tau_high), float(tau_low))
            return threshold_count(score, cand, tau), cand, aux

        def after(aux, commit, score, tokp):
            return _SaberAux(
                conf_sum=(aux.conf_sum + jnp.sum(jnp.where(commit, score, 0.0))).astype(aux.conf_sum.dtype),
                conf_cnt=aux.conf_cnt + jnp.sum(commit).astype(jnp.int32),
                prev=aux.drafted, drafted=commit,
                tokp=jnp.where(commit, tokp, aux.tokp).astype(aux.tokp.dtype))

        def verify(model, x, aux, n_new, active):
            B = x.shape[0]
            M = model.mask_id
            eye = jnp.eye(L, dtype=bool)
            rows = jnp.where(eye[None] & aux.prev[:, :, None], M, x[:, None, :])  # [B, row, L]
            t = jnp.mean((rows == M).astype(jnp.float32), axis=2).reshape(B * L)
            lp = model(rows.reshape(B * L, L), t).reshape(B, L, L, -1)
            lp_diag = lp[:, jnp.arange(L), jnp.arange(L)]                           # [B, L, V]
            tok = jnp.where(x == M, 0, x)
            p_now = jnp.exp(jnp.take_along_axis(lp_diag, tok[:, :, None], -1)[..., 0])
            remask = jax.vmap(saber_remask, in_axes=(0, 0, 0, None))(
                aux.tokp - p_now, aux.prev, n_new, float(drop))
            return jnp.where(remask, M, x), aux, jnp.sum(aux.prev, axis=1).astype(jnp.int32)
        return _Rule(init=init, count=count, after=after, verify=verify if backtrack else None)

    return _sampler(name, make, dict(tau_high=tau_high, tau_low=tau_low, backtrack=backtrack,
                                     drop=drop, block_length=block_length, kind=kind,
                                     greedy=greedy, precision=precision),
                    kind, block_length, greedy, precision, extra_calls=backtrack,
                    max_calls=(lambda L: L + L * L) if backtrack else None)
