"""The masked-diffusion training loss (continuous-time NELBO) and its exact expectation; and the
next-token loss of causal language models (:func:`causal_lm_loss`).

Masked (absorbing-state) diffusion (Sahoo et al. 2024, "Simple and Effective Masked
Diffusion Language Models" (MDLM); Shi et al. 2024, "Simplified and Generalized Masked
Diffusion for Discrete Data" (MD4)): at time t each token of x0 is independently
replaced by the mask id V with probability 1 - alpha(t) (alpha(0) = 1, alpha(1) = 0).
With a denoiser that returns log-probabilities of the clean token, carries revealed
tokens over and never predicts the mask, the continuous-time negative ELBO is
(MDLM eq. 10-11; MD4 eq. 5)

    NELBO(x0) = E_{t ~ U(0, 1)} E_{z_t} [ -alpha'(t) / (1 - alpha(t)) * sum_{l: z_t^l = V} -log p_theta(x0^l | z_t, t) ],

an upper bound on -log p_theta(x0): for the linear schedule alpha = 1 - t the weight
is 1 / t.  :func:`masked_diffusion_loss` is its Monte Carlo estimate (one t and one
mask per sequence; MDLM's low-discrepancy t by default), in nats per token (divided
by L) so its scale does not depend on the length.

Exact expectation.  Substituting a = alpha(t), a mask M of k of the L positions has
probability (1 - a)^k a^(L - k) and weight -alpha'/(1 - alpha), so its total weight is
int_0^1 (1 - a)^(k - 1) a^(L - k) da = B(k, L - k + 1) = (k - 1)! (L - k)! / L!: the
NELBO does not depend on the schedule (MDLM Sec. 3.3, "invariance to the noise
schedule") and equals

    NELBO(x0) = sum_{M != {}} B(|M|, L - |M| + 1) sum_{l in M} -log p_theta(x0^l | x0 outside M),

which :func:`masked_nelbo_enumerated` computes over all 2^L - 1 masks (a time-agnostic
denoiser; small L).  For the *exact* conditionals of the data distribution this equals
-log p(x0) exactly: grouping the masks by sizes, it is the average over uniformly random
orders of the chain rule -sum_i log p(x_{s(i)} | x_{s(<i)}) (Ou et al. 2024, "Your
Absorbing Discrete Diffusion Secretly Models the Conditional Distributions of Clean
Data", Sec. 4, the any-order autoregressive view), and every order gives -log p(x0).
So the expected loss of the exact denoiser is the entropy of the data per token, and
any other denoiser scores higher in expectation (each term is a cross-entropy).
"""
from __future__ import annotations

import itertools
import math
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np


def mask_weight(schedule, t):
    """-alpha'(t) / (1 - alpha(t)) (t per example), 0 where 1 - alpha(t) rounds to 0
    (no token is masked there).  Linear schedule: 1 / t."""
    t = jnp.asarray(t)
    alpha = schedule.alpha(t)
    dalpha = jax.vmap(jax.grad(lambda s: jnp.asarray(schedule.alpha(s), t.dtype)))(t)
    one_minus = 1.0 - alpha
    safe = jnp.where(one_minus > 0, one_minus, 1.0)
    return jnp.where(one_minus > 0, -dalpha / safe, 0.0)


def sample_mask_times(key, n: int, low_discrepancy: bool = True, dtype=jnp.float32):
    """n times in (0, 1]: t = 1 - u with u uniform on [0, 1) (t = 0 has weight infinity
    and no mask); ``low_discrepancy``: u_b = (u + b / n) mod 1 from a single uniform u
    (MDLM Sec. 4.1, "low-discrepancy sampler"): each t is still U(0, 1], the batch mean
    has lower variance."""
    if low_discrepancy:
        u = jnp.mod(jax.random.uniform(key, (), dtype) + jnp.arange(n, dtype=dtype) / n, 1.0)
    else:
        u = jax.random.uniform(key, (n,), dtype)
    return 1.0 - u


def forward_mask(key, x0, t, schedule, vocab_size: int):
    """z_t: each token of x0 (B, L) replaced by the mask id V independently with
    probability 1 - alpha(t_b).  Returns (z_t, masked bool (B, L))."""
    alpha = schedule.alpha(t)
    masked = jax.random.uniform(key, x0.shape, jnp.asarray(alpha).dtype) >= alpha[:, None]
    return jnp.where(masked, jnp.asarray(vocab_size, x0.dtype), x0), masked


def token_log_likelihood(logp, x0):
    """log p(x0^l | ...) per position: logp (B, L, V) gathered at x0 (B, L)."""
    return jnp.take_along_axis(logp, x0[..., None].astype(jnp.int32), axis=-1)[..., 0]


