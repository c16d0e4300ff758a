"""Prefix rewards for reward-guided decoding (``REWARDS`` in :mod:`samplax.decoding.problem`).

A :class:`~samplax.decoding.exact.Reward` is ``fn(x int32[B, L], n int32[]) -> float[B]``, the reward
of the prefix ``x[:, :n]``; reward-guided SMC targets ``p(x) exp(r(x) / beta) / Z`` with ``r`` the full
reward (``n = L``) and uses the prefix rewards as its intermediate potentials (docs/decoding_smc.md).

* :func:`token_count`: ``scale * #{i < n : x_i = token}``.
* :func:`regex`: a regular-expression search on the token string, token ``v`` written as the letter
  ``chr(ord('a') + v)`` (so V <= 26).  Patterns are literal letters and ``.`` (any token); the match
  is a *search* (anywhere in the string), exactly Python's ``re.search(pattern, string)``.  The
  indicator reward is ``scale * [the prefix contains a match]``; the soft one is ``scale * j / m``
  with ``j`` the length of the longest prefix of the pattern that matches somewhere in the prefix
  (``m`` = pattern length), so a full match scores ``scale`` and partial progress is rewarded.  Both
  are monotone in the prefix.  The default pattern ``"ab"`` asks for token 0 directly followed by
  token 1.  Implemented as the DFA of ``.*pattern`` (subset construction of the pattern's NFA, the
  accepting state absorbing), scanned over the prefix.
"""
from __future__ import annotations

import string

import jax
import jax.numpy as jnp
import numpy as np

from samplax.decoding.base import LanguageModel
from samplax.decoding.exact import Reward

__all__ = ["token_count", "regex", "regex_dfa", "tokens_to_string"]

MAX_PATTERN = 8


def _check_scale(scale) -> float:
    ok = isinstance(scale, (int, float, np.floating, np.integer)) and not isinstance(scale, bool) \
        and np.isfinite(scale)
    if not ok:
        raise ValueError(f"scale: must be a finite number, got {scale!r}")
    return float(scale)


def token_count(lm: LanguageModel, token: int = 0, scale: float = 1.0) -> Reward:
    """``r(x_<n) = scale * #{i < n : x_i = token}``."""
    V = lm.vocab_size
    if isinstance(token, bool) or not isinstance(token, (int, np.integer)) or not 0 <= token < V:
        raise ValueError(f"token: must be an integer token id in [0, {V}), got {token!r}")
    token, scale = int(token), _check_scale(scale)

    def fn(x, n):
        x = jnp.asarray(x, jnp.int32)
        mask = jnp.arange(x.shape[1])[None, :] < n
        return scale * jnp.sum((x == token) & mask, axis=1).astype(jnp.result_type(float))

    return Reward(fn, f"token_count(token={token}, scale={scale:g})")


def tokens_to_string(tokens) -> str:
    """The token string of one sequence: token v -> letter ``chr(ord('a') + v)``."""
    return "".join(string.ascii_lowercase[int(t)] for t in np.asarray(tokens))


def regex_dfa(pattern: str, vocab_size: int):
    """The DFA of ``.*pattern``: ``(trans int32[S, V], progress int32[S])`` where state 0 is the start,
    ``progress[s]`` the longest pattern prefix matched so far in the current window (``m`` = accepted;
    the accepting state is absorbing)."""
    m = len(pattern)
    letters = string.ascii_lowercase[:vocab_size]

    def matches(j, c):
        return pattern[j] == "." or pattern[j] == letters[c]

    start = frozenset([0])
    accept = "accept"
    index = {start: 0}
    order = [start]
    trans = []
    i = 0
    while i < len(order):
        s = order[i]
        row = []
        for c in range(vocab_size):
            if s == accept:
                nxt = accept
            else:
                nxt = frozenset([0] + [j + 1 for j in s if j < m and matches(j, c)])
                if m in nxt:
                    nxt = accept
            if nxt not in index:
                index[nxt] = len(order)
                order.append(nxt)
            row.append(index[nxt])
        trans.append(row)
        i += 1
    progress = [m if s == accept else max(s) for s in order]
    return np.asarray(trans, np.int32), np.asarray(progress, np.int32)


def regex(lm: LanguageModel, pattern: str = "ab", scale: float = 1.0, soft: bool = False) -> Reward:
    """Regular-expression search reward (module docstring): ``scale * [x_<n contains pattern]``, or with
    ``soft`` ``scale * (longest matched pattern prefix) / len(pattern)``."""
    V = lm.vocab_size
    if V > 26:
        raise ValueError(f"regex: the token string needs vocab_size <= 26 (one letter per token), got {V}")
    allowed = set(string.ascii_lowercase[:V]) | {"."}
    if not isinstance(pattern, str) or not 1 <= len(pattern) <= MAX_PATTERN or not set(pattern) <= allowed:
        raise ValueError(f"pattern: must be a string of 1..{MAX_PATTERN} characters from "
                         f"{''.join(sorted(allowed))!r} (letters = tokens 0..{V - 1}, '.' = any token), "
                         f"got {pattern!r}")
    if not isinstance(soft, bool):
        raise ValueError(f"soft: must be True or False, got {soft!r}")
    scale = _check_scale(scale)
    trans_np, prog_np = regex_dfa(pattern, V)
    m = len(pattern)

    def fn(x, n):
        x = jnp.asarray(x, jnp.int32)
        trans, prog = jnp.asarray(trans_np), jnp.asarray(prog_np)

        def body(carry, i):
            s, best = carry
            s = jnp.where(i < n, trans[s, x[:, i]], s)
            return (s, jnp.maximum(best, prog[s])), None

        zero = jnp.zeros((x.shape[0],), jnp.int32)
        (s, best), _ = jax.lax.scan(body, (zero, zero), jnp.arange(x.shape[1]))
        dt = jnp.result_type(float)
        score = best.astype(dt) / m if soft else (best == m).astype(dt)
        return scale * score

    return Reward(fn, f"regex({pattern!r}, scale={scale:g}{', soft' if soft else ''})")
