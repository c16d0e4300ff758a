"""Denoising losses for every prediction type, matching the schedule object.

With x_t = alpha(t) x0 + sigma(t) eps, a network trained on the target

* ``"noise"``:    eps                                   (DDPM, Ho et al. 2020, eq. 14)
* ``"data"``:     x0
* ``"velocity"``: alpha eps - sigma x0                  (v-prediction, Salimans & Ho 2022)
* ``"flow"``:     alpha'(t) x0 + sigma'(t) eps          (flow matching / rectified flow: with
                  alpha = 1 - t, sigma = t this is eps - x0; Lipman et al. 2023)

is a :class:`~samplax.models.DiffusionModel` with that ``prediction``, so a
trained network plugs into every solver.  The minimiser of each loss is the
conditional expectation E[target | x_t]; for Gaussian data its minimum value is
known in closed form, which the tests check.

Weightings (a function of t only, multiplying the per-example squared error):
``"none"``; ``"min_snr"``: min(SNR, gamma) / SNR for the noise target (Hang et
al. 2023, "Efficient Diffusion Training via Min-SNR Weighting"), which equals the
data loss weighted by min(SNR, gamma), because |eps_hat - eps|^2 = SNR |x0_hat - x0|^2
with SNR = alpha^2 / sigma^2.

Flow matching (Lipman et al. 2023, conditional flow matching with the optimal-transport
path and sigma_min = 0, time reversed so that the data sit at t = 0) and rectified flow
(Liu et al. 2023) are this loss with the ``FlowLinear``
schedule (alpha = 1 - t, sigma = t) and ``target="flow"``: the regression target is the
interpolant's velocity eps - x0, t is uniform on the schedule's [t_min, t_max], and the
trained network is a DiffusionModel with ``prediction="flow"``.  No separate loss is needed.

:func:`edm_loss` is the EDM training loss (Karras et al. 2022): log-normal noise
levels, the EDM schedule (alpha = 1, sigma = t), and the weight that makes the
preconditioned network's regression unit-weighted.

Labels (class-conditional training, classifier-free guidance; Ho & Salimans 2022):
both losses take optional ``labels``; with probability ``label_dropout`` each is
replaced by the null label ``num_classes`` (the network's "unconditional" entry),
so a single network learns the conditional and the unconditional model.  The
dropout draws use ``jax.random.fold_in(key, 2)``, leaving the time and noise draws
(and hence the unconditional path, bitwise) as they are without labels.
"""
from __future__ import annotations

from typing import Callable, Optional

import numbers

import jax
import jax.numpy as jnp

from samplax.schedules import VPDiscrete

TARGETS = ("noise", "data", "velocity", "flow")
WEIGHTINGS = ("none", "min_snr")


def _bcast(a, x):
    return a.reshape(a.shape + (1,) * (x.ndim - a.ndim))


def sample_times(key, n: int, schedule, discrete: bool = False, t_min: Optional[float] = None,
                 t_max: Optional[float] = None, dtype=jnp.float32):
    """n training times: uniform on [t_min, t_max] (defaults: the schedule's), or, with
    ``discrete`` and a VPDiscrete schedule, uniform over its N training times (i+1)/N."""
    if discrete:
        if not isinstance(schedule, VPDiscrete):
            raise ValueError("sample_times: discrete=True needs a VPDiscrete schedule")
        big_n = schedule.num_train_timesteps
        i = jax.random.randint(key, (n,), 0, big_n)
        return ((i + 1) / big_n).astype(dtype)
    lo = schedule.t_min if t_min is None else t_min
    hi = schedule.t_max if t_max is None else t_max
    if not hi > lo:
        raise ValueError(f"sample_times: need t_max > t_min, got t_min={lo}, t_max={hi}")
    return jax.random.uniform(key, (n,), dtype, lo, hi)


def diffusion_target(schedule, x0, eps, t, target: str):
    """The regression target of ``target`` for x_t = alpha(t) x0 + sigma(t) eps (t per example)."""
    if target == "noise":
        return eps
    if target == "data":
        return x0
    alpha, sigma = _bcast(schedule.alpha(t), x0), _bcast(schedule.sigma(t), x0)
    if target == "velocity":
        return alpha * eps - sigma * x0
    if target == "flow":
        da = jax.vmap(jax.grad(lambda s: schedule.alpha(s)))(t)
        ds = jax.vmap(jax.grad(lambda s: schedule.sigma(s)))(t)
        return _bcast(da, x0) * x0 + _bcast(ds, x0) * eps
    raise ValueError(f"diffusion_target: unknown target {target!r}; allowed: {list(TARGETS)}")


def loss_weight(schedule, t, weighting: str, target: str, gamma: float = 5.0):
    """Per-example weight w(t) of :func:`denoising_loss`."""
    if weighting == "none":
        return jnp.ones_like(t)
    snr = jnp.exp(2.0 * schedule.lambda_(t))
    if weighting == "min_snr":
        if target != "noise":
            raise ValueError("loss_weight: 'min_snr' weighting is implemented for the noise target")
        return jnp.minimum(snr, gamma) / snr
    raise ValueError(f"loss_weight: unknown weighting {weighting!r}; allowed: {list(WEIGHTINGS)}")


def drop_labels(key, labels, label_dropout, num_classes: int):
    """Replace each label by the null label ``num_classes`` with probability
    ``label_dropout`` (one Bernoulli draw per example from ``key``)."""
    if isinstance(label_dropout, numbers.Real) and not 0.0 <= float(label_dropout) <= 1.0:
        raise ValueError(f"label_dropout must be in [0, 1], got {label_dropout!r}")
    if isinstance(label_dropout, numbers.Real) and float(label_dropout) == 0.0:
        return labels
    if num_classes < 1:
        raise ValueError(f"label_dropout > 0 needs num_classes >= 1 (the null label is num_classes), "
                         f"got num_classes={num_classes}")
    drop = jax.random.bernoulli(key, label_dropout, labels.shape)
    return jnp.where(drop, jnp.asarray(num_classes, labels.dtype), labels)


