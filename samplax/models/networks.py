"""Flax score networks and their wrapping as DiffusionModels.

``MLPScoreNet`` is the network for low-dimensional data: the time (or log-SNR)
enters through a sinusoidal embedding (Vaswani et al. 2017; as in DDPM's
``get_timestep_embedding``) followed by an MLP, and is added to every hidden
layer.  :func:`network_model` wraps a network and its parameters as a
:class:`~samplax.models.DiffusionModel` of any prediction type, so a trained
network plugs into every solver unchanged.
"""
from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax.numpy as jnp

from samplax.models.base import PREDICTIONS, DiffusionModel

TIME_INPUTS = ("t", "log_snr")


def sinusoidal_embedding(s, dim: int, max_period: float = 10_000.0):
    """(B,) -> (B, dim): [sin(s w_k), cos(s w_k)] with w_k = max_period^(-k / (dim/2)),
    k = 0..dim/2-1 (frequencies from 1 down to ~1/max_period)."""
    if dim % 2:
        raise ValueError(f"sinusoidal_embedding: dim must be even, got {dim}")
    half = dim // 2
    freqs = jnp.exp(-jnp.log(max_period) * jnp.arange(half, dtype=jnp.float32) / half)
    arg = jnp.asarray(s, jnp.float32)[:, None] * freqs[None]
    return jnp.concatenate([jnp.sin(arg), jnp.cos(arg)], axis=-1)


class MLPScoreNet(nn.Module):
    """An MLP predictor out(x, s) for x (B, d) and a conditioning scalar s per example
    (the time scaled to [0, 1000], or the log-SNR, see :func:`network_model`)."""

    hidden: Sequence[int] = (256, 256, 256)
    embed_dim: int = 64
    max_period: float = 10_000.0

    @nn.compact
    def __call__(self, x, s):
        emb = sinusoidal_embedding(s, self.embed_dim, self.max_period)
        emb = nn.Dense(self.embed_dim)(nn.silu(nn.Dense(self.embed_dim)(emb)))
        h = x
        for width in self.hidden:
            h = nn.Dense(width)(h) + nn.Dense(width, use_bias=False)(emb)
            h = nn.silu(h)
        return nn.Dense(x.shape[-1], kernel_init=nn.initializers.zeros)(h)


def _conditioning(schedule, t, time_input: str, batch: int):
    t = jnp.broadcast_to(jnp.asarray(t, jnp.float32), (batch,))
    if time_input == "t":
        return 1000.0 * t
    # log-SNR = 2 lambda, finite on the training range; clip so sigma = 0 stays finite
    return jnp.clip(2.0 * schedule.lambda_(t), -40.0, 40.0)


def network_apply(net: nn.Module, schedule, time_input: str = "t"):
    """``apply(params, x, t)`` for :class:`DiffusionModel`: t scalar or per example."""
    if time_input not in TIME_INPUTS:
        raise ValueError(f"network_apply: time_input must be one of {TIME_INPUTS}, got {time_input!r}")

    def apply(params, x, t):
        return net.apply(params, x, _conditioning(schedule, t, time_input, x.shape[0]))
    return apply


def network_model(net: nn.Module, params, schedule, prediction: str = "noise", time_input: str = "t"):
    """A trained (or untrained) network as a DiffusionModel predicting ``prediction``."""
    if prediction not in PREDICTIONS or prediction == "data_noise":
        allowed = [p for p in PREDICTIONS if p != "data_noise"]
        raise ValueError(f"network_model: prediction must be one of {allowed}, got {prediction!r}")
    return DiffusionModel(apply=network_apply(net, schedule, time_input), params=params, schedule=schedule,
                          prediction=prediction)
