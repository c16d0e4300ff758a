"""The MLP score network: its embedding, and an end-to-end check that optax training of
the denoising loss reaches the closed-form loss minimum on Gaussian data and that the
trained network, wrapped as a DiffusionModel, samples the right distribution.  Then the
label conditioning (null label = no label), EDM preconditioning against the closed-form
Gaussian denoiser and its defining formula, and classifier-free guidance of a labelled
network through conditional_apply."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import samplax as sx
from samplax.models import classifier_free_guidance
from samplax.models.networks import MLPScoreNet, conditional_apply, network_model, sinusoidal_embedding
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


# --- labels, EDM preconditioning, classifier-free guidance --------------------------------------

SD = 0.5


def _random_params(net, x, y=None, scale=0.3, seed=1):
    """Parameters drawn with numpy over the network's shapes: every layer non-zero."""
    shapes = jax.eval_shape(net.init, jax.random.PRNGKey(0), x, jnp.zeros(x.shape[0]), y)
    rng = np.random.default_rng(seed)
    return jax.tree_util.tree_map(lambda a: jnp.asarray(scale * rng.normal(size=a.shape), a.dtype), shapes)


def test_mlp_labels_are_optional_and_backward_compatible():
    x = jnp.asarray(np.random.default_rng(0).normal(size=(5, 3)), jnp.float32)
    s = jnp.linspace(0.0, 1000.0, 5)
    plain = jax.eval_shape(MLPScoreNet(hidden=(16, 16), embed_dim=8).init, jax.random.PRNGKey(0), x, s)
    # the unconditional network's parameters are what they always were: no embedding table
    assert sorted(plain["params"]) == ["Dense_0", "Dense_1", "Dense_2", "Dense_3", "Dense_4", "Dense_5", "Dense_6"]
    net = MLPScoreNet(hidden=(16, 16), embed_dim=8, num_classes=3)
    params = _random_params(net, x)
    assert params["params"]["Embed_0"]["embedding"].shape == (4, 8)  # 3 classes + the null label
    apply = jax.jit(net.apply)
    out_null = apply(params, x, s, jnp.full((5,), 3))
    np.testing.assert_array_equal(jax.jit(net.apply)(params, x, s), out_null)  # y=None is the null label
    out1 = apply(params, x, s, jnp.full((5,), 1))
    assert float(jnp.mean(jnp.abs(out1 - out_null))) > 0.05 * float(jnp.std(out_null))
    np.testing.assert_allclose(jax.jit(lambda p, x, s: net.apply(p, x, s, 1))(params, x, s), out1, rtol=1e-6)
    with pytest.raises(ValueError, match="unconditional network"):
        MLPScoreNet(hidden=(8,), embed_dim=8).init(jax.random.PRNGKey(0), x, s, jnp.zeros(5, jnp.int32))


