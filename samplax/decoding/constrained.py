"""Constrained sampling from a language model: ``p(x | x in L)`` for a regular language or a bounded
context-free one, by naive token masking (biased), AWRS inside SMC and grammar-aligned ASAp.

Constraints as tables (:class:`Constraint`).  Every language is a DFA over the token ids: a
transition table ``int32[S, V]``, ``accepting bool[S]``, a start state and a dead (absorbing,
rejecting) state.  Sequences have the LM's fixed length L, so a context-free language is needed only
up to length L and a pushdown automaton with its stack bounded by ``L // 2`` (a prefix whose stack is
deeper can never be closed within L tokens) is a finite automaton: :func:`dyck` enumerates the bounded
stacks as states.  This encoding is exact for every sequence of length L.

"Can complete" tables.  ``viable[k, s]`` = some k-token continuation from state s ends in an
accepting state, by dynamic programming (``viable[0] = accepting``, ``viable[k, s] = any_v viable[k-1,
T[s, v]]``).  At position ``pos`` a token v is *allowed* after state s iff ``viable[L - pos - 1,
T[s, v]]``: the prefix can still be completed into a member of L within the remaining length, so the
samplers below never dead-end (every locally allowed prefix has a completion).

Samplers (all exact-checked against enumeration in tests/test_decoding_constrained.py):

* :func:`masked_sample`: locally constrained decoding (LCD) -- mask the disallowed tokens and
  renormalise at every step.  It samples ``q(x) = prod_t p(x_t | x_<t) 1[allowed] / Z_t(x_<t)``, which
  is NOT ``p(x | x in L) = p(x) 1[x in L] / p(L)``: the ratio ``q / pi = p(L) / prod_t Z_t`` depends on
  x (Park et al. 2024, "Grammar-Aligned Decoding"; Lipkin et al. 2025).
  :func:`masked_log_probs` enumerates q exactly; the bias is ``TV(q, pi)`` / ``KL``.
* :func:`awrs_step`: adaptive weighted rejection sampling of one token (Lipkin et al. 2025, "Fast
  Controlled Generation from Language Models with Adaptive Weighted Rejection Sampling"):
  draw tokens from ``p`` without replacement (Gumbel-top-k order) until the constraint accepts one --
  an exact draw from ``p(v) c(v) / Z`` -- and an unbiased estimate of the local mass
  ``Z = sum_v p(v) c(v)`` (``E[w | token] = Z`` for every token: a properly weighted sample).  Inside
  SMC (:func:`awrs_smc_sample`, on :func:`samplax.smc.core.smc`) the weights make the particle system
  target ``p(x | x in L)`` as particles -> infinity and ``E[Z_hat] = p(L)``.
* :func:`asap_chain`: adaptive sampling with approximate expected futures (Park et al. 2024, ASAp):
  sample with ``p(v | w) EFG~(wv)``, then refine ``EFG~`` along the sampled path from the LM's
  conditionals; converges to ``p(x | x in L)``.

Counting.  ``target_calls``: model evaluations of one sequence position (a batch of N particles
stepping once is N calls).  ``constraint_checks``: distinct (prefix, token) evaluations of the
constraint the algorithm performs; masking and ASAp check the whole vocabulary at each position, AWRS
only the tokens it draws.  Our tables answer every token at once, so the AWRS count is the number the
sequential algorithm evaluates, not the table lookups we happen to do.
"""
from __future__ import annotations

from typing import NamedTuple, Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from samplax.decoding.base import (LOG_ZERO, Decoder, LanguageModel, Problem, check_int, check_keys,
                                   check_prompt, gather_logp, make_info, normalise, uncached_step)
from samplax.decoding.exact import all_sequences, constrained_target, exact_log_probs
from samplax.discrete.base import categorical, gumbel
from samplax.smc.core import check_ess_threshold, run as smc_run, smc
from samplax.smc.resampling import RESAMPLING

__all__ = ["Constraint", "make_dfa", "completion_table", "regex_contains", "regex_even", "dyck",
           "allowed", "advance", "member", "member_table", "constrained_log_probs", "conditionals_all",
           "masked_sample", "masked_log_probs", "awrs_step", "ESTIMATORS", "awrs_smc_sample", "asap_layout",
           "asap_init_table", "asap_chain", "asap_log_probs", "efg_table", "masked", "awrs_smc", "asap",
           "tv", "kl"]

ESTIMATORS = ("awrs", "geometric", "recursive", "exact")


# ---------------------------------------------------------------------------------------
# Automata
# ---------------------------------------------------------------------------------------
class Constraint(NamedTuple):
    """A language over token sequences of length ``length`` as a DFA with its completion table.

    transitions: int32[S, V]; accepting: bool[S]; start, dead: state ids (dead is absorbing and
    rejecting); viable: bool[L+1, S], ``viable[k, s]``: some k-token continuation from s is accepted."""
    name: str
    transitions: np.ndarray
    accepting: np.ndarray
    start: int
    dead: int
    length: int
    viable: np.ndarray

    @property
    def vocab_size(self) -> int:
        return int(self.transitions.shape[1])

    @property
    def num_states(self) -> int:
        return int(self.transitions.shape[0])


def completion_table(transitions, accepting, length: int) -> np.ndarray:
    """bool[L+1, S]: ``viable[k, s]`` = some k-token word from s ends accepting (exact DP)."""
    T = np.asarray(transitions)
    v = [np.asarray(accepting, bool)]
    for _ in range(length):
        v.append(v[-1][T].any(axis=1))
    return np.stack(v)


