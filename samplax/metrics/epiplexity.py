"""Epiplexity and time-bounded entropy of a set of samples, by prequential coding.

Finzi, Qiu, Jiang, Izmailov, Kolter, Wilson, "From Entropy to Epiplexity: Rethinking
Information for Computationally Bounded Intelligence" (arXiv:2601.03220, 2026).

The paper (Section 3) splits the information in a random variable X for an observer that may
only run programs within a time bound T: among the time-bounded probabilistic programs P,
take the one minimising the two-part code length ``|P| + E[log 1/P(X)]`` (a time-bounded MDL);
its length ``|P*|`` is the *epiplexity* S_T(X) (the structure the observer can extract) and its
expected code length of the data ``E[log 1/P*(X)]`` is the *time-bounded entropy* H_T(X) (what
stays random to it).  Neither is computable; Section 4 estimates them with a neural network
trained on the data within a compute budget:

* prequential coding (Dawid; Blier & Ollivier 2018): the data are sent in order, each batch
  coded with the model trained on the batches before it, so the total prequential code
  length ``L_preq = sum_i log 1/P_{theta_i}(Z_i)`` is a valid code for the data *and* the
  model, without sending weights.  The paper reads the model's share off the loss curve:
  ``S ~ sum_i [log 1/P_{theta_i}(Z_i) - log 1/P_{theta_M}(Z_i)]``, the area of the
  prequential loss curve above the final model's loss, and ``H ~ sum_i log 1/P_{theta_M}(Z_i)``,
  the final model's code length of the data (final loss x tokens).  Here the final loss per
  token is measured on ``eval_size`` held-out samples (on the coded ones a model that memorises
  would score below the entropy: i.i.d. noise then showed 17% of its bits as "epiplexity"), H
  is that loss x the coded tokens and S = L_preq - H (:func:`prequential_code`); S may come out
  slightly negative when nothing is learnt (the held-out loss ends above the start).
* "requential" coding (a student coded against a teacher's predictions, the cumulative KL
  being the code length of the student) is the paper's tighter variant; it needs a teacher
  and is NOT implemented here (docs/epiplexity.md).

The observer here (the compute bound, all parameters of :func:`epiplexity`): an exactly
autoregressive one-hidden-layer MADE (Germain et al. 2015) over the ``L`` positions of a
sequence of ``K``-ary tokens -- ``hidden`` units with ReLU and a masked direct (logistic)
connection from earlier tokens -- trained once over the data by Adam (``learning_rate``)
with a fixed ``batch_size`` for a fixed number of ``steps`` (``steps * batch_size`` samples,
each seen once), in one jitted ``lax.scan``, vmapped over ``seeds`` (each seed: its own
order of the samples and its own initial weights).  The output layer starts at zero, so the
first batch is coded with the uniform model at exactly ``log2 K`` bits per token.

Continuous samples (images) are first quantised to ``bins`` levels (:func:`quantize`); for the
digits in [-1, 1] with ``bins=17`` this recovers the data set's raw grey levels 0..16 exactly.

All code lengths are in bits.
"""
from __future__ import annotations

import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

LN2 = math.log(2.0)

#: Defaults of the observer (the compute bound); see :func:`epiplexity`.
DEFAULTS = dict(hidden=128, batch_size=16, steps=64, learning_rate=3e-3, eval_size=256, direct=True,
                seeds=(0, 1, 2))


class Code(NamedTuple):
    """One prequential pass per seed (leading axis: seeds).

    ``prequential_bits``: total prequential code length of the ``n`` coded samples;
    ``entropy_bits``: the final model's held-out loss per token x the coded tokens (H_T estimate);
    ``epiplexity_bits``: their difference (S_T estimate); ``curve``: the prequential code
    length of each step's batch in bits per token, shape (seeds, steps)."""
    prequential_bits: np.ndarray
    entropy_bits: np.ndarray
    epiplexity_bits: np.ndarray
    curve: np.ndarray


