"""dParallel: certainty-forcing distillation and entropy-threshold parallel decoding.

Chen, Fang, Ma, Yu & Wang 2025, "dParallel: Learnable Parallel Decoding for dLLMs"
(arXiv 2509.26488).  A masked-diffusion model decodes few tokens per step because its
certainty about the masked tokens converges sequentially: a token becomes confident only
once its neighbours are revealed.  dParallel fine-tunes the model on its *own* decoding
results so that masked tokens become confident early and in parallel, then decodes with a
threshold that unmasks every confident position at once.

Certainty-forcing distillation (the paper's method section, "certainty-forcing
distillation"; T and beta as in the authors' public training script).  Targets y are sequences the model
itself decoded with its reference (one token per call) sampler.  Each y is masked at a
ratio of 1/2 (a uniform random half; the paper masks semi-autoregressively block by block,
which for one block is this), and also with the complementary mask, so every position is
predicted once.  For a view with masked set M and the student's logits f:

    L_consistency = (1 / |M|) sum_{l in M} -log softmax(f_l)[y_l]                (trajectory consistency)
    L_certainty   = (1 / |C|) sum_{l in C} H(softmax(f_l / T)),  C = {l in M : argmax f_l = y_l}

(entropy minimisation at temperature T = 0.5, only where the prediction is already right,
so certainty is forced onto the correct token), and the loss is the sum over the two views
of L_consistency + beta L_certainty with beta = 2.  :func:`certainty_forcing_loss`,
:func:`certainty_forcing_distill` (optax AdamW).

Decoding (the paper's entropy-threshold parallel decoding): at each step the model is called once on the current sequence; every masked
position whose predictive entropy is below ``threshold`` (nats) is unmasked at once, and
if none is, the single masked position of lowest entropy is (so each step unmasks >= 1
token and a sequence of length L takes at most L steps).  Tokens are *sampled* from the
model's conditionals with :func:`samplax.discrete.base.categorical` (the paper decodes
greedily; sampling keeps the sampler a sampler of a distribution, which the TV metrics
measure).  :func:`dparallel` is the sampler factory (registry name "dparallel").

Time input: the model is called at t = (number of masked positions) / L, the time at
which that many masks are expected under the linear schedule; time-agnostic models
ignore it.
"""
from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from samplax.discrete.base import (DecodeInfo, DiscreteModel, DiscreteSampler, categorical, check_precision,
                                   entropy, first_step, nonfinite_any)


# ---------------------------------------------------------------------------------------
# Decoding
# ---------------------------------------------------------------------------------------
def threshold_select(ent, masked, threshold):
    """Which positions one dParallel step unmasks: masked positions with entropy <
    ``threshold``, or, when there is none, the masked position of least entropy (the
    first on ties).  ``ent`` float[..., L], ``masked`` bool[..., L] -> bool[..., L]
    (all False where nothing is masked)."""
    below = masked & (ent < threshold)
    masked_ent = jnp.where(masked, ent, jnp.inf)
    best = jax.nn.one_hot(jnp.argmin(masked_ent, axis=-1), ent.shape[-1], dtype=jnp.bool_) & masked
    return jnp.where(jnp.any(below, axis=-1, keepdims=True), below, best)


def dparallel(threshold: float = 0.5, precision: str = "high") -> DiscreteSampler:
    """dParallel's entropy-threshold parallel decoding (module docstring): each step one
    model call, then every masked position with entropy < ``threshold`` nats (>= 1 per
    step: the least uncertain one) gets a token sampled from its conditional.  NFE =
    steps <= L; adaptive (``lax.while_loop`` until no mask is left)."""
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not np.isfinite(threshold) \
            or threshold < 0:
        raise ValueError(f"dparallel: threshold must be a finite number >= 0 (an entropy in nats; 0: one token "
                         f"per step), got {threshold!r}")
    precision = check_precision(precision)
    thr = float(threshold)

    def run(model: DiscreteModel, x, keys):
        x = jnp.asarray(x, jnp.int32)
        b, length = x.shape
        mask_id = model.mask_id

        def cond(state):
            return jnp.any(state[0] == mask_id)

        def body(state):
            x, step, nfe, steps, bad = state
            masked = x == mask_id
            active = jnp.any(masked, axis=-1)
            t = jnp.sum(masked, axis=-1).astype(jnp.float32) / length
            logp = model(x, t)
            ent = entropy(logp)
            pick = threshold_select(ent, masked, thr)
            step_keys = jax.vmap(jax.random.fold_in, in_axes=(0, None))(keys, step)
            tokens = jax.vmap(lambda k, lp: categorical(k, lp, precision))(step_keys, logp).astype(jnp.int32)
            x = jnp.where(pick, tokens, x)
            bad = first_step(bad, nonfinite_any(logp, masked) & active, step)
            return x, step + 1, nfe + active, steps + active, bad

        zeros = jnp.zeros((b,), jnp.int32)
        x, _, nfe, steps, bad = jax.lax.while_loop(cond, body, (x, jnp.int32(0), zeros, zeros, zeros - 1))
        return x, DecodeInfo(nfe=nfe, steps=steps, nonfinite_step=bad)

    return DiscreteSampler(name="dparallel", run=run, options=dict(threshold=thr, precision=precision),
                           max_calls=lambda length: length)


