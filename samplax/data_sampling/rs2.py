"""RS2: repeated sampling of random subsets (Okanovic, Waleffe, Mageirakos, Nikolakakis,
Karbasi, Kalogerias, Gurel, Rekatsinas, "Repeated Random Sampling for Minimizing the
Time-to-Accuracy of Learning", ICLR 2024).

Instead of pruning the data set once to a static subset of ``fraction = r`` of its ``N``
examples (data pruning / coreset selection), RS2 draws a *fresh* random subset of
``m = round(r N)`` examples for every round (the paper's "epoch" on the subset, Sec. 3) and
trains one pass over it.  Two variants (Sec. 3; the reference code's
``UniformNoReplacement`` selection with ``--per_epoch True`` is the first):

* **without replacement across rounds** (``replacement=False``, the paper's default): one
  uniform permutation ``pi_c`` of the data set is consumed ``m`` at a time, so the data set is
  covered exactly once every ``R = ceil(N / m)`` rounds, then a new permutation ``pi_{c+1}``
  starts.  Round ``k`` (pass ``c = k // R``, ``j = k mod R``) is ``pi_c[(j m + o) mod N]``,
  ``o = 0 .. m-1``: when ``m`` does not divide ``N`` the last round of a pass takes the
  ``N - (R-1) m`` examples left and tops up with the first examples of the same permutation
  (the authors' reference code wraps the same way).  Rounds ``0 .. R-2`` of a pass are
  disjoint and the ``R`` rounds together are the whole data set.
* **with replacement across rounds** (``replacement=True``): every round is an independent
  uniform ``m``-subset (no repeats inside a round), so two rounds share
  ``Hypergeometric(N, m, m)`` examples.

Either way every example is in a given round with probability exactly ``m / N``.

The rounds are consumed as one stream of batches of ``B`` (the trainer's fixed batch
shape): a round holds ``m / B`` batches, not necessarily an integer, so a batch may hold
the end of one round and the start of the next -- every example of a round is still seen
exactly once in that round (the paper's loader instead drops the last partial batch).

**Learning-rate schedule.**  The paper trains ``X`` rounds at ratio ``r``, i.e.
``X r N / B`` iterations, and decays the learning rate over *those* iterations -- the
schedule is compressed to the reduced budget rather than cut off part-way through the full
data's schedule (the reference code builds its cosine annealing with
``T_max = len(loader) * epochs`` on the subset loader).  :func:`rs2_budget` gives that
step count (and a warm-up measured in rounds, scaled the same way);
:func:`apply_rs2_budget` writes it into a training config, whose warm-up + cosine schedule
(:func:`samplax.training.train.learning_rate_schedule`) then spans exactly the reduced run.
"""
from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from samplax.data_sampling.base import (DataSampler, check_fraction, permutation_stream_init,
                                        permutation_stream_take, register_sampler, subset_size)

#: fold_in constants separating the two variants' streams of permutations
_PASS_STREAM, _ROUND_STREAM = 0x7232, 0x7233


