"""Feynman–Kac correctors (samplax.smc.fkc) against exact targets on 2-D Gaussian mixtures.

Each SMC run has G independent groups of P particles; ``group_metrics`` tests the G iid
group estimates (weighted label frequencies, weighted means) with Hotelling's T^2 against
the exact label probabilities and mean (F reference).  Significance: the corrected sampler
must give p > 1e-3 on both; the uncorrected SDE (and a sign-flipped weight) must give a label
p-value < 1e-6 and a label TV above a stated margin.  float64 throughout, fixed keys.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from samplax.models.analytic import GaussianMixture, load_problem
from samplax.smc import diffusion_smc
from samplax.smc.diffusion import Kernel
from samplax.smc.fkc import fkc_kernel, fkc_nfe, geometric_kernel
from samplax.smc.targets import (GridTarget, annealed_gaussian_target, cfg_mixture_target, group_metrics,
                                 product_mixture, product_target, tempered_mixture_target)
from samplax.timesteps import time_grid

N_STEPS = 100


@pytest.fixture
def x64():
    with jax.enable_x64(True):
        yield


def _problem():
    gmm, schedule, _ = load_problem("gmm2d", dtype=jnp.float64)
    return gmm, schedule


def _expert2():
    """A broad second expert overlapping part of the gmm2d ring (so the product reweights it)."""
    return GaussianMixture.create([0.7, 0.3], [[0.6, 0.3], [-0.5, -0.5]], [0.5, 0.6], dtype=jnp.float64)


def _run(kernel, models, schedule, P, G, seed=1, n_steps=N_STEPS):
    grid = time_grid(schedule, n_steps, "logsnr", end="zero", dtype=jnp.float64)
    x_T = jax.random.normal(jax.random.PRNGKey(seed), (P * G, 2), jnp.float64)
    fn = jax.jit(lambda x, k: diffusion_smc(kernel, models, x, grid, k, num_particles=P, final_resample=False))
    x, info = fn(x_T, jax.random.PRNGKey(seed + 1000))
    assert int(np.max(np.asarray(info.first_invalid_step))) == -1
    return np.asarray(x), info


def test_anneal_beta2_corrected_passes_uncorrected_fails(x64):
    """p_0 ∝ gmm2d^2: mode probabilities ∝ w_k^2 / tau_k^2 (the heaviest mode goes from 0.22 to
    0.51).  FKC (target-score SDE, beta (beta - 1) |eps|^2 d lambda weights) passes; scaling
    the score by beta without weights misses the mode probabilities by TV ~0.3."""
    gmm, schedule = _problem()
    target = tempered_mixture_target(gmm, 2.0, n=512)
    x, info = _run(fkc_kernel("anneal", beta=2.0), gmm.model(schedule), schedule, P=256, G=48)
    m = group_metrics(target, x, info.log_weights)
    assert m["label_p"] > 1e-3 and m["mean_p"] > 1e-3, m
    x, info = _run(fkc_kernel("anneal", beta=2.0, correct=False), gmm.model(schedule), schedule, P=256, G=48)
    np.testing.assert_array_equal(np.asarray(info.resampled), False)   # equal weights: plain SDE
    u = group_metrics(target, x, info.log_weights)
    assert u["label_p"] < 1e-6 and u["label_tv"] > 0.2, u


def test_product_corrected_passes_and_sign_flip_fails(x64):
    """p_0 ∝ gmm2d * expert2 (exactly a 16-component mixture).  FKC with 2 <eps1, eps2> d lambda
    weights passes; the same kernel with the weight increment's sign flipped (mutation) fails."""
    gmm, schedule = _problem()
    g2 = _expert2()
    target = product_target(gmm, g2, n_per_component=50_000)
    models = (gmm.model(schedule), g2.model(schedule))
    kernel = fkc_kernel("product")
    x, info = _run(kernel, models, schedule, P=64, G=96)
    m = group_metrics(target, x, info.log_weights)
    assert m["label_p"] > 1e-3 and m["mean_p"] > 1e-3, m

    def flipped(models, grid, i, x, aux, key):
        x_next, aux_next, inc = kernel.step(models, grid, i, x, aux, key)
        return x_next, aux_next, -inc

    x, info = _run(Kernel(kernel.init, flipped, "mutant"), models, schedule, P=64, G=96)
    bad = group_metrics(target, x, info.log_weights)
    assert bad["label_p"] < 1e-6 and bad["label_tv"] > 0.1, bad


