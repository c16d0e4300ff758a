"""Entropy-gated continuous bitstream diffusion on exact discrete models.

Tokens become fixed-width analog bits and a continuous (VE / EDM, x_sigma = x_0 + sigma eps)
diffusion runs over them; the final continuous sample is rounded back to tokens.

* **Bits** (Chen et al. 2022, "Analog Bits", Sec. 2): token v < V is written with
  ``B = ceil(log2 V)`` binary digits, most significant first (the order of the official bitstream
  code, ``data/lm1b.py``'s raw-binary table), each digit b mapped to the analog value ``2 b - 1``
  (+-1).  A sequence of L tokens is a vector of ``L B`` analog bits, token-major.
  Rounding (:func:`bits_to_tokens`): bit = 1 where the analog value is > 0.  A pattern whose
  integer is >= V (possible only when V is not a power of two) is mapped to the valid token whose
  code correlates most with the analog values, ``argmax_{v < V} <u_i, c(v)>`` -- the maximum-likelihood
  token under the Gaussian channel.  For a valid sign pattern that argmax *is* the sign pattern
  (sign rounding maximises the correlation over all 2^B codes), so the rule only acts on invalid
  patterns.  (The official code drops such tokens from its text output; a sampler here must return
  a token, hence the projection.)
* **Exact denoiser.**  The data distribution over bit vectors is a finite mixture of point masses
  c(s) at the codes of the sequences s, so E[x_0 | x_sigma = u] = sum_s w_s(u) c(s) with
  ``w_s ∝ p(s) exp(<u, c(s)> / sigma^2)`` (the Gaussian likelihood; |c(s)|^2 = L B is the same for every
  s).  :func:`enumerated_denoiser` computes this softmax over all V^L sequences in chunks
  (streaming log-sum-exp), for any enumerated distribution.  For an HMM the posterior over
  sequences is itself an HMM whose per-position evidence is ``exp(<u_i, c(v)> / sigma^2)``, so
  :func:`hmm_denoiser` gets the same expectation by forward-backward in O(L H (H + V)) per sample
  (the tests check the two agree).  ``samplax.models.analytic.GaussianMixture`` with zero-variance
  components would give the same numbers but materialises (batch, V^L, L B) differences, 2^30
  floats for markov4x8 at batch 1024 -- hence the dedicated forms.  Revealed tokens of a prompt
  are hard evidence (their analog bits are ignored).
* **Entropy-rate profile** (Batzolis, Girolami, Ambrogioni 2026, "Towards Closing the Autoregressive
  Gap in Language Modeling via Entropy-Gated Continuous Bitstream Diffusion" / "CoBit",
  arXiv:2605.07013; the paper's text was not available to us, the construction follows its
  official code: ``utils/callbacks/offline_entropy_profile.py`` and
  ``diffusion/continuous/samplers.py``).  The rate on log-sigma bins is ``mmse(sigma) / sigma^2``,
  mmse the total squared error of the (here exact) denoiser; by the I-MMSE relation (Guo, Shamai,
  Verdu 2005, Eq. 1 with snr = 1 / sigma^2) this is exactly ``-dH(X_0 | X_sigma) / d log sigma``
  in nats, so ``integral rate d log sigma = H(X_0)``.  The schedule density is
  ``pdf ∝ g(sigma) rate^power`` with the regulariser ``g = sigma^n / (sigma^n + c^n)``
  (official defaults c = 0.1 in 0/1-bit units, i.e. c = 0.2 for +-1 bits, n = 3, power = 1).
* **Entropic schedule**: the sigma nodes are the inverse CDF of that pdf at equally spaced
  quantiles, so the steps are dense where the conditional entropy falls fastest.
* **Entropy gate** (the paper's stochastic sampler, EDM Algorithm 2's churn, Karras et al. 2022):
  before the step at node i, noise is added, ``sigma_hat = sigma_i (1 + gamma_i)``,
  ``x_hat = x + sqrt(sigma_hat^2 - sigma_i^2) s_noise eps``, with ``gamma_i = min(gamma, sqrt 2 - 1)``
  when the entropy CDF at sigma_i lies in ``[q_lo, q_hi]`` and 0 otherwise; then a DDIM (= Euler in
  sigma) or Heun step from sigma_hat to sigma_{i+1}.  With the entropic schedule the injected noise
  per unit log sigma is proportional to the entropy-rate pdf: stochasticity concentrates where
  information is being decided and the sampler is deterministic elsewhere.  The paper's headline
  sampler is "ddim_entropic" with the full band (q_lo = 0, q_hi = 1), gamma = 0.13-0.2.

The sampler (:func:`bitstream`) is a :class:`~samplax.discrete.base.DiscreteSampler`; it needs a
:class:`BitstreamModel` (:func:`bitstream_model`), which is also an ordinary exact masked-diffusion
model (its ``fn`` is :func:`~samplax.discrete.exact.exact_model`'s), so masked samplers and the
bitstream sampler run on the same object.  With gamma = 0 any registered continuous solver of
:mod:`samplax.solvers` integrates the probability-flow ODE on the chosen grid.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Callable, Literal, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

from samplax.discrete.base import DecodeInfo, DiscreteModel, DiscreteSampler
from samplax.discrete.exact import HMM, all_sequences, enumerate_log_probs, exact_model, true_samples

ORDERS = ("msb", "lsb")
SPACINGS = ("entropic", "karras", "log_sigma")
CHURN_SOLVERS = ("ddim", "heun")
DENOISERS = ("hmm", "enumerate")
GAMMA_MAX = math.sqrt(2.0) - 1.0


# ---------------------------------------------------------------------------------------
# Bits <-> tokens
# ---------------------------------------------------------------------------------------
def num_bits(vocab_size: int) -> int:
    """ceil(log2 V), at least 1."""
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, (int, np.integer)) or vocab_size < 2:
        raise ValueError(f"vocab_size: must be an integer >= 2, got {vocab_size!r}")
    return max(1, int(math.ceil(math.log2(int(vocab_size)))))


def _check_order(order: str) -> str:
    if order not in ORDERS:
        raise ValueError(f"order: unknown bit order {order!r}; allowed: {list(ORDERS)}")
    return order


def token_codes(vocab_size: int, order: str = "msb", dtype=jnp.float32):
    """Analog codes float[V, B] (+-1): row v is the binary expansion of v, most significant
    digit first (``order="msb"``) or least significant first (``"lsb"``)."""
    _check_order(order)
    nb = num_bits(vocab_size)
    shifts = np.arange(nb - 1, -1, -1) if order == "msb" else np.arange(nb)
    digits = (np.arange(vocab_size)[:, None] >> shifts[None, :]) & 1
    return jnp.asarray(2.0 * digits - 1.0, dtype)


def tokens_to_bits(x, vocab_size: int, order: str = "msb", dtype=jnp.float32):
    """Analog bits float[..., L B] of tokens int[..., L] (token-major)."""
    codes = token_codes(vocab_size, order, dtype)
    x = jnp.asarray(x, jnp.int32)
    out = codes[jnp.clip(x, 0, vocab_size - 1)]
    return out.reshape(x.shape[:-1] + (x.shape[-1] * codes.shape[1],))


def bits_to_tokens(u, vocab_size: int, order: str = "msb"):
    """Tokens int32[..., L] from analog bits float[..., L B]: the sign pattern's integer, or, when
    that is >= V, the valid token of largest correlation ``<u_i, c(v)>`` (module docstring)."""
    _check_order(order)
    nb = num_bits(vocab_size)
    u = jnp.asarray(u)
    if u.shape[-1] % nb:
        raise ValueError(f"u: last axis {u.shape[-1]} is not a multiple of {nb} bits per token")
    ub = u.reshape(u.shape[:-1] + (u.shape[-1] // nb, nb))
    weights = 2 ** (np.arange(nb - 1, -1, -1) if order == "msb" else np.arange(nb))
    ids = jnp.sum((ub > 0).astype(jnp.int32) * jnp.asarray(weights, jnp.int32), axis=-1)
    if vocab_size == 2 ** nb:
        return ids
    codes = token_codes(vocab_size, order, ub.dtype if jnp.issubdtype(ub.dtype, jnp.floating) else jnp.float32)
    nearest = jnp.argmax(jnp.einsum("...b,vb->...v", ub, codes), axis=-1).astype(jnp.int32)
    return jnp.where(ids < vocab_size, ids, nearest)


# ---------------------------------------------------------------------------------------
# Exact denoisers E[x_0 | x_sigma = u]
# ---------------------------------------------------------------------------------------
def _log(a):
    a = jnp.asarray(a)
    return jnp.where(a > 0, jnp.log(jnp.maximum(a, jnp.finfo(a.dtype).tiny)), -jnp.inf)


def _evidence(u, sigma, x, codes):
    """Per-position log evidence float[L, V]: <u_i, c(v)> / sigma^2, or hard (0 / -inf) at the
    revealed tokens of x (MASK = V)."""
    v, nb = codes.shape
    ub = u.reshape(-1, nb)
    ev = (ub @ codes.T) / (sigma * sigma)
    hard = jnp.where(jax.nn.one_hot(jnp.minimum(x, v - 1), v, dtype=bool), 0.0, -jnp.inf).astype(ev.dtype)
    return jnp.where((x < v)[:, None], hard, ev)


def _lse(a, axis=-1):
    return jax.scipy.special.logsumexp(a, axis=axis)


def hmm_token_posterior(hmm: HMM, u, sigma, x=None, order: str = "msb"):
    """log p(x_i = v | x_sigma = u, revealed x) float[L, V] for ONE sample (u float[L B], sigma a
    scalar, x int[L] with MASK = V or None): forward-backward in log space with the Gaussian
    evidence of each position's analog bits (module docstring)."""
    dt = u.dtype
    v = hmm.vocab_size
    codes = token_codes(v, order, dt)
    length = hmm.length
    x = jnp.full((length,), v, jnp.int32) if x is None else jnp.asarray(x, jnp.int32)
    ev = _evidence(u, jnp.asarray(sigma, dt), x, codes)                   # [L, V]
    log_init, log_trans, log_emit = (_log(jnp.asarray(a, dt)) for a in (hmm.init, hmm.trans, hmm.emit))
    psi = _lse(log_emit[None, :, :] + ev[:, None, :], axis=-1)              # [L, H]: log p(evidence_i | h)

    def fwd(a_prev, p):
        pred = _lse(a_prev[:, None] + log_trans, axis=0)                   # log p(h_i, ev_<i) (scaled)
        a = pred + p
        return a - _lse(a), pred - _lse(pred)

    a0 = log_init + psi[0]
    a0 = a0 - _lse(a0)
    _, preds = jax.lax.scan(fwd, a0, psi[1:])
    preds = jnp.concatenate([log_init[None], preds], axis=0)             # log p(h_i | ev_<i)

    def bwd(b_next, p_next):
        b = _lse(log_trans + (p_next + b_next)[None, :], axis=1)            # log p(ev_>i | h_i) (scaled)
        b = b - _lse(b)
        return b, b

    zeros = jnp.zeros_like(log_init)
    _, bs = jax.lax.scan(bwd, zeros, psi[1:], reverse=True)
    bs = jnp.concatenate([bs, zeros[None]], axis=0)
    joint = (preds + bs)[:, :, None] + log_emit[None] + ev[:, None, :]     # [L, H, V]
    logp = _lse(joint, axis=1)
    return logp - _lse(logp)[:, None]