def rounds_per_pass(size: int, m: int) -> int:
    """R = ceil(N / m): the rounds in which RS2 without replacement covers the data set."""
    return -(-int(size) // int(m))


def rs2(size: int, batch_size: int, fraction: float, replacement: bool = False, seed: int = 0) -> DataSampler:
    """RS2 over a data set of ``size`` examples, batches of ``batch_size``, a fresh random
    subset of ``round(fraction * size)`` examples every round (see the module docstring).

    The subsets are a function of (``seed``, round) alone -- not of the step key -- like the
    ``epoch`` baseline.  State: the current round's subset (m,), the position in it and the
    round index (``permutation_stream_init``); a new round's subset is drawn in-jit when the
    previous one is used up.
    """
    fraction = check_fraction("rs2", fraction)
    if not isinstance(replacement, (bool, int)) or replacement not in (0, 1):
        raise ValueError(f"data sampler 'rs2': option 'replacement' must be True or False, got {replacement!r}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"data sampler 'rs2': option 'seed' must be an integer, got {seed!r}")
    replacement = bool(replacement)
    n, m = int(size), subset_size(size, fraction)
    r_pass = rounds_per_pass(n, m)
    base = jax.random.PRNGKey(int(seed))

    if replacement:
        def subset(k, rnd):
            del k
            key = jax.random.fold_in(jax.random.fold_in(base, _ROUND_STREAM), rnd)
            return jax.random.permutation(key, n)[:m].astype(jnp.int32)
    else:
        def subset(k, rnd):
            del k
            c, j = rnd // r_pass, rnd % r_pass
            perm = jax.random.permutation(jax.random.fold_in(jax.random.fold_in(base, _PASS_STREAM), c), n)
            return perm[(j * m + jnp.arange(m)) % n].astype(jnp.int32)

    def next_indices(key, state, stats):
        del stats
        return permutation_stream_take(key, state, batch_size, subset)

    options = dict(fraction=fraction, replacement=replacement, seed=int(seed), subset_size=m,
                   rounds_per_pass=r_pass, steps_per_round=m / batch_size)
    return DataSampler("rs2", lambda: permutation_stream_init(m), next_indices, options, None, n, batch_size)


class RS2Budget(NamedTuple):
    """The reduced training budget of ``rounds`` RS2 rounds (see :func:`rs2_budget`)."""

    subset_size: int         # m = round(fraction N), examples per round
    steps_per_round: float   # m / B
    num_steps: int           # ceil(rounds m / B): the learning-rate schedule's length
    warmup_steps: int        # round(warmup_rounds m / B)


def rs2_budget(size: int, batch_size: int, fraction: float, rounds: float, warmup_rounds: float = 0.0) -> RS2Budget:
    """Steps of ``rounds`` rounds of RS2 at ``fraction`` (ceil(rounds m / B), m =
    round(fraction size)) and the warm-up of ``warmup_rounds`` rounds in steps: the paper's
    schedule adjustment (decay over the reduced iterations ``X r N / B``, Sec. 3 / the
    reference code's ``T_max``).  ``fraction = 1`` gives the full data's budget of ``rounds``
    epochs.  ValueError naming the argument on bad input."""
    fraction = check_fraction("rs2", fraction)
    for name, v in (("size", size), ("batch_size", batch_size)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"rs2_budget: {name} must be a positive integer, got {v!r}")
    if isinstance(rounds, bool) or not isinstance(rounds, (int, float)) or not rounds > 0:
        raise ValueError(f"rs2_budget: rounds must be a positive number, got {rounds!r}")
    if isinstance(warmup_rounds, bool) or not isinstance(warmup_rounds, (int, float)) or not 0 <= warmup_rounds < rounds:
        raise ValueError(f"rs2_budget: warmup_rounds must be in [0, rounds={rounds}), got {warmup_rounds!r}")
    m = subset_size(size, fraction)
    per_round = m / batch_size
    num_steps = max(1, int(math.ceil(rounds * m / batch_size - 1e-9)))
    warmup = min(int(round(warmup_rounds * per_round)), num_steps - 1)
    return RS2Budget(m, per_round, num_steps, warmup)


def apply_rs2_budget(config: Any, size: int, rounds: float, warmup_rounds: float = 0.0) -> RS2Budget:
    """Set ``config.train.num_steps`` and ``config.optim.warmup_steps`` of a training config to
    the RS2 budget of ``rounds`` rounds at ``config.train.sampler.options.fraction`` (1.0 for
    samplers without a fraction: full-data epochs) over a data set of ``size`` examples, so the
    warm-up + cosine learning-rate schedule spans the reduced run (:func:`rs2_budget`)."""
    opts = config.train.sampler.get("options", {}) or {}
    fraction = opts.get("fraction", 1.0)
    b = rs2_budget(int(size), int(config.train.batch_size), fraction, rounds, warmup_rounds)
    config.train.num_steps = b.num_steps
    config.optim.warmup_steps = b.warmup_steps
    return b


register_sampler("rs2", rs2)

__all__ = ["rs2", "RS2Budget", "rs2_budget", "apply_rs2_budget", "rounds_per_pass"]
