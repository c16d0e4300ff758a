"""Stochastic samplers against exact distributions.

* Euler-Maruyama (and PC Langevin) on a Gaussian: the weak error of the mean and
  variance at a fixed noise level falls like 1/n (weak order 1).
* Every SDE sampler at many steps reproduces the gmm2d data distribution: mean
  and covariance (z-tests) and the mixture-component frequencies (chi-square),
  each at significance 1e-3 (Bonferroni over the statistics).  The same test
  must reject a sampler whose injected noise is 1.3x too large.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from samplax.models import Gaussian, load_problem
from samplax.schedules import VPLinear
from samplax.solvers import get_solver, sample, sde
from samplax.timesteps import time_grid

ALPHA = 1e-3


def _slope(ns, errs):
    return -np.polyfit(np.log(ns), np.log(errs), 1)[0]


@pytest.mark.parametrize("name", ["euler_maruyama"])
def test_weak_order_one_on_gaussian(name):
    schedule = VPLinear()
    g = Gaussian(mean=jnp.array([0.5]), std=jnp.array([0.3]))
    n_samples, t_lo = 400_000, 0.05
    m_hi, s_hi = g.marginal(1.0, schedule)
    m_lo, s_lo = (float(v[0]) for v in g.marginal(t_lo, schedule))
    x_T = m_hi + s_hi * jax.random.normal(jax.random.PRNGKey(1), (n_samples, 1))  # the exact marginal at t = 1
    solver = get_solver(name)
    ns, var_err, mean_err = [32, 64, 128, 256], [], []
    for n in ns:
        grid = time_grid(schedule, n, "time_uniform", "t_min", t_min=t_lo)
        x, _ = jax.jit(lambda x: sample(solver, g.model(schedule), x, grid, jax.random.PRNGKey(n)))(x_T)
        x = np.asarray(x, np.float64)[:, 0]
        var_err.append(abs(x.var() - s_lo**2))
        mean_err.append(abs(x.mean() - m_lo))
    # Monte Carlo standard errors are ~2.6e-4 (variance) and ~5e-4 (mean): far below the errors fitted.
    assert abs(_slope(ns, var_err) - 1.0) <= 0.25, var_err
    assert var_err[-1] < 0.05 * s_lo**2 and mean_err[-1] < 4e-3, (var_err, mean_err)


@pytest.fixture(scope="module")
def gmm_truth():
    gmm, schedule, _ = load_problem("gmm2d")
    x, _ = gmm.sample_with_components(jax.random.PRNGKey(123), 1_000_000)
    lab = np.asarray(jnp.argmax(gmm.component_log_posterior(x, 0.0), -1))
    probs = np.bincount(lab, minlength=gmm.weights.shape[0]) / lab.size
    return gmm, schedule, probs


def _distribution_pvalues(gmm, probs, x):
    """p-values of: each mean coordinate, each covariance entry, component chi-square."""
    x = np.asarray(x, np.float64)
    n = x.shape[0]
    mu = np.asarray(gmm.mean(), np.float64)
    cov = np.asarray(gmm.covariance(), np.float64)
    p = []
    z_mean = (x.mean(0) - mu) / np.sqrt(np.diag(cov) / n)
    p += list(2 * stats.norm.sf(np.abs(z_mean)))
    xc = x - mu
    for i in range(x.shape[1]):
        for j in range(i, x.shape[1]):
            prod = xc[:, i] * xc[:, j]
            z = (prod.mean() - cov[i, j]) / (prod.std() / np.sqrt(n))
            p.append(2 * stats.norm.sf(abs(z)))
    lab = np.asarray(jnp.argmax(gmm.component_log_posterior(jnp.asarray(x, jnp.float32), 0.0), -1))
    counts = np.bincount(lab, minlength=probs.size)
    p.append(stats.chisquare(counts, n * probs).pvalue)
    return np.array(p)


SDE_CASES = [("ddim_eta", {"eta": 1.0}), ("sde_dpm_solver_pp_2m", {}), ("euler_maruyama", {}), ("pc_langevin", {})]


def _draw(gmm, schedule, name, opts, n_steps=400, n=20_000):
    solver = get_solver(name, **opts)
    grid = time_grid(schedule, n_steps, "logsnr" if name != "euler_maruyama" and name != "pc_langevin"
                     else "time_uniform", "zero")
    x_T = jax.random.normal(jax.random.PRNGKey(5), (n, 2))
    x, info = jax.jit(lambda x: sample(solver, gmm.model(schedule), x, grid, jax.random.PRNGKey(6)))(x_T)
    assert int(info.first_nonfinite_step) == -1
    return x


@pytest.mark.parametrize("name,opts", SDE_CASES, ids=[c[0] for c in SDE_CASES])
def test_sde_samplers_match_gmm(gmm_truth, name, opts):
    gmm, schedule, probs = gmm_truth
    pvals = _distribution_pvalues(gmm, probs, _draw(gmm, schedule, name, opts))
    assert pvals.min() > ALPHA / pvals.size, pvals


@pytest.mark.parametrize("name,opts", SDE_CASES[:2], ids=[c[0] for c in SDE_CASES[:2]])
def test_wrong_noise_scale_is_rejected(gmm_truth, monkeypatch, name, opts):
    """Mutation check: the same test fails when the injected noise is 1.3x too large."""
    gmm, schedule, probs = gmm_truth
    normal = sde._normal
    monkeypatch.setattr(sde, "_normal", lambda keys, x: 1.3 * normal(keys, x))
    pvals = _distribution_pvalues(gmm, probs, _draw(gmm, schedule, name, opts))
    assert pvals.min() < ALPHA / pvals.size, pvals
