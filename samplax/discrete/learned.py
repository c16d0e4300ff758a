"""A trained network as a :class:`samplax.discrete.DiscreteModel`.

:func:`learned_model` wraps a Flax network ``net.apply(params, x, t) -> logits (B, L, V)``
(e.g. :class:`samplax.models.transformer.MaskedTransformer`) the way the samplers need
it: log-softmax over the V clean tokens (the mask is never predicted), then MDLM's
carry-over unmasking (Sahoo et al. 2024, Sec. 3.2.1): revealed positions return the log
one-hot of their own token (:func:`samplax.discrete.base.carry_over`).

:func:`load_discrete_model` loads a masked-diffusion training workdir (configs
``train_discrete_*.py``) for the sampling runner: the checkpoint restore and its checks
are the trainer's (:func:`samplax.experiment.trainer.load_discrete_model`, imported when
called, since checkpoints belong to the experiment layer).
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


def load_discrete_model(workdir, step=None, which: str = "ema"):
    """``(model, info)`` of a masked-diffusion training workdir's checkpoint ``step`` (default:
    the newest intact one; ``which`` = "ema" or "params"): the :class:`DiscreteModel`
    (vocabulary, length, ``time_agnostic`` as trained) and ``info`` = dict(problem = the exact
    problem the data were drawn from (e.g. "markov4x8") or None, data = that problem's name
    or the data set's ("digits_tokens"), step, checkpoint, vocab_size, length, time_agnostic).
    FileNotFoundError / ValueError (not a training workdir, not a masked-diffusion run, no
    such checkpoint)."""
    from samplax.experiment.trainer import load_trained_discrete

    return load_trained_discrete(workdir, step, which)


__all__ = ["learned_model", "load_discrete_model"]
