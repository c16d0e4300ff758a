"""Denoising losses against closed forms on Gaussian data.

For x0 ~ N(mu, s^2 I) and x_t = alpha x0 + sigma eps, x0 | x_t is Gaussian with
variance v = s^2 sigma^2 / (alpha^2 s^2 + sigma^2) per dimension.  A target
y = a x0 + b eps equals (a - b alpha / sigma) x0 + (b / sigma) x_t, so the loss of
the exact conditional mean (the loss minimum) is E_t[(a - b alpha/sigma)^2 v]."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from samplax.models.analytic import Gaussian
from samplax.schedules import get_schedule
from samplax.training import TARGETS, denoising_loss, diffusion_target, sample_times

MU, S, D = 0.3, 0.7, 3


def _coefficients(schedule, t, target):
    a, s = schedule.alpha(t), schedule.sigma(t)
    if target == "noise":
        return 0.0 * t, 1.0 + 0.0 * t
    if target == "data":
        return 1.0 + 0.0 * t, 0.0 * t
    if target == "velocity":
        return -s, a
    da = jax.vmap(jax.grad(schedule.alpha))(t)
    ds = jax.vmap(jax.grad(schedule.sigma))(t)
    return da, ds


def _exact_minimum(schedule, target, t_min, t_max):
    with jax.enable_x64(True):
        t = jnp.linspace(t_min, t_max, 20001, dtype=jnp.float64)
        a, s = schedule.alpha(t), schedule.sigma(t)
        v = S**2 * s**2 / (a**2 * S**2 + s**2)
        ca, cb = _coefficients(schedule, t, target)
        f = (ca - cb * a / s) ** 2 * v
        return float(jnp.trapezoid(f, t) / (t_max - t_min))


@pytest.mark.parametrize("schedule_name,target", [("vp_linear", "noise"), ("vp_linear", "data"),
                                                  ("vp_cosine", "velocity"), ("flow", "flow"),
                                                  ("flow", "noise")])
def test_exact_predictor_reaches_the_closed_form_minimum(schedule_name, target):
    schedule = get_schedule(schedule_name)
    t_min, t_max = 0.05, 0.95  # away from the ends, where some targets' minima diverge
    model = Gaussian(jnp.full((D,), MU), jnp.full((D,), S)).model(schedule)
    predict = model.view(target)
    x0 = MU + S * jax.random.normal(jax.random.PRNGKey(0), (200_000, D))
    loss, aux = jax.jit(lambda k: denoising_loss(predict, x0, k, schedule, target, t_min=t_min, t_max=t_max))(
        jax.random.PRNGKey(1))
    se = float(jnp.std(aux["per_example"])) / np.sqrt(x0.shape[0])
    exact = _exact_minimum(schedule, target, t_min, t_max)
    assert abs(float(loss) - exact) < 4 * se + 1e-6, (float(loss), exact, se)
    # a predictor off by a constant c pays |c|^2 / d more, in expectation
    c = jnp.array([0.2, -0.1, 0.05])
    loss_c, aux_c = denoising_loss(lambda x, t: predict(x, t) + c, x0, jax.random.PRNGKey(1), schedule, target,
                                   t_min=t_min, t_max=t_max)
    diff = aux_c["per_example"] - aux["per_example"]
    assert abs(float(jnp.mean(diff)) - float(jnp.sum(c * c)) / D) < 4 * float(jnp.std(diff)) / np.sqrt(len(diff))


def test_flow_target_of_the_linear_interpolant_is_eps_minus_x0():
    schedule = get_schedule("flow")
    k1, k2, k3 = jax.random.split(jax.random.PRNGKey(2), 3)
    x0, eps = jax.random.normal(k1, (64, 2)), jax.random.normal(k2, (64, 2))
    t = jax.random.uniform(k3, (64,), minval=0.01, maxval=0.99)
    np.testing.assert_allclose(diffusion_target(schedule, x0, eps, t, "flow"), eps - x0, atol=1e-6)


def test_min_snr_weighted_noise_loss_is_min_snr_weighted_data_loss():
    """|eps_hat - eps|^2 min(SNR, g)/SNR = min(SNR, g) |x0_hat - x0|^2 per example, for any
    noise predictor (here a deliberately wrong one) and its implied data prediction."""
    schedule = get_schedule("vp_linear")
    x0 = jax.random.normal(jax.random.PRNGKey(3), (512, 2))
    wrong_eps = lambda x, t: 0.5 * x  # noqa: E731
    _, aux = denoising_loss(wrong_eps, x0, jax.random.PRNGKey(4), schedule, "noise", weighting="min_snr")
    t = aux["t"]
    k_eps = jax.random.split(jax.random.PRNGKey(4))[1]
    eps = jax.random.normal(k_eps, x0.shape)
    a, s = schedule.alpha(t)[:, None], schedule.sigma(t)[:, None]
    x_t = a * x0 + s * eps
    x0_hat = (x_t - s * wrong_eps(x_t, t)) / a
    snr = jnp.exp(2 * schedule.lambda_(t))
    data_loss = jnp.mean((x0_hat - x0) ** 2, axis=-1) * jnp.minimum(snr, 5.0)
    np.testing.assert_allclose(aux["per_example"], data_loss, rtol=2e-4, atol=1e-6)


def test_discrete_times_are_training_times():
    schedule = get_schedule("vp_discrete")
    t = sample_times(jax.random.PRNGKey(5), 10_000, schedule, discrete=True)
    i = np.round(np.asarray(t) * schedule.num_train_timesteps) - 1
    np.testing.assert_allclose(np.asarray(t), (i + 1) / schedule.num_train_timesteps, atol=1e-7)
    assert i.min() >= 0 and i.max() <= schedule.num_train_timesteps - 1 and len(np.unique(i)) > 990


def test_bad_arguments():
    schedule = get_schedule("vp_linear")
    x0 = jnp.zeros((4, 2))
    with pytest.raises(ValueError, match="unknown target 'eps'"):
        denoising_loss(lambda x, t: x, x0, jax.random.PRNGKey(0), schedule, "eps")
    with pytest.raises(ValueError, match="unknown weighting"):
        denoising_loss(lambda x, t: x, x0, jax.random.PRNGKey(0), schedule, "noise", weighting="p2")
    with pytest.raises(ValueError, match="discrete=True needs a VPDiscrete"):
        sample_times(jax.random.PRNGKey(0), 4, schedule, discrete=True)
    assert set(TARGETS) == {"noise", "data", "velocity", "flow"}
