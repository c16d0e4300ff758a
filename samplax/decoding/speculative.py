"""Speculative decoding: a cheap draft LM proposes tokens, the target LM scores them all in one call,
and a rejection rule keeps the output distributed exactly as the target's.

* :func:`speculative_sample`: one-draft speculative sampling (Leviathan, Kalman & Matias 2023, "Fast
  Inference from Transformers via Speculative Decoding", Algorithm 1; Chen et al. 2023, "Accelerating
  Large Language Model Decoding with Speculative Sampling", Algorithm 2).  Per iteration the draft
  proposes ``gamma`` tokens autoregressively (``gamma`` draft calls), the target scores the ``gamma + 1``
  positions in ONE ``logits_fn`` call, draft token i is accepted with probability ``min(1, p_i/q_i)``;
  at the first rejection the token is drawn from ``norm(max(0, p - q))`` and the iteration ends; when
  all are accepted a bonus token is drawn from ``p_{gamma}``.  Output law = the target's (Leviathan
  et al., the correctness argument of Sec. 2.3 / Appendix; Chen et al. Theorem 1).
* :func:`spectr_sample`: SpecTr (Sun, Suresh, Ro, Beirami, Jain & Yu 2023, "SpecTr: Fast Speculative
  Decoding via Optimal Transport").  ``k`` i.i.d. draft sequences of length ``gamma`` (the paper's k
  independent drafts of length L, one batched draft call per position), one target call on all of
  them, then position by position the token-level draft selection K-SEQ (:func:`kseq_select`, the
  paper's "k-sequential selection": accept candidate i with probability ``min(1, p/(rho q))``,
  candidates in turn, else draw from the residual ``p_res``) among the drafts that still agree with
  the tokens chosen so far; the drafts that match the chosen token stay candidates for the next
  position (one SpecTr iteration as in the paper's Figures 2 and 3).  With ``k = 1`` K-SEQ is the
  speculative rule.  (Section / algorithm numbers of the SpecTr paper are not cited: only its
  abstract, figure captions and a secondary statement of K-SEQ, Sequoia's Appendix F, were at hand;
  the formulas here are derived and checked exactly in the tests.)

Exactness: with a logit transform ``T`` (temperature), both samplers draw from ``T(target)`` position by
position: the acceptance ratio and residual use the transformed target ``p = T(p_target)`` and the
transformed draft ``q = T(p_draft)`` (the law the draft tokens were actually drawn from).  So the
output law is that of ancestral sampling of the target with the transform applied
(``enumerate_log_probs(target, T)``), whatever the draft.

Counting (``DecodeInfo``): one target call per iteration (the batched verification pass, ``k``
sequences for SpecTr); ``min(gamma, L - pos)`` draft calls per iteration (a SpecTr draft call is one
batched call on the k drafts).  Both samplers run the uncached ``logits_fn`` of both models (each
call recomputes the prefix: the count is exact, the wall time is not that of a KV-cached model).
``extras["accepted"]``: draft tokens kept per sample (positions whose output token equals a
verified draft token), ``extras["iterations"]`` = target calls.

:func:`expected_counts`: the EXACT expected number of target calls, draft calls and accepted tokens
(and the output distribution, which must equal the target's) by a forward recursion over all
prefixes of an enumerable LM pair, for both samplers.  :func:`leviathan_tokens_per_call` is the
paper's closed form ``(1 - a^(gamma+1)) / (1 - a)`` (Leviathan et al. eq. (1), i.i.d. acceptance).
"""
from __future__ import annotations

import functools
import math
from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

from samplax.decoding.base import (LOG_ZERO, Decoder, LanguageModel, Problem, Transform, check_int, check_keys,
                                   check_positive, check_prompt, gather_logp, identity, make_info,
                                   temperature as temperature_transform)
from samplax.decoding.exact import MAX_ENUMERATE, all_sequences, exact_log_probs, hmm_lm
from samplax.discrete.base import gumbel

__all__ = ["speculative_sample", "spectr_sample", "kseq_select", "kseq_rho", "kseq_residual",
           "expected_counts", "ExpectedCounts", "leviathan_tokens_per_call", "acceptance_rate",
           "speculative", "spectr", "mix_uniform_draft", "bigram_draft", "hmm_perturbed_draft"]

_BISECT = 32   # bisection steps for rho* (the interval [1, k] shrinks to (k - 1) / 2^32)


def _dtype():
    return jnp.float64 if jax.config.jax_enable_x64 else jnp.float32


def _log(p):
    return jnp.where(p > 0, jnp.log(jnp.where(p > 0, p, 1.0)), LOG_ZERO)


