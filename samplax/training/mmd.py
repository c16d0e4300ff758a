"""MMD finetuning of a diffusion model for a fixed few-step sampler (MMD-DDM).

Aiello, Valsesia & Magli, "Fast Inference in Denoising Diffusion Models via MMD
Finetuning" (2023): fix the sampler and its budget of T' steps, and finetune the
pretrained network so that the *output distribution of that sampler* matches the data
under the maximum mean discrepancy, by back-propagating through the whole sampling
chain (Sec. III, the MMD objective in a feature space phi: the paper uses Inception-V3
or CLIP features of images).

Here, with the sampler G_theta(x_T) = few-step solve of the model with parameters theta
along a fixed grid (any deterministic samplax solver; the multistep ones are one
``lax.scan`` of :func:`samplax.solvers.unified.run_table`):

    L(theta) = MMD^2_u( phi(G_theta(x_T^(1..n))), phi(y^(1..m)) ),   x_T ~ N(0, prior_std^2 I)

with fresh x_T and a fresh data batch y at every step, MMD^2_u the unbiased U-statistic
of :func:`samplax.metrics.mmd2_unbiased` (a sum of RBF kernels, the bandwidth mixture),
and phi one of

* ``"raw"``: the flattened sample itself (the 2-D problems; digits pixels);
* ``"classifier"``: the 64 feature-layer activations of the digits CNN of
  :mod:`samplax.models.classifier` (the analogue of the paper's Inception features;
  the same network the digits FD is measured in, see docs/mmd_finetune.md).

The bandwidths are either fixed or ``scales`` x the median pairwise distance of the pooled
features of the current batch (:func:`samplax.metrics.mmd_bandwidths_median`), held
constant for the gradient (``stop_gradient``).  An RBF kernel's gradient vanishes for a
generated point far from every data point, so few-step samplers finetuned with it alone can
fling a small fraction of samples far out (measured on gmm2d, docs/mmd_finetune.md);
``energy_weight`` w > 0 adds w x the energy distance (:func:`samplax.metrics.energy_distance`,
itself the MMD^2 of the distance-induced kernel, Sejdinovic et al. 2013), whose pull on a
far point does not decay with its distance.

``jax.grad`` goes through the solver end to end; ``remat=True`` wraps every network call
in ``jax.checkpoint`` so the backward pass recomputes the network's activations step by
step instead of storing them for all T' steps (memory O(one call) + the scan's carries).
"""
from __future__ import annotations

from typing import Callable, NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp

from samplax.metrics import energy_distance, mmd2_unbiased, mmd_bandwidths_median

#: deterministic solvers that need no model statistics: the few-step samplers MMD finetuning can train through
MMD_SOLVERS = ("ddim", "dpm_solver_pp", "dpm_solver_multistep", "unipc", "deis", "ipndm", "ipndm_v", "euler",
               "heun", "dpm_solver", "dpm_solver_pp_singlestep")
FEATURES = ("raw", "classifier")
BANDWIDTHS = ("median", "fixed")


class FewStepSampler(NamedTuple):
    """A solver and its fixed grid: ``solver``, ``grid`` (samplax.timesteps.Grid), ``nfe``."""

    solver: object
    grid: object
    nfe: int


def few_step_sampler(solver_name: str, nfe: int, schedule, spacing: str = "logsnr",
                     options: Optional[dict] = None) -> FewStepSampler:
    """The solver ``solver_name`` (with ``options``) on the ``spacing`` grid of the number of
    steps that costs exactly ``nfe`` model evaluations (ValueError naming the argument)."""
    from samplax.solvers import get_solver, steps_for_nfe
    from samplax.timesteps import time_grid

    if solver_name not in MMD_SOLVERS:
        raise ValueError(f"solver_name: {solver_name!r} cannot be finetuned through; allowed: {list(MMD_SOLVERS)} "
                         f"(deterministic solvers that need no model statistics)")
    solver = get_solver(solver_name, **dict(options or {}))
    n = steps_for_nfe(solver, nfe)
    return FewStepSampler(solver, time_grid(schedule, n, spacing), int(nfe))