@pytest.mark.parametrize("per_example", [False, True])
def test_edm_precond_with_zero_network_is_the_optimal_gaussian_denoiser(per_example):
    """For x0 ~ N(0, sd^2 I) and the EDM schedule the optimal denoiser is D*(x) = sd^2 / (sd^2 +
    sigma^2) x = c_skip x: the preconditioned model with F = 0 (all parameters zero) is
    exactly D*, at every sigma, and equals the exact Gaussian model's data prediction."""
    schedule = get_schedule("edm")
    net = MLPScoreNet(hidden=(16,), embed_dim=8)
    x = jnp.asarray(np.random.default_rng(0).normal(size=(7, 3)), jnp.float32)
    params = jax.tree_util.tree_map(jnp.zeros_like, _random_params(net, x))
    model = network_model(net, params, schedule, "data", precond="edm", sigma_data=SD)
    exact = sx.Gaussian(jnp.zeros(3), jnp.full((3,), SD)).model(schedule)
    sigmas = [jnp.asarray(np.geomspace(0.002, 80.0, 7), jnp.float32)] if per_example else [0.002, 0.5, 80.0]
    for sigma in sigmas:
        sig = jnp.broadcast_to(jnp.asarray(sigma, jnp.float32), (7,))[:, None]
        np.testing.assert_allclose(model.data(x, sigma), SD**2 / (SD**2 + sig**2) * x, rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(model.data(x, sigma), exact.data(x, sigma), rtol=1e-5, atol=1e-7)


def test_edm_precond_on_a_vp_schedule_is_the_formula():
    """On a VP schedule the preconditioning acts on x / alpha at sigma~ = sigma / alpha:
    D = c_skip x / alpha + c_out F(c_in x / alpha, 250 ln sigma~), compared with a direct
    float64 computation from the same network output; at t = 0 (sigma = 0) D is x."""
    schedule = get_schedule("vp_cosine")
    net = MLPScoreNet(hidden=(16, 16), embed_dim=8)
    rng = np.random.default_rng(3)
    x = jnp.asarray(rng.normal(size=(6, 2)), jnp.float32)
    t = jnp.asarray([0.01, 0.1, 0.3, 0.5, 0.8, 0.99], jnp.float32)
    params = _random_params(net, x)
    model = network_model(net, params, schedule, "data", precond="edm", sigma_data=SD)
    d = np.asarray(model.data(x, t), np.float64)
    a, s = np.asarray(schedule.alpha(t), np.float64)[:, None], np.asarray(schedule.sigma(t), np.float64)[:, None]
    st = s / a
    u = np.asarray(x, np.float64) / a
    c_skip, c_out, c_in = SD**2 / (st**2 + SD**2), st * SD / np.sqrt(st**2 + SD**2), 1 / np.sqrt(st**2 + SD**2)
    f = np.asarray(net.apply(params, jnp.asarray(c_in * u, jnp.float32),
                             jnp.asarray(250.0 * np.log(st[:, 0]), jnp.float32)), np.float64)
    assert np.abs(f).mean() > 0.1  # the network really contributes
    np.testing.assert_allclose(d, c_skip * u + c_out * f, rtol=2e-5, atol=2e-5)
    # the DiffusionModel views are consistent: x = alpha x0 + sigma eps
    np.testing.assert_allclose(a * d + s * np.asarray(model.noise(x, t)), np.asarray(x), rtol=1e-4, atol=1e-5)
    # sigma = 0: c_skip = 1, c_out = 0, a finite conditioning (ln sigma~ clipped): D = x exactly
    np.testing.assert_array_equal(model.data(x, 0.0), x)


@pytest.mark.parametrize("precond,prediction", [("none", "noise"), ("edm", "data")])
def test_classifier_free_guidance_of_a_labelled_network(precond, prediction):
    """conditional_apply + classifier_free_guidance: scale 0 is the null-label (= unlabelled)
    model, scale 1 the conditional model, scale w the affine combination u + w (c - u)."""
    schedule = get_schedule("vp_linear")
    k = 4
    net = MLPScoreNet(hidden=(16, 16), embed_dim=8, num_classes=k)
    x = jnp.asarray(np.random.default_rng(4).normal(size=(8, 2)), jnp.float32)
    t = jnp.linspace(0.05, 0.95, 8)
    labels = jnp.arange(8) % k
    params = _random_params(net, x)
    cond_apply = conditional_apply(net, schedule, "t", precond, SD)

    def guided(scale):
        return classifier_free_guidance(cond_apply, params, schedule, prediction, labels, k, scale)

    kw = dict(precond=precond, sigma_data=SD)
    cond = network_model(net, params, schedule, prediction, labels=labels, **kw).raw(x, t)
    null = network_model(net, params, schedule, prediction, labels=k, **kw).raw(x, t)
    unlabelled = network_model(net, params, schedule, prediction, **kw).raw(x, t)
    np.testing.assert_array_equal(null, unlabelled)
    assert float(jnp.mean(jnp.abs(cond - null))) > 0.05 * float(jnp.std(null))
    np.testing.assert_allclose(guided(0.0).raw(x, t), null, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(guided(1.0).raw(x, t), cond, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(guided(3.0).raw(x, t), null + 3.0 * (cond - null), rtol=1e-4, atol=1e-5)
    # a scalar time works too (one t for the doubled batch)
    np.testing.assert_allclose(guided(1.0).raw(x, 0.4),
                               network_model(net, params, schedule, prediction, labels=labels, **kw).raw(x, 0.4),
                               rtol=1e-5, atol=1e-6)


def test_network_model_rejects_bad_preconditioning_and_labels():
    net = MLPScoreNet(hidden=(8,), embed_dim=8)
    schedule = get_schedule("edm")
    with pytest.raises(ValueError, match=r"precond must be one of \('none', 'edm'\), got 'karras'"):
        network_model(net, None, schedule, "data", precond="karras")
    with pytest.raises(ValueError, match="precond must be one of"):
        conditional_apply(net, schedule, precond="vp")
    with pytest.raises(ValueError, match="prediction must be 'data'"):
        network_model(net, None, schedule, "noise", precond="edm")
    with pytest.raises(ValueError, match="sigma_data must be positive"):
        network_model(net, None, schedule, "data", precond="edm", sigma_data=0.0)
    with pytest.raises(ValueError, match="labels must be an int"):
        network_model(net, None, schedule, "noise", labels=jnp.zeros(3))