def _rows(logp_seq, pos, n):
    """Rows ``pos .. pos + n - 1`` of ``logp_seq[..., L, V]`` (clipped at L - 1) and their positions."""
    L = logp_seq.shape[-2]
    idx = pos + jnp.arange(n, dtype=jnp.int32)
    return jnp.take(logp_seq, jnp.clip(idx, 0, L - 1), axis=-2), idx


def _bad(rows):
    return ~jnp.all(jnp.isfinite(rows), axis=-1)


# ---------------------------------------------------------------------------------------
# One-draft speculative sampling
# ---------------------------------------------------------------------------------------
_SPEC_RULES = {"exact": 0, "accept_always": 1, "accept_inverse": 2, "residual_p": 3}
_SPECTR_RULES = {"exact": 0, "naive": 1}


def _speculative_one(target: LanguageModel, draft: LanguageModel, transform: Transform, gamma: int, P: int,
                     x0, key, rule):
    """One sequence (vmapped by the caller).  ``rule`` (traced int, :data:`_SPEC_RULES`): 0 is the
    algorithm; the others are deliberately wrong variants kept for the mutation tests (accept every
    draft token, accept with min(1, q/p), resample a rejected token from p instead of the residual);
    a traced switch, so the tests compile the sampler once."""
    L = target.length
    dt = _dtype()
    V = target.vocab_size
    T = jax.vmap(transform, in_axes=(0, 0))

    class C(NamedTuple):
        x: jax.Array
        pos: jax.Array
        key: jax.Array
        tcalls: jax.Array
        dcalls: jax.Array
        accepted: jax.Array
        log_p: jax.Array
        bad: jax.Array

    def body(c: C):
        # all the noise of one iteration in two draws (Gumbel rows: gamma drafts + the final token)
        key, kg, ka = jax.random.split(c.key, 3)
        G = gumbel(kg, (gamma + 1, V), dt)
        u = jax.random.uniform(ka, (gamma,), dt)
        g = jnp.minimum(gamma, L - c.pos).astype(jnp.int32)

        def dstep(x, i):
            t = c.pos + i
            row = jax.lax.dynamic_index_in_dim(draft.logits_fn(x[None])[0], jnp.minimum(t, L - 1), 0, False)
            lq = transform(row, t)
            tok = _gumbel_max(lq, G[i])
            return x.at[t].set(tok, mode="drop"), (tok, lq, _bad(row))
        x, (dtok, dlq, dbad) = jax.lax.scan(dstep, c.x, jnp.arange(gamma, dtype=jnp.int32))

        raw, idx = _rows(target.logits_fn(x[None])[0], c.pos, gamma + 1)    # ONE target call
        lp = T(raw, idx)
        ratio = jnp.exp(gather_logp(lp[:gamma], dtok) - gather_logp(dlq, dtok))
        ratio = jnp.where(rule == 1, jnp.inf, jnp.where(rule == 2, 1.0 / jnp.maximum(ratio, 1e-30), ratio))
        acc = (u < ratio) & (jnp.arange(gamma) < g)
        n = jnp.sum(jnp.cumprod(acc.astype(jnp.int32))).astype(jnp.int32)

        p_n = jax.lax.dynamic_index_in_dim(lp, n, 0, False)
        q_n = jax.lax.dynamic_index_in_dim(dlq, jnp.minimum(n, gamma - 1), 0, False)
        res = jnp.maximum(jnp.exp(p_n) - jnp.exp(q_n), 0.0)
        log_res = jnp.where((jnp.sum(res) > 0) & (rule != 3), _log(res), p_n)
        tok = _gumbel_max(jnp.where(n < g, log_res, p_n), G[gamma])
        final = c.pos + n < L                  # no bonus once the sequence is full
        x = x.at[c.pos + n].set(tok, mode="drop")

        ar = jnp.arange(gamma)
        log_p = c.log_p + jnp.sum(jnp.where(ar < n, gather_logp(raw[:gamma], dtok), 0.0))
        log_p = log_p + jnp.where(final, jax.lax.dynamic_index_in_dim(raw, n, 0, False)[tok], 0.0)
        used_t = jnp.arange(gamma + 1) <= jnp.where(final, n, n - 1)
        bad_pos = jnp.where(used_t & _bad(raw), idx, L)
        bad_pos = jnp.minimum(bad_pos.min(), jnp.where((ar < g) & dbad, idx[:gamma], L).min())
        bad = jnp.where((c.bad < 0) & (bad_pos < L), bad_pos, c.bad)
        return C(x, c.pos + n + final.astype(jnp.int32), key, c.tcalls + 1, c.dcalls + g,
                 c.accepted + n, log_p, bad)

    zi = jnp.asarray(0, jnp.int32)
    c = C(x0, jnp.asarray(P, jnp.int32), key, zi, zi, zi, jnp.asarray(0.0, dt), jnp.asarray(-1, jnp.int32))
    c = jax.lax.while_loop(lambda c: c.pos < L, body, c)
    return c.x, c.tcalls, c.dcalls, c.accepted, c.log_p, c.bad


