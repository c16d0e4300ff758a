"""The train step: optax optimiser, EMA of the parameters, a pure jit-able update.

* :func:`make_optimizer` -- gradient clipping by global norm, then AdamW (Loshchilov &
  Hutter 2019) on a learning rate that warms up linearly from 0 and decays with a
  cosine to ``end_lr_fraction * learning_rate`` at ``num_steps``
  (``optax.warmup_cosine_decay_schedule``).
* :func:`ema_update` -- the exponential moving average of the parameters,
  ``ema <- (1 - decay) params + decay ema`` through ``optax.incremental_update`` (step
  size ``1 - decay``, in each leaf's dtype); with ``ema_warmup`` the decay at step k is
  ``min(decay, (1 + k) / (10 + k))`` (as in TensorFlow's ExponentialMovingAverage with
  ``num_updates``), so early averages do not remember the random initialisation.
* :func:`make_train_step` -- ``step(state, batch, key) -> (state, metrics)``, a pure
  function: jit it, and shard the batch over a mesh to train data-parallel (the
  gradient of the mean loss over a sharded batch is reduced across devices by XLA,
  so the update equals the single-device one to float tolerance).
* :func:`step_key` -- the RNG of step k is ``fold_in(fold_in(PRNGKey(seed), TRAIN_STREAM), k)``
  (a stream apart from the data generators' ``fold_in(PRNGKey(data_seed), k)``): with a data
  order that is a pure function of (data seed, k) the whole run is a pure function of
  its config and a resumed run repeats an uninterrupted one exactly.
"""
from __future__ import annotations

from typing import Any, Callable, Optional

import flax.struct
import jax
import jax.numpy as jnp
import optax

from samplax.data_sampling.base import initial_stats, make_info, sampler_key, stats_of


class TrainState(flax.struct.PyTreeNode):
    """Everything a run needs to continue: step, parameters, their EMA, optimiser state, and
    (``data``) the data sampler's :class:`DataState` when one picks the examples (None
    otherwise: the data order is then a pure function of the data seed and the step)."""

    step: jax.Array
    params: Any
    ema_params: Any
    opt_state: Any
    data: Any = None


class DataState(flax.struct.PyTreeNode):
    """A data sampler's state and the stats of the last step (what its next draw reads)."""

    sampler: Any
    stats: Any


def learning_rate_schedule(learning_rate: float, num_steps: int, warmup_steps: int = 0,
                           end_lr_fraction: float = 0.0) -> optax.Schedule:
    """Linear warm-up from 0 over ``warmup_steps``, then cosine decay to
    ``end_lr_fraction * learning_rate`` at ``num_steps``."""
    if not learning_rate > 0:
        raise ValueError(f"learning_rate must be positive, got {learning_rate}")
    if not 0 <= warmup_steps < num_steps:
        raise ValueError(f"warmup_steps must be in [0, num_steps={num_steps}), got {warmup_steps}")
    if not 0.0 <= end_lr_fraction <= 1.0:
        raise ValueError(f"end_lr_fraction must be in [0, 1], got {end_lr_fraction}")
    return optax.warmup_cosine_decay_schedule(0.0, learning_rate, warmup_steps, num_steps,
                                              end_value=learning_rate * end_lr_fraction)


def make_optimizer(learning_rate: float, num_steps: int, warmup_steps: int = 0, weight_decay: float = 0.0,
                   b1: float = 0.9, b2: float = 0.999, grad_clip: Optional[float] = 1.0,
                   end_lr_fraction: float = 0.0) -> optax.GradientTransformation:
    """clip_by_global_norm(grad_clip) (skipped when None or 0) then AdamW on the warm-up +
    cosine schedule of :func:`learning_rate_schedule`."""
    schedule = learning_rate_schedule(learning_rate, num_steps, warmup_steps, end_lr_fraction)
    parts = []
    if grad_clip:
        if not grad_clip > 0:
            raise ValueError(f"grad_clip must be positive (or 0/None for no clipping), got {grad_clip}")
        parts.append(optax.clip_by_global_norm(grad_clip))
    parts.append(optax.adamw(schedule, b1=b1, b2=b2, weight_decay=weight_decay))
    return optax.chain(*parts)


def ema_decay_at(step, decay: float, warmup: bool = False):
    """The EMA decay used for the update that produces step ``step + 1``."""
    if not warmup:
        return jnp.asarray(decay, jnp.float32)
    s = jnp.asarray(step, jnp.float32)
    return jnp.minimum(jnp.float32(decay), (1.0 + s) / (10.0 + s))


