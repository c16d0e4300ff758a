"""Exact tiny sequence distributions: hidden Markov models (a Markov chain is an HMM whose emission
matrix is the identity) over short token sequences.

Everything a masked-diffusion sampler could want is exact here:

* :func:`conditionals`: ``log p(x_i = v | every revealed token)`` for every position at once, by the
  forward-backward recursions (Rabiner 1989, eqs. 18-25) with the emission likelihood of a masked
  position set to 1.  That is the exact masked-diffusion denoiser of a time-agnostic model
  (Zheng et al. 2024: the optimal denoiser does not depend on t given the mask pattern), so
  :func:`exact_model` is a :class:`~samplax.discrete.base.DiscreteModel`.
* :func:`log_prob` of a full sequence (the forward algorithm) and :func:`enumerate_log_probs`, the
  exact probability of every one of the ``V**L`` sequences, indexed by :func:`sequence_index`
  (base V, first token most significant): the ground truth of total-variation and chi-square tests.
* :func:`true_samples`: ancestral samples of the HMM itself.

The named problems (``samplax/problems/<name>.json``: ``markov4x8``, ``hmm8x5``, ``markov16x4``) are
generated once with numpy and stored, so they do not change with numpy's generators.  The recursions
are scaled (normalised each step); computations run in float64 when x64 is on, else float32.
"""
from __future__ import annotations

import functools
import json
import os
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from samplax.discrete.base import LOG_ZERO, DiscreteModel, carry_over

PROBLEMS = ("markov4x8", "hmm8x5", "markov16x4")
_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "problems")
MAX_ENUMERATE = 2 ** 22


class HMM(NamedTuple):
    """init[H], trans[H, H] (rows: from), emit[H, V] (rows: hidden state), and the sequence length."""
    init: np.ndarray
    trans: np.ndarray
    emit: np.ndarray
    length: int
    name: str = "hmm"

    @property
    def vocab_size(self) -> int:
        return int(np.shape(self.emit)[1])

    @property
    def num_states(self) -> int:
        return int(np.shape(self.init)[0])

    @property
    def num_sequences(self) -> int:
        return self.vocab_size ** self.length


def _stochastic(name: str, a, shape_what: str) -> np.ndarray:
    a = np.asarray(a, np.float64)
    if np.any(~np.isfinite(a)) or np.any(a < 0):
        raise ValueError(f"{name}: must be finite and non-negative ({shape_what})")
    s = a.sum(-1, keepdims=True)
    if np.any(s <= 0):
        raise ValueError(f"{name}: every row must have positive mass ({shape_what})")
    return a / s


def make_hmm(init, trans, emit, length: int, name: str = "hmm") -> HMM:
    """An HMM with rows renormalised; checks shapes and values."""
    init = _stochastic("init", init, "a probability vector over hidden states")
    trans = _stochastic("trans", trans, "rows: transition probabilities")
    emit = _stochastic("emit", emit, "rows: emission probabilities over tokens")
    h = init.shape[0]
    if init.ndim != 1 or trans.shape != (h, h) or emit.ndim != 2 or emit.shape[0] != h:
        raise ValueError(f"hmm: shapes init {init.shape}, trans {trans.shape}, emit {emit.shape}; "
                         f"expected (H,), (H, H), (H, V)")
    if isinstance(length, bool) or not isinstance(length, (int, np.integer)) or length < 1:
        raise ValueError(f"length: must be an integer >= 1, got {length!r}")
    return HMM(init, trans, emit, int(length), name)


def markov_chain(init, trans, length: int, name: str = "markov") -> HMM:
    """A Markov chain over tokens (emission = identity)."""
    v = np.shape(init)[0]
    return make_hmm(init, trans, np.eye(v), length, name)


def random_hmm(seed: int, num_states: int, vocab_size: int, length: int, concentration: float = 0.5,
               emit_concentration: float = 0.5, markov: bool = False) -> HMM:
    """A random HMM (or Markov chain when ``markov``) with Dirichlet rows, for tests."""
    rng = np.random.default_rng(seed)
    if markov:
        num_states = vocab_size
    init = rng.dirichlet(np.ones(num_states))
    trans = rng.dirichlet(np.full(num_states, concentration), size=num_states)
    emit = np.eye(vocab_size) if markov else rng.dirichlet(np.full(vocab_size, emit_concentration), size=num_states)
    return make_hmm(init, trans, emit, length, f"random{seed}")