def _start(lm: LanguageModel, keys, prompt):
    keys = check_keys(keys)
    prompt = check_prompt(prompt, lm)
    P = 0 if prompt is None else int(prompt.shape[0])
    x0 = jnp.zeros((lm.length,), jnp.int32)
    if P:
        x0 = x0.at[:P].set(jnp.asarray(prompt, jnp.int32))
    return keys, P, x0


def _check_pair(target: LanguageModel, draft: Optional[LanguageModel]):
    if not isinstance(draft, LanguageModel):
        raise ValueError(f"draft: speculative decoding needs a draft LanguageModel (Problem.draft), got {draft!r}")
    if draft.vocab_size != target.vocab_size or draft.length != target.length:
        raise ValueError(f"draft: vocab_size/length ({draft.vocab_size}, {draft.length}) must equal the target's "
                         f"({target.vocab_size}, {target.length})")


def _finish(keys, out):
    x, tc, dc, acc, lp, bad = out
    B = keys.shape[0]
    return x, make_info(B, tc, lp, draft_calls=dc, nonfinite_step=bad,
                        extras={"accepted": acc, "iterations": tc})


def speculative_sample(target: LanguageModel, draft: LanguageModel, keys, gamma: int = 4,
                       transform: Transform = identity, prompt=None, *, _rule: str = "exact"):
    """One-draft speculative sampling (Leviathan et al. 2023, Algorithm 1; Chen et al. 2023,
    Algorithm 2), one sequence per key, vmapped; each sample advances its own position in a
    ``lax.while_loop`` until ``L``.  Output law: ancestral sampling of ``transform(target)``.
    Returns ``(tokens int32[B, L], DecodeInfo)``; ``target_calls`` = iterations, ``draft_calls`` =
    sum over iterations of ``min(gamma, L - pos)``."""
    _check_pair(target, draft)
    gamma = check_int("gamma", gamma, 1)
    keys, P, x0 = _start(target, keys, prompt)
    run = _jitted("speculative", target, draft, transform, gamma, 1, P)
    return _finish(keys, run(x0, keys, jnp.asarray(_SPEC_RULES[_rule], jnp.int32), jnp.asarray(1, jnp.int32)))


# ---------------------------------------------------------------------------------------
# SpecTr: K-SEQ draft selection
# ---------------------------------------------------------------------------------------
def _f_of_beta(beta, k):
    """``(1 - (1 - beta)^k) / beta = sum_{j<k} (1 - beta)^j`` (k at beta = 0)."""
    safe = jnp.where(beta > 0, beta, 1.0)
    val = -jnp.expm1(k * jnp.log1p(-jnp.minimum(safe, 1.0))) / safe
    return jnp.where(beta > 0, val, k)


def _beta(p, q, rho):
    return jnp.sum(jnp.minimum(q, p / rho[..., None]), axis=-1)


def kseq_rho(p, q, k):
    """rho* of K-SEQ (Sun et al. 2023, k-sequential selection): a rho in [1, k] on the boundary of
    ``(1 - (1 - beta(rho))^k) / beta(rho) <= rho``, ``beta(rho) = sum_x min(q(x), p(x)/rho)``, the
    condition under which the residual ``p_res`` is a distribution (every rho that satisfies it keeps
    K-SEQ exact; the acceptance probability ``1 - (1 - beta)^k`` falls as rho grows, so the smallest
    feasible rho is wanted).  rho = 1 when it is feasible (always for k = 1), else bisection on
    [1, k] keeping the upper end feasible (rho = k always is): the smallest feasible rho when the
    condition is monotone in rho, a feasible one in any case.  p, q: probabilities [..., V]; k: number
    of candidates (>= 1, may be traced)."""
    k = jnp.asarray(k, p.dtype)

    def gap(rho):
        return rho - _f_of_beta(_beta(p, q, rho), k)

    one = jnp.ones(p.shape[:-1], p.dtype)

    def bis(_, lohi):
        lo, hi = lohi
        mid = 0.5 * (lo + hi)
        ok = gap(mid) >= 0
        return jnp.where(ok, lo, mid), jnp.where(ok, mid, hi)
    _, hi = jax.lax.fori_loop(0, _BISECT, bis, (one, one * jnp.maximum(k, 1.0)))
    return jnp.where(gap(one) >= 0, one, hi)


def kseq_residual(p, q, rho, k):
    """The K-SEQ residual ``p_res(x) = [p(x) - min(q(x), p(x)/rho) (1 - (1 - beta)^k) / beta] /
    (1 - beta)^k`` (Sun et al. 2023, K-SEQ), unnormalised here (its mass is ``(1 - beta)^k``, the
    probability that every candidate is rejected); clipped at 0 against rounding."""
    m = jnp.minimum(q, p / rho[..., None])
    f = _f_of_beta(jnp.sum(m, -1), jnp.asarray(k, p.dtype))
    return jnp.maximum(p - m * f[..., None], 0.0)


