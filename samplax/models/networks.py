"""Flax score networks and their wrapping as DiffusionModels.

``MLPScoreNet`` is the network for low-dimensional data (:class:`~samplax.models.unet.UNet`
the one for images): the time (or log-SNR) enters through a sinusoidal embedding
(Vaswani et al. 2017; as in DDPM's ``get_timestep_embedding``) followed by an
MLP, and is added to every hidden layer.  Both networks take optional class
labels ``y``: with ``num_classes > 0`` a learned embedding of ``num_classes + 1``
entries is added to the time embedding, index ``num_classes`` being the *null*
label ("unconditional", the one classifier-free guidance contrasts with), which
``y=None`` stands for.

:func:`network_model` wraps a network and its parameters as a
:class:`~samplax.models.DiffusionModel` of any prediction type, so a trained
network plugs into every solver unchanged; :func:`conditional_apply` gives the
labelled ``cond_apply(params, x, t, y)`` that
:func:`~samplax.models.wrappers.classifier_free_guidance` takes.

Preconditioning (``precond``):

* ``"none"``: the network's output is the prediction itself, and its
  conditioning scalar is ``1000 t`` (``time_input="t"``) or the log-SNR
  ``2 lambda(t)`` clipped to [-40, 40] (``time_input="log_snr"``).
* ``"edm"``: Karras et al. 2022 ("Elucidating the design space...", Table 1),
  for any schedule through the VE variable x / alpha, whose noise level is
  sigma~ = sigma(t) / alpha(t) (= t for the EDM schedule, alpha = 1).  With
  sigma_data = sd,

      c_skip = sd^2 / (sigma~^2 + sd^2),  c_out = sigma~ sd / sqrt(sigma~^2 + sd^2),
      c_in = 1 / sqrt(sigma~^2 + sd^2),
      D(x, t) = c_skip x / alpha + c_out F(c_in x / alpha, s),

  and D is the data (x0) prediction.  EDM's noise conditioning is
  c_noise = ln(sigma~) / 4; we feed the network ``s = 1000 c_noise = 250 ln sigma~``
  (with ln sigma~ clipped to [-20, 20], the range of the log-SNR clip above, so
  that sigma = 0 stays finite).  The factor 1000 puts s on the same scale as
  ``1000 t`` (sigma~ in [0.002, 80] gives s in [-1554, 1096]), so that the
  sinusoidal embedding's frequencies 1 .. 1e-4 spread over it as they do over
  time; c_noise itself spans only [-1.55, 1.1], over which all but the highest
  few frequencies are nearly constant (EDM's own networks take c_noise unscaled
  and leave the rest to the embedding MLP).  ``time_input`` is ignored under
  ``"edm"`` (the conditioning is always this one).
"""
from __future__ import annotations

from typing import Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from samplax.models.base import PREDICTIONS, DiffusionModel

TIME_INPUTS = ("t", "log_snr")
PRECONDS = ("none", "edm")


def sinusoidal_embedding(s, dim: int, max_period: float = 10_000.0):
    """(B,) -> (B, dim): [sin(s w_k), cos(s w_k)] with w_k = max_period^(-k / (dim/2)),
    k = 0..dim/2-1 (frequencies from 1 down to ~1/max_period)."""
    if dim % 2:
        raise ValueError(f"sinusoidal_embedding: dim must be even, got {dim}")
    half = dim // 2
    freqs = jnp.exp(-jnp.log(max_period) * jnp.arange(half, dtype=jnp.float32) / half)
    arg = jnp.asarray(s, jnp.float32)[:, None] * freqs[None]
    return jnp.concatenate([jnp.sin(arg), jnp.cos(arg)], axis=-1)


def label_embedding(num_classes: int, features: int, y, batch: int, owner: str = "network"):
    """Inside a compact ``__call__``: the label embedding to add to the time embedding,
    (batch, features), from an ``nn.Embed(num_classes + 1, features)`` whose last entry
    (index ``num_classes``) is the null label.  ``y=None`` means the null label for
    all; ``y`` may be a scalar or have one entry per example.  With ``num_classes = 0``
    (an unconditional network) the result is 0, and a given ``y`` is a ValueError."""
    if num_classes < 0:
        raise ValueError(f"{owner}: num_classes must be >= 0, got {num_classes}")
    if num_classes == 0:
        if y is not None:
            raise ValueError(f"{owner}: labels y were given to an unconditional network (num_classes=0)")
        return 0.0
    if y is None:
        y = jnp.full((batch,), num_classes, jnp.int32)
    y = jnp.asarray(y)
    if not jnp.issubdtype(y.dtype, jnp.integer):
        raise ValueError(f"{owner}: labels y must be integers, got dtype {y.dtype}")
    y = jnp.broadcast_to(y, (batch,))
    return nn.Embed(num_classes + 1, features)(y)


class MLPScoreNet(nn.Module):
    """An MLP predictor out(x, s[, y]) for x (B, d) and a conditioning scalar s per example
    (the time scaled to [0, 1000], or the log-SNR, see :func:`network_model`).
    ``num_classes > 0`` adds a label embedding (null label ``num_classes`` = ``y=None``)
    to the time embedding; with the default 0 the network is unconditional and its
    parameters are those it always had."""

    hidden: Sequence[int] = (256, 256, 256)
    embed_dim: int = 64
    max_period: float = 10_000.0
    num_classes: int = 0

    @nn.compact
    def __call__(self, x, s, y: Optional[jax.Array] = None):
        emb = sinusoidal_embedding(s, self.embed_dim, self.max_period)
        emb = nn.Dense(self.embed_dim)(nn.silu(nn.Dense(self.embed_dim)(emb)))
        emb = emb + label_embedding(self.num_classes, self.embed_dim, y, x.shape[0], "MLPScoreNet")
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


