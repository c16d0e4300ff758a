"""Probability-flow log-likelihood (samplax.likelihood) against exact densities: a Gaussian in
closed form, the gmm2d mixture's exact marginal density, and the Hutchinson estimator's
unbiasedness on gmm64d."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from samplax.likelihood import bits_per_dim, log_likelihood
from samplax.models import load_problem
from samplax.models.analytic import Gaussian

T0 = 1e-3  # the density computed is that of the marginal at t_start (here the schedule's t_min)


@pytest.fixture
def x64():
    with jax.enable_x64(True):
        yield


def test_gaussian_closed_form(x64):
    """N(0, s^2 I) data: with the default Gaussian prior (data_var = s^2 makes it the exact
    marginal at t_max) log p_{t0}(x) = log N(x; 0, (alpha^2 s^2 + sigma^2) I) within 1e-4 nats
    with 100 RK4 steps (measured 3e-5)."""
    _, schedule, _ = load_problem("gmm2d", dtype=jnp.float64)
    x = 0.3 * jax.random.normal(jax.random.PRNGKey(0), (16, 3), jnp.float64)
    g = Gaussian(mean=jnp.zeros(3), std=jnp.full(3, 0.3))
    m, s = g.marginal(T0, schedule)
    exact = jnp.sum(jax.scipy.stats.norm.logpdf(x, m, s), -1)
    lp, info = log_likelihood(g.model(schedule), x, t_start=T0, t_end=1.0, n_steps=100, data_var=0.09)
    np.testing.assert_allclose(np.asarray(lp), np.asarray(exact), atol=1e-4)
    assert int(info.nfe) == 400


def test_gmm2d_exact_log_density_and_rk4_order(x64):
    """gmm2d: log p_{t_min}(x) of exact data samples matches GaussianMixture.log_prob at t_min
    (NOT log p_0: the solve starts at t_min = 1e-3, sigma_tilde = 0.01) within 1e-3 nats with
    100 RK4 steps in lambda and the exact marginal as prior; the error falls ~16x from 50 to 100
    steps (fourth order).  The Gaussian N(0, I) prior instead costs ~2e-3 nats here."""
    gmm, schedule, _ = load_problem("gmm2d", dtype=jnp.float64)
    model = gmm.model(schedule)
    x = gmm.sample(jax.random.PRNGKey(1), 16)
    exact = np.asarray(gmm.log_prob(x, T0, schedule))
    prior = lambda y: gmm.log_prob(y, 1.0, schedule)  # noqa: E731
    run = jax.jit(lambda x, n: log_likelihood(model, x, t_start=T0, t_end=1.0, n_steps=n, prior=prior)[0],
                  static_argnums=1)
    err100 = np.abs(np.asarray(run(x, 100)) - exact).max()
    err50 = np.abs(np.asarray(run(x, 50)) - exact).max()
    assert err100 < 1e-3, err100
    assert 8 < err50 / err100 < 32, (err50, err100)
    # p_{t_min} differs from the clean density p_0 by far more than the solver error (why the
    # convention matters)
    assert np.abs(np.asarray(gmm.log_prob_ve(x, 0.0)) - exact).mean() > 10 * err100


def test_gmm64d_hutchinson_unbiased(x64):
    """gmm64d: for 4 data points, the mean of the one-probe Hutchinson estimate over 64
    independent Rademacher probes (each fixed across its solve) agrees with the exact-divergence
    value of the same discretisation within 4 standard errors (the probes are the only
    difference; |z| < 4 for 4 points has a false-alarm rate below 3e-4), and the standard error
    is a meaningful test: below 2% of the exact divergence integral."""
    gmm, schedule, _ = load_problem("gmm64d", dtype=jnp.float64)
    model = gmm.model(schedule)
    x = gmm.sample(jax.random.PRNGKey(2), 4)
    kw = dict(t_start=T0, t_end=1.0, n_steps=6)
    exact, info = jax.jit(lambda x: log_likelihood(model, x, **kw))(x)
    reps = 64
    xr = jnp.repeat(x, reps, axis=0)
    est, _ = jax.jit(lambda x: log_likelihood(model, x, key=jax.random.PRNGKey(3), divergence="hutchinson",
                                               **kw))(xr)
    est = np.asarray(est).reshape(4, reps)
    mean, se = est.mean(1), est.std(1, ddof=1) / math.sqrt(reps)
    z = (mean - np.asarray(exact)) / se
    assert np.all(np.abs(z) < 4), z
    assert np.all(se < 0.02 * np.abs(np.asarray(info.delta))), (se, np.asarray(info.delta))


def test_bits_per_dim_correction():
    """bpd = -log p / (d ln 2) + log2(1 / bin width): +3 bits/dim for the digits' 1/8 bins; a
    uniform density on the bins' hypercube of side 1/8 is exactly 0 bits of the discrete data."""
    d = 64
    logp_uniform = d * math.log(8.0)  # density 8^d on one bin
    assert float(bits_per_dim(jnp.asarray(logp_uniform), d)) == pytest.approx(0.0, abs=1e-12)
    assert float(bits_per_dim(jnp.asarray(0.0), d)) == pytest.approx(3.0)
    with pytest.raises(ValueError, match="integrator"):
        log_likelihood(None, jnp.zeros((1, 2)), integrator="euler")
