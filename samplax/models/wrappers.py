"""Wrappers that take and return a :class:`DiffusionModel` (optax-style combinators).

* :func:`classifier_free_guidance` -- eps_cfg = eps_u + w (eps_c - eps_u) (Ho &
  Salimans 2022) from one batched call on [x, x] with [cond, null].  The
  combination is affine in the output at fixed (x, t), so guiding the noise,
  data or velocity output is the same thing; we guide the native output.
* :func:`dynamic_thresholding` -- Imagen's dynamic thresholding (Saharia et al.
  2022, Sec. 2.3): s = max(quantile_p(|x0|), max_val), x0 <- clip(x0, -s, s) * max_val / s.
  With max_val = 1 this is exactly Imagen's and DPM-Solver's rule (output in
  [-1, 1]); for max_val != 1 DPM-Solver divides by s only (output in [-1, 1]),
  we rescale to [-max_val, max_val] so that max_val is the data range.  Then
  p = 1 with max_val >= max |x0| is the identity.
* :func:`static_clipping` -- x0 <- clip(x0, -c, c).

Nothing in samplax thresholds or clips unless one of these wrappers is used.
"""
from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp

from samplax.models.base import DiffusionModel


def classifier_free_guidance(cond_apply: Callable, params: Any, schedule, prediction: str,
                             cond, null_cond, scale) -> DiffusionModel:
    """Guided model from ``cond_apply(params, x, t, c)`` (a conditional model
    that accepts ``null_cond`` as "unconditional").  ``cond`` has one entry per
    sample (shape (B,)) or is a scalar; ``scale`` = 1 gives the conditional
    model.  ``scale`` lives in params, so it can be vmapped over."""
    if prediction not in ("noise", "data", "velocity", "score", "flow", "data_noise"):
        raise ValueError(f"classifier_free_guidance: unknown prediction {prediction!r}")

    def apply(p, x, t):
        inner, c, null, w = p
        b = x.shape[0]
        c = jnp.broadcast_to(c, (b,) + jnp.shape(c)[1:] if jnp.ndim(c) else (b,))
        null = jnp.broadcast_to(null, c.shape)
        out = cond_apply(inner, jnp.concatenate([x, x], 0), t if jnp.ndim(t) == 0 else jnp.concatenate([t, t], 0),
                         jnp.concatenate([c, null], 0))
        return jax.tree_util.tree_map(lambda o: o[b:] + w * (o[:b] - o[b:]), out)

    p = (params, jnp.asarray(cond), jnp.asarray(null_cond), jnp.asarray(scale))
    return DiffusionModel(apply=apply, params=p, schedule=schedule, prediction=prediction)


def _data_wrapper(model: DiffusionModel, transform: Callable, extra) -> DiffusionModel:
    base_apply, base_pred, schedule = model.apply, model.prediction, model.schedule

    def apply(p, x, t):
        inner, e = p
        base = DiffusionModel(apply=base_apply, params=inner, schedule=schedule, prediction=base_pred)
        return transform(base.data(x, t), e)

    return DiffusionModel(apply=apply, params=(model.params, extra), schedule=schedule, prediction="data")


def dynamic_thresholding(model: DiffusionModel, percentile: float = 0.995, max_val: float = 1.0) -> DiffusionModel:
    """Per-sample dynamic thresholding of the data prediction; ``percentile`` in (0, 1]."""
    if not 0.0 < percentile <= 1.0:
        raise ValueError(f"dynamic_thresholding: percentile must be in (0, 1], got {percentile}")
    if not max_val > 0:
        raise ValueError(f"dynamic_thresholding: max_val must be positive, got {max_val}")

    def transform(x0, e):
        p, m = e
        flat = jnp.abs(x0.reshape(x0.shape[0], -1))
        s = jnp.quantile(flat, p, axis=1)
        s = jnp.maximum(s, m).reshape((-1,) + (1,) * (x0.ndim - 1))
        return jnp.clip(x0, -s, s) * (m / s)

    return _data_wrapper(model, transform, (jnp.asarray(percentile), jnp.asarray(max_val)))


def static_clipping(model: DiffusionModel, bound: float = 1.0) -> DiffusionModel:
    """Clip the data prediction to [-bound, bound]."""
    if not bound > 0:
        raise ValueError(f"static_clipping: bound must be positive, got {bound}")
    return _data_wrapper(model, lambda x0, c: jnp.clip(x0, -c, c), jnp.asarray(bound))
