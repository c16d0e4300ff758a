"""Denoising losses against closed forms on Gaussian data.

For x0 ~ N(mu, s^2 I) and x_t = alpha x0 + sigma eps, x0 | x_t is Gaussian with
variance v = s^2 sigma^2 / (alpha^2 s^2 + sigma^2) per dimension.  A target
y = a x0 + b eps equals (a - b alpha / sigma) x0 + (b / sigma) x_t, so the loss of
the exact conditional mean (the loss minimum) is E_t[(a - b alpha/sigma)^2 v].

EDM's loss: for x0 ~ N(mu, sd^2 I) and x = x0 + sigma eps the optimal denoiser's error
per dimension is sd^2 sigma^2 / (sd^2 + sigma^2), and EDM's weight (sigma^2 + sd^2) /
(sigma sd)^2 turns it into exactly 1 at every sigma.  Labels: dropout to the null label
at the requested rate, from a key that leaves the t / eps draws untouched."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from samplax.models import MLPScoreNet, network_model
from samplax.models.analytic import Gaussian
from samplax.models.networks import edm_coefficients, edm_noise_conditioning
from samplax.schedules import get_schedule
from samplax.training import TARGETS, denoising_loss, diffusion_target, edm_loss, edm_weight, sample_times
from samplax.training.losses import loss_weight

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


# --- labels and label dropout ---------------------------------------------------------------

def _denoising_loss_before_labels(predict, x0, key, schedule, target="noise", weighting="none", discrete=False,
                                  t_min=None, t_max=None):
    """denoising_loss as it was before labels were added (the regression reference)."""
    k_t, k_eps = jax.random.split(key)
    b = x0.shape[0]
    t = sample_times(k_t, b, schedule, discrete, t_min, t_max, x0.dtype)
    eps = jax.random.normal(k_eps, x0.shape, x0.dtype)
    x_t = schedule.alpha(t)[:, None] * x0 + schedule.sigma(t)[:, None] * eps
    y = diffusion_target(schedule, x0, eps, t, target)
    err = (predict(x_t, t) - y).reshape(b, -1)
    per_example = jnp.mean(err * err, axis=-1) * loss_weight(schedule, t, weighting, target)
    return jnp.mean(per_example), dict(t=t, per_example=per_example)


@pytest.mark.parametrize("schedule_name,target,weighting,discrete", [
    ("vp_linear", "noise", "min_snr", False), ("flow", "flow", "none", False), ("vp_discrete", "data", "none", True)])
def test_unlabelled_loss_is_bitwise_unchanged_and_labels_do_not_move_the_draws(schedule_name, target, weighting,
                                                                            discrete):
    schedule = get_schedule(schedule_name)
    x0 = jax.random.normal(jax.random.PRNGKey(11), (256, 3))
    key = jax.random.PRNGKey(12)
    predict = lambda x, t: 0.3 * x + 0.1 * t[:, None]  # noqa: E731
    kw = dict(target=target, weighting=weighting, discrete=discrete)
    loss, aux = jax.jit(lambda k: denoising_loss(predict, x0, k, schedule, **kw))(key)
    ref, ref_aux = jax.jit(lambda k: _denoising_loss_before_labels(predict, x0, k, schedule, **kw))(key)
    assert np.asarray(loss).tobytes() == np.asarray(ref).tobytes()
    np.testing.assert_array_equal(aux["per_example"], ref_aux["per_example"])
    assert set(aux) == {"t", "per_example"}
    # with labels (and dropout) a label-blind predictor sees the same t and eps: the same loss, bitwise
    labels = jnp.arange(256) % 10
    loss_l, aux_l = jax.jit(lambda k: denoising_loss(lambda x, t, y: predict(x, t), x0, k, schedule, labels=labels,
                                                     label_dropout=0.5, num_classes=10, **kw))(key)
    assert np.asarray(loss_l).tobytes() == np.asarray(loss).tobytes()
    np.testing.assert_array_equal(aux_l["t"], aux["t"])


def test_label_dropout_rate():
    n, k = 40_000, 10
    labels = jnp.arange(n) % k
    x0 = jnp.zeros((n, 1))
    schedule = get_schedule("vp_linear")
    seen = []

    def predict(x, t, y):
        seen.append(y)
        return x

    # label_dropout = 0 (a Python number) leaves the labels alone; the predictor gets them
    _, aux = denoising_loss(predict, x0, jax.random.PRNGKey(13), schedule, labels=labels, num_classes=k)
    np.testing.assert_array_equal(seen[0], labels)
    np.testing.assert_array_equal(aux["labels"], labels)

    # a traced rate (one compile for all): the fraction of null labels is binomial(n, p)
    run = jax.jit(lambda p: denoising_loss(lambda x, t, y: x, x0, jax.random.PRNGKey(13), schedule, labels=labels,
                                           label_dropout=p, num_classes=k)[1]["labels"])
    run_edm = jax.jit(lambda p: edm_loss(lambda x, s, y: x, x0, jax.random.PRNGKey(13), labels=labels,
                                         label_dropout=p, num_classes=k)[1]["labels"])
    for p in (0.1, 0.5, 1.0):
        out = np.asarray(run(p))
        dropped = out == k
        assert abs(dropped.mean() - p) <= 4 * np.sqrt(p * (1 - p) / n) + 1e-12, (dropped.mean(), p)
        np.testing.assert_array_equal(out[~dropped], np.asarray(labels)[~dropped])  # the rest untouched
        np.testing.assert_array_equal(run_edm(p), out)  # edm_loss drops the same labels for the same key


def test_scalar_labels_and_bad_label_arguments():
    schedule = get_schedule("vp_linear")
    x0 = jnp.zeros((6, 2))
    _, aux = denoising_loss(lambda x, t, y: x, x0, jax.random.PRNGKey(0), schedule, labels=3)
    np.testing.assert_array_equal(aux["labels"], np.full(6, 3))
    with pytest.raises(ValueError, match="label_dropout must be in"):
        denoising_loss(lambda x, t, y: x, x0, jax.random.PRNGKey(0), schedule, labels=3, label_dropout=1.5,
                       num_classes=4)
    with pytest.raises(ValueError, match="needs num_classes >= 1"):
        denoising_loss(lambda x, t, y: x, x0, jax.random.PRNGKey(0), schedule, labels=3, label_dropout=0.1)
    with pytest.raises(ValueError, match="labels must be integers"):
        edm_loss(lambda x, s, y: x, x0, jax.random.PRNGKey(0), labels=jnp.zeros(6))


# --- EDM loss -------------------------------------------------------------------------------

SD = 0.5


@pytest.mark.parametrize("mu", [0.0, 0.3])
def test_edm_loss_of_the_optimal_denoiser_is_one(mu):
    """Gaussian data N(mu, sd^2 I): lambda(sigma) x MMSE(sigma) = 1 at every sigma, so the Monte
    Carlo loss of the exact denoiser is 1 within its standard error, in every sigma range; a
    denoiser off by a constant c pays E[lambda] |c|^2 / d more."""
    schedule = get_schedule("edm")
    exact = Gaussian(jnp.full((D,), mu), jnp.full((D,), SD)).model(schedule)
    n = 200_000
    x0 = mu + SD * jax.random.normal(jax.random.PRNGKey(20), (n, D))
    run = jax.jit(lambda k: edm_loss(exact.data, x0, k, sigma_data=SD))
    loss, aux = run(jax.random.PRNGKey(21))
    pe, sigma = np.asarray(aux["per_example"], np.float64), np.asarray(aux["t"], np.float64)
    assert abs(float(loss) - 1.0) < 4 * pe.std() / np.sqrt(n), (float(loss), pe.std())
    for lo, hi in [(0, 0.1), (0.1, 1.0), (1.0, np.inf)]:  # the identity holds sigma by sigma
        sel = pe[(sigma >= lo) & (sigma < hi)]
        assert sel.size > 1000 and abs(sel.mean() - 1.0) < 4 * sel.std() / np.sqrt(sel.size), (lo, hi, sel.mean())
    # ln sigma ~ N(-1.2, 1.2^2)
    assert abs(np.log(sigma).mean() + 1.2) < 0.01 and abs(np.log(sigma).std() - 1.2) < 0.01
    c = jnp.array([0.05, -0.02, 0.01])
    loss_c, aux_c = jax.jit(lambda k: edm_loss(lambda x, s: exact.data(x, s) + c, x0, k, sigma_data=SD))(
        jax.random.PRNGKey(21))
    diff = np.asarray(aux_c["per_example"] - aux["per_example"], np.float64)
    expected = float(np.mean(edm_weight(sigma, SD))) * float(jnp.sum(c * c)) / D
    assert float(loss_c) > float(loss)
    assert abs(diff.mean() - expected) < 4 * diff.std() / np.sqrt(n) + 1e-3 * expected, (diff.mean(), expected)


def test_edm_loss_is_unit_weighted_regression_of_the_preconditioned_network():
    """With D = c_skip x + c_out F, lambda |D - x0|^2 = |F - (x0 - c_skip x) / c_out|^2."""
    schedule = get_schedule("edm")
    net = MLPScoreNet(hidden=(16,), embed_dim=8)
    x0 = jax.random.normal(jax.random.PRNGKey(30), (512, 2))
    shapes = jax.eval_shape(net.init, jax.random.PRNGKey(0), x0, jnp.zeros(512))
    rng = np.random.default_rng(0)
    params = jax.tree_util.tree_map(lambda a: jnp.asarray(0.3 * rng.normal(size=a.shape), a.dtype), shapes)
    model = network_model(net, params, schedule, "data", precond="edm", sigma_data=SD)
    inputs = []

    def denoise(x, sigma):
        inputs.append(x)
        return model.data(x, sigma)

    _, aux = edm_loss(denoise, x0, jax.random.PRNGKey(31), sigma_data=SD)
    x, sigma = inputs[0], aux["t"]
    c_skip, c_out, c_in = (c[:, None] for c in edm_coefficients(sigma, SD))
    f = net.apply(params, c_in * x, edm_noise_conditioning(sigma))
    direct = jnp.mean((f - (x0 - c_skip * x) / c_out) ** 2, axis=-1)
    assert float(jnp.mean(direct)) > 0.05  # a random F is far from its target
    np.testing.assert_allclose(aux["per_example"], direct, rtol=2e-3, atol=1e-5)
