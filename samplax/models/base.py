"""DiffusionModel: a predictor plus its schedule and prediction type, offering
every view (data, noise, score, v-prediction, flow velocity) a solver may ask for.

Conventions (x_t = alpha x_0 + sigma eps):

* ``"noise"``:     eps_hat
* ``"data"``:      x0_hat
* ``"score"``:     grad log p_t(x) = -eps_hat / sigma
* ``"velocity"``:  v_hat = alpha eps_hat - sigma x0_hat (Salimans & Ho 2022)
* ``"flow"``:      dx/dt of the probability-flow ODE, alpha'(t) x0_hat + sigma'(t) eps_hat
                   (the rectified-flow / flow-matching velocity)
* ``"data_noise"``: the function returns the pair (x0_hat, eps_hat); analytic
                   models use it so that each view is exact, with no cancellation.

``apply(params, x, t)`` takes a batch ``x`` of shape (B, ...) and a scalar time
``t`` (or one time per sample, shape (B,)).
"""
from __future__ import annotations

from typing import Any, Callable

import flax.struct
import jax
import jax.numpy as jnp

PREDICTIONS = ("noise", "data", "score", "velocity", "flow", "data_noise")


def _bcast(a, x):
    a = jnp.asarray(a, dtype=x.dtype)
    return a.reshape(a.shape + (1,) * (x.ndim - a.ndim))


def _schedule_derivatives(schedule, t):
    """alpha(t), sigma(t), alpha'(t), sigma'(t) by forward-mode autodiff."""
    t = jnp.asarray(t)
    alpha, dalpha = jax.jvp(schedule.alpha, (t,), (jnp.ones_like(t),))
    sigma, dsigma = jax.jvp(schedule.sigma, (t,), (jnp.ones_like(t),))
    return alpha, sigma, dalpha, dsigma


@flax.struct.dataclass
class DiffusionModel:
    """A diffusion model: ``apply(params, x, t)`` + schedule + prediction type."""

    apply: Callable = flax.struct.field(pytree_node=False)
    params: Any
    schedule: Any
    prediction: str = flax.struct.field(pytree_node=False, default="noise")

    def __post_init__(self):
        if self.prediction not in PREDICTIONS:
            raise ValueError(f"DiffusionModel: prediction must be one of {PREDICTIONS}, got {self.prediction!r}")

    def raw(self, x, t):
        return self.apply(self.params, x, t)

    def data_noise(self, x, t):
        """(x0_hat, eps_hat) with the exact conversions from the native output."""
        out = self.raw(x, t)
        p = self.prediction
        if p == "data_noise":
            return out
        alpha = _bcast(self.schedule.alpha(t), x)
        sigma = _bcast(self.schedule.sigma(t), x)
        if p == "noise":
            return (x - sigma * out) / alpha, out
        if p == "data":
            return out, (x - alpha * out) / sigma
        if p == "score":
            eps = -sigma * out
            return (x - sigma * eps) / alpha, eps
        if p == "velocity":
            # x = a x0 + s eps, v = a eps - s x0  =>  invert the rotation.
            n2 = alpha**2 + sigma**2
            return (alpha * x - sigma * out) / n2, (sigma * x + alpha * out) / n2
        # flow: u = a' x0 + s' eps
        a, s, da, ds = (_bcast(v, x) for v in _schedule_derivatives(self.schedule, t))
        det = ds * a - s * da
        return (ds * x - s * out) / det, (a * out - da * x) / det

    def data(self, x, t):
        if self.prediction == "data":
            return self.raw(x, t)
        return self.data_noise(x, t)[0]

    def noise(self, x, t):
        if self.prediction == "noise":
            return self.raw(x, t)
        return self.data_noise(x, t)[1]

    def score(self, x, t):
        if self.prediction == "score":
            return self.raw(x, t)
        return -self.noise(x, t) / _bcast(self.schedule.sigma(t), x)

    def velocity(self, x, t):
        if self.prediction == "velocity":
            return self.raw(x, t)
        x0, eps = self.data_noise(x, t)
        return _bcast(self.schedule.alpha(t), x) * eps - _bcast(self.schedule.sigma(t), x) * x0

    def flow(self, x, t):
        """Probability-flow ODE velocity dx/dt = alpha' x0_hat + sigma' eps_hat."""
        if self.prediction == "flow":
            return self.raw(x, t)
        x0, eps = self.data_noise(x, t)
        _, _, da, ds = _schedule_derivatives(self.schedule, t)
        return _bcast(da, x) * x0 + _bcast(ds, x) * eps

    def view(self, kind: str):
        """The bound method for a view name (``data``, ``noise``, ...)."""
        if kind not in ("data", "noise", "score", "velocity", "flow"):
            raise ValueError(f"DiffusionModel.view: kind must be data, noise, score, velocity or flow, got {kind!r}")
        return getattr(self, kind)

    def as_prediction(self, kind: str) -> "DiffusionModel":
        """The same model, re-expressed so that its native output is ``kind``."""
        self.view(kind)  # validates the name
        base_apply, schedule, base_pred = self.apply, self.schedule, self.prediction

        def apply(params, x, t):
            base = DiffusionModel(apply=base_apply, params=params, schedule=schedule, prediction=base_pred)
            return getattr(base, kind)(x, t)

        return DiffusionModel(apply=apply, params=self.params, schedule=self.schedule, prediction=kind)