# ---------------------------------------------------------------------------------------
# Certainty-forcing distillation
# ---------------------------------------------------------------------------------------
def _view_loss(logits, y, masked, temperature):
    """(consistency CE over the masked positions, certainty entropy over the correctly
    predicted masked positions), each averaged per view as in the module docstring."""
    logp = jax.nn.log_softmax(logits, axis=-1)
    ce = -jnp.take_along_axis(logp, y[..., None], axis=-1)[..., 0]
    n_masked = jnp.sum(masked)
    consistency = jnp.sum(jnp.where(masked, ce, 0.0)) / jnp.maximum(n_masked, 1)
    correct = masked & (jnp.argmax(logits, axis=-1) == y)
    ent = entropy(jax.nn.log_softmax(logits / temperature, axis=-1))
    certainty = jnp.sum(jnp.where(correct, ent, 0.0)) / jnp.maximum(jnp.sum(correct), 1)
    return consistency, certainty, jnp.sum(correct) / jnp.maximum(n_masked, 1)


def certainty_forcing_loss(apply: Callable, params, y, key, vocab_size: int, mask_ratio: float = 0.5,
                           temperature: float = 0.5, entropy_weight: float = 2.0, complementary: bool = True):
    """dParallel's certainty-forcing loss (module docstring) on target sequences y (B, L):
    each position masked with probability ``mask_ratio`` (from ``key``), the network
    ``apply(params, z, t) -> logits (B, L, V)`` called at t = ``mask_ratio``; with
    ``complementary`` the complementary view is added.  Returns (loss, aux) with the
    consistency and certainty terms and the fraction of masked positions predicted right."""
    y = jnp.asarray(y, jnp.int32)
    b = y.shape[0]
    masked = jax.random.uniform(key, y.shape) < mask_ratio
    views = [masked, ~masked] if complementary else [masked]
    total, cons, cert, acc = 0.0, 0.0, 0.0, 0.0
    for m in views:
        z = jnp.where(m, vocab_size, y)
        logits = apply(params, z, jnp.full((b,), mask_ratio, jnp.float32)).astype(jnp.float32)
        c1, c2, a = _view_loss(logits, y, m, temperature)
        total = total + c1 + entropy_weight * c2
        cons, cert, acc = cons + c1, cert + c2, acc + a / len(views)
    return total, dict(consistency=cons, certainty=cert, accuracy=acc)


class DistillResult(NamedTuple):
    params: object
    losses: np.ndarray       # the loss of every step
    certainty: np.ndarray    # the certainty (entropy) term of every step
    accuracy: np.ndarray     # fraction of masked target tokens predicted right, every step


def certainty_forcing_distill(apply: Callable, params, targets, key, vocab_size: int, steps: int = 500,
                              batch_size: int = 128, learning_rate: float = 3e-4, mask_ratio: float = 0.5,
                              temperature: float = 0.5, entropy_weight: float = 2.0, complementary: bool = True,
                              grad_clip: float = 1.0) -> DistillResult:
    """Fine-tune ``params`` of ``apply(params, z, t) -> logits`` on the model's own decoded
    sequences ``targets`` (N, L) with :func:`certainty_forcing_loss` (AdamW at a constant
    ``learning_rate``, gradients clipped at ``grad_clip``).  Batch k is ``batch_size``
    random rows of ``targets`` and its masks, both from ``fold_in(key, k)``.  Returns the
    new parameters and the per-step loss, certainty and accuracy."""
    targets = jnp.asarray(targets, jnp.int32)
    if targets.ndim != 2 or targets.shape[0] < 1:
        raise ValueError(f"certainty_forcing_distill: targets must be (N, L) tokens, got shape {targets.shape}")
    for name, v in (("steps", steps), ("batch_size", batch_size)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"certainty_forcing_distill: {name} must be an integer >= 1, got {v!r}")
    if not 0.0 < mask_ratio < 1.0:
        raise ValueError(f"certainty_forcing_distill: mask_ratio must be in (0, 1), got {mask_ratio!r}")
    if not temperature > 0:
        raise ValueError(f"certainty_forcing_distill: temperature must be > 0, got {temperature!r}")
    if not entropy_weight >= 0:
        raise ValueError(f"certainty_forcing_distill: entropy_weight must be >= 0, got {entropy_weight!r}")
    opt = optax.chain(optax.clip_by_global_norm(grad_clip), optax.adamw(learning_rate, weight_decay=0.0))
    n = targets.shape[0]

    @jax.jit
    def step(params, opt_state, k):
        k_rows, k_mask = jax.random.split(k)
        y = targets[jax.random.randint(k_rows, (batch_size,), 0, n)]

        def loss_fn(p):
            return certainty_forcing_loss(apply, p, y, k_mask, vocab_size, mask_ratio, temperature, entropy_weight,
                                          complementary)
        (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        updates, opt_state = opt.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss, aux

    opt_state = opt.init(params)
    losses, cert, acc = [], [], []
    for i in range(steps):
        params, opt_state, loss, aux = step(params, opt_state, jax.random.fold_in(key, i))
        losses.append(loss)
        cert.append(aux["certainty"])
        acc.append(aux["accuracy"])
    return DistillResult(params, np.asarray(jax.device_get(losses)), np.asarray(jax.device_get(cert)),
                         np.asarray(jax.device_get(acc)))


__all__ = ["dparallel", "threshold_select", "certainty_forcing_loss", "certainty_forcing_distill", "DistillResult"]