def _gumbel_max(logp, g):
    """A categorical draw from the Gumbel row ``g`` (Gumbel-max; LOG_ZERO tokens never win)."""
    return jnp.argmax(logp.astype(g.dtype) + g, axis=-1).astype(jnp.int32)


def kseq_select(key, logp, logq, cands, active, naive=False):
    """K-SEQ draft selection (Sun et al. 2023, "k-sequential selection"): among the active
    candidates ``cands[active]`` (i.i.d. draws from q), take them in turn and accept candidate i with
    probability ``min(1, p(X_i) / (rho* q(X_i)))``; if none is accepted draw from ``p_res``.  The
    output is distributed as p exactly: P(Y = y) = min(q, p/rho)(y) sum_{i<k} (1 - beta)^i + (1 - beta)^k
    p_res(y) = p(y); the acceptance probability is ``1 - (1 - beta(rho*))^k``.

    logp, logq: [V] log-probabilities; cands int32[k]; active bool[k] (at least one).  Returns
    ``(token, accepted_from_draft)``.  ``naive`` (bool, may be traced) is a deliberately wrong variant
    for the mutation tests: rho = 1 and residual ``norm(max(p - q, 0))`` for every k, i.e. the
    one-draft rule applied to each candidate in turn (valid only for k = 1)."""
    p, q = jnp.exp(logp), jnp.exp(logq)
    kk = jnp.sum(active).astype(p.dtype)
    rho = jnp.where(naive, 1.0, kseq_rho(p, q, kk))
    ka, kr = jax.random.split(key)
    u = jax.random.uniform(ka, cands.shape, p.dtype)
    return _kseq_noise(u, gumbel(kr, p.shape, p.dtype), p, q, rho, kk, cands, active, naive)


def _kseq_noise(u, g, p, q, rho, kk, cands, active, naive):
    """K-SEQ with its noise given: uniforms ``u[k]`` for the candidates, a Gumbel row ``g[V]`` for
    the residual draw."""
    ratio = p[cands] / (rho * q[cands])
    acc = active & (u < ratio)
    res = jnp.where(naive, jnp.maximum(p - q, 0.0), kseq_residual(p, q, rho, kk))
    y_res = _gumbel_max(jnp.where(jnp.sum(res) > 0, _log(res), _log(p)), g)
    any_acc = jnp.any(acc)
    return jnp.where(any_acc, cands[jnp.argmax(acc)], y_res), any_acc


