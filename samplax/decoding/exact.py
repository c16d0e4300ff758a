"""Exact tiny language models and the exact targets decoders are tested against.

* :func:`hmm_lm`: an HMM (or Markov chain) of :mod:`samplax.discrete.exact` as an autoregressive LM:
  ``p(x_i | x_<i)`` by the forward filter (Rabiner 1989, eq. 19-20: predict with the transition
  matrix, emit, condition on the token); its cached state is the predictive hidden distribution.
* :func:`table_lm`: ANY distribution over the ``V**L`` sequences as an exact autoregressive LM, its
  conditionals from prefix marginals (log-sum-exp over suffixes); the cached state is the prefix index.
* :func:`enumerate_log_probs`: the exact log-probability of every sequence under an LM and a logit
  transform (the distribution ancestral decoding with that transform samples), for any LM, by calling
  ``logits_fn`` on every sequence.
* Targets: :func:`power_target` (``p^alpha / Z``), :func:`tilted_target` (``p exp(r / beta) / Z``),
  :func:`constrained_target` (``p(x | x in L)``), each returning the normalised log-probabilities and
  ``log Z``.

Enumerated arrays are float64 numpy, indexed by :func:`sequence_index` (base V, first token most
significant); impossible sequences hold -inf.
"""
from __future__ import annotations

from typing import Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np
from scipy.special import logsumexp as np_logsumexp

from samplax.decoding.base import LOG_ZERO, LanguageModel, Transform, check_prompt, gather_logp
from samplax.discrete import exact as _dexact
from samplax.discrete.exact import HMM, MAX_ENUMERATE, all_sequences, sequence_index

LMS = _dexact.PROBLEMS  # markov4x8, hmm8x5, markov16x4

__all__ = ["LMS", "HMM", "hmm_lm", "table_lm", "load_lm", "all_sequences", "sequence_index",
           "enumerate_log_probs", "Reward", "enumerate_rewards", "power_target", "tilted_target",
           "constrained_target", "exact_log_probs"]


def _dtype():
    return jnp.float64 if jax.config.jax_enable_x64 else jnp.float32


def _safe_log(p):
    return jnp.where(p > 0, jnp.log(jnp.where(p > 0, p, 1.0)), LOG_ZERO)


def hmm_lm(hmm: HMM) -> LanguageModel:
    """The HMM as an exact LM (float64 under x64, else float32)."""
    init_np, trans_np, emit_np = (np.asarray(a, np.float64) for a in (hmm.init, hmm.trans, hmm.emit))

    def arrays():
        dt = _dtype()
        return jnp.asarray(init_np, dt), jnp.asarray(trans_np, dt), jnp.asarray(emit_np, dt)

    def _condition(pred, tok, emit, trans):
        f = pred * emit[:, tok].T          # [B, H]
        s = f.sum(-1, keepdims=True)
        f = jnp.where(s > 0, f / jnp.where(s > 0, s, 1.0), pred)   # impossible prefix: keep the prediction
        return f @ trans

    def logits_fn(x):
        init, trans, emit = arrays()
        x = jnp.asarray(x, jnp.int32)
        B = x.shape[0]
        pred0 = jnp.broadcast_to(init, (B, init.shape[0]))

        def body(pred, tok):
            logp = _safe_log(pred @ emit)
            return _condition(pred, tok, emit, trans), logp
        _, logp = jax.lax.scan(body, pred0, x.T)
        return jnp.swapaxes(logp, 0, 1)

    def init_fn(batch):
        init, _, _ = arrays()
        return jnp.broadcast_to(init, (batch, init.shape[0]))

    def step(pred, prev, pos):
        _, trans, emit = arrays()
        pred = jnp.where(pos > 0, _condition(pred, prev, emit, trans), pred)
        return _safe_log(pred @ emit), pred

    return LanguageModel(logits_fn, hmm.vocab_size, hmm.length, name=hmm.name, init=init_fn, step=step)


def load_lm(name: str) -> LanguageModel:
    """A named exact LM: one of :data:`LMS` (the discrete problems' HMMs / Markov chains)."""
    if name not in LMS:
        raise ValueError(f"lm: unknown exact language model {name!r}; allowed: {list(LMS)}")
    return hmm_lm(_dexact.load_problem(name))


