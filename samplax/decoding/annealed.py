"""Exploratory Annealed Decoding (EAD): the sampling temperature annealed from high to low along
the sequence.

Yang, Gui, Yang, Veitch, Zhang & Zhao 2025, "Let it Calm: Exploratory Annealed Decoding for
Verifiable Reinforcement Learning" (arXiv:2510.05251), Sec. 3: "explore at the beginning, exploit
at the end".  The temperature of the t-th generated token is (the paper's annealing schedule,
its Fig. 3 plots it)

    tau_t = 1                                        for t < c        (template tokens kept as is)
    tau_t = max(1 + tau_max - exp(t / d), tau_min)   for t >= c,

so tau_0 = tau_max (> 1: exploration), tau_t decreases ever faster with t and stops at tau_min
(< 1: exploitation); the decay rate d sets how many tokens stay hot.  (The paper grows d with
the RL training step, d_s = min(d_0 + 5 s, 40000); a decoder sees one fixed d.)  t counts
generated tokens: with a prompt of P tokens, t = pos - P.

Each step samples ``softmax(log p(. | x_<t) / tau_t)``, so the distribution EAD samples is the
product of the per-step tempered conditionals,

    q(x) = prod_t  p(x_t | x_<t)^(1 / tau_t) / sum_v p(v | x_<t)^(1 / tau_t),

which is NOT p^alpha / Z for any alpha (the normaliser is local, per prefix); the decoder's
``target`` enumerates it exactly (:func:`samplax.decoding.exact.enumerate_log_probs` with the
schedule as a logit transform).  One model call per token, as ancestral sampling.
"""
from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np

from samplax.decoding.base import Decoder, Problem, check_int, check_positive, sample, temperature_schedule
from samplax.decoding.exact import exact_log_probs

__all__ = ["ead_temperature", "ead_schedule", "annealed"]


def ead_temperature(t, t_start: float, t_end: float, decay: float, warmup: int = 0):
    """EAD's temperature of generated token ``t`` (0-based; jnp or numpy):
    1 for t < warmup, else max(1 + t_start - exp(t / decay), t_end) (Yang et al. 2025, Sec. 3)."""
    xp = jnp if not isinstance(t, (int, float, np.ndarray, np.integer, np.floating)) else np
    t = xp.asarray(t)
    hot = xp.maximum(1.0 + t_start - xp.exp(t / decay), t_end)
    return xp.where(t < warmup, 1.0, hot)


def _check(t_start, t_end, decay, warmup):
    t_start = check_positive("t_start", t_start)
    t_end = check_positive("t_end", t_end)
    decay = check_positive("decay", decay)
    warmup = check_int("warmup", warmup, 0)
    if t_end > t_start:
        raise ValueError(f"t_end: must be <= t_start={t_start} (the temperature anneals from t_start down to "
                         f"t_end), got {t_end}")
    return t_start, t_end, decay, warmup


def ead_schedule(t_start: float = 1.2, t_end: float = 0.1, decay: float = 8.0, warmup: int = 0,
                 offset: int = 0):
    """EAD as a logit transform (``samplax.decoding.temperature_schedule``): at model position
    ``pos`` the temperature of generated token ``t = pos - offset`` (``offset`` = prompt length)."""
    t_start, t_end, decay, warmup = _check(t_start, t_end, decay, warmup)
    offset = check_int("offset", offset, 0)

    def fn(pos):
        return ead_temperature(jnp.asarray(pos).astype(jnp.result_type(float)) - offset, t_start, t_end, decay, warmup)
    return temperature_schedule(fn, name="ead")


def annealed(t_start: float = 1.2, t_end: float = 0.1, decay: float = 8.0, warmup: int = 0,
             cached: bool = True) -> Decoder:
    """Decoder "annealed": ancestral sampling under EAD's schedule (:func:`ead_temperature`;
    ``t_start`` = tau_max, ``t_end`` = tau_min, ``decay`` = d, ``warmup`` = c).  Defaults: the
    paper's illustration tau_max = 1.2, tau_min = 0.1 with d = 8 (our sequences have <= 10 tokens:
    tau falls from 1.2 to 0.1 over the first 7) and c = 0.  Exact target: the enumerated product
    of the tempered conditionals.  One target call per token."""
    t_start, t_end, decay, warmup = _check(t_start, t_end, decay, warmup)
    if not isinstance(cached, bool):
        raise ValueError(f"cached: must be True or False, got {cached!r}")

    def transform_for(problem: Problem):
        offset = 0 if problem.prompt is None else int(np.asarray(problem.prompt).shape[0])
        return ead_schedule(t_start, t_end, decay, warmup, offset)

    def run(problem: Problem, keys):
        return sample(problem.lm, keys, transform_for(problem), cached=cached, prompt=problem.prompt)

    def target(problem: Problem):
        return exact_log_probs(problem.lm, transform_for(problem), problem.prompt)

    return Decoder("annealed", run, dict(t_start=t_start, t_end=t_end, decay=decay, warmup=warmup, cached=cached),
                   target)


# the temperature reaches t_end at t* = d log(1 + t_start - t_end); documented for the benchmark
def cooled_at(t_start: float, t_end: float, decay: float) -> float:
    """The first (real) t at which EAD's temperature reaches t_end: d log(1 + t_start - t_end)."""
    return decay * math.log(1.0 + t_start - t_end)