def hmm_denoiser(hmm: HMM, order: str = "msb") -> Callable:
    """``den(u float[B, L B], sigma scalar or [B], x int[B, L] or None) -> E[x_0 | u, x]`` float[B, L B],
    exact for the HMM (forward-backward, :func:`hmm_token_posterior`)."""
    _check_order(order)
    v = hmm.vocab_size

    def den(u, sigma, x=None):
        b = u.shape[0]
        sig = jnp.broadcast_to(jnp.asarray(sigma, u.dtype), (b,))
        xx = jnp.full((b, hmm.length), v, jnp.int32) if x is None else x
        codes = token_codes(v, order, u.dtype)

        def one(ui, si, xi):
            p = jnp.exp(hmm_token_posterior(hmm, ui, si, xi, order))
            return (p @ codes).reshape(-1)
        return jax.vmap(one)(u, sig, xx)
    return den


def enumerated_denoiser(log_probs, vocab_size: int, length: int, order: str = "msb", chunk: int = 4096) -> Callable:
    """The same ``den(u, sigma, x)`` for any enumerated distribution ``log_probs`` float[V^L]
    (``sequence_index`` order): the softmax over all sequences of ``log p(s) + <u, c(s)> / sigma^2``,
    streamed over chunks of ``chunk`` sequences (running max / sum / weighted code sum)."""
    _check_order(order)
    seqs = all_sequences(vocab_size, length)
    n = seqs.shape[0]
    if np.shape(log_probs) != (n,):
        raise ValueError(f"log_probs: expected shape ({n},) for vocab {vocab_size} and length {length}, "
                         f"got {np.shape(log_probs)}")
    chunk = int(min(chunk, n))
    pad = (-n) % chunk
    lp = np.concatenate([np.asarray(log_probs, np.float64), np.full(pad, -np.inf)])
    seqs = np.concatenate([seqs, np.zeros((pad, length), np.int32)])
    n_chunks = lp.shape[0] // chunk

    def den(u, sigma, x=None):
        dt = u.dtype
        b = u.shape[0]
        sig = jnp.broadcast_to(jnp.asarray(sigma, dt), (b,))
        codes_all = tokens_to_bits(jnp.asarray(seqs), vocab_size, order, dt).reshape(n_chunks, chunk, -1)
        lps = jnp.asarray(lp, dt).reshape(n_chunks, chunk)
        toks = jnp.asarray(seqs).reshape(n_chunks, chunk, length)

        def body(carry, c):
            m, s, acc = carry
            code, lpc, tok = c
            logit = lpc[None, :] + (u @ code.T) / (sig * sig)[:, None]       # [B, C]
            if x is not None:
                ok = jnp.all((tok[None] == x[:, None, :]) | (x[:, None, :] >= vocab_size), axis=-1)
                logit = jnp.where(ok, logit, -jnp.inf)
            m_new = jnp.maximum(m, jnp.max(logit, axis=1))
            m_safe = jnp.where(jnp.isfinite(m_new), m_new, 0.0)
            scale = jnp.exp(jnp.where(jnp.isfinite(m), m - m_safe, -jnp.inf))
            w = jnp.exp(logit - m_safe[:, None])
            return (m_new, s * scale + w.sum(1), acc * scale[:, None] + w @ code), None

        init = (jnp.full((b,), -jnp.inf, dt), jnp.zeros((b,), dt), jnp.zeros(u.shape, dt))
        (_, s, acc), _ = jax.lax.scan(body, init, (codes_all, lps, toks))
        return acc / s[:, None]
    return den


