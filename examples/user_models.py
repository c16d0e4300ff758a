"""Bring your own model, schedule, data set and network: a user module that samplax
imports by name from a config.  Nothing here is part of samplax; it only uses its
public types.  See docs/experiments.md ("Bring your own") and examples/README.md.

    # sample, sweep and train with this module (run from this folder, or put it on PYTHONPATH)
    python -m experiments.sample --config=configs/gmm.py --workdir=runs/mine \
        --config.model.name=gaussian --config.model.factory=user_models:gaussian_model \
        --config.model.shape='(2,)'
"""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from samplax.data import Dataset
from samplax.models.base import DiffusionModel
from samplax.schedules import VPLinear


# --- a schedule -------------------------------------------------------------------------
def my_schedule(beta_min: float = 0.1, beta_max: float = 20.0):
    """A NoiseSchedule (here samplax's VP-linear with the user's betas)."""
    return VPLinear(beta_min=beta_min, beta_max=beta_max)


# --- an exact model: N(mean, std^2 I) ---------------------------------------------------------
def _gaussian_apply(params, x, t):
    mean, std, schedule = params
    a = schedule.alpha(t)
    s = schedule.sigma(t)
    a = jnp.reshape(a, jnp.shape(a) + (1,) * (x.ndim - jnp.ndim(a)))
    s = jnp.reshape(s, jnp.shape(s) + (1,) * (x.ndim - jnp.ndim(s)))
    # x_t ~ N(a mean, (a^2 std^2 + s^2) I): the exact noise prediction
    return s * (x - a * mean) / (a**2 * std**2 + s**2)


def gaussian_model(mean=(1.0, -1.0), std: float = 0.5, schedule=None):
    """A DiffusionModel whose data distribution is N(mean, std^2 I), exactly."""
    schedule = my_schedule() if schedule is None else schedule
    params = (jnp.asarray(mean, jnp.float32), jnp.asarray(std, jnp.float32), schedule)
    return DiffusionModel(apply=_gaussian_apply, params=params, schedule=schedule, prediction="noise")


# --- its data set (the metrics' reference) ------------------------------------------------
def gaussian_data(mean=(1.0, -1.0), std: float = 0.5):
    """A samplax Dataset: batch(seed, step, batch_size) -> (x, None), a pure function."""
    mean = np.asarray(mean, np.float32)

    def batch(seed, step, batch_size):
        key = jax.random.fold_in(jax.random.PRNGKey(seed), step)
        return mean + std * jax.random.normal(key, (batch_size, mean.shape[0])), None
    return Dataset("gaussian", (int(mean.shape[0]),), 0, None, batch)


# --- a trainable network -----------------------------------------------------------------------
class TinyNet(nn.Module):
    """Called as net(x, s) with s the time conditioning (one value per sample)."""

    hidden: int = 64

    @nn.compact
    def __call__(self, x, s):
        h = jnp.concatenate([x, jnp.sin(s[:, None] / 100.0), jnp.cos(s[:, None] / 100.0)], axis=-1)
        h = nn.silu(nn.Dense(self.hidden)(h))
        h = nn.silu(nn.Dense(self.hidden)(h))
        return nn.Dense(x.shape[-1])(h)


def tiny_net(hidden: int = 64):
    return TinyNet(hidden=hidden)


# --- a network with plain Flax parameters from an Orbax checkpoint samplax did not write ---------
def tiny_net_model(params, hidden: int = 64, time_scale: float = 1000.0):
    """A DiffusionModel of TinyNet's parameters (noise prediction on my_schedule())."""
    net = TinyNet(hidden=hidden)
    schedule = my_schedule()

    def apply(p, x, t):
        s = jnp.broadcast_to(jnp.asarray(t, x.dtype) * time_scale, (x.shape[0],))
        return net.apply(p, x, s)
    return DiffusionModel(apply=apply, params=params, schedule=schedule, prediction="noise")