def make_dfa(transitions, accepting, length: int, start: int = 0, name: str = "dfa",
             eos_id: Optional[int] = None) -> Constraint:
    """A :class:`Constraint` from a transition table.  A dead state is appended when the table has no
    absorbing rejecting state.  ``eos_id``: an absorbing end-of-sequence token (the LM's): from an
    accepting state it enters an accepting "ended" state where only EOS may follow; elsewhere it is
    dead (the language's own words must not use that token)."""
    T = np.asarray(transitions)
    acc = np.asarray(accepting, bool)
    if T.ndim != 2 or not np.issubdtype(T.dtype, np.integer) or T.shape[0] < 1:
        raise ValueError(f"transitions: expected an int table [states, vocab], got shape {T.shape} dtype {T.dtype}")
    S, V = T.shape
    if acc.shape != (S,):
        raise ValueError(f"accepting: expected bool[{S}], got shape {acc.shape}")
    if T.min() < 0 or T.max() >= S:
        raise ValueError(f"transitions: states must be in [0, {S}), got range [{T.min()}, {T.max()}]")
    length = check_int("length", length, 1)
    if not 0 <= int(start) < S:
        raise ValueError(f"start: must be a state in [0, {S}), got {start!r}")
    T = T.astype(np.int32)
    absorbing = np.flatnonzero((T == np.arange(S)[:, None]).all(axis=1) & ~acc)
    if absorbing.size:
        dead = int(absorbing[0])
    else:
        T = np.concatenate([T, np.full((1, V), S, np.int32)])
        acc = np.append(acc, False)
        dead, S = S, S + 1
    if eos_id is not None:
        e = int(eos_id)
        if not 0 <= e < V:
            raise ValueError(f"eos_id: must be a token in [0, {V}), got {eos_id!r}")
        ended = S
        T = np.concatenate([T, np.full((1, V), dead, np.int32)])
        T[ended, e] = ended
        T[:S, e] = np.where(acc[:S], ended, dead)
        acc = np.append(acc, True)
    return Constraint(name, T, acc, int(start), dead, length, completion_table(T, acc, length))


def _lm_size(lm) -> Tuple[int, int, Optional[int]]:
    return int(lm.vocab_size), int(lm.length), getattr(lm, "eos_id", None)


def _tokens_option(name: str, value, V: int, eos) -> Tuple[int, ...]:
    """A token list option: an int or a comma-separated string of token ids ("0,1")."""
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        toks = (int(value),)
    else:
        parts = [t.strip() for t in str(value).split(",")]
        # "01" is refused, not read as token 1: every part must be one canonical integer
        toks = tuple(int(t) for t in parts) if all(t.lstrip("-").isdigit() and str(int(t)) == t for t in parts) else ()
    if not toks or any(t < 0 or t >= V or t == eos for t in toks):
        raise ValueError(f"{name}: expected token ids in [0, {V}) (not the EOS token) as an int or a comma-separated "
                         f"string like '0,1', got {value!r}")
    return toks


def regex_contains(lm, pattern="0,1") -> Constraint:
    """The regular language ``.* pattern .*`` (the sequence contains the token string ``pattern``):
    the Knuth-Morris-Pratt automaton, states = length of the longest pattern prefix matched."""
    V, L, eos = _lm_size(lm)
    pat = _tokens_option("pattern", pattern, V, eos)
    m = len(pat)
    if m > L:
        raise ValueError(f"pattern: {m} tokens cannot fit in sequences of length {L}")
    T = np.zeros((m + 1, V), np.int32)
    for s in range(m + 1):
        for v in range(V):
            if s == m:
                T[s, v] = m
                continue
            w = list(pat[:s]) + [v]
            k = min(len(w), m)
            while k > 0 and tuple(w[len(w) - k:]) != pat[:k]:
                k -= 1
            T[s, v] = k
    acc = np.arange(m + 1) == m
    return make_dfa(T, acc, L, 0, f"regex_contains({','.join(map(str, pat))})", eos)


def regex_even(lm, token=0) -> Constraint:
    """The regular language "an even number of ``token``" (``([^t]* t [^t]* t)* [^t]*``)."""
    V, L, eos = _lm_size(lm)
    toks = _tokens_option("token", token, V, eos)
    if len(toks) != 1:
        raise ValueError(f"token: expected one token id in [0, {V}), got {token!r}")
    t = toks[0]
    T = np.tile(np.arange(2, dtype=np.int32)[:, None], (1, V))
    T[:, t] = 1 - np.arange(2)
    return make_dfa(T, np.array([True, False]), L, 0, f"regex_even({t})", eos)