def masked_diffusion_loss(log_probs: Callable, x0, key, schedule, vocab_size: int, low_discrepancy: bool = True):
    """Monte Carlo MDLM loss (module docstring) in nats per token:

        mean_b  w(t_b) sum_{l masked} -log p(x0^l | z_t, t_b) / L,   w = -alpha' / (1 - alpha).

    ``log_probs(z, t) -> (B, L, V)`` log-probabilities of the clean tokens (only the
    masked positions are read, so raw log-softmax outputs do); ``x0`` int (B, L) in
    0..V-1; ``schedule`` has ``alpha(t)`` (a samplax.discrete MaskSchedule).  One t
    (:func:`sample_mask_times`, from ``fold_in(key, 0)``) and one mask (``fold_in(key,
    1)``) per sequence.  Returns (loss, aux) with aux = dict(t, per_example = the
    per-sequence NELBO estimate in nats, masked_fraction)."""
    x0 = jnp.asarray(x0)
    if x0.ndim != 2:
        raise ValueError(f"masked_diffusion_loss: x0 must be (B, L) tokens, got shape {x0.shape}")
    b, length = x0.shape
    t = sample_mask_times(jax.random.fold_in(key, 0), b, low_discrepancy)
    z, masked = forward_mask(jax.random.fold_in(key, 1), x0, t, schedule, vocab_size)
    ll = token_log_likelihood(log_probs(z, t), x0)
    w = mask_weight(schedule, t)
    per_seq = jnp.sum(jnp.where(masked, -ll * w[:, None], 0.0), axis=-1)
    aux = dict(t=t, per_example=per_seq, masked_fraction=jnp.mean(masked))
    return jnp.mean(per_seq) / length, aux


def _all_masks(length: int) -> np.ndarray:
    return np.array([m for m in itertools.product((False, True), repeat=length) if any(m)], bool)


def masked_nelbo_enumerated(log_probs: Callable, x0, vocab_size: int, chunk: int = 4096):
    """The exact NELBO (nats per sequence) of each row of x0 (N, L) under a
    *time-agnostic* denoiser ``log_probs(z, t)`` (t is passed as 0.5 and must not
    matter): the sum over all 2^L - 1 masks of B(|M|, L - |M| + 1) times the masked
    cross-entropy (module docstring).  Schedule-free; equals -log p(x0) for the exact
    conditionals.  Costs N (2^L - 1) / chunk model calls; meant for L <= 12 or so."""
    x0 = np.asarray(x0)
    n, length = x0.shape
    masks = _all_masks(length)
    k = masks.sum(-1)
    beta = np.array([math.exp(math.lgamma(j) + math.lgamma(length - j + 1) - math.lgamma(length + 1)) for j in k])
    fn = jax.jit(lambda z: log_probs(z, jnp.full((z.shape[0],), 0.5, jnp.float32)))
    out = np.zeros(n)
    for i in range(n):
        total = 0.0
        for s in range(0, len(masks), chunk):
            m = masks[s:s + chunk]
            z = np.where(m, vocab_size, x0[i][None]).astype(np.int32)
            ll = np.asarray(token_log_likelihood(fn(jnp.asarray(z)), jnp.asarray(np.broadcast_to(x0[i], z.shape))))
            total += float(np.sum(beta[s:s + chunk] * np.sum(np.where(m, -ll, 0.0), -1)))
        out[i] = total
    return out


def causal_lm_loss(log_probs: Callable, x):
    """The autoregressive (next-token) negative log-likelihood in nats per token:

        mean_b  sum_i -log q(x_i | x_<i) / L,

    the chain rule of -log q(x) for a causal model ``log_probs(x) -> (B, L, V)`` whose row i
    is log q(. | x_<i) (samplax.models.causal_lm).  Its expectation under the data p is the
    cross-entropy H(p, q) / L = (H(p) + KL(p || q)) / L, minimised exactly at q = p.
    ``x`` int (B, L).  Returns (loss, aux) with aux = dict(per_example = -log q(x) per
    sequence in nats)."""
    x = jnp.asarray(x)
    if x.ndim != 2:
        raise ValueError(f"causal_lm_loss: x must be (B, L) tokens, got shape {x.shape}")
    per_seq = -jnp.sum(token_log_likelihood(log_probs(x), x), axis=-1)
    return jnp.mean(per_seq) / x.shape[1], dict(per_example=per_seq)


__all__ = ["causal_lm_loss", "masked_diffusion_loss", "masked_nelbo_enumerated", "mask_weight", "sample_mask_times", "forward_mask",
           "token_log_likelihood"]