def _spectr_one(target: LanguageModel, draft: LanguageModel, transform: Transform, gamma: int, k: int, P: int,
                x0, key, rule, k_used):
    """One sequence.  ``k_used`` (traced, <= k): drafts actually used (the others are drawn and
    ignored: the tests run k = 1 on the k-draft program); ``rule`` (traced, :data:`_SPECTR_RULES`):
    1 is the wrong per-candidate rule of :func:`kseq_select` for the mutation tests."""
    L = target.length
    dt = _dtype()
    V = target.vocab_size

    class C(NamedTuple):
        x: jax.Array
        pos: jax.Array
        key: jax.Array
        tcalls: jax.Array
        dcalls: jax.Array
        accepted: jax.Array
        log_p: jax.Array
        bad: jax.Array

    def body(c: C):
        # all the noise of one iteration in two draws: Gumbel rows for the k drafts at each position,
        # the residual draw at each position and the bonus; uniforms for the K-SEQ acceptances
        key, kg, ku = jax.random.split(c.key, 3)
        G = gumbel(kg, (gamma * (k + 1) + 1, V), dt)
        Gd, Gr = G[:gamma * k].reshape(gamma, k, V), G[gamma * k:]
        U = jax.random.uniform(ku, (gamma, k), dt)
        g = jnp.minimum(gamma, L - c.pos).astype(jnp.int32)

        def dstep(xs, i):                     # one batched draft call on the k drafts
            t = c.pos + i
            rows = jax.lax.dynamic_index_in_dim(draft.logits_fn(xs), jnp.minimum(t, L - 1), 1, False)   # [k, V]
            lq = jax.vmap(transform, in_axes=(0, None))(rows, t)
            toks = _gumbel_max(lq, Gd[i])
            return xs.at[:, t].set(toks, mode="drop"), (toks, lq, jnp.any(_bad(rows)))
        xs0 = jnp.broadcast_to(c.x, (k, L))
        xs, (dtok, dlq, dbad) = jax.lax.scan(dstep, xs0, jnp.arange(gamma, dtype=jnp.int32))
        # dtok [gamma, k], dlq [gamma, k, V]
        raw, idx = _rows(target.logits_fn(xs), c.pos, gamma + 1)          # ONE target call: [k, gamma+1, V]

        def sel(carry, i):
            active, live, n_acc, lp_sum, bad = carry
            j0 = jnp.argmax(active)
            t = c.pos + i
            row = raw[j0, i]
            lp_t = transform(row, t)
            p, q = jnp.exp(lp_t), jnp.exp(dlq[i, j0])
            kk = jnp.sum(active).astype(p.dtype)
            rho = jnp.where(rule == 1, 1.0, kseq_rho(p, q, kk))
            y, _ = _kseq_noise(U[i], Gr[i], p, q, rho, kk, dtok[i], active, rule == 1)
            emit = live & (i < g)
            new_active = active & (dtok[i] == y)
            matched = jnp.any(new_active)
            lp_sum = lp_sum + jnp.where(emit, row[y], 0.0)
            bad = jnp.where(emit & (bad == L) & _bad(row), t, bad)
            carry = (jnp.where(emit, new_active, active), live & (i < g) & matched,
                     n_acc + (emit & matched).astype(jnp.int32), lp_sum, bad)
            return carry, (y, emit)
        active0 = jnp.arange(k) < k_used
        (active, live, n_acc, lp_sum, bad_t), (ys, emits) = jax.lax.scan(
            sel, (active0, jnp.asarray(True), jnp.asarray(0, jnp.int32), jnp.asarray(0.0, dt),
                  jnp.asarray(L, jnp.int32)), jnp.arange(gamma, dtype=jnp.int32))
        x = c.x.at[jnp.where(emits, c.pos + jnp.arange(gamma), L)].set(ys, mode="drop")
        n_out = jnp.sum(emits.astype(jnp.int32)).astype(jnp.int32)
        # every draft position matched: bonus token from p at position pos + gamma (if inside)
        bonus = live & (c.pos + gamma < L)
        j0 = jnp.argmax(active)
        brow = raw[j0, gamma]
        yb = _gumbel_max(transform(brow, c.pos + gamma), Gr[gamma])
        x = jnp.where(bonus, x.at[jnp.minimum(c.pos + gamma, L - 1)].set(yb), x)
        lp_sum = lp_sum + jnp.where(bonus, brow[yb], 0.0)
        bad_t = jnp.where(bonus & (bad_t == L) & _bad(brow), c.pos + gamma, bad_t)
        bad_d = jnp.where((jnp.arange(gamma) < g) & dbad, idx[:gamma], L).min()
        bad_pos = jnp.minimum(bad_t, bad_d)
        bad = jnp.where((c.bad < 0) & (bad_pos < L), bad_pos, c.bad)
        return C(x, c.pos + n_out + bonus.astype(jnp.int32), key, c.tcalls + 1, c.dcalls + g,
                 c.accepted + n_acc, c.log_p + lp_sum, bad)

    zi = jnp.asarray(0, jnp.int32)
    c = C(x0, jnp.asarray(P, jnp.int32), key, zi, zi, zi, jnp.asarray(0.0, dt), jnp.asarray(-1, jnp.int32))
    c = jax.lax.while_loop(lambda c: c.pos < L, body, c)
    return c.x, c.tcalls, c.dcalls, c.accepted, c.log_p, c.bad


def spectr_sample(target: LanguageModel, draft: LanguageModel, keys, k: int = 2, gamma: int = 4,
                  transform: Transform = identity, prompt=None, *, _rule: str = "exact", _k_used=None):
    """SpecTr (Sun et al. 2023): k i.i.d. drafts of length gamma, one target call per iteration,
    K-SEQ selection position by position among the drafts that agree with the output so far, a bonus
    token when some draft survives all gamma positions.  Output law: ancestral sampling of
    ``transform(target)``.  ``k = 1`` is :func:`speculative_sample` in distribution."""
    _check_pair(target, draft)
    k = check_int("k", k, 1)
    gamma = check_int("gamma", gamma, 1)
    keys, P, x0 = _start(target, keys, prompt)
    k_used = k if _k_used is None else check_int("k_used", _k_used, 1)
    if k_used > k:
        raise ValueError(f"k_used: must be <= k = {k}, got {k_used}")
    run = _jitted("spectr", target, draft, transform, gamma, k, P)
    return _finish(keys, run(x0, keys, jnp.asarray(_SPECTR_RULES[_rule], jnp.int32), jnp.asarray(k_used, jnp.int32)))


@functools.lru_cache(maxsize=64)
def _jitted_cached(kind, target, draft, transform, gamma, k, P, x64):
    if kind == "speculative":
        def one(x0, key, rule, k_used):
            return _speculative_one(target, draft, transform, gamma, P, x0, key, rule)
    else:
        def one(x0, key, rule, k_used):
            return _spectr_one(target, draft, transform, gamma, k, P, x0, key, rule, k_used)
    return jax.jit(jax.vmap(one, in_axes=(None, 0, None, None)))