# ---------------------------------------------------------------------------------------
# Entropy-rate profile, entropic schedule, gate
# ---------------------------------------------------------------------------------------
class EntropyProfile(NamedTuple):
    """On K equal-width bins in log sigma: edges float[K + 1] (log sigma), ``rate`` float[K]
    (mmse / sigma^2 at the bin centres, nats per unit log sigma), ``pdf`` float[K] (sums to 1) and
    ``cdf`` float[K + 1] (at the edges, 0 .. 1)."""
    log_edges: np.ndarray
    rate: np.ndarray
    pdf: np.ndarray
    cdf: np.ndarray


def mmse_curve(den: Callable, x0_bits, sigmas, key, batch: int = 4096):
    """Total squared error ``E |x_0 - den(x_0 + sigma eps, sigma)|^2`` float[K] at each sigma, Monte
    Carlo over the rows of ``x0_bits`` float[n, D] (exact data samples) with one eps per row, the
    same eps at every sigma (common random numbers: a smooth curve)."""
    x0 = jnp.asarray(x0_bits)
    eps = jax.random.normal(key, x0.shape, x0.dtype)

    def at(sig):
        outs = []
        for i in range(0, x0.shape[0], batch):
            xb, eb = x0[i:i + batch], eps[i:i + batch]
            outs.append(jnp.sum((xb - den(xb + sig * eb, sig)) ** 2))
        return sum(outs) / x0.shape[0]
    f = jax.jit(at)
    return np.array([float(f(jnp.asarray(s, x0.dtype))) for s in np.asarray(sigmas)])