def ema_update(ema, params, decay):
    """``optax.incremental_update(params, ema, 1 - decay)`` = (1 - decay) params + decay ema,
    leaf by leaf with the step size in each leaf's dtype (a bfloat16 EMA stays bfloat16).

    Equal to the former ``ema + (1 - decay) (params - ema)`` up to float round-off (the
    two forms round differently: a few ulp per step, not bitwise)."""
    step_size = 1.0 - jnp.asarray(decay, jnp.float32)
    return jax.tree.map(lambda e, p: optax.incremental_update(p, e, step_size.astype(e.dtype)), ema, params)


def init_train_state(params, optimizer: optax.GradientTransformation) -> TrainState:
    """Step 0: the EMA starts at the initial parameters."""
    return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                      ema_params=jax.tree.map(jnp.array, params), opt_state=optimizer.init(params))


def make_train_step(loss_fn: Callable, optimizer: optax.GradientTransformation, ema_decay: float = 0.999,
                    ema_warmup: bool = False, with_aux: bool = False) -> Callable:
    """``step(state, batch, key) -> (state, metrics)`` for ``loss_fn(params, batch, key) ->
    (loss, aux)``; metrics: loss, grad_norm (before clipping), ema_decay.  With ``with_aux``
    the step returns ``(state, metrics, aux)`` (aux of the loss at the parameters before the update)."""
    if not 0.0 <= ema_decay < 1.0:
        raise ValueError(f"ema_decay must be in [0, 1), got {ema_decay}")

    def step(state: TrainState, batch, key):
        (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params, batch, key)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        decay = ema_decay_at(state.step, ema_decay, ema_warmup)
        new = state.replace(step=state.step + 1, params=params,
                            ema_params=ema_update(state.ema_params, params, decay), opt_state=opt_state)
        metrics = dict(loss=loss, grad_norm=optax.global_norm(grads), ema_decay=decay)
        return (new, metrics, aux) if with_aux else (new, metrics)

    return step


def init_data_state(sampler) -> DataState:
    """A data sampler's state before step 0 (:func:`samplax.data_sampling.initial_stats`)."""
    return DataState(sampler=sampler.init(), stats=initial_stats(sampler))


def make_sampled_train_step(loss_fn: Callable, optimizer: optax.GradientTransformation, sampler, data_seed: int,
                            learning_rate: Optional[optax.Schedule] = None, ema_decay: float = 0.999,
                            ema_warmup: bool = False, batch_constraint: Optional[Callable] = None) -> Callable:
    """``step(state, arrays, key) -> (state, metrics)``: the data sampler draws the indices of
    this step from ``state.data`` (key :func:`samplax.data_sampling.sampler_key` of
    ``(data_seed, state.step)``), the batch is gathered from ``arrays = (x, labels or None)`` (the
    whole data set, on device), the model takes its step, and the step's per-example losses
    (``aux["per_example"]``) become the stats of the next draw.  ``batch_constraint`` (e.g. a
    sharding constraint) is applied to the gathered batch.  State, draw and step: one function,
    so one jit and no host round trip per step."""
    inner = make_train_step(loss_fn, optimizer, ema_decay, ema_warmup, with_aux=True)

    def step(state: TrainState, arrays, key):
        x_all, y_all = arrays
        idx, sampler_state = sampler.next_indices(sampler_key(data_seed, state.step), state.data.sampler,
                                                  state.data.stats)
        batch = (jnp.take(x_all, idx, axis=0), None if y_all is None else jnp.take(y_all, idx, axis=0))
        if batch_constraint is not None:
            batch = batch_constraint(batch)
        new, metrics, aux = inner(state, batch, key)
        lr = 0.0 if learning_rate is None else learning_rate(state.step)
        stats = stats_of(sampler, make_info(idx, aux["per_example"], metrics["grad_norm"], lr, state.step))
        return new.replace(data=DataState(sampler=sampler_state, stats=stats)), metrics

    return step


# The training RNG is its own stream: data generators draw batch k from
# fold_in(PRNGKey(data_seed), k), and with seed == data_seed a step key equal to that
# would correlate the diffusion noise with the data (the network then learns the
# correlation, not the score).  A test checks the streams differ.
TRAIN_STREAM = 0x7472  # "tr"


def _step_key(seed, step):
    return jax.random.fold_in(jax.random.fold_in(jax.random.PRNGKey(seed), TRAIN_STREAM), step)


# a Python-int seed is static: the training loop's key per step is one compiled call, not three
# eager dispatches (~1 ms a step on a CPU); the same bits (integer arithmetic)
_step_key_static_seed = jax.jit(_step_key, static_argnums=0)


def step_key(seed: int, step):
    """The PRNG key of training step ``step`` (times, noise, label dropout):
    fold_in(fold_in(PRNGKey(seed), TRAIN_STREAM), step)."""
    if isinstance(seed, int) and not isinstance(seed, bool):
        return _step_key_static_seed(seed, step)
    return _step_key(seed, step)