def _jitted(kind, target, draft, transform, gamma, k, P):
    return _jitted_cached(kind, target, draft, transform, gamma, k, P, bool(jax.config.jax_enable_x64))


# ---------------------------------------------------------------------------------------
# Exact expectations by enumeration
# ---------------------------------------------------------------------------------------
class ExpectedCounts(NamedTuple):
    target_calls: float     # E[number of target calls per sequence]
    draft_calls: float      # E[number of draft calls per sequence]
    accepted: float         # E[number of draft tokens kept per sequence]
    tokens: int             # tokens generated per sequence (L - P)
    output_log_probs: np.ndarray   # float64[V**L]: the law of the output (must equal the target's)

    @property
    def tokens_per_call(self) -> float:
        """E[tokens] / E[target calls] (the ratio of expectations: the long-run rate)."""
        return self.tokens / self.target_calls


@functools.lru_cache(maxsize=16)
def _conditionals(lm: LanguageModel, transform: Optional[Transform]):
    """cond[t]: float64[V**t, V], ``transform(p(. | h), t)`` for every prefix h of length t."""
    V, L = lm.vocab_size, lm.length
    if V ** L > MAX_ENUMERATE:
        raise ValueError(f"expected_counts: {V}**{L} sequences is more than {MAX_ENUMERATE}")
    seqs = jnp.asarray(all_sequences(V, L))
    with jax.enable_x64(True):
        @jax.jit
        def f(x):
            lp = lm.logits_fn(x).astype(jnp.float64)
            if transform is not None:
                lp = jax.vmap(transform, in_axes=(1, 0), out_axes=1)(lp, jnp.arange(L))
            return jnp.where(lp > LOG_ZERO / 2, jnp.exp(lp), 0.0)
        probs = np.concatenate([np.asarray(f(seqs[i:i + 32768])) for i in range(0, V ** L, 32768)])
    probs = probs / probs.sum(-1, keepdims=True)
    return [probs[::V ** (L - t), t, :] for t in range(L)]


def _f_np(beta, k):
    safe = np.where(beta > 0, np.minimum(beta, 1.0), 1.0)
    with np.errstate(divide="ignore"):          # beta = 1: log1p(-1) = -inf, expm1(-inf) = -1
        return np.where(beta > 0, -np.expm1(k * np.log1p(-safe)) / safe, float(k))


def _kseq_rho_np(p, q, k):
    """:func:`kseq_rho` in numpy float64 (the same bisection), vectorised over rows."""
    def gap(rho):
        return rho - _f_np(np.minimum(q, p / rho[..., None]).sum(-1), k)
    lo = np.ones(p.shape[:-1])
    hi = lo * max(k, 1)
    for _ in range(_BISECT):
        mid = 0.5 * (lo + hi)
        ok = gap(mid) >= 0
        lo, hi = np.where(ok, lo, mid), np.where(ok, mid, hi)
    return np.where(gap(np.ones_like(lo)) >= 0, 1.0, hi)


def _kseq_joint(p, q, k):
    """Token-level K-SEQ with k candidates, vectorised over rows: (J[c][..., y] = P(Y = y and c
    candidates equal y) for c = 0..k).  numpy float64, the same rho* bisection as :func:`kseq_rho`."""
    rho = _kseq_rho_np(p, q, k)
    m = np.minimum(q, p / rho[..., None])            # accept with value y at a given candidate
    beta = m.sum(-1, keepdims=True)
    res = np.maximum(p - m * _f_np(beta, k), 0.0)
    rej_y = q - m                                    # rejected and equal to y
    rej_n = np.maximum((1.0 - beta) - rej_y, 0.0)    # rejected and not y
    mass = res.sum(-1, keepdims=True)                # (1 - beta)^k: every candidate rejected
    res = np.where(mass > 0, res / np.where(mass > 0, mass, 1.0), 0.0)
    J = [np.zeros_like(p) for _ in range(k + 1)]
    comb = math.comb
    for i in range(1, k + 1):                        # accepted at candidate i
        for a in range(i):                           # a of the i-1 rejected ones equal y
            pa = comb(i - 1, a) * rej_y ** a * rej_n ** (i - 1 - a)
            for b in range(k - i + 1):               # b of the k-i later (unexamined) ones equal y
                pb = comb(k - i, b) * q ** b * (1.0 - q) ** (k - i - b)
                J[1 + a + b] += pa * m * pb
    for c in range(k + 1):                           # all rejected; c of them equal y
        J[c] += comb(k, c) * rej_y ** c * rej_n ** (k - c) * res
    return J