class Epiplexity(NamedTuple):
    """Summary of :func:`epiplexity`: means and standard deviations over seeds (``*_std``,
    ddof 1; 0 for one seed), totals in bits for ``n_samples`` samples of ``length`` tokens,
    and the per-seed :class:`Code`."""
    epiplexity_bits: float
    epiplexity_std: float
    entropy_bits: float
    entropy_std: float
    prequential_bits: float
    n_samples: int
    length: int
    num_classes: int
    code: Code

    @property
    def entropy_bits_per_token(self) -> float:
        return self.entropy_bits / (self.n_samples * self.length)

    def as_dict(self) -> dict:
        """The JSON-able summary used as a metric row (no curves)."""
        return dict(epiplexity_bits=self.epiplexity_bits, epiplexity_std=self.epiplexity_std,
                    entropy_bits=self.entropy_bits, entropy_std=self.entropy_std,
                    entropy_bits_per_token=self.entropy_bits_per_token,
                    prequential_bits=self.prequential_bits, n_samples=self.n_samples,
                    length=self.length, num_classes=self.num_classes,
                    uniform_bits=self.n_samples * self.length * math.log2(self.num_classes),
                    seeds=len(self.code.entropy_bits))


# ---------------------------------------------------------------------------------------
# The observer: a one-hidden-layer MADE with a direct connection
# ---------------------------------------------------------------------------------------
def made_masks(length: int, num_classes: int, hidden: int):
    """Masks of an exactly autoregressive MADE over ``length`` positions (raster order).

    Hidden unit k has degree ``1 + k mod (length - 1)`` (positions it may see: < degree); the
    output of position t sees hidden units of degree <= t and inputs of positions < t.  Returns
    (input->hidden (L*K, H), hidden->output (H, L*K), direct input->output (L*K, L*K)) float32."""
    pos = np.repeat(np.arange(length), num_classes)              # position of each one-hot input
    deg = 1 + np.arange(hidden) % max(length - 1, 1)             # hidden degrees in 1..L-1
    m_in = (pos[:, None] < deg[None, :]).astype(np.float32)      # input position < degree
    m_out = (deg[:, None] <= pos[None, :]).astype(np.float32)    # degree <= output position
    m_dir = (pos[:, None] < pos[None, :]).astype(np.float32)     # strictly earlier positions
    return m_in, m_out, m_dir


def made_init(key, length: int, num_classes: int, hidden: int, direct: bool = True) -> dict:
    """Weights of the observer: random input layer, zero output layers (the uniform model);
    ``direct``: with the masked direct input->output (logistic) weights."""
    d = length * num_classes
    w1 = jax.random.normal(key, (d, hidden), jnp.float32) / math.sqrt(max(length / 2, 1.0))
    p = dict(w1=w1, b1=jnp.zeros((hidden,), jnp.float32), w2=jnp.zeros((hidden, d), jnp.float32),
             b2=jnp.zeros((d,), jnp.float32))
    if direct:
        p["wd"] = jnp.zeros((d, d), jnp.float32)
    return p


def made_log_probs(params: dict, x, num_classes: int, masks) -> jax.Array:
    """log p(x_t | x_<t) in nats for int tokens ``x`` (n, L): shape (n, L)."""
    m_in, m_out, m_dir = masks
    n, length = x.shape
    oh = jax.nn.one_hot(x, num_classes, dtype=jnp.float32).reshape(n, length * num_classes)
    h = jax.nn.relu(oh @ (params["w1"] * m_in) + params["b1"])
    logits = h @ (params["w2"] * m_out) + params["b2"]
    if "wd" in params:
        logits = logits + oh @ (params["wd"] * m_dir)
    logp = jax.nn.log_softmax(logits.reshape(n, length, num_classes), axis=-1)
    return jnp.take_along_axis(logp, x[..., None], axis=-1)[..., 0]


def code_length_bits(params: dict, x, num_classes: int) -> jax.Array:
    """The observer's code length of each sample, ``-sum_t log2 p(x_t | x_<t)``: shape (n,)."""
    x = jnp.asarray(x)
    masks = made_masks(x.shape[1], num_classes, params["w1"].shape[1])
    return -made_log_probs(params, x, num_classes, masks).sum(axis=1) / LN2