def with_remat(model):
    """The DiffusionModel with its network call wrapped in ``jax.checkpoint`` (same outputs;
    activations recomputed in the backward pass)."""
    return model.replace(apply=jax.checkpoint(model.apply))


def sample_few_step(model, sampler: FewStepSampler, x_T):
    """x_0 of the few-step solve from x_T (B, ...): differentiable in the model's params."""
    from samplax.solvers import sample

    x, _ = sample(sampler.solver, model, x_T, sampler.grid)
    return x


def prior_draws(key, n: int, shape, prior_std: float = 1.0, dtype=jnp.float32):
    """n draws of x_T ~ N(0, prior_std^2 I) of sample shape ``shape``."""
    return prior_std * jax.random.normal(key, (n,) + tuple(shape), dtype)


def kernel_bandwidths(fx, fy, bandwidth: str, scales: Sequence[float]):
    """The RBF bandwidths: ``scales`` themselves ("fixed") or ``scales`` x the median pooled
    distance of the batch ("median"), constant for the gradient."""
    if bandwidth == "fixed":
        return jnp.asarray(scales, fx.dtype)
    if bandwidth == "median":
        return jax.lax.stop_gradient(mmd_bandwidths_median(fx, fy, tuple(scales)))
    raise ValueError(f"bandwidth: unknown {bandwidth!r}; allowed: {list(BANDWIDTHS)}")


def mmd_objective(x, y, features: Optional[Callable] = None, bandwidth: str = "median",
                  scales: Sequence[float] = (0.25, 0.5, 1.0, 2.0, 4.0), energy_weight: float = 0.0):
    """MMD^2_u between generated ``x`` and data ``y`` (both (n, ...)) in the feature space
    ``features`` (None: the flattened samples), plus ``energy_weight`` x their energy distance."""
    fx = x if features is None else features(x)
    fy = y if features is None else features(y)
    fx, fy = fx.reshape(fx.shape[0], -1), fy.reshape(fy.shape[0], -1)
    loss = mmd2_unbiased(fx, fy, kernel_bandwidths(fx, fy, bandwidth, scales))
    if energy_weight:
        loss = loss + energy_weight * energy_distance(fx, fy)
    return loss


def mmd_loss(params, model_of: Callable, sampler: FewStepSampler, x_T, data, features: Optional[Callable] = None,
             bandwidth: str = "median", scales: Sequence[float] = (0.25, 0.5, 1.0, 2.0, 4.0),
             energy_weight: float = 0.0):
    """L(theta) of the module doc: ``model_of(params)`` is the DiffusionModel, x_T the prior
    draws, data a batch of data.  Differentiable in ``params``."""
    x = sample_few_step(model_of(params), sampler, x_T)
    return mmd_objective(x, data, features, bandwidth, scales, energy_weight)


def make_finetune_step(model_of: Callable, sampler: FewStepSampler, optimizer, shape, n_gen: int,
                       prior_std: float = 1.0, features: Optional[Callable] = None, bandwidth: str = "median",
                       scales: Sequence[float] = (0.25, 0.5, 1.0, 2.0, 4.0), remat: bool = False,
                       energy_weight: float = 0.0):
    """A jitted ``step(params, opt_state, key, data) -> (params, opt_state, loss)``: fresh
    x_T from ``key`` (n_gen of them), one optax update on the gradient of :func:`mmd_loss`."""
    import optax

    of = (lambda p: with_remat(model_of(p))) if remat else model_of

    @jax.jit
    def step(params, opt_state, key, data):
        x_T = prior_draws(key, n_gen, shape, prior_std, data.dtype)
        loss, grads = jax.value_and_grad(mmd_loss)(params, of, sampler, x_T, data, features, bandwidth, scales,
                                                  energy_weight)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    return step


__all__ = ["MMD_SOLVERS", "FEATURES", "BANDWIDTHS", "FewStepSampler", "few_step_sampler", "with_remat",
           "sample_few_step", "prior_draws", "kernel_bandwidths", "mmd_objective", "mmd_loss", "make_finetune_step"]