def profile_from_rate(log_edges, rate, reg_c: float = 0.2, reg_n: float = 3.0, power: float = 1.0) -> EntropyProfile:
    """pdf ∝ g(sigma) rate^power on the bins (g = sigma^n / (sigma^n + c^n), c <= 0: no regulariser)."""
    log_edges = np.asarray(log_edges, np.float64)
    rate = np.maximum(np.asarray(rate, np.float64), 0.0)
    if log_edges.ndim != 1 or rate.shape != (log_edges.size - 1,) or np.any(np.diff(log_edges) <= 0):
        raise ValueError(f"log_edges: need K + 1 increasing edges for K rates, got {log_edges.shape} and {rate.shape}")
    for name, val in (("reg_n", reg_n), ("power", power)):
        if not (isinstance(val, (int, float)) and math.isfinite(val) and val > 0):
            raise ValueError(f"{name}: must be a finite number > 0, got {val!r}")
    if not (isinstance(reg_c, (int, float)) and math.isfinite(reg_c)):
        raise ValueError(f"reg_c: must be a finite number (<= 0 turns the regulariser off), got {reg_c!r}")
    mid = np.exp(0.5 * (log_edges[:-1] + log_edges[1:]))
    g = np.ones_like(mid) if reg_c <= 0 else 1.0 / (1.0 + (reg_c / mid) ** reg_n)
    w = g * rate ** power
    pdf = np.full_like(w, 1.0 / w.size) if not w.sum() > 0 else w / w.sum()
    cdf = np.concatenate([[0.0], np.cumsum(pdf)])
    cdf[-1] = 1.0
    return EntropyProfile(log_edges=log_edges, rate=np.asarray(rate), pdf=pdf, cdf=cdf)