def _prepare_labels(key, labels, batch: int, label_dropout, num_classes: int):
    labels = jnp.asarray(labels)
    if not jnp.issubdtype(labels.dtype, jnp.integer):
        raise ValueError(f"labels must be integers, got dtype {labels.dtype}")
    labels = jnp.broadcast_to(labels, (batch,))
    return drop_labels(jax.random.fold_in(key, 2), labels, label_dropout, num_classes)


def denoising_loss(predict: Callable, x0, key, schedule, target: str = "noise", weighting: str = "none",
                   discrete: bool = False, t_min: Optional[float] = None, t_max: Optional[float] = None,
                   labels=None, label_dropout=0.0, num_classes: int = 0):
    """Monte Carlo denoising loss  mean_b w(t_b) |predict(x_t, t)_b - target_b|^2 / d.

    ``predict(x_t, t)`` returns the prediction of ``target`` for a batch x_t (B, ...)
    at per-example times t (B,).  One t and one eps per example, from ``key``.
    With ``labels`` (int, scalar or (B,)) the call is ``predict(x_t, t, labels)``, each
    label first replaced by the null label ``num_classes`` with probability
    ``label_dropout`` (a key derived as ``fold_in(key, 2)``: t and eps are the same
    draws as without labels).  ``target="flow"`` with the FlowLinear schedule is flow
    matching / rectified flow (module docstring).
    Returns (loss, aux) with aux = dict(t=..., per_example=...) (and ``labels``, the
    labels after dropout, when labels are given)."""
    if target not in TARGETS:
        raise ValueError(f"denoising_loss: unknown target {target!r}; allowed: {list(TARGETS)}")
    k_t, k_eps = jax.random.split(key)
    b = x0.shape[0]
    t = sample_times(k_t, b, schedule, discrete, t_min, t_max, x0.dtype)
    eps = jax.random.normal(k_eps, x0.shape, x0.dtype)
    x_t = _bcast(schedule.alpha(t), x0) * x0 + _bcast(schedule.sigma(t), x0) * eps
    y = diffusion_target(schedule, x0, eps, t, target)
    return _weighted_regression(predict, x_t, t, y, loss_weight(schedule, t, weighting, target), key, labels,
                                label_dropout, num_classes)


def _weighted_regression(predict: Callable, x, t, target, weight, key, labels, label_dropout, num_classes: int):
    """(mean_b weight_b |predict(x, t[, labels])_b - target_b|^2 / d, aux) -- the part that
    :func:`denoising_loss` and :func:`edm_loss` share; labels dropped as in
    :func:`drop_labels` with a key derived from ``key``."""
    b = x.shape[0]
    if labels is None:
        pred = predict(x, t)
    else:
        labels = _prepare_labels(key, labels, b, label_dropout, num_classes)
        pred = predict(x, t, labels)
    err = (pred - target).reshape(b, -1)
    per_example = jnp.mean(err * err, axis=-1) * weight
    aux = dict(t=t, per_example=per_example)
    if labels is not None:
        aux["labels"] = labels
    return jnp.mean(per_example), aux


def edm_weight(sigma, sigma_data: float = 0.5):
    """EDM's loss weight lambda(sigma) = (sigma^2 + sd^2) / (sigma sd)^2 = 1 / c_out^2."""
    return (sigma**2 + sigma_data**2) / (sigma * sigma_data) ** 2


def edm_loss(denoise: Callable, x0, key, p_mean: float = -1.2, p_std: float = 1.2, sigma_data: float = 0.5,
             labels=None, label_dropout=0.0, num_classes: int = 0):
    """EDM's training loss (Karras et al. 2022, Sec. 5 and Table 1) for the EDM schedule
    (alpha = 1, sigma = t):  ln sigma ~ N(p_mean, p_std^2),  x = x0 + sigma eps,

        loss = mean_b lambda(sigma_b) |denoise(x, sigma)_b - x0_b|^2 / d,
        lambda(sigma) = (sigma^2 + sd^2) / (sigma sd)^2.

    ``denoise(x, sigma)`` (or ``denoise(x, sigma, labels)`` when ``labels`` are given; label
    dropout as in :func:`denoising_loss`) is the data prediction D, e.g. the ``data`` view of
    ``network_model(net, params, EDM(), "data", precond="edm", sigma_data=sd)``.  With that
    preconditioning, D = c_skip x + c_out F and lambda = 1 / c_out^2, so each term equals
    |F - (x0 - c_skip x) / c_out|^2 / d: unit-weighted regression of the raw network F on
    its effective target.  For x0 ~ N(0, sd^2 I) the optimal D has per-example loss exactly
    1 at every sigma (lambda times the Gaussian MMSE sd^2 sigma^2 / (sd^2 + sigma^2)).
    One sigma and one eps per example, from ``key``.
    Returns (loss, aux) with aux = dict(t=sigma, per_example=...) (and ``labels``)."""
    k_sigma, k_eps = jax.random.split(key)
    b = x0.shape[0]
    sigma = jnp.exp(p_mean + p_std * jax.random.normal(k_sigma, (b,), x0.dtype))
    eps = jax.random.normal(k_eps, x0.shape, x0.dtype)
    x = x0 + _bcast(sigma, x0) * eps
    return _weighted_regression(denoise, x, sigma, x0, edm_weight(sigma, sigma_data), key, labels, label_dropout,
                                num_classes)
