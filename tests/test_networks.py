"""The MLP score network: its embedding, and an end-to-end check that optax training of
the denoising loss reaches the closed-form loss minimum on Gaussian data and that the
trained network, wrapped as a DiffusionModel, samples the right distribution."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import samplax as sx
from samplax.models.networks import MLPScoreNet, network_model, sinusoidal_embedding
from samplax.schedules import get_schedule
from samplax.training import denoising_loss

MU, S = 0.5, 0.4


def test_sinusoidal_embedding():
    e = sinusoidal_embedding(jnp.array([0.0, 1.0, 500.0]), 8)
    assert e.shape == (3, 8)
    np.testing.assert_allclose(e[0], [0, 0, 0, 0, 1, 1, 1, 1], atol=1e-7)  # sin 0, cos 0
    np.testing.assert_allclose(e[:, 0], np.sin([0.0, 1.0, 500.0]), atol=1e-5)  # frequency 1
    np.testing.assert_allclose(jnp.sum(e[:, :4] ** 2 + e[:, 4:] ** 2, axis=-1), 4.0, atol=1e-5)
    with pytest.raises(ValueError, match="even"):
        sinusoidal_embedding(jnp.zeros(2), 7)


def _minimum_noise_loss(schedule, t_min, t_max):
    with jax.enable_x64(True):
        t = jnp.linspace(t_min, t_max, 20001, dtype=jnp.float64)
        a, s = schedule.alpha(t), schedule.sigma(t)
        return float(jnp.trapezoid(a**2 * S**2 / (a**2 * S**2 + s**2), t) / (t_max - t_min))


@pytest.mark.parametrize("time_input", ["t", "log_snr"])
def test_training_reaches_the_loss_minimum_and_samples_the_data(time_input):
    schedule = get_schedule("vp_linear")
    net = MLPScoreNet(hidden=(64, 64), embed_dim=32)
    key = jax.random.PRNGKey(0)
    params = net.init(key, jnp.zeros((1, 2)), jnp.zeros((1,)))
    model0 = network_model(net, params, schedule, "noise", time_input)
    opt = optax.adam(optax.cosine_decay_schedule(3e-3, 1500))
    state = opt.init(params)

    def loss_fn(p, k):
        x0 = MU + S * jax.random.normal(jax.random.fold_in(k, 0), (512, 2))
        predict = model0.replace(params=p).noise
        return denoising_loss(predict, x0, jax.random.fold_in(k, 1), schedule, "noise")[0]

    @jax.jit
    def step(p, st, k):
        loss, g = jax.value_and_grad(loss_fn)(p, k)
        upd, st = opt.update(g, st, p)
        return optax.apply_updates(p, upd), st, loss

    for i in range(1500):
        params, state, _ = step(params, state, jax.random.fold_in(key, i))
    # evaluate on a large fresh batch.  The loss of any predictor exceeds the minimum by
    # E|eps_net - eps_exact|^2 (the exact Gaussian posterior mean): measure that excess
    # directly, and check the Monte Carlo loss against the closed-form minimum + excess.
    x0 = MU + S * jax.random.normal(jax.random.PRNGKey(7), (100_000, 2))
    model = model0.replace(params=params)
    loss, aux = denoising_loss(model.noise, x0, jax.random.PRNGKey(8), schedule, "noise")
    t = aux["t"]
    exact = sx.Gaussian(jnp.full((2,), MU), jnp.full((2,), S)).model(schedule)
    x_t = schedule.alpha(t)[:, None] * x0 + schedule.sigma(t)[:, None] * jax.random.normal(
        jax.random.PRNGKey(10), x0.shape)
    excess = float(jnp.mean((model.noise(x_t, t) - exact.noise(x_t, t)) ** 2))
    best = _minimum_noise_loss(schedule, schedule.t_min, schedule.t_max)
    se = float(jnp.std(aux["per_example"])) / np.sqrt(x0.shape[0])
    assert excess < 0.02 * best, (excess, best)  # the untrained network's excess is ~best/0.15
    assert abs(float(loss) - (best + excess)) < 4 * se, (float(loss), best, excess, se)
    # the trained network plugs into a solver: samples have the data's mean and std
    solver = sx.get_solver("dpm_solver_pp", order=2)
    grid = sx.time_grid(schedule, 20, "logsnr", end="zero")
    x, info = jax.jit(lambda k: sx.generate(solver, model, grid, k, 20_000, (2,)))(jax.random.PRNGKey(9))
    assert int(info.first_nonfinite_step) == -1
    np.testing.assert_allclose(np.mean(np.asarray(x), 0), MU, atol=0.03)
    np.testing.assert_allclose(np.std(np.asarray(x), 0), S, atol=0.03)


def test_network_model_rejects_bad_arguments():
    net = MLPScoreNet(hidden=(8,), embed_dim=8)
    schedule = get_schedule("vp_linear")
    with pytest.raises(ValueError, match="prediction must be one of"):
        network_model(net, None, schedule, "eps")
    with pytest.raises(ValueError, match="time_input must be one of"):
        network_model(net, None, schedule, "noise", "sigma")
