"""The train step: optimiser schedule and clipping, EMA, one update equal to plain optax."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from samplax.training.train import (ema_decay_at, ema_update, init_train_state, learning_rate_schedule,
                                    make_optimizer, make_train_step, step_key)


def test_learning_rate_schedule_warmup_then_cosine():
    lr = learning_rate_schedule(1e-2, num_steps=110, warmup_steps=10, end_lr_fraction=0.1)
    assert float(lr(0)) == 0.0
    np.testing.assert_allclose(float(lr(5)), 5e-3, rtol=1e-6)
    np.testing.assert_allclose(float(lr(10)), 1e-2, rtol=1e-6)
    # cosine from 1e-2 to 1e-3 over the 100 steps after warm-up: halfway is the mean
    np.testing.assert_allclose(float(lr(60)), 0.5 * (1e-2 + 1e-3), rtol=1e-5)
    np.testing.assert_allclose(float(lr(110)), 1e-3, rtol=1e-5)


@pytest.mark.parametrize("kw, msg", [(dict(warmup_steps=100), "warmup_steps"), (dict(learning_rate=0.0), "learning_rate"),
                                     (dict(end_lr_fraction=2.0), "end_lr_fraction"), (dict(grad_clip=-1.0), "grad_clip")])
def test_make_optimizer_rejects_bad_settings(kw, msg):
    args = dict(learning_rate=1e-3, num_steps=100, warmup_steps=0)
    args.update(kw)
    with pytest.raises(ValueError, match=msg):
        make_optimizer(**args)


def test_gradient_clipping_matches_adamw_on_clipped_gradient():
    params = {"w": jnp.array([1.0, -2.0, 3.0])}
    grads = {"w": jnp.array([30.0, 40.0, 0.0])}  # norm 50
    clipped = make_optimizer(1e-2, 100, 0, grad_clip=1.0, weight_decay=1e-4)
    plain = optax.adamw(learning_rate_schedule(1e-2, 100, 0), weight_decay=1e-4)
    u1, _ = clipped.update(grads, clipped.init(params), params)
    u2, _ = plain.update({"w": grads["w"] / 50.0}, plain.init(params), params)
    np.testing.assert_allclose(np.asarray(u1["w"]), np.asarray(u2["w"]), rtol=1e-6)


def test_ema_matches_geometric_average_and_warmup_formula():
    decay = 0.9
    seq = [np.float64(v) for v in (1.0, 4.0, -2.0, 7.0, 0.5)]
    ema = {"a": jnp.asarray(0.0, jnp.float32)}
    want = 0.0
    for p in seq:
        ema = ema_update(ema, {"a": jnp.asarray(p, jnp.float32)}, ema_decay_at(0, decay))
        want = decay * want + (1 - decay) * p
    np.testing.assert_allclose(float(ema["a"]), want, rtol=1e-6)
    # warm-up: min(decay, (1+k)/(10+k))
    np.testing.assert_allclose(float(ema_decay_at(0, 0.999, True)), 0.1, rtol=1e-6)
    np.testing.assert_allclose(float(ema_decay_at(90, 0.999, True)), 91 / 100, rtol=1e-6)
    np.testing.assert_allclose(float(ema_decay_at(10**6, 0.999, True)), 0.999, rtol=1e-6)


def test_train_step_equals_hand_written_optax_update_and_ema():
    """One jit-ed step = value_and_grad + optimizer.update + apply_updates + EMA, exactly."""
    def loss_fn(params, batch, key):
        noise = jax.random.normal(key, batch.shape)
        r = batch @ params["w"] + params["b"] - noise[:, 0]
        return jnp.mean(r**2), {}

    opt = make_optimizer(1e-2, 50, 5, weight_decay=1e-3, grad_clip=0.5)
    params = {"w": jnp.array([0.5, -1.0]), "b": jnp.array(0.1)}
    state = init_train_state(params, opt)
    batch = jnp.arange(8.0).reshape(4, 2) / 4
    step = jax.jit(make_train_step(loss_fn, opt, ema_decay=0.9))
    s1, m = step(state, batch, step_key(0, 0))
    grads = jax.grad(lambda p: loss_fn(p, batch, step_key(0, 0))[0])(params)
    upd, _ = opt.update(grads, opt.init(params), params)
    want = optax.apply_updates(params, upd)
    for k in params:
        np.testing.assert_allclose(np.asarray(s1.params[k]), np.asarray(want[k]), rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(np.asarray(s1.ema_params[k]),
                                   0.9 * np.asarray(params[k]) + 0.1 * np.asarray(want[k]), rtol=1e-6, atol=1e-7)
    assert int(s1.step) == 1
    np.testing.assert_allclose(float(m["grad_norm"]), float(optax.global_norm(grads)), rtol=1e-6)


def test_train_step_descends_a_quadratic():
    opt = make_optimizer(5e-2, 300, 10, grad_clip=None)
    target = jnp.array([1.0, -2.0, 0.5])
    step = jax.jit(make_train_step(lambda p, b, k: (jnp.sum((p - target) ** 2), {}), opt, ema_decay=0.5))
    state = init_train_state(jnp.zeros(3), opt)
    for i in range(300):
        state, m = step(state, None, step_key(0, i))
    np.testing.assert_allclose(np.asarray(state.params), np.asarray(target), atol=2e-3)
    np.testing.assert_allclose(np.asarray(state.ema_params), np.asarray(target), atol=2e-3)


def test_step_key_is_a_pure_function_of_seed_and_step_apart_from_the_data_stream():
    assert np.array_equal(np.asarray(step_key(3, 7)), np.asarray(step_key(3, 7)))
    assert not np.array_equal(np.asarray(step_key(3, 7)), np.asarray(step_key(3, 8)))
    # generators draw batch k from fold_in(PRNGKey(data_seed), k): the noise must not reuse it
    for k in range(50):
        assert not np.array_equal(np.asarray(step_key(0, k)), np.asarray(jax.random.fold_in(jax.random.PRNGKey(0), k)))



def test_ema_update_is_optax_incremental_update_and_keeps_each_leafs_dtype():
    """ema_update = optax.incremental_update(params, ema, 1 - decay) exactly; the former
    ema + (1 - decay)(params - ema) agrees to float32 round-off (not bitwise)."""
    key = jax.random.PRNGKey(0)
    ema = {"w": jax.random.normal(key, (1000,)), "b": jnp.ones((3,), jnp.bfloat16)}
    params = {"w": jax.random.normal(jax.random.fold_in(key, 1), (1000,)), "b": jnp.full((3,), 2.0, jnp.bfloat16)}
    decay = ema_decay_at(5, 0.999, True)
    got = ema_update(ema, params, decay)
    want = optax.incremental_update(params["w"], ema["w"], 1.0 - decay)
    assert np.array_equal(np.asarray(got["w"]), np.asarray(want))
    former = ema["w"] + (1.0 - decay) * (params["w"] - ema["w"])
    np.testing.assert_allclose(np.asarray(got["w"]), np.asarray(former), rtol=0, atol=5e-7)
    assert got["b"].dtype == jnp.bfloat16  # the step size is cast to each leaf's dtype
    np.testing.assert_allclose(np.asarray(got["b"], np.float32), 1.0 + float(1.0 - decay), rtol=1e-2)