# ---------------------------------------------------------------------------------------
# Prequential coding in one scan
# ---------------------------------------------------------------------------------------
@functools.partial(jax.jit, static_argnames=("num_classes", "hidden", "batch_size", "steps", "eval_size", "direct"))
def _prequential(x, keys, learning_rate, *, num_classes: int, hidden: int, batch_size: int, steps: int,
                 eval_size: int, direct: bool):
    import optax

    n_all, length = x.shape
    masks = made_masks(length, num_classes, hidden)
    opt = optax.adam(learning_rate)
    n_code = steps * batch_size

    def one_seed(key):
        k_perm, k_init = jax.random.split(key)
        order = jax.random.permutation(k_perm, n_all)[: n_code + eval_size]
        xs = x[order[:n_code]].reshape(steps, batch_size, length)
        held = x[order[n_code:]]
        params = made_init(k_init, length, num_classes, hidden, direct)

        def loss(p, xb):  # total nats of the batch
            return -made_log_probs(p, xb, num_classes, masks).sum()

        def step(carry, xb):
            p, s = carry
            nats, g = jax.value_and_grad(loss)(p, xb)   # code the batch, then learn from it
            g = jax.tree_util.tree_map(lambda a: a / (batch_size * length), g)
            upd, s = opt.update(g, s, p)
            return (optax.apply_updates(p, upd), s), nats / LN2

        (final, _), bits = jax.lax.scan(step, (params, opt.init(params)), xs)
        # the final model's loss per token on samples it never saw (the coded ones it has fitted)
        final_loss = -made_log_probs(final, held, num_classes, masks).mean() / LN2
        return bits.sum(), final_loss * (n_code * length), bits / (batch_size * length)

    return jax.vmap(one_seed)(keys)


def _int_arg(name: str, v, lo: int) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < lo:
        raise ValueError(f"{name} must be an integer >= {lo}, got {v!r}")
    return int(v)


def check_options(options: dict, where: str = "epiplexity") -> dict:
    """The observer options (a subset of :data:`DEFAULTS`) completed with the defaults;
    ValueError naming ``where.<option>`` for an unknown option or a bad value (``where`` is the
    config path, e.g. ``config.metrics.epiplexity_options``, or the function name)."""
    if not isinstance(options, dict):
        raise ValueError(f"{where}: must be a mapping of options {sorted(DEFAULTS)}, got {options!r}")
    unknown = sorted(set(options) - set(DEFAULTS))
    if unknown:
        raise ValueError(f"{where}.{unknown[0]}: unknown option; allowed: {sorted(DEFAULTS)}")
    out = dict(DEFAULTS, **options)
    for name, lo in (("hidden", 1), ("batch_size", 1), ("steps", 1), ("eval_size", 1)):
        out[name] = _int_arg(f"{where}.{name}", out[name], lo)
    lr = out["learning_rate"]
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not math.isfinite(lr) or lr < 0:
        raise ValueError(f"{where}.learning_rate: must be a finite number >= 0, got {lr!r}")
    out["learning_rate"] = float(lr)
    if not isinstance(out["direct"], bool):
        raise ValueError(f"{where}.direct: must be True or False, got {out['direct']!r}")
    s = out["seeds"]
    s = tuple(s) if isinstance(s, (list, tuple)) else s
    if not isinstance(s, tuple) or not s or any(
            isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 0 for v in s):
        raise ValueError(f"{where}.seeds: must be a non-empty tuple of integers >= 0, got {out['seeds']!r}")
    out["seeds"] = tuple(int(v) for v in s)
    return out


def _tokens(x, num_classes) -> np.ndarray:
    k = _int_arg("epiplexity: num_classes", num_classes, 2)
    a = np.asarray(x)
    if a.ndim != 2 or a.shape[0] < 1 or a.shape[1] < 1:
        raise ValueError(f"epiplexity: x must be an (n, L) array of int tokens, got shape {a.shape}")
    if not np.issubdtype(a.dtype, np.integer):
        raise ValueError(f"epiplexity: x must hold integer tokens (quantise continuous samples with "
                         f"samplax.metrics.epiplexity.quantize), got dtype {a.dtype}")
    if a.min() < 0 or a.max() >= k:
        raise ValueError(f"epiplexity: tokens must lie in 0..num_classes-1 = 0..{k - 1}, "
                         f"got values in {int(a.min())}..{int(a.max())}")
    return a.astype(np.int32)


