"""The reference masked-diffusion samplers: MDLM ancestral sampling and the first-hitting sampler.

**Ancestral** (Sahoo et al. 2024, "Simple and Effective Masked Diffusion Language Models", eq. 7;
Austin et al. 2021, D3PM absorbing state): on the time grid ``t_k = 1 - k / steps`` a masked token
at time t is unmasked by time s < t with probability ``(alpha_s - alpha_t) / (1 - alpha_t)`` and then
drawn from the model's clean-token distribution; revealed tokens stay.  The last step (s = 0) unmasks
everything left.  Tokens unmasked in the same step are drawn independently given the current
sequence, which is the method's only error on an exact model: it vanishes as the steps grow
(``benchmarks/discrete_core.py`` measures TV vs steps).  ``cache=True`` (MDLM Sec. 3.2.2) reuses the
last model output while a sample's sequence has not changed since that call -- valid only for
time-agnostic models, so it is ignored for a time-conditioned one -- and a sample's NFE counts only
the calls it needed; the batch skips the call (``lax.cond``) when no sample needs one.

**First hitting** (Zheng et al. 2024, "Masked Diffusion Models are Secretly Time-Agnostic Masked
Models and Exploit Inaccurate Categorical Sampling", Sec. 3.3, Alg. 1): with n tokens masked at
time t, the time the next one is unmasked has ``P(no unmasking by s) = ((1 - alpha_s) / (1 - alpha_t))^n``,
so ``1 - alpha_s = (1 - alpha_t) u^(1/n)`` with u ~ U(0, 1) (linear schedule: s = t u^(1/n)); then one
uniformly chosen masked position is drawn from the model at time s.  One call per token, no
simultaneous draws: on an exact denoiser it samples the data distribution exactly (it is a
random-order autoregressive sampler), which ``tests/test_discrete_core.py`` checks by chi-square.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from samplax.discrete.base import (DecodeInfo, DiscreteSampler, categorical, check_int, check_precision,
                                   first_step, mask_schedule, nonfinite_any)


def _output_like(model, x):
    """A zero array shaped and typed as the model's output on ``x`` (no model call is run)."""
    shape = jax.eval_shape(model, x, jnp.ones((x.shape[0],), jnp.float32))
    return jnp.zeros(shape.shape, shape.dtype)


def _step_keys(keys, k):
    return jax.vmap(jax.random.fold_in, in_axes=(0, None))(keys, k)


def ancestral(steps: int = 16, schedule: str = "linear", cache: bool = True, precision: str = "high") -> DiscreteSampler:
    """MDLM ancestral sampling with ``steps`` steps (any number; one model call per step at most)."""
    steps = check_int("steps", steps)
    sched = mask_schedule(schedule)
    check_precision(precision)
    if not isinstance(cache, bool):
        raise ValueError(f"cache: must be a bool, got {cache!r}")

    def run(model, x, keys):
        b, length = x.shape
        m = model.mask_id
        use_cache = cache and model.time_agnostic
        ts = jnp.linspace(1.0, 0.0, steps + 1, dtype=jnp.float32)

        def body(carry, k):
            x, logp, dirty, nfe, nsteps, bad = carry
            t, s = ts[k], ts[k + 1]
            masked = x == m
            active = jnp.any(masked, axis=-1)
            call = lambda old: model(x, jnp.full((b,), t, jnp.float32)).astype(old.dtype)  # noqa: E731
            if use_cache:
                need = active & dirty
                logp = jax.lax.cond(jnp.any(need), call, lambda old: old, logp)
            else:
                need = active
                logp = call(logp)
            nfe = nfe + need.astype(jnp.int32)
            bad = first_step(bad, need & nonfinite_any(logp, masked), k)
            a_t, a_s = sched.alpha(t), sched.alpha(s)
            p_unmask = jnp.where(k == steps - 1, 1.0, (a_s - a_t) / (1.0 - a_t))
            kk = _step_keys(keys, k)
            kb, kc = jax.vmap(jax.random.split, out_axes=1)(kk)
            u = jax.vmap(lambda key: jax.random.uniform(key, (length,)))(kb)
            unmask = masked & (u < p_unmask)
            tok = jax.vmap(lambda key, lp: categorical(key, lp, precision))(kc, logp)
            x = jnp.where(unmask, tok, x)
            dirty = jnp.any(unmask, axis=-1)
            return (x, logp, dirty, nfe, nsteps + active.astype(jnp.int32), bad), None

        zeros = jnp.zeros((b,), jnp.int32)
        init = (x, _output_like(model, x), jnp.ones((b,), bool), zeros, zeros, zeros - 1)
        (x, _, _, nfe, nsteps, bad), _ = jax.lax.scan(body, init, jnp.arange(steps))
        return x, DecodeInfo(nfe, nsteps, bad)

    return DiscreteSampler("ancestral", run, dict(steps=steps, schedule=schedule, cache=cache, precision=precision),
                           max_calls=lambda length: steps)


def first_hitting(schedule: str = "linear", precision: str = "high") -> DiscreteSampler:
    """The first-hitting sampler: one model call per masked token, exact on an exact denoiser."""
    sched = mask_schedule(schedule)
    check_precision(precision)

    def run(model, x, keys):
        b, length = x.shape
        m = model.mask_id

        def body(carry, k):
            x, t, nfe, bad = carry
            masked = x == m
            n = jnp.sum(masked, axis=-1)
            active = n > 0
            kk = _step_keys(keys, k)
            kt, kp, kc = jax.vmap(lambda key: jax.random.split(key, 3), out_axes=1)(kk)
            u = jax.vmap(lambda key: jax.random.uniform(key, (), minval=jnp.finfo(jnp.float32).tiny))(kt)
            one_minus = (1.0 - sched.alpha(t)) * u ** (1.0 / jnp.maximum(n, 1).astype(jnp.float32))
            s = jnp.where(active, sched.t_from_alpha(1.0 - one_minus), t)
            logp = model(x, s)
            nfe = nfe + active.astype(jnp.int32)
            bad = first_step(bad, active & nonfinite_any(logp, masked), k)
            # a uniformly chosen masked position (uniform scores; ties impossible in practice)
            score = jax.vmap(lambda key: jax.random.uniform(key, (length,)))(kp)
            pos = jnp.argmax(jnp.where(masked, score, -1.0), axis=-1)
            lp = jnp.take_along_axis(logp, pos[:, None, None], axis=1)[:, 0]
            tok = jax.vmap(lambda key, l: categorical(key, l, precision))(kc, lp)
            hit = jax.nn.one_hot(pos, length, dtype=bool) & active[:, None]
            x = jnp.where(hit, tok[:, None], x)
            return (x, s, nfe, bad), None

        zeros = jnp.zeros((b,), jnp.int32)
        init = (x, jnp.ones((b,), jnp.float32), zeros, zeros - 1)
        (x, _, nfe, bad), _ = jax.lax.scan(body, init, jnp.arange(length))
        return x, DecodeInfo(nfe, nfe, bad)

    return DiscreteSampler("first_hitting", run, dict(schedule=schedule, precision=precision),
                           max_calls=lambda length: length)