def expected_counts(target: LanguageModel, draft: LanguageModel, gamma: int, k: int = 1,
                    transform: Optional[Transform] = None, prompt=None) -> ExpectedCounts:
    """Exact expectations of :func:`speculative_sample` (``k = 1``) / :func:`spectr_sample` by a
    forward recursion over prefixes (an enumerable pair, V**L <= 2**22): ``a_s(h)`` = P(an iteration
    starts at prefix h of length s); within an iteration the mass over (prefix, number of drafts
    still matching) is pushed one position at a time through the token-level law of K-SEQ
    (:func:`_kseq_joint`; for k = 1 the speculative rule: accept with min(p, q), residual
    max(p - q, 0)).  E[target calls] = sum_s,h a_s(h); the output law (mass reaching length L) is
    returned for checking against the target."""
    _check_pair(target, draft)
    gamma = check_int("gamma", gamma, 1)
    k = check_int("k", k, 1)
    V, L = target.vocab_size, target.length
    prompt = check_prompt(prompt, target)
    P = 0 if prompt is None else len(prompt)
    pc = _conditionals(target, transform)
    qc = _conditionals(draft, transform)
    a = [np.zeros(V ** s) for s in range(L + 1)]
    start = 0 if P == 0 else int(np.sum(np.asarray(prompt) * V ** np.arange(P - 1, -1, -1)))
    a[P][start] = 1.0
    calls = dcalls = accepted = 0.0
    for s in range(P, L):
        if not a[s].any():
            continue
        mass_s = a[s].sum()
        calls += mass_s
        g = min(gamma, L - s)
        dcalls += mass_s * g
        # cur[c]: mass over prefixes of length s+n with c >= 1 drafts still matching (all k at n = 0)
        cur = {k: a[s]}
        for n in range(g):
            t = s + n
            nxt = {}
            for c, mass in cur.items():
                J = _kseq_joint(pc[t], qc[t], c)
                for c2 in range(c + 1):
                    grown = (mass[:, None] * J[c2]).reshape(-1)
                    if c2 == 0:
                        a[t + 1] += grown
                    else:
                        nxt[c2] = nxt.get(c2, 0.0) + grown
            cur = nxt
            accepted += sum(float(v.sum()) for v in cur.values())
        alive = sum(cur.values()) if cur else None
        if alive is not None:
            if s + g < L:                              # bonus token from p
                a[s + g + 1] += (alive[:, None] * pc[s + g]).reshape(-1)
            else:
                a[L] += alive
    out = np.where(a[L] > 0, np.log(np.where(a[L] > 0, a[L], 1.0)), -np.inf)
    return ExpectedCounts(float(calls), float(dcalls), float(accepted), L - P, out)


def acceptance_rate(target: LanguageModel, draft: LanguageModel, transform: Optional[Transform] = None) -> float:
    """Leviathan et al.'s alpha = E_{prefix ~ p}[beta(prefix)], ``beta = sum_x min(p(x), q(x))`` (their
    Sec. 3), averaged over the positions of a sequence drawn from the target."""
    pc = _conditionals(target, transform)
    qc = _conditionals(draft, transform)
    V, L = target.vocab_size, target.length
    prefix = np.ones(1)
    total = 0.0
    for t in range(L):
        total += float(np.sum(prefix * np.minimum(pc[t], qc[t]).sum(-1)))
        prefix = (prefix[:, None] * pc[t]).reshape(-1)
    return total / L


def leviathan_tokens_per_call(alpha: float, gamma: int) -> float:
    """Leviathan et al. 2023, eq. (1): expected tokens per target call ``(1 - alpha^(gamma+1)) /
    (1 - alpha)`` when every draft token is accepted independently with probability alpha (gamma + 1
    at alpha = 1); it ignores the end of the sequence."""
    if alpha >= 1.0:
        return float(gamma + 1)
    return float((1.0 - alpha ** (gamma + 1)) / (1.0 - alpha))


# ---------------------------------------------------------------------------------------
# Draft models (registered in samplax.decoding.problem.DRAFTS)
# ---------------------------------------------------------------------------------------
def mix_uniform_draft(lm: LanguageModel, eps: float = 0.3) -> LanguageModel:
    """``q(. | h) = (1 - eps) p(. | h) + eps / V``: the target blurred towards uniform (eps = 0: the
    target itself; each draft call is counted as a draft call even though it evaluates the target's
    function).  Per-token acceptance ``beta = sum min(p, q) >= 1 - eps``."""
    if isinstance(eps, bool) or not isinstance(eps, (int, float, np.floating)) or not 0.0 <= eps <= 1.0:
        raise ValueError(f"eps: must be a number in [0, 1], got {eps!r}")
    eps = float(eps)
    V = lm.vocab_size

    def logits_fn(x):
        lp = lm.logits_fn(x)
        if eps == 0.0:
            return lp
        keep = lp + math.log1p(-eps) if eps < 1.0 else jnp.full_like(lp, -jnp.inf)
        mixed = jnp.logaddexp(jnp.where(lp > LOG_ZERO / 2, keep, -jnp.inf), math.log(eps / V))
        return jnp.maximum(mixed, LOG_ZERO)
    return LanguageModel(logits_fn, V, lm.length, name=f"{lm.name}+mix_uniform({eps:g})")