def prequential_code(x, num_classes: int, **options) -> Code:
    """Prequential code lengths of ``steps * batch_size`` of the samples ``x`` (int tokens
    (n, L) in 0..num_classes-1), one pass per seed: see the module docstring and :class:`Code`.

    Per seed, a random ``steps * batch_size`` of the n samples in a random order are coded
    and a further ``eval_size`` held out give the final model's loss per token (n must be at
    least ``steps * batch_size + eval_size``).  ``learning_rate=0`` keeps the uniform model:
    every code length is then exactly ``steps * batch_size * L * log2(num_classes)`` bits and
    the epiplexity 0."""
    o = check_options(options)
    a = _tokens(x, num_classes)
    need = o["steps"] * o["batch_size"] + o["eval_size"]
    if a.shape[0] < need:
        raise ValueError(f"epiplexity: need at least steps * batch_size + eval_size = {o['steps']} * "
                         f"{o['batch_size']} + {o['eval_size']} = {need} samples, got {a.shape[0]}")
    keys = jnp.stack([jax.random.PRNGKey(s) for s in o["seeds"]])
    preq, h, curve = _prequential(jnp.asarray(a), keys, jnp.float32(o["learning_rate"]), num_classes=int(num_classes),
                                  hidden=o["hidden"], batch_size=o["batch_size"], steps=o["steps"],
                                  eval_size=o["eval_size"], direct=o["direct"])
    preq, h = np.asarray(preq, np.float64), np.asarray(h, np.float64)
    return Code(prequential_bits=preq, entropy_bits=h, epiplexity_bits=preq - h, curve=np.asarray(curve))


def epiplexity(x, num_classes: int, **options) -> Epiplexity:
    """Epiplexity (S_T) and time-bounded entropy (H_T) estimates of int-token samples ``x``
    (n, L), in bits for ``steps * batch_size`` samples, mean and spread over ``seeds``.

    Options (the compute bound of the observer; defaults :data:`DEFAULTS`): ``hidden`` (MADE
    width), ``direct`` (with the logistic direct connection), ``batch_size``, ``steps``,
    ``learning_rate`` (Adam), ``eval_size`` (held-out samples for the final loss), ``seeds``."""
    o = check_options(options)
    code = prequential_code(x, num_classes, **o)
    ddof = 1 if len(o["seeds"]) > 1 else 0
    return Epiplexity(epiplexity_bits=float(code.epiplexity_bits.mean()),
                      epiplexity_std=float(code.epiplexity_bits.std(ddof=ddof)),
                      entropy_bits=float(code.entropy_bits.mean()), entropy_std=float(code.entropy_bits.std(ddof=ddof)),
                      prequential_bits=float(code.prequential_bits.mean()), n_samples=o["steps"] * o["batch_size"],
                      length=int(np.asarray(x).shape[1]), num_classes=int(num_classes), code=code)


def quantize(x, bins: int, low: float = -1.0, high: float = 1.0) -> np.ndarray:
    """Continuous samples (n, ...) -> int tokens (n, prod(...)) in 0..bins-1: ``bins`` uniform
    levels over [low, high], each value rounded to the nearest level (values outside are
    clipped).  Digits in [-1, 1] with ``bins=17``: level p = the raw grey level p (x = p/8 - 1)."""
    bins = _int_arg("quantize: bins", bins, 2)
    if not (isinstance(low, (int, float)) and isinstance(high, (int, float)) and math.isfinite(low)
            and math.isfinite(high) and low < high):
        raise ValueError(f"quantize: needs finite low < high, got low={low!r}, high={high!r}")
    a = np.asarray(x, np.float64)
    if a.ndim < 2:
        raise ValueError(f"quantize: needs samples (n, ...), got shape {a.shape}")
    if not np.all(np.isfinite(a)):
        raise ValueError("quantize: got non-finite values")
    q = np.rint((a - low) / (high - low) * (bins - 1))
    return np.clip(q, 0, bins - 1).astype(np.int32).reshape(a.shape[0], -1)


__all__ = ["DEFAULTS", "Code", "Epiplexity", "epiplexity", "prequential_code", "code_length_bits", "quantize",
           "made_masks", "made_init", "made_log_probs", "check_options"]
