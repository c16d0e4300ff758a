"""A trained network as a :class:`samplax.discrete.DiscreteModel`.

:func:`learned_model` wraps a Flax network ``net.apply(params, x, t) -> logits (B, L, V)``
(e.g. :class:`samplax.models.transformer.MaskedTransformer`) the way the samplers need
it: log-softmax over the V clean tokens (the mask is never predicted), then MDLM's
carry-over unmasking (Sahoo et al. 2024, Sec. 3.2.1): revealed positions return the log
one-hot of their own token (:func:`samplax.discrete.base.carry_over`).

A masked-diffusion training workdir (configs ``train_discrete_*.py``) loads back with
:func:`samplax.experiment.trainer.load_discrete_model` (checkpoints belong to the experiment
layer, which imports this module, never the other way round).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from samplax.discrete.base import DiscreteModel, carry_over


def learned_model(net, params, vocab_size: int, length: int, time_agnostic: bool, name: str = "learned"
                  ) -> DiscreteModel:
    """``DiscreteModel(fn(x, t) = carry_over(log_softmax(net.apply(params, x, t)), x, V))``.
    ``time_agnostic`` must be True only for a network that ignores t (samplers then reuse
    an output while the sequence is unchanged)."""
    def fn(x, t):
        x = jnp.asarray(x, jnp.int32)
        t = jnp.broadcast_to(jnp.asarray(t, jnp.float32), (x.shape[0],))
        logp = jax.nn.log_softmax(net.apply(params, x, t).astype(jnp.float32), axis=-1)
        return carry_over(logp, x, vocab_size)
    return DiscreteModel(fn=fn, vocab_size=int(vocab_size), length=int(length), time_agnostic=bool(time_agnostic),
                         name=name)


__all__ = ["learned_model"]
