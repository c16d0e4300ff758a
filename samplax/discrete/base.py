"""The types every masked-diffusion sampler shares, and the numerics they must get right.

Conventions (``docs/discrete.md``):

* Tokens are int32 ids ``0 .. V-1``; the MASK id is ``V`` (``model.vocab_size``).  A batch of
  sequences is ``int32[B, L]``.
* Time ``t`` runs from 1 (every token masked) to 0 (clean).  A :class:`MaskSchedule` gives
  ``alpha(t)``, the probability that a token is unmasked at time t (the forward process masks each
  token independently; Sahoo et al. 2024, "Simple and Effective Masked Diffusion Language Models",
  Sec. 2; Shi et al. 2024, "Simplified and Generalized Masked Diffusion", eq. 1).
* A :class:`DiscreteModel` maps ``(x int32[B, L], t float[B]) -> log p float[B, L, V]``: the
  log-probabilities of each position's *clean* token given the partially masked sequence.  Revealed
  positions return their own token's log one-hot ("carry-over unmasking", MDLM Sec. 3.2.1), and
  impossible tokens are clipped at :data:`LOG_ZERO` (never ``-inf``), so ``p log p``, softmax and
  Gumbel-max are NaN-free.  One batched call is one model evaluation (NFE) of every sample in the
  batch that is still being decoded.
* A :class:`DiscreteSampler` is a pure ``run(model, x, keys) -> (x, DecodeInfo)``; :func:`decode`
  gives sample i the key ``fold_in(key, index_offset + i)`` so a sample never depends on the batch
  size, the chunking or the device count.

Categorical sampling precision.  Gumbel-max in float32 with ``u ~ U[0, 1)`` on a 2^-23 grid (JAX's
float32 uniform has 23 random bits) cannot produce a Gumbel larger than ``-log(-log(1 - 2^-23)) ~
15.9`` (and none below ~-4.5): a token whose log-probability is more than ~16 below the leader's is
rarely drawn and one more than ~20.4 below it never, and the tail mass lost over many rare
tokens acts like a lowered temperature (Zheng et al. 2024, "Masked Diffusion Models are Secretly
Time-Agnostic Masked Models and Exploit Inaccurate Categorical Sampling", Sec. 4).  Our default
(``precision="high"``) builds its exponential ``E`` (Gumbel = -log E) from 64 random bits with
resolution 2^-64 at both ends of the uniform, so the Gumbel is exact in float32 from about -3.8 to
45, tails of probability < 1e-19 (float64's own 53-bit uniform stops at ~36.7).  It
costs twice the random bits of a float32 uniform (about 3.5x the time of ``jax.random.gumbel`` on
CPU, measured in docs/benchmarks/discrete_core.md) and needs no float64 (TPUs have none).  ``"float64"`` is JAX's float64 Gumbel (needs x64) and
``"float32"`` JAX's ``random.categorical`` in float32, the truncated one, kept for the reproduction.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

Array = jnp.ndarray

LOG_ZERO = -1e30
PRECISIONS = ("high", "float64", "float32")
CONFIDENCES = ("max_prob", "margin", "neg_entropy")


# ---------------------------------------------------------------------------------------
# Masking schedules
# ---------------------------------------------------------------------------------------
class MaskSchedule(NamedTuple):
    """``alpha(t)``: probability that a token is unmasked at time t (alpha(0) = 1, alpha(1) = 0,
    decreasing); ``t_from_alpha`` its inverse."""
    name: str
    alpha: Callable
    t_from_alpha: Callable


def _linear():
    return MaskSchedule("linear", lambda t: 1.0 - t, lambda a: 1.0 - a)


def _cosine():
    return MaskSchedule("cosine", lambda t: jnp.cos(0.5 * jnp.pi * t),
                        lambda a: 2.0 / jnp.pi * jnp.arccos(jnp.clip(a, 0.0, 1.0)))


def _poly2():
    return MaskSchedule("poly2", lambda t: 1.0 - t ** 2, lambda a: jnp.sqrt(jnp.clip(1.0 - a, 0.0, 1.0)))


MASK_SCHEDULES = {"linear": _linear, "cosine": _cosine, "poly2": _poly2}


def mask_schedule(name: str) -> MaskSchedule:
    if name not in MASK_SCHEDULES:
        raise ValueError(f"schedule: unknown masking schedule {name!r}; allowed: {sorted(MASK_SCHEDULES)}")
    return MASK_SCHEDULES[name]()


# ---------------------------------------------------------------------------------------
# Models
# ---------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class DiscreteModel:
    """A masked-diffusion denoiser: ``fn(x int32[B, L], t float[B]) -> log p float[B, L, V]``.

    ``time_agnostic``: the output does not depend on t (the exact denoiser, time-agnostic networks);
    samplers may then reuse an output while the sequence is unchanged (MDLM's caching)."""
    fn: Callable
    vocab_size: int
    length: int
    time_agnostic: bool = False
    name: str = "model"

    @property
    def mask_id(self) -> int:
        return self.vocab_size

    def __call__(self, x, t):
        return self.fn(x, t)


def carry_over(logp, x, mask_id: int):
    """Revealed positions get their own token's log one-hot; impossible tokens sit at LOG_ZERO."""
    v = logp.shape[-1]
    onehot = jax.nn.one_hot(jnp.minimum(x, v - 1), v, dtype=bool)
    fixed = jnp.where(onehot, 0.0, LOG_ZERO).astype(logp.dtype)
    return jnp.where((x != mask_id)[..., None], fixed, jnp.maximum(logp, LOG_ZERO))


def check_tokens(x, model: DiscreteModel, what: str = "x") -> None:
    """Shape and dtype of a start sequence (host-side check, before tracing)."""
    shape, dtype = getattr(x, "shape", None), getattr(x, "dtype", None)
    if shape is None or len(shape) != 2 or shape[1] != model.length:
        raise ValueError(f"{what}: expected int tokens of shape (batch, {model.length}), got shape {shape}")
    if not jnp.issubdtype(dtype, jnp.integer):
        raise ValueError(f"{what}: expected integer tokens (0..{model.vocab_size - 1}, mask "
                         f"{model.mask_id}), got dtype {dtype}")


# ---------------------------------------------------------------------------------------
# Categorical sampling
# ---------------------------------------------------------------------------------------
def _exponential_fine(key, shape, dtype):
    """Exp(1) noise from 64 random bits per draw, exact in both tails at the dtype's relative
    precision: with U the 64-bit integer of two uint32 words (hi, lo), v = (U + 1/2) 2^-64 and
    1 - v = (~U + 1/2) 2^-64 are both formed from the bits (``~`` the bitwise complement), so
    ``E = -log1p(-v)`` (v < 1/2) and ``E = -log(1 - v)`` (v >= 1/2) see a uniform whose resolution near 0
    and near 1 is 2^-64: E is exact from ~5e-20 up to ~45."""
    b = jax.random.bits(key, tuple(shape) + (2,), jnp.uint32)
    scale = jnp.asarray(2.0 ** -32, dtype)

    def uniform(hi, lo):
        return (hi.astype(dtype) + (lo.astype(dtype) + 0.5) * scale) * scale
    v = uniform(b[..., 0], b[..., 1])
    w = uniform(~b[..., 0], ~b[..., 1])
    return jnp.where(v < 0.5, -jnp.log1p(-v), -jnp.log(w))


def gumbel(key, shape, dtype=jnp.float32, precision: str = "high"):
    """Standard Gumbel noise.  ``"high"``: ``-log(E)`` with E the 64-bit exponential of
    :func:`_exponential_fine` (exact in float32 from about -3.8 to 45: tails beyond carry
    probability < 1e-19); ``"float64"``: ``jax.random.gumbel`` in float64; ``"float32"``:
    ``jax.random.gumbel`` in float32 (truncated to [-4.47, 15.94] in jax 0.10.2)."""
    if precision == "high":
        return -jnp.log(_exponential_fine(key, shape, dtype))
    if precision == "float64":
        _need_x64("precision='float64'")
        return jax.random.gumbel(key, shape, jnp.float64)
    if precision == "float32":
        return jax.random.gumbel(key, shape, jnp.float32)
    raise ValueError(f"precision: unknown {precision!r}; allowed: {list(PRECISIONS)}")


def _need_x64(what: str) -> None:
    if not jax.config.jax_enable_x64:
        raise ValueError(f"{what} needs float64: enable it with jax.config.update('jax_enable_x64', True) "
                         f"or `with jax.enable_x64(True):`; allowed without it: precision='high' (the default)")


def categorical(key, logp, precision: str = "high"):
    """Draw from the categorical with log-probabilities (or logits) ``logp`` over the last axis by
    Gumbel-max; see the module docstring for ``precision``."""
    if precision == "float32":
        return jax.random.categorical(key, logp.astype(jnp.float32), axis=-1).astype(jnp.int32)
    if precision == "float64":
        _need_x64("precision='float64'")
        lp = logp.astype(jnp.float64)
        return jnp.argmax(lp + gumbel(key, lp.shape, jnp.float64, "float64"), axis=-1).astype(jnp.int32)
    if precision != "high":
        raise ValueError(f"precision: unknown {precision!r}; allowed: {list(PRECISIONS)}")
    dtype = jnp.float64 if logp.dtype == jnp.float64 else jnp.float32
    lp = logp.astype(dtype)
    return jnp.argmax(lp + gumbel(key, lp.shape, dtype, "high"), axis=-1).astype(jnp.int32)


def check_precision(precision: str) -> str:
    if precision not in PRECISIONS:
        raise ValueError(f"precision: unknown {precision!r}; allowed: {list(PRECISIONS)}")
    if precision == "float64":
        _need_x64("precision='float64'")
    return precision


# ---------------------------------------------------------------------------------------
# Confidence
# ---------------------------------------------------------------------------------------
def entropy(logp):
    """Shannon entropy (nats) over the last axis; NaN-free at zero probabilities."""
    p = jnp.exp(logp)
    return -jnp.sum(jnp.where(p > 0, p * logp, 0.0), axis=-1)


def confidence(logp, kind: str = "max_prob"):
    """Per-position confidence of a prediction: ``"max_prob"`` (largest probability), ``"margin"``
    (largest minus second largest), ``"neg_entropy"`` (minus the entropy)."""
    if kind == "max_prob":
        return jnp.exp(jnp.max(logp, axis=-1))
    if kind == "margin":  # two max passes: lax.top_k is a sort on CPU
        first = jnp.argmax(logp, axis=-1)
        l1 = jnp.max(logp, axis=-1)
        l2 = jnp.max(jnp.where(jax.nn.one_hot(first, logp.shape[-1], dtype=bool), -jnp.inf, logp), axis=-1)
        return jnp.exp(l1) - jnp.exp(l2)
    if kind == "neg_entropy":
        return -entropy(logp)
    raise ValueError(f"confidence: unknown kind {kind!r}; allowed: {list(CONFIDENCES)}")


def check_confidence(kind: str) -> str:
    if kind not in CONFIDENCES:
        raise ValueError(f"confidence: unknown kind {kind!r}; allowed: {list(CONFIDENCES)}")
    return kind


# ---------------------------------------------------------------------------------------
# Samplers
# ---------------------------------------------------------------------------------------
class DecodeInfo(NamedTuple):
    nfe: Array             # int32[B]: model calls spent on this sample
    steps: Array           # int32[B]: decoding steps this sample took
    nonfinite_step: Array  # int32[B]: first step whose model output was non-finite for it, -1 if none


class DiscreteSampler(NamedTuple):
    """``run(model, x int32[B, L], keys [B]) -> (x int32[B, L], DecodeInfo)``: decodes the MASK
    positions of ``x`` (revealed ones are a prompt / infill and stay).  ``max_calls(L)``: an upper
    bound of the NFE per sample (None: ``L``); ``extra_calls``: the rule spends model calls beyond
    one per decoding step (information gain).  ``model_for(model, hmm) -> model``: the model the
    sampler really runs on, built from the exact problem ``hmm`` (bitstream diffusion: the exact
    continuous bit denoiser), or None: the model as given (the runner refuses such a sampler on a
    model without an exact problem)."""
    name: str
    run: Callable
    options: dict
    extra_calls: bool = False
    max_calls: Optional[Callable] = None
    model_for: Optional[Callable] = None


def sample_keys(key, n: int, index_offset=0):
    """Key of sample i: ``fold_in(key, index_offset + i)``."""
    idx = jnp.asarray(index_offset, jnp.int32) + jnp.arange(n, dtype=jnp.int32)
    return jax.vmap(jax.random.fold_in, in_axes=(None, 0))(key, idx)


def all_masked(model: DiscreteModel, n: int):
    return jnp.full((n, model.length), model.mask_id, jnp.int32)


def decode(sampler: DiscreteSampler, model: DiscreteModel, key, n: Optional[int] = None, index_offset=0, x=None):
    """Decode ``n`` sequences (or the masked positions of ``x``) with per-sample keys."""
    if x is None:
        if n is None:
            raise ValueError("decode: give n (number of sequences) or x (start tokens)")
        # the barrier keeps XLA from constant-folding the decode loop over a constant start
        x = jax.lax.optimization_barrier(all_masked(model, n))
    else:
        check_tokens(x, model)
        x = jnp.asarray(x, jnp.int32)
    keys = sample_keys(key, x.shape[0], index_offset)
    return sampler.run(model, x, keys)


def nonfinite_any(logp, masked):
    """Per sample: is the model output non-finite at a position being decoded?"""
    bad = ~jnp.all(jnp.isfinite(logp), axis=-1)
    return jnp.any(bad & masked, axis=-1)


def first_step(old, flag, step):
    """Record the first step a per-sample flag was set (-1 until then)."""
    return jnp.where((old < 0) & flag, step, old)


def check_int(name: str, v, minimum: int = 1) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < minimum:
        raise ValueError(f"{name}: must be an integer >= {minimum}, got {v!r}")
    return int(v)


def check_unit(name: str, v, low_open: bool = True, high_closed: bool = True) -> float:
    ok = isinstance(v, (int, float, np.floating, np.integer)) and not isinstance(v, bool) and math.isfinite(v)
    if ok:
        ok = (v > 0 if low_open else v >= 0) and (v <= 1 if high_closed else v < 1)
    if not ok:
        lo, hi = ("(" if low_open else "["), ("]" if high_closed else ")")
        raise ValueError(f"{name}: must be a number in {lo}0, 1{hi}, got {v!r}")
    return float(v)