@functools.lru_cache(maxsize=None)
def load_problem(name: str) -> HMM:
    """A named problem (``samplax/problems/<name>.json``)."""
    if name not in PROBLEMS:
        raise ValueError(f"problem: unknown discrete problem {name!r}; allowed: {list(PROBLEMS)}")
    with open(os.path.join(_DIR, name + ".json")) as f:
        d = json.load(f)
    return make_hmm(d["init"], d["trans"], d["emit"], d["length"], name)


def _dtype():
    return jnp.float64 if jax.config.jax_enable_x64 else jnp.float32


def _arrays(hmm: HMM):
    dt = _dtype()
    return jnp.asarray(hmm.init, dt), jnp.asarray(hmm.trans, dt), jnp.asarray(hmm.emit, dt)


def conditionals(hmm: HMM, x):
    """Exact ``log p(x_i = v | revealed tokens of x)``, float[L, V], for one sequence ``x`` int[L]
    (MASK = V); revealed positions get their log one-hot.  Forward-backward with scaling:

        f_i = normalise((f_{i-1} T  or  pi) * e_i),      e_i(h) = E[h, x_i] if revealed else 1
        b_i = normalise(T (e_{i+1} * b_{i+1})),           b_{L-1} = 1
        p(x_i = v | rest) ∝ sum_h (f_{i-1} T or pi)(h) b_i(h) E[h, v].
    """
    init, trans, emit = _arrays(hmm)
    v = emit.shape[1]
    x = jnp.asarray(x, jnp.int32)
    revealed = x != v
    tiny = jnp.finfo(init.dtype).tiny
    lik = jnp.where(revealed[:, None], emit[:, jnp.minimum(x, v - 1)].T, 1.0)  # [L, H]

    def fwd(f_prev, e):
        pred = f_prev @ trans
        f = pred * e
        return f / jnp.maximum(f.sum(), tiny), pred / jnp.maximum(pred.sum(), tiny)

    f0 = init * lik[0]
    f0 = f0 / jnp.maximum(f0.sum(), tiny)
    _, preds = jax.lax.scan(fwd, f0, lik[1:])
    preds = jnp.concatenate([init[None], preds], axis=0)  # prior of h_i given revealed x_{<i}

    def bwd(b_next, e_next):
        b = trans @ (e_next * b_next)
        b = b / jnp.maximum(b.sum(), tiny)
        return b, b

    ones = jnp.ones_like(init)
    _, bs = jax.lax.scan(bwd, ones, lik[1:], reverse=True)
    bs = jnp.concatenate([bs, ones[None]], axis=0)
    post = preds * bs                                     # p(h_i | revealed x_{-i}) up to a constant
    probs = post @ emit                                    # [L, V]
    probs = probs / jnp.maximum(probs.sum(-1, keepdims=True), tiny)
    logp = jnp.where(probs > 0, jnp.log(jnp.maximum(probs, tiny)), LOG_ZERO)
    return carry_over(logp, x, v)


def log_prob(hmm: HMM, x):
    """``log p(x)`` of one full sequence ``x`` int[L] (no MASK), by the scaled forward algorithm."""
    init, trans, emit = _arrays(hmm)
    x = jnp.asarray(x, jnp.int32)
    tiny = jnp.finfo(init.dtype).tiny

    def fwd(carry, xi):
        f, logz = carry
        f = (f @ trans) * emit[:, xi]
        z = f.sum()
        return (f / jnp.maximum(z, tiny), logz + jnp.log(jnp.maximum(z, tiny))), None

    f0 = init * emit[:, x[0]]
    z0 = f0.sum()
    (_, logz), _ = jax.lax.scan(fwd, (f0 / jnp.maximum(z0, tiny), jnp.log(jnp.maximum(z0, tiny))), x[1:])
    return logz