def _bcast(a, x):
    return a.reshape(a.shape + (1,) * (x.ndim - a.ndim))


def edm_coefficients(sigma_tilde, sigma_data: float = 0.5):
    """(c_skip, c_out, c_in) of EDM's preconditioning at VE noise level sigma~
    (Karras et al. 2022, Table 1)."""
    st = jnp.asarray(sigma_tilde)
    sd = jnp.asarray(sigma_data, st.dtype)
    n2 = st**2 + sd**2
    return sd**2 / n2, st * sd * jax.lax.rsqrt(n2), jax.lax.rsqrt(n2)


def edm_noise_conditioning(sigma_tilde):
    """The conditioning scalar fed to the network under ``precond="edm"``:
    1000 c_noise = 250 ln sigma~, with ln sigma~ clipped to [-20, 20]."""
    return 250.0 * jnp.clip(jnp.log(sigma_tilde), -20.0, 20.0)


def _check_options(who: str, time_input: str, precond: str, sigma_data) -> None:
    if time_input not in TIME_INPUTS:
        raise ValueError(f"{who}: time_input must be one of {TIME_INPUTS}, got {time_input!r}")
    if precond not in PRECONDS:
        raise ValueError(f"{who}: precond must be one of {PRECONDS}, got {precond!r}")
    if precond == "edm" and isinstance(sigma_data, (int, float)) and not sigma_data > 0:
        raise ValueError(f"{who}: sigma_data must be positive, got {sigma_data!r}")


def network_apply(net: nn.Module, schedule, time_input: str = "t", precond: str = "none",
                  sigma_data: float = 0.5):
    """``apply(params, x, t, y=None)`` for :class:`DiffusionModel`: t scalar or per example,
    y (class labels, scalar or per example) optional and passed to the network only when
    given.  ``precond="edm"`` returns EDM's preconditioned data prediction D (module
    docstring); ``"none"`` the network's raw output."""
    _check_options("network_apply", time_input, precond, sigma_data)

    def call(params, x, s, y):
        return net.apply(params, x, s) if y is None else net.apply(params, x, s, y)

    if precond == "none":
        def apply(params, x, t, y=None):
            return call(params, x, _conditioning(schedule, t, time_input, x.shape[0]), y)
        return apply

    def apply_edm(params, x, t, y=None):
        t = jnp.broadcast_to(jnp.asarray(t, x.dtype), (x.shape[0],))
        st = schedule.sigma_tilde(t)
        u = x / _bcast(schedule.alpha(t), x)  # the VE variable x0 + sigma~ eps
        c_skip, c_out, c_in = edm_coefficients(st, sigma_data)
        f = call(params, _bcast(c_in, x) * u, edm_noise_conditioning(st), y)
        return _bcast(c_skip, x) * u + _bcast(c_out, x) * f
    return apply_edm


def conditional_apply(net: nn.Module, schedule, time_input: str = "t", precond: str = "none",
                      sigma_data: float = 0.5):
    """``cond_apply(params, x, t, y)`` (labels required) for
    :func:`~samplax.models.wrappers.classifier_free_guidance`, with ``null_cond =
    net.num_classes``; its output is what :func:`network_model` with the same
    options predicts."""
    apply = network_apply(net, schedule, time_input, precond, sigma_data)

    def cond_apply(params, x, t, y):
        return apply(params, x, t, y)
    return cond_apply


def network_model(net: nn.Module, params, schedule, prediction: str = "noise", time_input: str = "t",
                  precond: str = "none", sigma_data: float = 0.5, labels=None) -> DiffusionModel:
    """A trained (or untrained) network as a DiffusionModel predicting ``prediction``.

    ``precond="edm"`` (EDM preconditioning, see the module docstring) predicts the
    data, so it needs ``prediction="data"``.  With ``labels`` (an int, or an int
    array with one label per example) the model is conditional on them: its
    params are the pair ``(params, labels)`` and labels reach the network as ``y``."""
    if prediction not in PREDICTIONS or prediction == "data_noise":
        allowed = [p for p in PREDICTIONS if p != "data_noise"]
        raise ValueError(f"network_model: prediction must be one of {allowed}, got {prediction!r}")
    _check_options("network_model", time_input, precond, sigma_data)
    if precond == "edm" and prediction != "data":
        raise ValueError(f"network_model: precond='edm' gives a data prediction, so prediction must be 'data', "
                         f"got {prediction!r}")
    apply = network_apply(net, schedule, time_input, precond, sigma_data)
    if labels is None:
        return DiffusionModel(apply=apply, params=params, schedule=schedule, prediction=prediction)
    labels = jnp.asarray(labels)
    if not jnp.issubdtype(labels.dtype, jnp.integer) or labels.ndim > 1:
        raise ValueError(f"network_model: labels must be an int or a 1-D int array, got dtype {labels.dtype}, "
                         f"shape {labels.shape}")

    def apply_labelled(p, x, t):
        inner, y = p
        return apply(inner, x, t, y)
    return DiffusionModel(apply=apply_labelled, params=(params, labels), schedule=schedule, prediction=prediction)