def entropy_cdf(profile: EntropyProfile, sigma):
    """The profile's CDF at ``sigma`` (piecewise linear in log sigma; 0 below, 1 above the range)."""
    return np.interp(np.log(np.maximum(np.asarray(sigma, np.float64), 1e-300)), profile.log_edges, profile.cdf)


def entropic_sigmas(profile: EntropyProfile, n_nodes: int, sigma_min: float, sigma_max: float) -> np.ndarray:
    """``n_nodes`` decreasing sigmas from sigma_max to sigma_min at equally spaced values of the
    entropy CDF (inverse-CDF placement, linear in log sigma within a bin)."""
    lo, hi = entropy_cdf(profile, sigma_min), entropy_cdf(profile, sigma_max)
    if n_nodes == 1:
        return np.array([float(sigma_max)])
    q = np.linspace(hi, lo, n_nodes)
    if hi - lo < 1e-12:  # no entropy in range: log-uniform
        return np.exp(np.linspace(np.log(sigma_max), np.log(sigma_min), n_nodes))
    keep = np.concatenate([[True], np.diff(profile.cdf) > 0])  # strictly increasing cdf for the inverse
    ls = np.interp(q, profile.cdf[keep], profile.log_edges[keep])
    s = np.exp(ls)
    s[0], s[-1] = sigma_max, sigma_min
    return s


def gate_gammas(profile: EntropyProfile, sigmas, gamma: float, q_lo: float = 0.0, q_hi: float = 1.0) -> np.ndarray:
    """The entropy gate: churn ``min(gamma, sqrt 2 - 1)`` at the nodes whose entropy CDF lies in
    [q_lo, q_hi], 0 elsewhere (and 0 at sigma = 0)."""
    sig = np.asarray(sigmas, np.float64)
    f = entropy_cdf(profile, sig)
    on = (f >= q_lo - 1e-12) & (f <= q_hi + 1e-12) & (sig > 0)
    return np.where(on, min(float(gamma), GAMMA_MAX), 0.0)


# ---------------------------------------------------------------------------------------
# The model
# ---------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class BitstreamModel(DiscreteModel):
    """A :class:`DiscreteModel` (the exact masked denoiser) that also carries the exact continuous
    bit denoiser ``denoise(u, sigma, x)`` and the data's entropy-rate profile."""
    denoise: Optional[Callable] = None
    order: str = "msb"
    profile: Optional[EntropyProfile] = None
    entropy: float = float("nan")   # H(X_0) in nats (the integral of the rate)