def all_sequences(vocab_size: int, length: int) -> np.ndarray:
    """Every sequence, int32[V**L, L], in :func:`sequence_index` order."""
    n = vocab_size ** length
    if n > MAX_ENUMERATE:
        raise ValueError(f"enumerate: {vocab_size}**{length} = {n} sequences is more than {MAX_ENUMERATE}")
    idx = np.arange(n, dtype=np.int64)
    digits = [(idx // vocab_size ** (length - 1 - i)) % vocab_size for i in range(length)]
    return np.stack(digits, axis=1).astype(np.int32)


def sequence_index(x, vocab_size: int):
    """Index of each sequence (last axis) in base ``vocab_size``, first token most significant."""
    x = np.asarray(x, np.int64)
    length = x.shape[-1]
    weights = vocab_size ** np.arange(length - 1, -1, -1, dtype=np.int64)
    return (x * weights).sum(-1)


@functools.lru_cache(maxsize=16)
def _enumerate_cached(hmm_key) -> np.ndarray:
    hmm = _HMM_BY_KEY[hmm_key]
    seqs = all_sequences(hmm.vocab_size, hmm.length)
    with jax.enable_x64(True):
        f = jax.jit(jax.vmap(lambda s: log_prob(hmm, s)))
        out = np.concatenate([np.asarray(f(jnp.asarray(seqs[i:i + 65536])))
                              for i in range(0, len(seqs), 65536)])
    out.setflags(write=False)
    return out


_HMM_BY_KEY: dict = {}


def _key(hmm: HMM):
    return (hmm.name, hmm.length, np.asarray(hmm.init).tobytes(), np.asarray(hmm.trans).tobytes(),
            np.asarray(hmm.emit).tobytes())


def enumerate_log_probs(hmm: HMM) -> np.ndarray:
    """float64[V**L]: the exact log-probability of every sequence (cached per HMM)."""
    k = _key(hmm)
    _HMM_BY_KEY[k] = hmm
    return _enumerate_cached(k)


def true_samples(hmm: HMM, key, n: int):
    """``n`` exact samples int32[n, L] by ancestral sampling of the HMM (sample i keyed by
    ``fold_in(key, i)``)."""
    init, trans, emit = _arrays(hmm)
    log_init, log_trans, log_emit = (jnp.log(jnp.maximum(a, 1e-300 if a.dtype == jnp.float64 else 1e-38))
                                     for a in (init, trans, emit))

    def one(k):
        k0, k1 = jax.random.split(k)
        h0 = jax.random.categorical(jax.random.fold_in(k0, 0), log_init)

        def step(h, i):
            kh, kx = jax.random.split(jax.random.fold_in(k1, i))
            x = jax.random.categorical(kx, log_emit[h])
            h_next = jax.random.categorical(kh, log_trans[h])
            return h_next, x
        _, xs = jax.lax.scan(step, h0, jnp.arange(hmm.length))
        return xs.astype(jnp.int32)

    keys = jax.vmap(jax.random.fold_in, in_axes=(None, 0))(key, jnp.arange(n))
    return jax.vmap(one)(keys)


def table_model(hmm: HMM) -> DiscreteModel:
    """The same exact denoiser as :func:`exact_model`, by brute force over the enumerated joint: a
    sum over the V^L sequences consistent with the revealed tokens.  Cheap to compile and
    independent of the forward-backward code, for tiny problems (tests, cross-checks)."""
    import itertools

    v, n = hmm.vocab_size, hmm.length
    seqs = jnp.asarray(np.array(list(itertools.product(range(v), repeat=n))), jnp.int32)
    w = jnp.asarray(np.exp(enumerate_log_probs(hmm)))
    onehot = jax.nn.one_hot(seqs, v, dtype=w.dtype)

    def fn(x, t):
        del t
        consistent = jnp.all((x[:, None, :] == v) | (x[:, None, :] == seqs[None]), axis=-1)
        marg = jnp.einsum("bs,slv->blv", jnp.where(consistent, w[None], 0.0), onehot)
        return carry_over(jnp.log(marg / jnp.sum(marg, axis=-1, keepdims=True)), x, v)

    return DiscreteModel(fn=fn, vocab_size=v, length=n, time_agnostic=True, name=f"table:{hmm.name}")


def exact_model(hmm: HMM) -> DiscreteModel:
    """The exact masked-diffusion denoiser of ``hmm`` as a time-agnostic DiscreteModel (float32
    output unless x64 is on)."""
    def fn(x, t):
        del t
        return jax.vmap(lambda s: conditionals(hmm, s))(x)
    return DiscreteModel(fn=fn, vocab_size=hmm.vocab_size, length=hmm.length, time_agnostic=True,
                         name=f"exact:{hmm.name}")