def test_cfg_corrected_passes_uncorrected_fails(x64):
    """Target p^(1-w) p(.|c)^w, w = 3, on gmm2d with classes k mod 2 (quadrature target).  FKC
    with w (w - 1) |eps_c - eps_u|^2 / 2 weights passes; plain CFG (same SDE, no weights)
    fails by TV > 0.1 (it over-weights the heaviest mode of the class)."""
    gmm, schedule = _problem()
    lab = GaussianMixture.create(gmm.weights, gmm.means, gmm.stds, labels=np.arange(8) % 2, dtype=jnp.float64)
    target = cfg_mixture_target(lab, 0, 3.0, n=512)
    models = (lab.model(schedule), lab.model(schedule, 0))
    x, info = _run(fkc_kernel("cfg", w=3.0), models, schedule, P=128, G=64)
    m = group_metrics(target, x, info.log_weights)
    assert m["label_p"] > 1e-3 and m["mean_p"] > 1e-3, m
    x, info = _run(fkc_kernel("cfg", w=3.0, correct=False), models, schedule, P=128, G=64)
    u = group_metrics(target, x, info.log_weights)
    assert u["label_p"] < 1e-6 and u["label_tv"] > 0.1, u


def test_exact_targets_agree_with_quadrature(x64):
    """product_mixture (closed form) and the annealed Gaussian against GridTarget quadrature:
    normalising constants, means and covariances to 1e-9."""
    gmm, _ = _problem()
    g2 = _expert2()
    prod, log_z = product_mixture(gmm, g2)
    grid_t = GridTarget(lambda x: gmm.log_prob_ve(x, 0.0) + g2.log_prob_ve(x, 0.0), [-3.5, -3.5], [3.5, 3.5],
                        lambda x: jnp.zeros(x.shape[0], jnp.int32), 1, n=512)
    assert abs(grid_t.log_normaliser - log_z) < 1e-9
    np.testing.assert_allclose(grid_t.mean(), np.asarray(prod.mean()), atol=1e-9)
    np.testing.assert_allclose(grid_t.covariance(), np.asarray(prod.covariance()), atol=1e-9)
    ann = annealed_gaussian_target([0.3, -0.2], 0.4, 3.0)
    single = GaussianMixture.create([1.0], [[0.3, -0.2]], [0.4], dtype=jnp.float64)
    grid_a = GridTarget(lambda x: 3.0 * single.log_prob_ve(x, 0.0), [-3.0, -3.0], [3.0, 3.0],
                        lambda x: jnp.zeros(x.shape[0], jnp.int32), 1, n=256)
    assert abs(grid_a.log_normaliser - ann.log_Z) < 1e-9
    np.testing.assert_allclose(grid_a.covariance(), np.asarray(ann.covariance()), atol=1e-9)


def test_bad_options():
    for kwargs, name in [(dict(target="temper"), "target"), (dict(target="anneal", beta=0.0), "beta"),
                         (dict(target="anneal", beta=float("nan")), "beta"), (dict(target="cfg", w="3"), "w"),
                         (dict(target="product", correct="yes"), "correct"),
                         (dict(target="product", sde="tempered_noise"), "sde"),
                         (dict(target="anneal", sde="langevin"), "sde"),
                         (dict(target="anneal", integrator="heun"), "integrator"),
                         (dict(target="anneal", sde="tempered_noise", integrator="exponential"), "integrator"),
                         (dict(target="anneal", rule="simpson"), "rule")]:
        with pytest.raises(ValueError, match=f"^{name}"):
            fkc_kernel(**kwargs)
    with pytest.raises(ValueError, match="^exponents"):
        geometric_kernel([])
    gmm, schedule = _problem()
    kernel = fkc_kernel("product")
    with pytest.raises(ValueError, match="models must be a tuple of 2"):
        kernel.init(gmm.model(schedule), time_grid(schedule, 4), jnp.zeros((3, 2)))
    assert fkc_nfe("product", 50) == 100 and fkc_nfe("anneal", 50) == 50
    assert fkc_nfe("anneal", 50, dim=2, sde="tempered_noise") == 150