def bitstream_model(hmm: HMM, order: str = "msb", denoiser: str = "hmm", profile_samples: int = 2048,
                    profile_bins: int = 64, sigma_lo: float = 0.02, sigma_hi: float = 200.0,
                    reg_c: float = 0.2, reg_n: float = 3.0, power: float = 1.0, seed: int = 0) -> BitstreamModel:
    """The exact bitstream model of ``hmm``: its masked denoiser (``exact_model``), its continuous bit
    denoiser (``denoiser="hmm"`` forward-backward, or ``"enumerate"`` the softmax over all
    sequences) and its entropy-rate profile on ``profile_bins`` log-sigma bins over
    [sigma_lo, sigma_hi], from ``profile_samples`` exact samples (:func:`mmse_curve`)."""
    _check_order(order)
    if denoiser not in DENOISERS:
        raise ValueError(f"denoiser: unknown {denoiser!r}; allowed: {list(DENOISERS)}")
    if not (0 < sigma_lo < sigma_hi):
        raise ValueError(f"sigma_lo: need 0 < sigma_lo < sigma_hi, got {sigma_lo}, {sigma_hi}")
    base = exact_model(hmm)
    log_probs = enumerate_log_probs(hmm)
    if denoiser == "hmm":
        den = hmm_denoiser(hmm, order)
    else:
        den = enumerated_denoiser(log_probs, hmm.vocab_size, hmm.length, order)
    edges = np.linspace(np.log(sigma_lo), np.log(sigma_hi), profile_bins + 1)
    mids = np.exp(0.5 * (edges[:-1] + edges[1:]))
    key = jax.random.PRNGKey(seed)
    x0 = tokens_to_bits(true_samples(hmm, jax.random.fold_in(key, 0), profile_samples), hmm.vocab_size, order)
    rate = mmse_curve(den, x0, mids, jax.random.fold_in(key, 1)) / mids ** 2
    prof = profile_from_rate(edges, rate, reg_c, reg_n, power)
    p = np.exp(log_probs)
    h = float(-np.sum(np.where(p > 0, p * log_probs, 0.0)))
    return BitstreamModel(fn=base.fn, vocab_size=base.vocab_size, length=base.length, time_agnostic=True,
                          name=f"bitstream:{hmm.name}", denoise=den, order=order, profile=prof, entropy=h)


# ---------------------------------------------------------------------------------------
# The sampler
# ---------------------------------------------------------------------------------------
def _node_sigmas(model: BitstreamModel, steps: int, spacing: str, sigma_min: float, sigma_max: float, rho: float):
    if spacing == "entropic":
        return entropic_sigmas(model.profile, steps, sigma_min, sigma_max)
    if steps == 1:
        return np.array([float(sigma_max)])
    r = np.linspace(0.0, 1.0, steps)
    if spacing == "karras":
        return (sigma_max ** (1 / rho) + r * (sigma_min ** (1 / rho) - sigma_max ** (1 / rho))) ** rho
    return np.exp(np.log(sigma_max) + r * (np.log(sigma_min) - np.log(sigma_max)))


def _churn_run(den, x_T, x_tok, sigmas, gammas, s_noise, keys, heun):
    """EDM Algorithm 2 (Karras et al. 2022) with per-node churn ``gammas``; DDIM/Euler or Heun
    steps; ``sigmas`` float[N + 1] ending at 0; the last step is a first-order (denoising) step."""
    n = len(sigmas) - 1
    sig = jnp.asarray(sigmas, x_T.dtype)
    gam = jnp.asarray(gammas, x_T.dtype)

    def D(x, s):
        return den(x, s, x_tok)

    def one_step(x, i, second):
        s, s_next = sig[i], sig[i + 1]
        s_hat = s * (1 + gam[i])
        eps = jax.vmap(lambda k, xi: jax.random.normal(jax.random.fold_in(k, i), xi.shape, xi.dtype))(keys, x)
        x_hat = x + jnp.sqrt(jnp.maximum(s_hat ** 2 - s ** 2, 0.0)) * s_noise * eps
        d = (x_hat - D(x_hat, s_hat)) / s_hat
        x_new = x_hat + (s_next - s_hat) * d
        if second:
            d2 = (x_new - D(x_new, s_next)) / s_next
            x_new = x_hat + (s_next - s_hat) * 0.5 * (d + d2)
        return x_new

    def body(x, i):
        x = one_step(x, i, heun)
        return x, jnp.all(jnp.isfinite(x), axis=-1)

    if n > 1:
        x, fin = jax.lax.scan(body, x_T, jnp.arange(n - 1))
    else:
        x, fin = x_T, jnp.ones((0, x_T.shape[0]), bool)
    x = one_step(x, n - 1, False)
    fin = jnp.concatenate([fin, jnp.all(jnp.isfinite(x), axis=-1)[None]], axis=0)
    bad = ~fin
    first = jnp.where(jnp.any(bad, axis=0), jnp.argmax(bad, axis=0), -1).astype(jnp.int32)
    return x, first


