"""Cautious Next Token Prediction (CNTP): where the next-token entropy is high, sample several
continuations and keep the one with the lowest perplexity.

Wang, Zhang, Bai, Chiu, Hu, Zhang, Dong, Yin, Amirghodsi & Fu 2025, "Cautious Next Token
Prediction" (Findings of ACL 2025, arXiv:2507.03038), Sec. 3 and its Algorithm 1 (the authors'
reference implementation, ``_sample_reflect_perplexity``, fixes the details used here).  At each
decision position t with prefix x_<t:

1. q = the (transformed) next-token distribution, H = -sum_v q(v) log q(v) (nats).
2. The trial number grows linearly with the entropy between two thresholds and is truncated
   to an integer:  N = floor(1 + (N_max - 1) clip((H - H_low) / (H_high - H_low), 0, 1)), and
   N = 1 whenever H <= H_low (with H_high = H_low: N = N_max above the threshold).
3. N = 1: one ordinary token x_t ~ q.  N > 1: N independent trials, each sampled from the
   model from x_t on until it emits a stop token (the paper's punctuation, kept in the trial),
   reaches ``span`` tokens or the end of the sequence; trial s scores its perplexity
   exp(-(1/|s|) sum_j log q(s_j | x_<t, s_<j)) and the lowest one is appended (ties: the first
   trial).  Decoding resumes after it.

Exact distribution.  This is not the LM's distribution (nor any tempered version of it): a
trial segment s with probability Q(s) under q and perplexity score c(s) wins with probability
(N iid trials, lowest score, ties to the first trial)

    P(win = s) = Q(s) / E(c) * [ (G(c) + E(c))^N - G(c)^N ],
    E(c) = sum_{s': c(s') = c} Q(s'),   G(c) = sum_{s': c(s') > c} Q(s'),

i.e. P(min score = c) shared among the tied segments in proportion to Q.  :func:`cautious_log_probs`
runs this through the prefix tree (a forward pass of the probability mass over decision
points) and returns the exact log-probability of every one of the V**L sequences; the decoder's
``target``.  Scores are compared after rounding to a grid (1e-9 nats in float64, 1e-4 in
float32), both in the sampler and in the enumeration, so exactly tied segments (a Markov chain
has them: the same transitions in another order) stay tied under round-off.

Model calls (``DecodeInfo.target_calls``): one call per decision position; a branching position
adds sum_n (|s_n| - 1) calls (each trial's first token is drawn from the decision call's q, each
later trial token needs one call), as in the paper's sequential loop.  The jitted sampler is
vectorised over samples and trials, so it evaluates N_max trials of ``span`` tokens at every
decision (masked): its wall time is that of (1 + N_max (span - 1)) calls per decision, whatever
was counted.  With ``entropy_low = inf`` (never cautious) it is ancestral sampling, token for
token with the same keys.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from scipy.special import logsumexp as np_logsumexp

from samplax.decoding.base import (LOG_ZERO, Decoder, LanguageModel, Problem, check_int, check_keys, check_prompt,
                                   gather_logp, make_info, make_transform, uncached_step)
from samplax.decoding.exact import MAX_ENUMERATE, all_sequences, exact_log_probs, sequence_index
from samplax.discrete.base import categorical

__all__ = ["trial_count", "cautious_sample", "cautious_log_probs", "cautious", "parse_stop_tokens"]

_TIE64, _TIE32 = 1e-9, 1e-4


def _tie(dtype) -> float:
    return _TIE64 if jnp.dtype(dtype) == jnp.float64 else _TIE32


def trial_count(H, entropy_low: float, entropy_high: float, max_trials: int, xp=jnp):
    """CNTP's trial number for entropy H (nats): 1 for H <= entropy_low, else
    floor(1 + (max_trials - 1) clip((H - low) / (high - low), 0, 1)) (max_trials when high == low)."""
    H = xp.asarray(H)
    if entropy_high > entropy_low:
        frac = xp.clip((H - entropy_low) / (entropy_high - entropy_low), 0.0, 1.0)
    else:
        frac = xp.ones_like(H)
    n = xp.floor(1.0 + (max_trials - 1) * frac).astype(xp.int32)
    return xp.where(H > entropy_low, n, 1)


def _entropy(logq):
    return -jnp.sum(jnp.where(logq > LOG_ZERO / 2, jnp.exp(logq) * logq, 0.0), axis=-1)


def parse_stop_tokens(stop_tokens, vocab_size: Optional[int] = None) -> tuple:
    """Stop tokens from a tuple/list of ints or a comma-separated string ("" = none)."""
    if isinstance(stop_tokens, str):
        parts = [p.strip() for p in stop_tokens.split(",") if p.strip()]
        try:
            toks = tuple(int(p) for p in parts)
        except ValueError:
            raise ValueError(f"stop_tokens: expected comma-separated token ids, got {stop_tokens!r}") from None
    elif isinstance(stop_tokens, (tuple, list)):
        toks = tuple(stop_tokens)
        if not all(isinstance(t, (int, np.integer)) and not isinstance(t, bool) for t in toks):
            raise ValueError(f"stop_tokens: expected integer token ids, got {stop_tokens!r}")
        toks = tuple(int(t) for t in toks)
    else:
        raise ValueError(f"stop_tokens: expected a tuple of token ids or a comma-separated string, got "
                         f"{stop_tokens!r}")
    if any(t < 0 for t in toks) or (vocab_size is not None and any(t >= vocab_size for t in toks)):
        raise ValueError(f"stop_tokens: token ids must be in [0, {vocab_size}), got {toks}")
    return tuple(sorted(set(toks)))


def _check_options(entropy_low, entropy_high, max_trials, span):
    for name, v in (("entropy_low", entropy_low), ("entropy_high", entropy_high)):
        if isinstance(v, bool) or not isinstance(v, (int, float, np.floating, np.integer)) or math.isnan(v) or v < 0:
            raise ValueError(f"{name}: must be a number >= 0 (inf: never), got {v!r}")
    if entropy_high < entropy_low:
        raise ValueError(f"entropy_high: must be >= entropy_low={entropy_low}, got {entropy_high}")
    max_trials = check_int("max_trials", max_trials, 1)
    span = check_int("span", span, 0)
    return float(entropy_low), float(entropy_high), max_trials, span


def cautious_sample(lm: LanguageModel, keys, entropy_low: float = 0.5, entropy_high: float = 1.0,
                    max_trials: int = 4, span: int = 0, stop_tokens: Sequence[int] = (), transform=None,
                    cached: bool = True, prompt=None, precision: str = "high"):
    """CNTP decoding (module docstring), one sequence per key.  ``span``: the most tokens a trial
    has (0: up to the end of the sequence); ``stop_tokens``: a trial ends after one of them;
    ``transform``: the logit transform sampled from and scored by (None: the model).  An ordinary
    position draws its token exactly as :func:`samplax.decoding.sample` does (key
    ``fold_in(key, pos)``); trials draw from ``fold_in(key, L + pos)``.  Returns tokens int32[B, L]
    and a DecodeInfo (``log_q`` NaN; extras: ``branches`` = decision positions with N > 1,
    ``trial_tokens`` = tokens appended from trials)."""
    entropy_low, entropy_high, max_trials, span = _check_options(entropy_low, entropy_high, max_trials, span)
    keys = check_keys(keys)
    B, L, V = keys.shape[0], lm.length, lm.vocab_size
    stops = parse_stop_tokens(stop_tokens, V)
    prompt = check_prompt(prompt, lm)
    P = 0 if prompt is None else int(prompt.shape[0])
    tf = transform if transform is not None else (lambda lp, pos: lp)
    use_cache = bool(cached and lm.cached)
    init, step = (lm.init, lm.step) if use_cache else uncached_step(lm)
    S = L if span == 0 else min(span, L)
    M = max_trials
    stop_mask = jnp.zeros((V,), bool).at[jnp.asarray(stops, jnp.int32)].set(True) if stops else jnp.zeros((V,), bool)
    x0 = jnp.zeros((L,), jnp.int32)
    if P:
        x0 = x0.at[:P].set(jnp.asarray(prompt, jnp.int32))
    start = 0 if use_cache else P
    dt = jnp.float64 if jax.config.jax_enable_x64 else jnp.float32
    tie = _tie(dt)

    def one(key, st):
        st = jax.tree.map(lambda a: a[None], st)

        def body(c):
            pos, x, st, lp, calls, branches, trial_toks, bad = c
            prev = x[jnp.maximum(pos - 1, 0)]
            logp0, st1 = step(st, prev[None], pos)
            logp0 = logp0[0]
            q0 = tf(logp0, pos)
            given = pos < P
            n_trials = jnp.where(given, 1, trial_count(_entropy(q0), entropy_low, entropy_high, M))
            tok_anc = jnp.where(given, x[pos], categorical(jax.random.fold_in(key, pos), q0, precision))
            bad = jnp.where((bad < 0) & ~jnp.all(jnp.isfinite(logp0)) & ~given, pos, bad)

            # M trials from position pos (masked to the first n_trials; computed always: vmap)
            kt = jax.random.fold_in(key, L + pos)
            tkeys = jax.vmap(lambda n: jax.random.fold_in(kt, n))(jnp.arange(M))
            first = jax.vmap(lambda k: categorical(jax.random.fold_in(k, 0), q0, precision))(tkeys)
            seg = jnp.zeros((M, S), jnp.int32).at[:, 0].set(first)
            nll = -q0[first].astype(dt)
            lpr = logp0[first].astype(dt)
            length = jnp.ones((M,), jnp.int32)
            alive = ~stop_mask[first] & (pos + 1 < L) & (S > 1)
            st_tr = jax.tree.map(lambda a: jnp.repeat(a, M, axis=0), st1)
            tbad = jnp.full((M,), False)

            def tbody(tc, j):
                seg, nll, lpr, length, alive, st_tr, tbad = tc
                p = jnp.minimum(pos + j, L - 1)
                lp_t, st_new = step(st_tr, seg[:, j - 1], p)
                st_tr = jax.tree.map(lambda new, old: jnp.where(alive.reshape((M,) + (1,) * (new.ndim - 1)), new, old),
                                     st_new, st_tr)
                q_t = jax.vmap(lambda l: tf(l, p))(lp_t)
                tok = jax.vmap(lambda k, l: categorical(jax.random.fold_in(k, j), l, precision))(tkeys, q_t)
                seg = seg.at[:, j].set(jnp.where(alive, tok, 0))
                nll = nll + jnp.where(alive, -gather_logp(q_t, tok), 0.0).astype(dt)
                lpr = lpr + jnp.where(alive, gather_logp(lp_t, tok), 0.0).astype(dt)
                tbad = tbad | (alive & ~jnp.all(jnp.isfinite(lp_t), axis=-1))
                length = length + alive.astype(jnp.int32)
                alive = alive & ~stop_mask[tok] & (pos + j + 1 < L) & (j + 1 < S)
                return (seg, nll, lpr, length, alive, st_tr, tbad), None

            if S > 1:
                (seg, nll, lpr, length, _, st_tr, tbad), _ = jax.lax.scan(
                    tbody, (seg, nll, lpr, length, alive, st_tr, tbad), jnp.arange(1, S, dtype=jnp.int32))
            score = jnp.round(nll / length / tie)
            valid = jnp.arange(M) < n_trials
            best = jnp.argmin(jnp.where(valid, score, jnp.inf))
            branch = n_trials > 1
            seglen = jnp.where(branch, length[best], 1)
            segtok = jnp.where(branch, seg[best], jnp.zeros((S,), jnp.int32).at[0].set(tok_anc))
            st = jax.tree.map(lambda a, b: jnp.where(branch, a[best][None], b), st_tr, st1)
            off = jnp.arange(L) - pos
            x = jnp.where((off >= 0) & (off < seglen), segtok[jnp.clip(off, 0, S - 1)], x)
            lp = lp + jnp.where(given, 0.0, jnp.where(branch, lpr[best], logp0[tok_anc].astype(dt)))
            calls = calls + 1 + jnp.where(branch, jnp.sum(jnp.where(valid, length - 1, 0)), 0).astype(jnp.int32)
            bad = jnp.where((bad < 0) & branch & jnp.any(valid & tbad), pos, bad)
            return (pos + seglen.astype(jnp.int32), x, st, lp, calls, branches + branch.astype(jnp.int32),
                    trial_toks + jnp.where(branch, seglen, 0).astype(jnp.int32), bad)

        c0 = (jnp.asarray(start, jnp.int32), x0, st, jnp.zeros((), dt), jnp.zeros((), jnp.int32),
              jnp.zeros((), jnp.int32), jnp.zeros((), jnp.int32), jnp.asarray(-1, jnp.int32))
        pos, x, _, lp, calls, branches, trial_toks, bad = jax.lax.while_loop(lambda c: c[0] < L, body, c0)
        return x, lp, calls, branches, trial_toks, bad

    state0 = init(B) if use_cache else jnp.broadcast_to(x0, (B, L))
    x, lp, calls, branches, trial_toks, bad = jax.vmap(one)(keys, state0)
    return x, make_info(B, calls, lp, nonfinite_step=bad, extras=dict(branches=branches, trial_tokens=trial_toks))


# ---------------------------------------------------------------------------------------
# The exact distribution by enumeration
# ---------------------------------------------------------------------------------------
def _prefix_conditionals(log_p, V: int, L: int):
    """cond[k]: float64[V**k, V] = log p(x_k | prefix) from the joint (uniform on impossible prefixes)."""
    margs = [np.asarray(log_p, np.float64)]
    for _ in range(L):
        margs.append(np_logsumexp(margs[-1].reshape(-1, V), axis=1))
    margs = margs[::-1]  # margs[k]: V**k prefix marginals
    out = []
    for k in range(L):
        child = margs[k + 1].reshape(-1, V)
        parent = margs[k][:, None]
        with np.errstate(invalid="ignore"):
            c = np.where(np.isfinite(parent), child - np.where(np.isfinite(parent), parent, 0.0), -np.log(V))
        out.append(np.where(np.isfinite(c), c, LOG_ZERO))
    return out


def cautious_log_probs(lm: LanguageModel, entropy_low: float = 0.5, entropy_high: float = 1.0, max_trials: int = 4,
                       span: int = 0, stop_tokens: Sequence[int] = (), transform=None, prompt=None,
                       log_p=None) -> np.ndarray:
    """float64[V**L]: the exact log-probability that :func:`cautious_sample` (same options) outputs
    each sequence (module docstring; -inf where impossible).  ``log_p``: the LM's enumerated joint
    (computed with :func:`samplax.decoding.exact.exact_log_probs` if None).  Costs about V**L *
    (1 + N_max) float64 operations per trial length; meant for V**L <= ~1e5."""
    entropy_low, entropy_high, max_trials, span = _check_options(entropy_low, entropy_high, max_trials, span)
    V, L = lm.vocab_size, lm.length
    if V ** L > MAX_ENUMERATE:
        raise ValueError(f"cautious_log_probs: {V}**{L} sequences is more than {MAX_ENUMERATE}")
    stops = np.zeros(V, bool)
    stops[list(parse_stop_tokens(stop_tokens, V))] = True
    prompt = check_prompt(prompt, lm)
    P = 0 if prompt is None else len(prompt)
    S = L if span == 0 else min(span, L)
    if log_p is None:
        log_p = exact_log_probs(lm)
    cond = _prefix_conditionals(log_p, V, L)
    with jax.enable_x64(True):
        if transform is None:
            qtab = cond
        else:
            qtab = [np.asarray(transform(jnp.asarray(c), jnp.asarray(k, jnp.int32)), np.float64)
                    for k, c in enumerate(cond)]
    mass = [np.zeros(V ** k) for k in range(L + 1)]
    mass[P][0 if P == 0 else int(sequence_index(prompt[None], V)[0])] = 1.0
    for k in range(P, L):
        m = mass[k]
        q = qtab[k]
        pq = np.exp(q)
        H = -np.sum(np.where(q > LOG_ZERO / 2, pq * q, 0.0), axis=1)
        N = trial_count(H, entropy_low, entropy_high, max_trials, xp=np)
        one = (N == 1) & (m > 0)
        mass[k + 1] += (np.where(one, m, 0.0)[:, None] * pq).reshape(-1)
        U = np.nonzero((N > 1) & (m > 0))[0]
        if U.size == 0:
            continue
        Sk = min(S, L - k)
        W = all_sequences(V, Sk)                                      # [nW, Sk]
        is_stop = stops[W]
        first_stop = np.where(is_stop.any(1), is_stop.argmax(1) + 1, Sk)
        seg_len = np.minimum(first_stop, Sk)                         # [nW]
        canon = np.all((np.arange(Sk)[None, :] < seg_len[:, None]) | (W == 0), axis=1)
        W, seg_len = W[canon], seg_len[canon]
        logQ = np.zeros((U.size, W.shape[0]))
        for j in range(Sk):
            pre = sequence_index(W[:, :j], V) if j else np.zeros(W.shape[0], np.int64)
            idx = U[:, None] * V ** j + pre[None, :]
            lq = qtab[k + j][idx, W[None, :, j]]
            logQ += np.where(j < seg_len[None, :], np.where(lq > LOG_ZERO / 2, lq, -np.inf), 0.0)
        Q = np.exp(logQ)
        with np.errstate(invalid="ignore"):
            score = np.where(Q > 0, -logQ / seg_len[None, :], np.inf)
        big = 2 ** 40
        cq = np.where(Q > 0, np.round(score / _TIE64), big - 1).astype(np.int64)
        rowkey = (np.arange(U.size, dtype=np.int64)[:, None] * big + cq).reshape(-1)
        order = np.argsort(rowkey, kind="stable")
        sk, sQ = rowkey[order], Q.reshape(-1)[order]
        c0 = np.concatenate([[0.0], np.cumsum(sQ)])
        left, right = np.searchsorted(sk, sk, "left"), np.searchsorted(sk, sk, "right")
        rows = sk // big
        row_start = rows * W.shape[0]
        total = c0[row_start + W.shape[0]] - c0[row_start]
        E = c0[right] - c0[left]
        G = total - (c0[right] - c0[row_start])
        n = N[U][rows]
        with np.errstate(invalid="ignore", divide="ignore"):
            win_sorted = np.where(sQ > 0, sQ / E * ((G + E) ** n - G ** n), 0.0)
        win = np.empty_like(win_sorted)
        win[order] = win_sorted
        win = win.reshape(U.size, W.shape[0]) * m[U][:, None]
        for ln in np.unique(seg_len):
            sel = seg_len == ln
            seg_idx = sequence_index(W[sel][:, :ln], V)
            np.add.at(mass[k + ln], (U[:, None] * V ** ln + seg_idx[None, :]).reshape(-1), win[:, sel].reshape(-1))
    with np.errstate(divide="ignore"):
        return np.log(mass[L])


# ---------------------------------------------------------------------------------------
# The decoder
# ---------------------------------------------------------------------------------------
def cautious(entropy_low: float = 0.5, entropy_high: float = 1.0, max_trials: int = 4, span: int = 0,
             stop_tokens="", temperature: float = 1.0, cached: bool = True) -> Decoder:
    """Decoder "cautious" (CNTP, module docstring).  Options: ``entropy_low`` / ``entropy_high``
    (nats; the paper's code defaults 0.01 / 1.5 for LLM vocabularies), ``max_trials`` (N_max; the
    paper's code: 10), ``span`` (most tokens per trial, 0 = to the end), ``stop_tokens`` (the
    punctuation: comma-separated ids, "" = none), ``temperature`` (the base transform sampled from
    and scored by), ``cached``.  Exact target: :func:`cautious_log_probs`."""
    entropy_low, entropy_high, max_trials, span = _check_options(entropy_low, entropy_high, max_trials, span)
    stops = parse_stop_tokens(stop_tokens)
    transform = make_transform(temperature)
    tf = None if temperature == 1.0 else transform
    if not isinstance(cached, bool):
        raise ValueError(f"cached: must be True or False, got {cached!r}")
    opts = dict(entropy_low=entropy_low, entropy_high=entropy_high, max_trials=max_trials, span=span,
                stop_tokens=",".join(map(str, stops)), temperature=temperature, cached=cached)

    def run(problem: Problem, keys):
        return cautious_sample(problem.lm, keys, entropy_low, entropy_high, max_trials, span, stops, tf, cached,
                               problem.prompt)

    def target(problem: Problem):
        return cautious_log_probs(problem.lm, entropy_low, entropy_high, max_trials, span, stops, tf, problem.prompt)

    return Decoder("cautious", run, opts, target)
