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
random-order autoregressive sampler), which ``tests/test_discrete_core.py`` checks by chi-square.  Its
randomness (a uniform per step, a priority per position, a Gumbel vector per position) is drawn
once per sample.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from samplax.discrete.base import (DecodeInfo, DiscreteSampler, check_int, check_precision,
                                   first_step, mask_schedule, nonfinite_any)


def _noise_dtype(out, precision: str):
    """The dtype in which a sampler adds Gumbel noise to log-probabilities: float64 for a float64
    model output or precision "float64", else float32 (``gumbel(..., "float32")`` itself is always
    float32)."""
    return jnp.float64 if (out.dtype == jnp.float64 or precision == "float64") else jnp.float32


def ancestral_run(grid, cache: bool = True, precision: str = "high"):
    """``run(model, x, keys)`` of an ancestral sampler: ``grid() -> (times, p_unmask)``, called
    inside ``run`` (arrays, traceable: LSD learns them), gives the times float[K + 1] (from 1 down to
    0) and the probability p_unmask[k] that step k unmasks a still-masked token.  The randomness is drawn once per sample: a uniform U_i per
    position and a Gumbel vector G_i per position (``fold_in(sample key, 0)`` / ``(.., 1)``);
    position i is revealed in the step k where U_i first falls below the cumulative reveal
    probability ``1 - prod_{j <= k} (1 - p_unmask[j])``, with token ``argmax(log p_k(i) + G_i)``.
    That is exactly the step-by-step sampler's law: a position is drawn in one step only, and G_i
    is used nowhere else, so it is independent of everything that step's model output depends on;
    drawing it once instead of in every step removes (K - 1)/K of the Gumbel noise (the dominant
    cost on a cheap model: docs/benchmarks/discrete_core.md)."""
    from samplax.discrete.base import gumbel

    def run(model, x, keys):
        b, length = x.shape
        m = model.mask_id
        use_cache = cache and model.time_agnostic
        times, p_unmask = grid()
        steps = p_unmask.shape[0]
        cum = 1.0 - jnp.cumprod(1.0 - p_unmask)
        cum = cum.at[-1].set(jnp.where(p_unmask[-1] >= 1.0, 2.0, cum[-1]))  # the last step reveals all
        k0 = jax.vmap(lambda key: jax.random.fold_in(key, 0))(keys)
        k1 = jax.vmap(lambda key: jax.random.fold_in(key, 1))(keys)
        u = jax.vmap(lambda key: jax.random.uniform(key, (length,)))(k0)
        out = jax.eval_shape(model, x, jnp.ones((b,), jnp.float32))
        g = jax.vmap(lambda key: gumbel(key, out.shape[1:], _noise_dtype(out, precision), precision))(k1)

        def body(carry, k):
            x, logp, dirty, nfe, nsteps, bad = carry
            masked = x == m
            active = jnp.any(masked, axis=-1)
            call = lambda old: model(x, jnp.full((b,), times[k], jnp.float32)).astype(old.dtype)  # noqa: E731
            if use_cache:
                need = active & dirty
                logp = jax.lax.cond(jnp.any(need), call, lambda old: old, logp)
            else:
                need = active
                logp = call(logp)
            nfe = nfe + need.astype(jnp.int32)
            bad = first_step(bad, need & nonfinite_any(logp, masked), k)
            unmask = masked & (u < cum[k])
            tok = jnp.argmax(logp.astype(g.dtype) + g, axis=-1).astype(jnp.int32)
            x = jnp.where(unmask, tok, x)
            dirty = jnp.any(unmask, axis=-1)
            return (x, logp, dirty, nfe, nsteps + active.astype(jnp.int32), bad), None

        zeros = jnp.zeros((b,), jnp.int32)
        init = (x, jnp.zeros(out.shape, out.dtype), jnp.ones((b,), bool), zeros, zeros, zeros - 1)
        (x, _, _, nfe, nsteps, bad), _ = jax.lax.scan(body, init, jnp.arange(steps, dtype=jnp.int32))
        return x, DecodeInfo(nfe, nsteps, bad)

    return run