def bitstream(steps: int = 32, solver: str = "ddim", spacing: Literal["entropic", "karras", "log_sigma"] = "entropic",
              gamma: float = 0.0,
              q_lo: float = 0.0, q_hi: float = 1.0, s_noise: float = 1.0, sigma_min: float = 0.02,
              sigma_max: float = 80.0, rho: float = 7.0) -> DiscreteSampler:
    """Entropy-gated continuous bitstream diffusion (module docstring) on a :class:`BitstreamModel`.

    ``steps`` sigma nodes from sigma_max to sigma_min on the ``spacing`` grid ("entropic": inverse
    entropy CDF; "karras" with ``rho``; "log_sigma"), then a final step to sigma = 0 (a pure
    denoising jump), rounding by sign (:func:`bits_to_tokens`).  ``gamma = 0``: the probability-flow
    ODE with the continuous solver ``solver`` (any name in ``samplax.solvers.SOLVERS`` that needs
    no preparation: "ddim", "dpm_solver_pp", "unipc", "heun", "euler", ...), NFE = its count on
    that grid.  ``gamma > 0``: the gated stochastic sampler (churn on the nodes whose entropy CDF
    is in [q_lo, q_hi], ``s_noise`` the churn noise scale), ``solver`` "ddim" (NFE = steps) or
    "heun" (NFE = 2 steps - 1).  Revealed tokens of x are kept (hard evidence for the denoiser)."""
    from samplax.solvers import SOLVERS as CONT_SOLVERS
    from samplax.solvers import get_solver

    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 1:
        raise ValueError(f"steps: must be an integer >= 1, got {steps!r}")
    if spacing not in SPACINGS:
        raise ValueError(f"spacing: unknown {spacing!r}; allowed: {list(SPACINGS)}")
    for name, val, lo, hi in (("gamma", gamma, 0.0, math.inf), ("q_lo", q_lo, 0.0, 1.0), ("q_hi", q_hi, 0.0, 1.0),
                              ("s_noise", s_noise, 0.0, math.inf)):
        if isinstance(val, bool) or not isinstance(val, (int, float)) or not (lo <= val <= hi) or math.isnan(val):
            raise ValueError(f"{name}: must be a real number in [{lo}, {hi}], got {val!r}")
    if q_lo > q_hi:
        raise ValueError(f"q_lo: {q_lo} is above q_hi = {q_hi}; allowed: 0 <= q_lo <= q_hi <= 1")
    for name, val in (("sigma_min", sigma_min), ("sigma_max", sigma_max), ("rho", rho)):
        if isinstance(val, bool) or not isinstance(val, (int, float)) or not (0 < val < math.inf):
            raise ValueError(f"{name}: must be a finite number > 0, got {val!r}")
    if not sigma_min < sigma_max:
        raise ValueError(f"sigma_min: {sigma_min} is not below sigma_max = {sigma_max}")
    stochastic = gamma > 0
    if stochastic:
        if solver not in CHURN_SOLVERS:
            raise ValueError(f"solver: with gamma > 0 (the gated churn) the step is {list(CHURN_SOLVERS)}, "
                             f"got {solver!r}; allowed: {list(CHURN_SOLVERS)} (or gamma = 0 for any ODE solver)")
        cont = None
        nfe = steps if solver == "ddim" else 2 * steps - 1
        min_steps = 1
    else:
        if solver not in CONT_SOLVERS:
            raise ValueError(f"solver: unknown continuous solver {solver!r}; allowed: {sorted(CONT_SOLVERS)}")
        cont = get_solver(solver)
        if cont.prepare is not None or cont.stochastic or cont.smc is not None:
            raise ValueError(f"solver: {solver!r} is stochastic or model-dependent; allowed: a deterministic ODE "
                             f"solver such as 'ddim', 'dpm_solver_pp', 'unipc', 'heun', 'euler'")
        nfe = int(cont.nfe(steps, "zero"))
        min_steps = cont.min_steps
    if steps < min_steps:
        raise ValueError(f"steps: solver {solver!r} needs at least {min_steps} steps, got {steps}")
    options = dict(steps=steps, solver=solver, spacing=spacing, gamma=float(gamma), q_lo=float(q_lo),
                   q_hi=float(q_hi), s_noise=float(s_noise), sigma_min=float(sigma_min),
                   sigma_max=float(sigma_max), rho=float(rho))

    def run(model, x, keys):
        if not isinstance(model, BitstreamModel) or model.denoise is None:
            raise ValueError(f"model: the bitstream sampler needs a BitstreamModel (samplax.discrete.bitstream."
                             f"bitstream_model(hmm)), got {type(model).__name__} {getattr(model, 'name', '')!r}")
        v, length = model.vocab_size, model.length
        nb = num_bits(v)
        dt = jnp.float64 if jax.config.jax_enable_x64 else jnp.float32
        sig_nodes = _node_sigmas(model, steps, spacing, sigma_min, sigma_max, rho)
        b = x.shape[0]
        k0 = jax.vmap(lambda k: jax.random.fold_in(k, steps + 1))(keys)
        x_T = sigma_max * jax.vmap(lambda k: jax.random.normal(k, (length * nb,), dt))(k0)
        x_tok = jnp.asarray(x, jnp.int32)
        if stochastic:
            gam = gate_gammas(model.profile, sig_nodes, gamma, q_lo, q_hi)
            sig = np.concatenate([sig_nodes, [0.0]])
            u, first = _churn_run(model.denoise, x_T, x_tok, sig, gam, s_noise, keys, solver == "heun")
        else:
            from samplax.models.base import DiffusionModel
            from samplax.schedules import EDM
            from samplax.solvers import sample
            from samplax.timesteps import grid_from_times
            sched = EDM(sigma_min=float(sig_nodes[-1]), sigma_max=float(sigma_max))
            dm = DiffusionModel(apply=lambda p, xx, t: model.denoise(xx, t, p), params=x_tok,
                                schedule=sched, prediction="data")
            grid = grid_from_times(sched, jnp.asarray(sig_nodes, dt), end="zero", dtype=dt)
            u, info = sample(cont, dm, x_T, grid)
            bad = ~jnp.all(jnp.isfinite(u), axis=-1)
            first = jnp.where(bad, jnp.maximum(info.first_nonfinite_step, 0), -1).astype(jnp.int32)
        tok = bits_to_tokens(u, v, model.order)
        tok = jnp.where(x_tok < v, x_tok, tok)
        info = DecodeInfo(nfe=jnp.full((b,), nfe, jnp.int32), steps=jnp.full((b,), steps, jnp.int32),
                          nonfinite_step=first)
        return tok, info

    return DiscreteSampler(name="bitstream", run=run, options=options, extra_calls=False,
                           max_calls=lambda length: nfe, model_for=_model_for)


_MODELS: dict = {}


def _model_for(model, hmm):
    """The runner's hook (DiscreteSampler.model_for): the exact bitstream model of the problem (its
    entropy profile computed once per named problem and process)."""
    if isinstance(model, BitstreamModel) and model.denoise is not None:
        return model
    from samplax.discrete.exact import PROBLEMS

    if hmm.name not in PROBLEMS:
        return bitstream_model(hmm)
    if hmm.name not in _MODELS:
        _MODELS[hmm.name] = bitstream_model(hmm)
    return _MODELS[hmm.name]