def table_lm(log_probs, vocab_size: int, length: int, name: str = "table") -> LanguageModel:
    """An exact LM for an explicit distribution over all ``V**L`` sequences (log-probabilities, -inf or
    <= LOG_ZERO/2 for impossible ones; normalised here).  Impossible prefixes get uniform conditionals."""
    V, L = int(vocab_size), int(length)
    lp = np.asarray(log_probs, np.float64)
    if lp.shape != (V ** L,):
        raise ValueError(f"table_lm: log_probs must have shape ({V}**{L},) = ({V ** L},), got {lp.shape}")
    if V ** L > MAX_ENUMERATE:
        raise ValueError(f"table_lm: {V}**{L} sequences is more than {MAX_ENUMERATE}")
    lp = np.where(lp > LOG_ZERO / 2, lp, -np.inf)
    if not np.isfinite(np_logsumexp(lp)) or np.any(np.isnan(lp)):
        raise ValueError("table_lm: log_probs must hold at least one finite entry and no NaN")
    lp = lp - np_logsumexp(lp)
    # marginals of every prefix length i = 0..L, concatenated: M_i has V**i entries
    margs = [lp]
    for _ in range(L):
        margs.append(np_logsumexp(margs[-1].reshape(-1, V), axis=1))
    margs = margs[::-1]
    offsets = np.cumsum([0] + [V ** i for i in range(L + 1)])[:-1]
    flat_np = np.concatenate(margs)
    offsets_np = offsets.astype(np.int64)

    def cond(idx, pos, flat, offs):
        """log p(x_pos = v | prefix index idx of length pos), [B, V]."""
        parent = flat[offs[pos] + idx][:, None]                             # [B, 1]
        child = flat[offs[pos + 1] + idx[:, None] * V + jnp.arange(V)]      # [B, V]
        out = jnp.where(jnp.isfinite(child), child - jnp.where(jnp.isfinite(parent), parent, 0.0), LOG_ZERO)
        return jnp.where(jnp.isfinite(parent), out, -np.log(V))

    def tables():
        return jnp.asarray(flat_np, _dtype()), jnp.asarray(offsets_np, jnp.int32)

    def logits_fn(x):
        flat, offs = tables()
        x = jnp.asarray(x, jnp.int32)
        B = x.shape[0]

        def body(idx, pos_tok):
            pos, tok = pos_tok
            out = cond(idx, pos, flat, offs)
            return idx * V + tok, out
        _, out = jax.lax.scan(body, jnp.zeros((B,), offs.dtype), (jnp.arange(x.shape[1], dtype=jnp.int32), x.T))
        return jnp.swapaxes(out, 0, 1)

    def init(batch):
        return jnp.zeros((batch,), jnp.int32)

    def step(idx, prev, pos):
        flat, offs = tables()
        idx = jnp.where(pos > 0, idx * V + prev.astype(idx.dtype), idx)
        return cond(idx, pos, flat, offs), idx

    return LanguageModel(logits_fn, V, L, name=name, init=init, step=step)


# ---------------------------------------------------------------------------------------
# Enumeration
# ---------------------------------------------------------------------------------------
def enumerate_log_probs(lm: LanguageModel, transform: Optional[Transform] = None, prompt=None,
                        chunk: int = 32768) -> np.ndarray:
    """float64[V**L]: ``log q(x)`` of every sequence, ``q(x) = prod_{i>=P} transform(p(.|x_<i), i)[x_i]``
    (the distribution ancestral decoding samples; ``transform=None`` is the model itself).  With a
    prompt of length P, sequences not starting with it get -inf.  Runs ``logits_fn`` on every sequence
    in float64 if x64 is on (else in float32)."""
    V, L = lm.vocab_size, lm.length
    seqs = all_sequences(V, L)
    prompt = check_prompt(prompt, lm)
    P = 0 if prompt is None else len(prompt)
    tf = transform

    @jax.jit
    def score(x):
        logp = lm.logits_fn(x)
        if tf is not None:
            logp = jax.vmap(lambda l, i: tf(l, i), in_axes=(1, 0), out_axes=1)(logp, jnp.arange(L))
        lt = gather_logp(logp, x)
        lt = jnp.where(jnp.arange(L)[None, :] >= P, lt, 0.0)
        lt = jnp.where(lt > LOG_ZERO / 2, lt, -jnp.inf)
        return lt.sum(-1)

    out = np.concatenate([np.asarray(score(jnp.asarray(seqs[i:i + chunk])), np.float64)
                          for i in range(0, len(seqs), chunk)])
    if P:
        out = np.where(np.all(seqs[:, :P] == prompt[None, :], axis=1), out, -np.inf)
    return out


def exact_log_probs(lm: LanguageModel, transform: Optional[Transform] = None, prompt=None) -> np.ndarray:
    """:func:`enumerate_log_probs` in float64 (x64 switched on for the call)."""
    with jax.enable_x64(True):
        return enumerate_log_probs(lm, transform, prompt)


class Reward(NamedTuple):
    """``fn(x int32[B, L], n int32[]) -> float[B]``: the reward of the prefix ``x[:, :n]`` (``n = L``:
    of the whole sequence); tokens at positions >= n must not matter."""
    fn: Callable
    name: str = "reward"


def enumerate_rewards(reward: Reward, vocab_size: int, length: int, chunk: int = 32768) -> np.ndarray:
    """float64[V**L]: the full-sequence reward of every sequence."""
    seqs = all_sequences(vocab_size, length)
    f = jax.jit(lambda x: reward.fn(x, jnp.asarray(length, jnp.int32)))
    return np.concatenate([np.asarray(f(jnp.asarray(seqs[i:i + chunk])), np.float64)
                           for i in range(0, len(seqs), chunk)])


def _normalised(logw):
    logw = np.asarray(logw, np.float64)
    log_Z = float(np_logsumexp(logw))
    if not np.isfinite(log_Z):
        raise ValueError("target: every sequence has zero weight (log Z = -inf)")
    return logw - log_Z, log_Z


def power_target(log_p, alpha: float):
    """``p^alpha / Z``: (normalised log-probabilities, log Z)."""
    if not (isinstance(alpha, (int, float, np.floating)) and alpha > 0):
        raise ValueError(f"alpha: must be a number > 0, got {alpha!r}")
    return _normalised(alpha * np.asarray(log_p, np.float64))


def tilted_target(log_p, rewards, beta: float):
    """``p exp(r / beta) / Z``: (normalised log-probabilities, log Z)."""
    if not (isinstance(beta, (int, float, np.floating)) and beta > 0):
        raise ValueError(f"beta: must be a number > 0, got {beta!r}")
    return _normalised(np.asarray(log_p, np.float64) + np.asarray(rewards, np.float64) / beta)


def constrained_target(log_p, member):
    """``p(x | x in L)``: (normalised log-probabilities, log Z = log p(L))."""
    member = np.asarray(member, bool)
    if member.shape != np.shape(log_p):
        raise ValueError(f"member: shape {member.shape} differs from log_p's {np.shape(log_p)}")
    return _normalised(np.where(member, np.asarray(log_p, np.float64), -np.inf))