def dyck(lm, pairs: int = 1, max_depth: int = 0) -> Constraint:
    """Balanced brackets (the Dyck language, a context-free grammar ``S -> eps | S open_i S close_i``)
    with ``pairs`` bracket types: token ``2i`` opens and ``2i+1`` closes type i; other tokens are
    neutral letters.  The pushdown automaton's stack is bounded by ``max_depth`` (0: ``L // 2``, the
    deepest stack that can still close within L tokens, so the bound changes nothing for length L)
    and each bounded stack is one DFA state."""
    V, L, eos = _lm_size(lm)
    pairs = check_int("pairs", pairs, 1)
    if 2 * pairs > V - (eos is not None):
        raise ValueError(f"pairs: {pairs} bracket types need {2 * pairs} tokens, the vocabulary has {V}"
                         f"{' besides EOS' if eos is not None else ''}")
    if eos is not None and eos < 2 * pairs:
        raise ValueError(f"pairs: the EOS token {eos} would be a bracket; use fewer pairs")
    max_depth = check_int("max_depth", max_depth, 0)
    D = L // 2 if max_depth == 0 else min(max_depth, L // 2)
    stacks = [()]
    for d in range(1, D + 1):
        stacks += [s + (i,) for s in stacks if len(s) == d - 1 for i in range(pairs)]
    ids = {s: k for k, s in enumerate(stacks)}
    dead = len(stacks)
    T = np.full((dead + 1, V), dead, np.int32)
    for s, k in ids.items():
        for v in range(V):
            if v >= 2 * pairs:
                T[k, v] = k
            elif v % 2 == 0:
                T[k, v] = ids.get(s + (v // 2,), dead)
            else:
                T[k, v] = ids[s[:-1]] if s and s[-1] == v // 2 else dead
    acc = np.zeros(dead + 1, bool)
    acc[ids[()]] = True
    return make_dfa(T, acc, L, ids[()], f"dyck(pairs={pairs}, depth<={D})", eos)


def _check_constraint(c, lm: LanguageModel, where: str) -> Constraint:
    if not isinstance(c, Constraint):
        raise ValueError(f"{where}: needs problem.constraint (a samplax.decoding.constrained.Constraint; "
                         f"make_problem(constraint=...) with one of CONSTRAINTS), got {c!r}")
    if c.vocab_size != lm.vocab_size or c.length != lm.length:
        raise ValueError(f"{where}: constraint {c.name!r} is for vocab {c.vocab_size}, length {c.length}; "
                         f"the LM has vocab {lm.vocab_size}, length {lm.length}")
    return c


def allowed(c: Constraint, state, pos):
    """bool[..., V]: tokens after which the prefix (in DFA ``state`` before position ``pos``) can still
    be completed into a member within the remaining ``L - pos - 1`` tokens (jnp, traceable)."""
    T = jnp.asarray(c.transitions)
    via = jnp.asarray(c.viable)
    k = c.length - 1 - pos
    return jnp.take(via, k, axis=0)[T[state]]


def advance(c: Constraint, state, token):
    """The DFA state after ``token`` (jnp, traceable)."""
    return jnp.asarray(c.transitions)[state, token]


def member(c: Constraint, x):
    """bool[B]: ``x int[B, L]`` is in the language (jnp, traceable)."""
    x = jnp.asarray(x, jnp.int32)
    T = jnp.asarray(c.transitions)
    s, _ = jax.lax.scan(lambda s, tok: (T[s, tok], None), jnp.full(x.shape[:1], c.start, jnp.int32), x.T)
    return jnp.asarray(c.accepting)[s]


def _states_np(c: Constraint, x) -> np.ndarray:
    """int32[B, L+1]: the DFA state before each position and at the end (numpy)."""
    x = np.asarray(x)
    s = np.full(x.shape[0], c.start, np.int32)
    out = [s]
    for i in range(x.shape[1]):
        s = c.transitions[s, x[:, i]]
        out.append(s)
    return np.stack(out, axis=1)


def member_table(c: Constraint) -> np.ndarray:
    """bool[V**L]: membership of every sequence (indexed like :func:`samplax.decoding.sequence_index`)."""
    return c.accepting[_states_np(c, all_sequences(c.vocab_size, c.length))[:, -1]]


def _prompt_states(c: Constraint, prompt) -> int:
    """The DFA state after the prompt; ValueError when the prompt cannot be completed into a member."""
    s = c.start
    for t in (() if prompt is None else np.asarray(prompt).tolist()):
        s = int(c.transitions[s, t])
    P = 0 if prompt is None else len(prompt)
    if not c.viable[c.length - P, s]:
        raise ValueError(f"prompt: {np.asarray(prompt).tolist()} has no completion in the language {c.name!r} "
                         f"within length {c.length}")
    return s


def constrained_log_probs(lm: LanguageModel, c: Constraint, prompt=None) -> Tuple[np.ndarray, float]:
    """The exact target ``p(x | x in L)`` (given the prompt) by enumeration: (log-probs, log p(L))."""
    _check_constraint(c, lm, "constrained_log_probs")
    if prompt is not None:
        _prompt_states(c, check_prompt(prompt, lm))
    return constrained_target(exact_log_probs(lm, None, prompt), member_table(c))


def conditionals_all(lm: LanguageModel, chunk: int = 16384) -> np.ndarray:
    """float64[V**L, L, V]: ``log p(x_i = v | x_<i)`` for every sequence (every prefix's conditional)."""
    seqs = all_sequences(lm.vocab_size, lm.length)
    with jax.enable_x64(True):
        f = jax.jit(lm.logits_fn)
        return np.concatenate([np.asarray(f(jnp.asarray(seqs[i:i + chunk])), np.float64)
                               for i in range(0, len(seqs), chunk)])


def _np_normalise(logw):
    logw = np.where(logw > LOG_ZERO / 2, logw, -np.inf)
    m = np.max(logw, axis=-1, keepdims=True)
    m = np.where(np.isfinite(m), m, 0.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        out = logw - (m + np.log(np.exp(logw - m).sum(-1, keepdims=True)))
    return np.where(np.isfinite(logw), out, -np.inf)   # an all-excluded row stays -inf, never NaN


def _path_log_probs(logq_all, c: Constraint, prompt) -> np.ndarray:
    """Sum of the per-position proposal log-probs of each sequence's own tokens (from position P), -inf
    off the prompt."""
    V, L = c.vocab_size, c.length
    seqs = all_sequences(V, L)
    P = 0 if prompt is None else len(prompt)
    lt = np.take_along_axis(logq_all, seqs[..., None].astype(np.int64), axis=-1)[..., 0]
    out = lt[:, P:].sum(-1)
    if P:
        out = np.where(np.all(seqs[:, :P] == np.asarray(prompt)[None, :], axis=1), out, -np.inf)
    return out


def masked_log_probs(lm: LanguageModel, c: Constraint, prompt=None, logp_all=None) -> np.ndarray:
    """float64[V**L]: the exact distribution of naive masking (:func:`masked_sample`) by enumeration."""
    _check_constraint(c, lm, "masked_log_probs")
    prompt = check_prompt(prompt, lm)
    if prompt is not None:
        _prompt_states(c, prompt)
    logp_all = conditionals_all(lm) if logp_all is None else logp_all
    L = c.length
    st = _states_np(c, all_sequences(c.vocab_size, L))[:, :L]                  # state before each position
    k = L - 1 - np.arange(L)
    mask = c.viable[k[None, :, None], c.transitions[st]]                       # [N, L, V]
    return _path_log_probs(_np_normalise(np.where(mask, logp_all, -np.inf)), c, prompt)


def tv(log_p, log_q) -> float:
    """Total variation between two enumerated distributions (log-probabilities)."""
    return float(0.5 * np.abs(np.exp(np.asarray(log_p, np.float64)) - np.exp(np.asarray(log_q, np.float64))).sum())


def kl(log_p, log_q) -> float:
    """KL(p || q) of two enumerated distributions (log-probabilities); inf if p puts mass where q has none."""
    lp, lq = np.asarray(log_p, np.float64), np.asarray(log_q, np.float64)
    sup = np.isfinite(lp)
    if np.any(~np.isfinite(lq[sup])):
        return float("inf")
    return float(np.sum(np.exp(lp[sup]) * (lp[sup] - lq[sup])))


# ---------------------------------------------------------------------------------------
# Shared decoding loop pieces
# ---------------------------------------------------------------------------------------
def _path(lm: LanguageModel, cached: bool):
    if not isinstance(cached, bool):
        raise ValueError(f"cached: must be True or False, got {cached!r}")
    return (lm.init, lm.step) if (cached and lm.cached) else uncached_step(lm)


def _float():
    return jnp.float64 if jax.config.jax_enable_x64 else jnp.float32


def _prompt_arrays(problem: Problem, where: str):
    lm = problem.lm
    c = _check_constraint(problem.constraint, lm, where)
    prompt = check_prompt(problem.prompt, lm)
    _prompt_states(c, prompt)
    P = 0 if prompt is None else len(prompt)
    pr = jnp.zeros((lm.length,), jnp.int32)
    if P:
        pr = pr.at[:P].set(jnp.asarray(prompt, jnp.int32))
    return lm, c, prompt, P, pr


# ---------------------------------------------------------------------------------------
# Naive masking (locally constrained decoding)
# ---------------------------------------------------------------------------------------
def masked_sample(lm: LanguageModel, c: Constraint, keys, prompt=None, cached: bool = True):
    """Locally constrained decoding: at every position mask the tokens that cannot be completed into a
    member within the remaining length (:func:`allowed`) and renormalise.  Always returns members; its
    distribution is :func:`masked_log_probs`, biased against ``p(x | x in L)``.  ``target_calls`` = L,
    ``extras['constraint_checks']`` = V per generated position."""
    keys = check_keys(keys)
    problem = Problem(lm=lm, constraint=c, prompt=prompt)
    lm, c, prompt, P, pr = _prompt_arrays(problem, "masked")
    B, L, V = keys.shape[0], lm.length, lm.vocab_size
    init, step = _path(lm, cached)

    def body(carry, pos):
        x, state, q, lp, lq, bad = carry
        prev = jax.lax.dynamic_index_in_dim(x, jnp.maximum(pos - 1, 0), axis=1, keepdims=False)
        logp, state = step(state, prev, pos)
        logq = normalise(jnp.where(allowed(c, q, pos), logp, LOG_ZERO))
        ks = jax.vmap(jax.random.fold_in, in_axes=(0, None))(keys, pos)
        tok = jax.vmap(categorical)(ks, logq)
        given = pos < P
        tok = jnp.where(given, pr[pos], tok)
        x = jax.lax.dynamic_update_index_in_dim(x, tok, pos, axis=1)
        lp = lp + jnp.where(given, 0.0, gather_logp(logp, tok))
        lq = lq + jnp.where(given, 0.0, gather_logp(logq, tok))
        bad = jnp.where((bad < 0) & ~jnp.all(jnp.isfinite(logp), axis=-1) & ~given, pos, bad)
        return (x, state, advance(c, q, tok), lp, lq, bad), None

    z = jnp.zeros((B,), _float())
    carry = (jnp.zeros((B, L), jnp.int32), init(B), jnp.full((B,), c.start, jnp.int32), z, z,
             jnp.full((B,), -1, jnp.int32))
    (x, _, _, lp, lq, bad), _ = jax.lax.scan(body, carry, jnp.arange(L, dtype=jnp.int32))
    checks = jnp.full((B,), V * (L - P), jnp.int32)
    return x, make_info(B, L, lp, lq, nonfinite_step=bad, extras={"constraint_checks": checks})


# ---------------------------------------------------------------------------------------
# AWRS (Lipkin et al. 2025)
# ---------------------------------------------------------------------------------------
def _phantoms(g, masses, live):
    """Geometric counts ``k ~ P(k) = m^k (1 - m)`` (redraws of already-rejected tokens before a fresh
    token, when the rejected mass is m) for each ``live`` entry, summed; ``g`` standard Gumbel noise
    (``log U = -exp(-g)`` for a uniform U: one random draw serves both the order and the counts)."""
    m = jnp.clip(masses, 0.0, 1.0 - 1e-7)
    log_u = -jnp.exp(-g)
    k = jnp.where(m > 0, jnp.floor(log_u / jnp.log(jnp.where(m > 0, m, 0.5))), 0.0)
    return jnp.sum(jnp.where(live, jnp.minimum(k, 2.0 ** 30), 0.0))


def awrs_step(key, logp, ok, estimator: str = "awrs"):
    """One AWRS draw: ``(token, log_w, checks, rejections)`` for next-token log-probs ``logp float[V]``
    and the constraint ``ok bool[V]`` (Lipkin et al. 2025).

    Adaptive rejection sampling: order the support of p without replacement by Gumbel-top-k (Kool et
    al. 2019), and return the first accepted token -- exactly a draw from ``p c / Z``; a rejected token
    is never drawn again, so the loop ends within the support size.

    Weights (``E[w | token] = Z = sum_v p(v) c(v)`` for every token, so the pair is properly weighted;
    all three are checked so, unconditionally and per token, in the tests):

    * ``"awrs"`` (the paper's estimate, as in its reference implementation, genlm/awrs-colm-2025): run
      adaptive rejection sampling twice, the second round starting afresh (new Gumbel keys) but with
      round 1's rejections removed; with M_1 the mass rejected in round 1 and R the distinct
      rejections of both rounds, ``w = (1 - M_1) / (R + 1)``.
    * ``"geometric"`` (the with-replacement reconstruction of genlm-control's later ``geometric_awrs``):
      the same two rounds, and before every fresh draw add the redraws a with-replacement sampler
      would have made of the already-rejected tokens (geometric with the rejected mass m:
      ``P(k) = m^k (1 - m)``).  The reconstructed run is Bernoulli(Z) trials until two successes, N
      trials in all, and ``w = 1 / (N - 1)`` is the unbiased negative-binomial estimator of Z.
    * ``"recursive"`` (one round plus one check; genlm-control's ``recursive_awrs``): with the
      accepted token x, the rejected mass M and y the next token in the without-replacement order,
      ``w = p(x) + (1 - M - p(x)) c(y)`` (E over y is ``p(x) + sum_{a in A, a != x} p(a) = Z``; for a
      rejected first draw the estimate of the smaller problem is rescaled by ``1 - p``, which
      telescopes to this form).

    * ``"exact"`` (not AWRS: the baseline of token masking inside SMC): check every token of the
      support and use the exact ``Z`` (the same token law; zero weight variance, V checks).

    ``checks``: distinct constraint evaluations the sequential algorithm makes (an accepted token seen
    again is cached).  ``rejections``: the R (or N - 2 for "geometric", with the phantom redraws; the
    round-1 rejections for "recursive") behind the weight, float.  No accepted token in the support:
    ``log_w = -inf`` (the particle dies).
    """
    if estimator not in ESTIMATORS:
        raise ValueError(f"estimator: unknown {estimator!r}; allowed: {list(ESTIMATORS)}")
    return _awrs(gumbel(key, (_NOISE_ROWS[estimator], logp.shape[-1]), logp.dtype), logp, ok, estimator)


# Gumbel rows an estimator uses: round 1 order, round 2 order, phantom counts of rounds 1 and 2.
_NOISE_ROWS = {"exact": 1, "recursive": 1, "awrs": 2, "geometric": 4}


def _awrs(g, logp, ok, estimator):
    """:func:`awrs_step` given its Gumbel noise ``g float[rows, V]`` (SMC draws all particles' noise in
    one call: one PRNG evaluation per step instead of one per particle)."""
    V = logp.shape[-1]
    dt = logp.dtype
    support = logp > LOG_ZERO / 2
    p = jnp.where(support, jnp.exp(logp), 0.0)
    acc = ok & support
    n_support = jnp.sum(support)
    found = jnp.any(acc)
    # Gumbel-top-k without a sort: token u is drawn before v iff its key is larger, so the first
    # accepted token is the accepted one with the largest key and the rejections are the keys above it.
    key1 = jnp.where(support, logp + g[0], -jnp.inf)
    token = jnp.argmax(jnp.where(acc, key1, -jnp.inf)).astype(jnp.int32)
    rej1 = support & (key1 > key1[token])
    f1 = jnp.sum(rej1)
    M1 = jnp.sum(jnp.where(rej1, p, 0.0))

    if estimator == "exact":        # the masking baseline: check every token, weight = the exact mass Z
        w = jnp.sum(jnp.where(acc, p, 0.0))
        log_w = jnp.where(found, jnp.log(jnp.where(found, w, 1.0)), -jnp.inf)
        return token, log_w.astype(dt), n_support.astype(jnp.int32), f1.astype(dt)

    if estimator == "recursive":
        later = support & (key1 < key1[token])
        has_next = jnp.any(later)
        nxt = jnp.argmax(jnp.where(later, key1, -jnp.inf))
        # no next token: x was the last of the support, where 1 - M = p(x) exactly (p(x) has no rounding)
        w = jnp.clip(jnp.where(has_next & acc[nxt], 1.0 - M1, p[token]), 0.0, 1.0)
        log_w = jnp.where(found, jnp.log(w), -jnp.inf)
        checks = jnp.where(found, f1 + 1 + has_next, n_support)
        return token, log_w.astype(dt), checks.astype(jnp.int32), f1.astype(dt)

    support2 = support & ~rej1
    key2 = jnp.where(support2, logp + g[1], -jnp.inf)
    second = jnp.argmax(jnp.where(acc, key2, -jnp.inf))
    rej2 = support2 & (key2 > key2[second])
    f2 = jnp.sum(rej2)
    # rejected mass before each fresh draw: before v in run 1, the mass of the keys above v; in run 2,
    # all of run 1's rejections plus run 2's keys above v
    if estimator == "awrs":
        # the paper's two-round estimate: (mass left after round 1's rejections) / (rejections + 1)
        w = jnp.sum(jnp.where(support2, p, 0.0)) / (f1 + f2 + 1).astype(dt)
        log_w = jnp.where(found, jnp.log(w), -jnp.inf)
        checks = jnp.where(found, f1 + 1 + f2 + 1 - (second == token), n_support)
        return token, log_w.astype(dt), checks.astype(jnp.int32), (f1 + f2).astype(dt)
    before1 = jnp.sum(jnp.where(key1[None, :] > key1[:, None], p[None, :], 0.0), axis=1)
    before2 = M1 + jnp.sum(jnp.where(key2[None, :] > key2[:, None], p[None, :], 0.0), axis=1)
    draws1 = rej1 | (jnp.arange(V) == token)
    draws2 = rej2 | (jnp.arange(V) == second)
    ph = _phantoms(g[2:], jnp.stack([before1, before2]), jnp.stack([draws1, draws2]))
    n_rejects = f1 + f2 + ph
    log_w = jnp.where(found, -jnp.log1p(n_rejects.astype(dt)), -jnp.inf)
    checks = jnp.where(found, f1 + 1 + f2 + 1 - (second == token), n_support)
    return token, log_w.astype(dt), checks.astype(jnp.int32), n_rejects.astype(dt)


def awrs_smc_sample(lm: LanguageModel, c: Constraint, keys, particles: int = 16, ess_threshold: float = 0.5,
                    resampling: str = "systematic", estimator: str = "awrs", prompt=None, cached: bool = True,
                    chunk: int = 1):
    """SMC for ``p(x | x in L)`` with the AWRS token draw as the proposal (Lipkin et al. 2025;
    the particle filter of Lew et al. 2023 / Loula et al. 2025 "Syntactic and Semantic Control of LLMs
    via SMC"), on :func:`samplax.smc.core.smc`.

    Intermediate targets ``pi_t(x_<=t) ∝ p(x_<=t) 1[x_<=t can be completed]``; with the exact
    completion table ``pi_L = p(x) 1[x in L]``.  Each step draws every particle's next token by
    :func:`awrs_step` (exactly from ``p(v | x_<t) c(v) / Z_t``) with log-increment ``log w``,
    ``E[w] = Z_t``, so ``Z_hat = prod_t mean_i w_t^i`` (with ESS-triggered resampling) is unbiased for
    ``p(L)`` and the weighted particles target ``p(x | x in L)`` as particles -> infinity.  One system
    per key; the output is one particle drawn from the final weights, with ``log_Z``.
    ``target_calls`` = particles * L; ``extras['constraint_checks']``: all particles' checks.  ``chunk``:
    keys run ``chunk`` systems at a time (``lax.map``; > 1 vectorises across keys: faster runs, slower
    compiles; the output of a key does not depend on it)."""
    keys = check_keys(keys)
    problem = Problem(lm=lm, constraint=c, prompt=prompt)
    lm, c, prompt, P, pr = _prompt_arrays(problem, "awrs_smc")
    N = check_int("particles", particles, 1)
    chunk = check_int("chunk", chunk, 1)
    check_ess_threshold(ess_threshold, "awrs_smc")
    if resampling not in RESAMPLING:
        raise ValueError(f"resampling: unknown {resampling!r}; allowed: {sorted(RESAMPLING)}")
    if estimator not in ESTIMATORS:
        raise ValueError(f"estimator: unknown {estimator!r}; allowed: {list(ESTIMATORS)}")
    L = lm.length
    init, step = _path(lm, cached)
    dt = _float()

    def mutation(key, parts, t):
        pos = t - 1
        prev = jax.lax.dynamic_index_in_dim(parts["x"], jnp.maximum(pos - 1, 0), axis=1, keepdims=False)
        logp, lm_state = step(parts["lm"], prev, pos)
        ok = allowed(c, parts["q"], pos)
        g = gumbel(key, (N, _NOISE_ROWS[estimator], lm.vocab_size), logp.dtype)
        tok, log_w, checks, _ = jax.vmap(lambda gi, l, o: _awrs(gi, l, o, estimator))(g, logp, ok)
        given = pos < P
        tok = jnp.where(given, pr[pos], tok)
        log_w = jnp.where(given, 0.0, log_w)
        checks = jnp.where(given, 0, checks)
        new = dict(x=jax.lax.dynamic_update_index_in_dim(parts["x"], tok, pos, axis=1), lm=lm_state,
                   q=advance(c, parts["q"], tok), lp=parts["lp"] + jnp.where(given, 0.0, gather_logp(logp, tok)),
                   checks=parts["checks"] + jnp.sum(checks).astype(jnp.int32),
                   bad=jnp.where((parts["bad"] < 0) & ~jnp.all(jnp.isfinite(logp), axis=-1) & ~given, pos,
                                 parts["bad"]))
        return new, log_w

    sampler = smc(mutation, resampling, ess_threshold)

    def one(key):
        parts = dict(x=jnp.zeros((N, L), jnp.int32), lm=init(N), q=jnp.full((N,), c.start, jnp.int32),
                     lp=jnp.zeros((N,), dt), checks=jnp.zeros((N,), jnp.int32), bad=jnp.full((N,), -1, jnp.int32))
        k_run, k_pick = jax.random.split(key)
        state, _ = smc_run(sampler, k_run, sampler.init(parts), L)
        j = categorical(k_pick, state.log_weights)
        pk = jax.tree_util.tree_map(lambda a: a[j], state.particles)
        return pk["x"], pk["lp"], state.log_Z, pk["checks"], pk["bad"]

    # keys in turn (chunk at a time): one system per key either way; vectorising across keys compiles slower
    x, lp, log_Z, checks, bad = jax.lax.map(one, keys, batch_size=chunk if chunk > 1 else None)
    B = keys.shape[0]
    return x, make_info(B, N * L, lp, None, log_Z=log_Z.astype(lp.dtype), nonfinite_step=bad,
                        extras={"constraint_checks": checks})


# ---------------------------------------------------------------------------------------
# ASAp (Park et al. 2024)
# ---------------------------------------------------------------------------------------
def asap_layout(V: int, L: int) -> np.ndarray:
    """Offsets of the prefix table: the prefix ``x_<t`` (length t = 0..L) lives at
    ``off[t] + sum_i x_i V^(t-1-i)``; its children ``x_<t v`` at ``off[t+1] + code * V + v``.
    Returns ``off int64[L+2]`` (``off[L+1]`` = table size ``sum_t V^t``)."""
    return np.cumsum([0] + [V ** t for t in range(L + 1)]).astype(np.int64)


def asap_init_table(c: Constraint) -> np.ndarray:
    """The initial expected-future estimates EFG~ over all prefixes (float64[sum_t V^t]): 1 where the
    prefix can be completed into a member within length L, else 0 -- the sound over-approximation a
    grammar-constrained decoder uses (Park et al. 2024); full sequences hold exact membership."""
    L = c.length
    states = np.array([c.start], np.int32)
    vals = []
    for t in range(L + 1):
        vals.append(c.viable[L - t, states].astype(np.float64))
        states = c.transitions[states].reshape(-1)
    return np.concatenate(vals)


def efg_table(c: Constraint, log_p) -> np.ndarray:
    """The exact expected futures ``EFG(w) = p(x in L | prefix w)`` over all prefixes (same layout as
    :func:`asap_init_table`; prefixes of probability 0 get 0), from the enumerated ``log p``."""
    V, L = c.vocab_size, c.length
    p = np.exp(np.asarray(log_p, np.float64))
    a, m = p * member_table(c), p
    out = []
    for t in range(L + 1):
        out.append(np.where(m > 0, a / np.where(m > 0, m, 1.0), 0.0))
        if t < L:
            a, m = a.reshape(-1, V).sum(1), m.reshape(-1, V).sum(1)
    return np.concatenate(out[::-1])


def _asap_logq(logp, children):
    """The ASAp next-token proposal ``p(v | w) EFG~(wv)`` normalised."""
    return normalise(jnp.where(children > 0, logp + jnp.log(jnp.where(children > 0, children, 1.0)), LOG_ZERO))


def asap_chain(lm: LanguageModel, c: Constraint, key, num_samples: int, table=None, prompt=None,
               cached: bool = True, update: bool = True):
    """ASAp (Park et al. 2024, "Grammar-Aligned Decoding"): ``num_samples`` samples in turn,
    each drawn with ``x_t ~ p(v | x_<t) EFG~(x_<t v) / sum``, after which the estimates along the
    sampled path are refined bottom-up, ``EFG~(x_<t) <- sum_v p(v | x_<t) EFG~(x_<t v)`` (the LM's
    conditionals of the path are the ones just computed).  EFG~ starts at the completion indicator
    (:func:`asap_init_table`), stays an upper bound of the exact EFG and becomes exact on every prefix
    sampled often enough, so the sampler's distribution converges to ``p(x | x in L)``.

    Representation: EFG~ is a dense table over all prefixes (:func:`asap_layout`), possible because
    the LM is enumerable (the paper keeps a trie of the sampled prefixes).
    Returns ``(table, tokens int32[n, L], log_p float[n], log_q float[n])`` where ``log_q`` is each
    sample's log-probability under the sampler that drew it.  ``update=False`` never refines (= naive
    masking; it may be a traced bool).  L model calls per sample."""
    V, L = lm.vocab_size, lm.length
    _check_constraint(c, lm, "asap")
    prompt = check_prompt(prompt, lm)
    _prompt_states(c, prompt)
    P = 0 if prompt is None else len(prompt)
    pr = jnp.zeros((L,), jnp.int32)
    if P:
        pr = pr.at[:P].set(jnp.asarray(prompt, jnp.int32))
    num_samples = check_int("samples", num_samples, 1)
    off = jnp.asarray(asap_layout(V, L), jnp.int32)
    dt = _float()
    table = jnp.asarray(asap_init_table(c) if table is None else table, dt)
    init, step = _path(lm, cached)
    ar = jnp.arange(V)

    def draw(key, table):
        def body(carry, pos):
            code, state, prev = carry
            logp, state = step(state, prev[None], pos)
            logp = logp[0]
            children = table[off[pos + 1] + code * V + ar]
            logq = _asap_logq(logp, children)
            tok = jnp.where(pos < P, pr[pos], categorical(jax.random.fold_in(key, pos), logq))
            lq = jnp.where(pos < P, 0.0, logq[tok])
            lp = jnp.where(pos < P, 0.0, logp[tok])
            return (code * V + tok, state, tok), (tok, code, logp, lp, lq)
        carry = (jnp.zeros((), jnp.int32), init(1), jnp.zeros((), jnp.int32))
        _, (x, codes, rows, lp, lq) = jax.lax.scan(body, carry, jnp.arange(L, dtype=jnp.int32))
        return x, codes, rows, lp.sum(), lq.sum()

    def refine(table, codes, rows):
        def body(table, t):
            kids = table[off[t + 1] + codes[t] * V + ar]
            val = jnp.sum(jnp.where(rows[t] > LOG_ZERO / 2, jnp.exp(rows[t]), 0.0) * kids)
            return table.at[off[t] + codes[t]].set(val.astype(table.dtype)), None
        table, _ = jax.lax.scan(body, table, jnp.arange(L - 1, -1, -1, dtype=jnp.int32))
        return table

    def one(table, i):
        x, codes, rows, lp, lq = draw(jax.random.fold_in(key, i), table)
        table = jnp.where(update, refine(table, codes, rows), table)
        return table, (x, lp, lq)

    table, (xs, lps, lqs) = jax.lax.scan(one, table, jnp.arange(num_samples, dtype=jnp.int32))
    return table, xs, lps, lqs


def asap_log_probs(c: Constraint, table, logp_all, prompt=None) -> np.ndarray:
    """float64[V**L]: the exact distribution of the ASAp sampler with estimates ``table`` (by
    enumeration; ``logp_all`` from :func:`conditionals_all`).  With the initial table it is naive
    masking's, with the exact EFG table it is ``p(x | x in L)``."""
    V, L = c.vocab_size, c.length
    off = asap_layout(V, L)
    seqs = all_sequences(V, L).astype(np.int64)
    table = np.asarray(table, np.float64)
    codes = np.zeros(len(seqs), np.int64)
    logq = np.empty(logp_all.shape, np.float64)
    for t in range(L):
        kids = table[off[t + 1] + codes[:, None] * V + np.arange(V)[None, :]]
        with np.errstate(divide="ignore"):
            logq[:, t] = _np_normalise(np.where(kids > 0, logp_all[:, t] + np.log(np.where(kids > 0, kids, 1.0)),
                                                -np.inf))
        codes = codes * V + seqs[:, t]
    return _path_log_probs(logq, c, None if prompt is None else np.asarray(prompt))


# ---------------------------------------------------------------------------------------
# Decoders
# ---------------------------------------------------------------------------------------
def _exact_conditional(problem: Problem):
    return constrained_log_probs(problem.lm, problem.constraint, problem.prompt)[0]


def masked(cached: bool = True) -> Decoder:
    """Naive token masking (locally constrained decoding).  Its ``target`` is its own enumerated
    distribution (:func:`masked_log_probs`); the bias against ``p(x | x in L)`` is reported separately
    (docs/benchmarks/decoding_constrained.md)."""
    if not isinstance(cached, bool):
        raise ValueError(f"cached: must be True or False, got {cached!r}")

    def run(problem: Problem, keys):
        return masked_sample(problem.lm, problem.constraint, keys, problem.prompt, cached)

    def target(problem: Problem):
        return masked_log_probs(problem.lm, _check_constraint(problem.constraint, problem.lm, "masked"),
                                problem.prompt)

    return Decoder("masked", run, dict(cached=cached), target, needs=("constraint",))


def awrs_smc(particles: int = 16, ess_threshold: float = 0.5, resampling: str = "systematic",
             estimator: str = "awrs", cached: bool = True, chunk: int = 1) -> Decoder:
    """AWRS inside SMC (:func:`awrs_smc_sample`); target ``p(x | x in L)`` as particles -> infinity."""
    check_int("particles", particles, 1)
    check_int("chunk", chunk, 1)
    check_ess_threshold(ess_threshold, "awrs_smc")
    if resampling not in RESAMPLING:
        raise ValueError(f"resampling: unknown {resampling!r}; allowed: {sorted(RESAMPLING)}")
    if estimator not in ESTIMATORS:
        raise ValueError(f"estimator: unknown {estimator!r}; allowed: {list(ESTIMATORS)}")
    if not isinstance(cached, bool):
        raise ValueError(f"cached: must be True or False, got {cached!r}")

    def run(problem: Problem, keys):
        return awrs_smc_sample(problem.lm, problem.constraint, keys, particles, ess_threshold, resampling,
                               estimator, problem.prompt, cached, chunk)

    return Decoder("awrs_smc", run, dict(particles=particles, ess_threshold=ess_threshold, resampling=resampling,
                                         estimator=estimator, cached=cached, chunk=chunk), _exact_conditional,
                   needs=("constraint",),
                   log_Z=lambda problem: constrained_log_probs(problem.lm, problem.constraint, problem.prompt)[1])


def asap(iterations: int = 100, chunk: int = 64, cached: bool = True) -> Decoder:
    """ASAp (:func:`asap_chain`): each key runs its own chain of ``iterations`` refining samples and
    returns the next one (so ``target_calls`` = (iterations + 1) * L; ``iterations = 0`` is naive
    masking).  ``chunk``: keys run ``chunk`` at a time (each holds a table over all prefixes).
    Target ``p(x | x in L)`` as iterations -> infinity."""
    iterations = check_int("iterations", iterations, 0)
    chunk = check_int("chunk", chunk, 1)
    if not isinstance(cached, bool):
        raise ValueError(f"cached: must be True or False, got {cached!r}")

    def run(problem: Problem, keys):
        keys = check_keys(keys)
        lm = problem.lm
        c = _check_constraint(problem.constraint, lm, "asap")

        def one(key):
            _, xs, lps, lqs = asap_chain(lm, c, key, iterations + 1, prompt=problem.prompt, cached=cached)
            return xs[-1], lps[-1], lqs[-1]
        x, lp, lq = jax.lax.map(one, keys, batch_size=min(chunk, keys.shape[0]))
        B = keys.shape[0]
        return x, make_info(B, (iterations + 1) * lm.length, lp, lq,
                            extras={"constraint_checks": jnp.full((B,), (iterations + 1) * lm.length * lm.vocab_size,
                                                                  jnp.int32)})

    return Decoder("asap", run, dict(iterations=iterations, chunk=chunk, cached=cached), _exact_conditional,
                   needs=("constraint",))