def ancestral(steps: int = 16, schedule: str = "linear", cache: bool = True, precision: str = "high") -> DiscreteSampler:
    """MDLM ancestral sampling with ``steps`` steps (any number; one model call per step at most)."""
    steps = check_int("steps", steps)
    sched = mask_schedule(schedule)
    check_precision(precision)
    if not isinstance(cache, bool):
        raise ValueError(f"cache: must be a bool, got {cache!r}")
    def grid():
        ts = jnp.linspace(1.0, 0.0, steps + 1, dtype=jnp.float32)
        a_t, a_s = sched.alpha(ts[:-1]), sched.alpha(ts[1:])
        return ts, jnp.where(jnp.arange(steps) == steps - 1, 1.0, (a_s - a_t) / (1.0 - a_t))
    run = ancestral_run(grid, cache, precision)
    return DiscreteSampler("ancestral", run, dict(steps=steps, schedule=schedule, cache=cache, precision=precision),
                           max_calls=lambda length: steps)


def first_hitting(schedule: str = "linear", precision: str = "high") -> DiscreteSampler:
    """The first-hitting sampler: one model call per masked token, exact on an exact denoiser."""
    sched = mask_schedule(schedule)
    check_precision(precision)

    def run(model, x, keys):
        from samplax.discrete.base import gumbel

        b, length = x.shape
        m = model.mask_id
        # all randomness once per sample (the same law as drawing it per step: every piece is used
        # once): a uniform per step for the hitting time, a random priority per position (the masked
        # position with the highest priority is a uniform choice among the masked ones, step after
        # step), and each position's Gumbel vector for its token
        out = jax.eval_shape(model, x, jnp.ones((b,), jnp.float32))
        gdt = _noise_dtype(out, precision)
        ks = [jax.vmap(lambda key, j=j: jax.random.fold_in(key, j))(keys) for j in range(3)]
        u_t = jax.vmap(lambda key: jax.random.uniform(key, (length,), minval=jnp.finfo(jnp.float32).tiny))(ks[0])
        prio = jax.vmap(lambda key: jax.random.uniform(key, (length,)))(ks[1])
        g = jax.vmap(lambda key: gumbel(key, out.shape[1:], gdt, precision))(ks[2])

        def body(carry, k):
            x, t, nfe, bad = carry
            masked = x == m
            n = jnp.sum(masked, axis=-1)
            active = n > 0
            one_minus = (1.0 - sched.alpha(t)) * u_t[:, k] ** (1.0 / jnp.maximum(n, 1).astype(jnp.float32))
            s = jnp.where(active, sched.t_from_alpha(1.0 - one_minus), t).astype(jnp.float32)
            logp = model(x, s)
            nfe = nfe + active.astype(jnp.int32)
            bad = first_step(bad, active & nonfinite_any(logp, masked), k)
            pos = jnp.argmax(jnp.where(masked, prio, -1.0), axis=-1)
            lp = jnp.take_along_axis(logp, pos[:, None, None], axis=1)[:, 0]
            gp = jnp.take_along_axis(g, pos[:, None, None], axis=1)[:, 0]
            tok = jnp.argmax(lp.astype(gdt) + gp, axis=-1).astype(jnp.int32)
            hit = jax.nn.one_hot(pos, length, dtype=bool) & active[:, None]
            x = jnp.where(hit, tok[:, None], x)
            return (x, s, nfe, bad), None

        zeros = jnp.zeros((b,), jnp.int32)
        init = (x, jnp.ones((b,), jnp.float32), zeros, zeros - 1)
        (x, _, nfe, bad), _ = jax.lax.scan(body, init, jnp.arange(length, dtype=jnp.int32))
        return x, DecodeInfo(nfe, nfe, bad)

    return DiscreteSampler("first_hitting", run, dict(schedule=schedule, precision=precision),
                           max_calls=lambda length: length)
