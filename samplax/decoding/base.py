"""Autoregressive language-model decoding: the model type, logit transforms, the problem and decoder
types, and ancestral sampling in ``lax.scan``.

* :class:`LanguageModel`: ``logits_fn(x) -> log p(x_i | x_<i)`` for every position of a (prefix of a)
  sequence in one call (causal, normalised), and optionally a cached path ``init`` / ``step`` (one
  position per call; the KV cache of a transformer, the forward filter of an HMM) that gives the same
  conditionals.  Impossible tokens sit at ``LOG_ZERO = -1e30``, never -inf, so every arithmetic stays
  finite.  Sequences have a fixed length ``length``; a model with an end-of-sequence token makes it
  absorbing, so sequences stay enumerable arrays.
* Logit transforms (the idea of transformers' ``LogitsProcessor``, as pure functions
  ``(logp, pos) -> logp``, renormalised): :func:`temperature`, :func:`top_k`, :func:`top_p`,
  :func:`min_p`, :func:`typical`, :func:`temperature_schedule`, composed by :func:`chain`.
* :class:`Problem` (the target LM and what some decoders need: a draft model, a reward, a constraint, a
  reasoning task, a prompt) and :class:`Decoder` (``run(problem, keys) -> (tokens, DecodeInfo)``, and
  ``target(problem)``: the exact distribution it claims to sample, over all ``V**L`` sequences).
* :func:`sample`: ancestral decoding with one key per sample (``fold_in(key, i)``), Gumbel-max draws
  exact in both tails (:func:`samplax.discrete.base.categorical`).
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, NamedTuple, Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from samplax.discrete.base import LOG_ZERO, categorical, sample_keys

Array = jax.Array
Transform = Callable[[Array, Array], Array]

__all__ = ["LOG_ZERO", "LanguageModel", "Problem", "Decoder", "DecodeInfo", "Transform", "identity",
           "temperature", "top_k", "top_p", "min_p", "typical", "temperature_schedule", "chain",
           "make_transform", "sample", "sample_keys", "uncached_step", "check_keys", "check_prompt",
           "check_positive", "check_int", "check_prob", "gather_logp", "normalise"]


# ---------------------------------------------------------------------------------------
# The model
# ---------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True, eq=False)
class LanguageModel:
    """An autoregressive model of fixed-length token sequences.

    logits_fn: ``x int32[B, L'] -> logp float[B, L', V]`` with ``logp[:, i] = log p(x_i | x_<i)``
        (row 0 is ``p(x_0)``), normalised over the last axis; causal: row i reads ``x[:, :i]`` only.
        ``L' <= length``.  One call is one model call, whatever ``L'``.
    init, step: the cached path (optional): ``init(batch) -> state`` and ``step(state, prev int32[B],
        pos int32[]) -> (logp[B, V], state)``: at position ``pos`` it consumes ``x_{pos-1}`` (ignored at
        ``pos = 0``) and returns ``log p(x_pos | x_<pos)``.  Every state leaf has a leading batch axis
        (SMC resamples it).  Without them :func:`uncached_step` recomputes the prefix.
    eos_id: an absorbing end-of-sequence token (after it the model puts all mass on it), or None.
    """
    logits_fn: Callable[[Array], Array]
    vocab_size: int
    length: int
    name: str = "lm"
    init: Optional[Callable[[int], Any]] = None
    step: Optional[Callable[[Any, Array, Array], Tuple[Array, Any]]] = None
    eos_id: Optional[int] = None

    def __post_init__(self):
        check_int("vocab_size", self.vocab_size, 2)
        check_int("length", self.length, 1)
        if (self.init is None) != (self.step is None):
            raise ValueError(f"LanguageModel {self.name!r}: give both init and step (the cached path) or neither")
        if self.eos_id is not None and not 0 <= int(self.eos_id) < self.vocab_size:
            raise ValueError(f"LanguageModel {self.name!r}: eos_id must be in [0, {self.vocab_size}), got {self.eos_id!r}")

    @property
    def cached(self) -> bool:
        return self.step is not None

    def __call__(self, x):
        return self.logits_fn(x)


def uncached_step(lm: LanguageModel):
    """A cached-path interface for a model without one: the state is the token buffer, and each
    step runs ``logits_fn`` on the whole buffer and reads row ``pos`` (one model call per step)."""
    def init(batch):
        return jnp.zeros((batch, lm.length), jnp.int32)

    def step(buf, prev, pos):
        buf = jnp.where(pos > 0, buf.at[:, jnp.maximum(pos - 1, 0)].set(prev), buf)
        logp = lm.logits_fn(buf)
        return jax.lax.dynamic_index_in_dim(logp, pos, axis=1, keepdims=False), buf
    return init, step


def _cached_path(lm: LanguageModel, cached: bool):
    if cached and lm.cached:
        return lm.init, lm.step
    return uncached_step(lm)


# ---------------------------------------------------------------------------------------
# Logit transforms
# ---------------------------------------------------------------------------------------
def normalise(logp):
    """Renormalise log-probabilities over the last axis; entries at or below LOG_ZERO/2 stay LOG_ZERO."""
    z = jax.scipy.special.logsumexp(jnp.where(logp > LOG_ZERO / 2, logp, -jnp.inf), axis=-1, keepdims=True)
    return jnp.where(logp > LOG_ZERO / 2, logp - z, LOG_ZERO)


def identity(logp, pos=None):
    return logp


def _drop(logp, keep):
    """Exclude the tokens where ``keep`` is False and renormalise."""
    return normalise(jnp.where(keep, logp, LOG_ZERO))


def temperature(T: float) -> Transform:
    """``p^(1/T)`` renormalised; T = 1 is the identity, T -> 0 greedy (use ``top_k(1)`` for greedy)."""
    T = check_positive("temperature", T)

    def f(logp, pos=None):
        return normalise(jnp.where(logp > LOG_ZERO / 2, logp / T, LOG_ZERO))
    return f


def temperature_schedule(fn: Callable[[Array], Array], name: str = "schedule") -> Transform:
    """Temperature ``fn(pos)`` (jnp-traceable, > 0) at position ``pos``."""
    if not callable(fn):
        raise ValueError(f"temperature_schedule: fn must be callable pos -> temperature, got {fn!r}")

    def f(logp, pos):
        T = jnp.asarray(fn(pos), logp.dtype)
        return normalise(jnp.where(logp > LOG_ZERO / 2, logp / T, LOG_ZERO))
    return f


def _sorted_desc(logp):
    return -jnp.sort(-logp, axis=-1)


def top_k(k: int) -> Transform:
    """Keep the k most probable tokens (ties at the k-th value are all kept)."""
    k = check_int("top_k", k, 1)

    def f(logp, pos=None):
        kk = min(k, logp.shape[-1])
        kth = _sorted_desc(logp)[..., kk - 1:kk]
        return _drop(logp, logp >= kth)
    return f


def top_p(p: float) -> Transform:
    """Nucleus sampling (Holtzman et al. 2020): keep the smallest set of most probable tokens whose
    mass reaches p (the token that crosses p is kept; ties at the threshold value are kept)."""
    p = check_prob("top_p", p)

    def f(logp, pos=None):
        s = _sorted_desc(logp)
        cum = jnp.cumsum(jnp.exp(s), axis=-1)
        # the number of tokens kept: 1 + #(prefix masses strictly below p)
        n_keep = 1 + jnp.sum(cum[..., :-1] < p, axis=-1, keepdims=True)
        thresh = jnp.take_along_axis(s, n_keep - 1, axis=-1)
        return _drop(logp, logp >= thresh)
    return f


def min_p(p: float) -> Transform:
    """min-p sampling (Nguyen et al. 2024): keep the tokens with probability >= p * max probability."""
    p = check_prob("min_p", p)

    def f(logp, pos=None):
        return _drop(logp, logp >= jnp.max(logp, axis=-1, keepdims=True) + math.log(p))
    return f


def typical(p: float) -> Transform:
    """Locally typical sampling (Meister et al. 2023, Alg. 1): sort tokens by |-log p - H| ascending
    and keep the smallest prefix whose mass reaches p."""
    p = check_prob("typical", p)

    def f(logp, pos=None):
        prob = jnp.exp(logp)
        ent = -jnp.sum(jnp.where(logp > LOG_ZERO / 2, prob * logp, 0.0), axis=-1, keepdims=True)
        dev = jnp.where(logp > LOG_ZERO / 2, jnp.abs(-logp - ent), jnp.inf)
        order = jnp.argsort(dev, axis=-1, stable=True)
        ps = jnp.take_along_axis(prob, order, axis=-1)
        cum = jnp.cumsum(ps, axis=-1)
        n_keep = 1 + jnp.sum(cum[..., :-1] < p, axis=-1, keepdims=True)
        rank = jnp.argsort(order, axis=-1)
        return _drop(logp, rank < n_keep)
    return f


def chain(*transforms: Transform) -> Transform:
    """Apply the transforms left to right (transformers' LogitsProcessorList order)."""
    for t in transforms:
        if not callable(t):
            raise ValueError(f"chain: every transform must be callable (logp, pos) -> logp, got {t!r}")

    def f(logp, pos=None):
        for t in transforms:
            logp = t(logp, pos)
        return logp
    return f


def make_transform(temperature_: Optional[float] = 1.0, top_k_: Optional[int] = 0, top_p_: Optional[float] = 1.0,
                   min_p_: Optional[float] = 0.0, typical_: Optional[float] = 1.0) -> Transform:
    """The usual decoding knobs as one transform, in transformers' order (temperature, top-k, top-p,
    min-p, typical); the neutral values (1, 0, 1, 0, 1) and None switch a knob off."""
    ts = []
    if temperature_ is not None and temperature_ != 1.0:
        ts.append(temperature(temperature_))
    if top_k_:
        ts.append(top_k(top_k_))
    if top_p_ is not None and top_p_ != 1.0:
        ts.append(top_p(top_p_))
    if min_p_:
        ts.append(min_p(min_p_))
    if typical_ is not None and typical_ != 1.0:
        ts.append(typical(typical_))
    return chain(*ts) if ts else identity


# ---------------------------------------------------------------------------------------
# Problems, decoders, infos
# ---------------------------------------------------------------------------------------
class Problem(NamedTuple):
    """The target LM and what some decoders need (see DECODING in docs/decoding.md)."""
    lm: LanguageModel
    draft: Optional[LanguageModel] = None
    reward: Any = None        # object with fn(x int32[B, L], n int32[]) -> float[B] and name
    constraint: Any = None    # constraint automaton (samplax.decoding.constrained)
    task: Any = None          # reasoning task (samplax.decoding.tasks)
    prompt: Optional[np.ndarray] = None  # int32[P]: positions < P are given


class DecodeInfo(NamedTuple):
    target_calls: Array    # int32[B]
    draft_calls: Array     # int32[B]
    log_p: Array           # float[B]: log p(x) of the generated part under the untransformed target
    log_q: Array           # float[B]: log-prob of x under the proposal sampled from (NaN if undefined)
    log_Z: Array           # float[B]: SMC normaliser estimate (NaN otherwise)
    nonfinite_step: Array  # int32[B]: first position whose model output was non-finite, -1 if none
    extras: Any = None     # dict of per-sample arrays, or None


class Decoder(NamedTuple):
    """``run(problem, keys[B]) -> (tokens int32[B, L], DecodeInfo)``: one sequence per key.
    ``target(problem) -> float64[V**L]``: the exact normalised log-probabilities of what it samples.
    ``needs``: the Problem fields it requires besides ``lm``.  ``log_Z(problem) -> float``: for a
    decoder that estimates a normalising constant (``DecodeInfo.log_Z``), its exact value (the
    runner reports the ratio E[Z_hat] / Z); None otherwise."""
    name: str
    run: Callable
    options: dict
    target: Callable
    needs: Tuple[str, ...] = ()
    log_Z: Optional[Callable] = None


def make_info(n, target_calls, log_p, log_q=None, draft_calls=None, log_Z=None, nonfinite_step=None,
              extras=None) -> DecodeInfo:
    """A DecodeInfo with the defaults filled in (broadcast to n samples)."""
    def ints(v, fill):
        return jnp.broadcast_to(jnp.asarray(fill if v is None else v, jnp.int32), (n,))
    dt = jnp.asarray(log_p).dtype
    nan = jnp.full((n,), jnp.nan, dt)
    return DecodeInfo(ints(target_calls, 0), ints(draft_calls, 0), jnp.asarray(log_p),
                      nan if log_q is None else jnp.asarray(log_q), nan if log_Z is None else jnp.asarray(log_Z),
                      ints(nonfinite_step, -1), extras)


def gather_logp(logp, tok):
    """``logp[..., tok]`` for integer tokens of the leading shape."""
    return jnp.take_along_axis(logp, tok[..., None], axis=-1)[..., 0]


# ---------------------------------------------------------------------------------------
# Ancestral sampling
# ---------------------------------------------------------------------------------------
def sample(lm: LanguageModel, keys, transform: Transform = identity, cached: bool = True, prompt=None,
           precision: str = "high"):
    """Ancestral decoding: ``x_i ~ transform(p(. | x_<i), i)`` for i = P .. L-1 (P the prompt length).

    keys: ``[B]`` PRNG keys, one per sample (:func:`sample_keys`); position i of sample b draws with
    ``fold_in(keys[b], i)``, so a sample does not depend on the batch.  ``cached``: use the model's
    cached path (else the prefix is recomputed each step: same tokens, one call per step either way).
    Returns tokens ``int32[B, L]`` and a :class:`DecodeInfo` (``target_calls`` = L - P, or L with a
    prompt on the cached path, which must consume the prompt one position per call).
    """
    keys = check_keys(keys)
    B, L, V = keys.shape[0], lm.length, lm.vocab_size
    prompt = check_prompt(prompt, lm)
    P = 0 if prompt is None else int(prompt.shape[0])
    init, step = _cached_path(lm, cached)
    x0 = jnp.zeros((B, L), jnp.int32)
    if P:
        x0 = x0.at[:, :P].set(jnp.asarray(prompt, jnp.int32)[None, :])
    # the uncached path's state is the token buffer: it starts from the prompt
    state0 = init(B) if (cached and lm.cached) else x0

    def body(carry, pos):
        x, state, lp, lq, bad = carry
        prev = jax.lax.dynamic_index_in_dim(x, jnp.maximum(pos - 1, 0), axis=1, keepdims=False)
        logp, state = step(state, prev, pos)
        logq = transform(logp, pos)
        ks = jax.vmap(jax.random.fold_in, in_axes=(0, None))(keys, pos)
        tok = jax.vmap(lambda k, l: categorical(k, l, precision))(ks, logq)
        given = pos < P
        tok = jnp.where(given, jax.lax.dynamic_index_in_dim(x, pos, axis=1, keepdims=False), tok)
        x = jax.lax.dynamic_update_index_in_dim(x, tok, pos, axis=1)
        lp = lp + jnp.where(given, 0.0, gather_logp(logp, tok))
        lq = lq + jnp.where(given, 0.0, gather_logp(logq, tok))
        nonfinite = ~jnp.all(jnp.isfinite(logp), axis=-1) & ~given
        bad = jnp.where((bad < 0) & nonfinite, pos, bad)
        return (x, state, lp, lq, bad), None

    dt = jnp.float64 if jax.config.jax_enable_x64 else jnp.float32
    z = jnp.zeros((B,), dt)
    # the prompt is consumed by the cached path one position per call; the uncached path skips it
    start = 0 if (cached and lm.cached) else P
    carry = (x0, state0, z, z, jnp.full((B,), -1, jnp.int32))
    (x, _, lp, lq, bad), _ = jax.lax.scan(body, carry, jnp.arange(start, L, dtype=jnp.int32))
    return x, make_info(B, L - start, lp, lq, nonfinite_step=bad)


# ---------------------------------------------------------------------------------------
# Checks
# ---------------------------------------------------------------------------------------
def check_keys(keys):
    keys = jnp.asarray(keys)
    if jnp.issubdtype(keys.dtype, jax.dtypes.prng_key):
        if keys.ndim != 1:
            raise ValueError(f"keys: expected one typed PRNG key per sample, shape [B], got {keys.shape}")
        return keys
    if keys.ndim != 2 or keys.shape[-1] != 2 or keys.dtype != jnp.uint32:
        raise ValueError(f"keys: expected [B, 2] uint32 PRNG keys (samplax.decoding.sample_keys(key, n)), "
                         f"got shape {keys.shape} dtype {keys.dtype}")
    return keys


def check_prompt(prompt, lm: LanguageModel):
    if prompt is None:
        return None
    p = np.asarray(prompt)
    if p.ndim != 1 or not np.issubdtype(p.dtype, np.integer):
        raise ValueError(f"prompt: expected a 1-D integer token array, got shape {p.shape} dtype {p.dtype}")
    if p.shape[0] >= lm.length:
        raise ValueError(f"prompt: length {p.shape[0]} leaves nothing to decode (model length {lm.length})")
    if p.size and (p.min() < 0 or p.max() >= lm.vocab_size):
        raise ValueError(f"prompt: tokens must be in [0, {lm.vocab_size}), got {p.tolist()}")
    return p.astype(np.int32)


def check_positive(name: str, v) -> float:
    ok = isinstance(v, (int, float, np.floating, np.integer)) and not isinstance(v, bool) and math.isfinite(v) and v > 0
    if not ok:
        raise ValueError(f"{name}: must be a finite number > 0, got {v!r}")
    return float(v)


def check_int(name: str, v, minimum: int = 1) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < minimum:
        raise ValueError(f"{name}: must be an integer >= {minimum}, got {v!r}")
    return int(v)


def check_prob(name: str, v) -> float:
    ok = isinstance(v, (int, float, np.floating, np.integer)) and not isinstance(v, bool) and math.isfinite(v) \
        and 0 < v <= 1
    if not ok:
        raise ValueError(f"{name}: must be a number in (0, 1], got {v!r}")
    return float(v)