def bigram_draft(lm: LanguageModel) -> LanguageModel:
    """A time-homogeneous Markov chain fitted to the target's EXACT bigram statistics: ``init`` = the
    law of x_0, ``trans[a, b]`` = sum_i P(x_i = a, x_{i+1} = b) / sum_i P(x_i = a) (enumerated).  For
    a homogeneous Markov-chain target it is the target itself; for an HMM it loses the hidden memory."""
    V, L = lm.vocab_size, lm.length
    if V ** L > MAX_ENUMERATE:
        raise ValueError(f"draft 'bigram': needs an enumerable target ({V}**{L} > {MAX_ENUMERATE} sequences)")
    p = np.exp(exact_log_probs(lm)).reshape((V,) * L)
    init = p.sum(axis=tuple(range(1, L)))
    pair = np.zeros((V, V))
    for i in range(L - 1):
        pair += p.sum(axis=tuple(j for j in range(L) if j not in (i, i + 1)))
    rows = pair.sum(1, keepdims=True)
    trans = np.where(rows > 0, pair / np.where(rows > 0, rows, 1.0), 1.0 / V)
    from samplax.discrete.exact import markov_chain
    return hmm_lm(markov_chain(init, trans, L, name=f"{lm.name}+bigram"))


def hmm_perturbed_draft(lm: LanguageModel, eps: float = 0.3, seed: int = 0) -> LanguageModel:
    """The target's own HMM (one of ``samplax.decoding.LMS``, found by ``lm.name``) with its
    transition and emission rows mixed with random Dirichlet(1) rows: ``(1 - eps) A + eps R``."""
    from samplax.discrete.exact import PROBLEMS, load_problem, make_hmm
    if lm.name not in PROBLEMS:
        raise ValueError(f"draft 'hmm_perturbed': the target must be one of the exact HMM LMs {list(PROBLEMS)} "
                         f"(matched by name), got {lm.name!r}")
    if isinstance(eps, bool) or not isinstance(eps, (int, float, np.floating)) or not 0.0 <= eps <= 1.0:
        raise ValueError(f"eps: must be a number in [0, 1], got {eps!r}")
    seed = check_int("seed", seed, 0)
    h = load_problem(lm.name)
    rng = np.random.default_rng(seed)
    H = h.num_states

    def mix(a):
        return (1 - eps) * np.asarray(a) + eps * rng.dirichlet(np.ones(a.shape[-1]), size=a.shape[:-1])
    pert = make_hmm(mix(h.init[None])[0], mix(h.trans), mix(h.emit), h.length, name=f"{lm.name}+perturbed({eps:g})")
    assert pert.num_states == H
    return hmm_lm(pert)


# ---------------------------------------------------------------------------------------
# Decoders (registered in samplax.decoding.registry.SAMPLERS)
# ---------------------------------------------------------------------------------------
def _transform(temperature: float) -> Transform:
    t = check_positive("temperature", temperature)
    return identity if t == 1.0 else temperature_transform(t)


def speculative(gamma: int = 4, temperature: float = 1.0):
    """Decoder ``"speculative"``: one-draft speculative sampling with ``gamma`` draft tokens per
    target call; ``temperature`` applies to target and draft.  Target: the target LM at that
    temperature (enumerated)."""
    gamma = check_int("gamma", gamma, 1)
    tf = _transform(temperature)

    def run(problem: Problem, keys):
        return speculative_sample(problem.lm, problem.draft, keys, gamma, tf, problem.prompt)

    def target(problem: Problem):
        return exact_log_probs(problem.lm, tf, problem.prompt)
    return Decoder("speculative", run, dict(gamma=gamma, temperature=temperature), target, needs=("draft",))


def spectr(k: int = 2, gamma: int = 4, temperature: float = 1.0):
    """Decoder ``"spectr"``: SpecTr with k i.i.d. drafts of length gamma and K-SEQ selection;
    ``temperature`` applies to target and draft.  Target: the target LM at that temperature."""
    k = check_int("k", k, 1)
    gamma = check_int("gamma", gamma, 1)
    tf = _transform(temperature)

    def run(problem: Problem, keys):
        return spectr_sample(problem.lm, problem.draft, keys, k, gamma, tf, problem.prompt)

    def target(problem: Problem):
        return exact_log_probs(problem.lm, tf, problem.prompt)
    return Decoder("spectr", run, dict(k=k, gamma=gamma, temperature=temperature), target, needs=("draft",))
