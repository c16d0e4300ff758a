"""Metrics on cases with known answers."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from samplax.metrics import projections, sliced_wasserstein2, sliced_wasserstein2_host


def test_projections_are_unit_and_fixed_by_the_key():
    p = projections(jax.random.PRNGKey(0), 5, 64)
    np.testing.assert_allclose(np.linalg.norm(p, axis=0), 1.0, atol=1e-6)
    np.testing.assert_array_equal(p, projections(jax.random.PRNGKey(0), 5, 64))


def test_sliced_w2_of_a_shift():
    """A point set vs the same set shifted by m: each projection is shifted by theta.m,
    so SW2^2 = mean_l (theta_l.m)^2 exactly, which tends to |m|^2 / d for uniform
    directions (checked loosely: Monte Carlo over 1024 directions)."""
    d, n, L = 4, 2000, 1024  # the identity holds for any n; L sets the Monte Carlo check
    z = jax.random.normal(jax.random.PRNGKey(1), (n, d))
    m = jnp.array([1.0, -2.0, 0.5, 0.0])
    proj = projections(jax.random.PRNGKey(2), d, L)
    sw = float(sliced_wasserstein2(z, z + m, proj))
    assert abs(sw - float(jnp.sqrt(jnp.mean((m @ proj) ** 2)))) < 1e-5
    assert abs(sw / float(jnp.linalg.norm(m) / np.sqrt(d)) - 1) < 0.1
    assert float(sliced_wasserstein2(z, z, proj)) == 0.0
    # permutation invariance: an empirical measure does not depend on the order of its points
    perm = jax.random.permutation(jax.random.PRNGKey(3), n)
    assert abs(float(sliced_wasserstein2(z[perm], z + m, proj)) - sw) < 1e-5


def test_sliced_w2_of_a_scale():
    """A point set vs the same set scaled by 2: sorted projections scale by 2, so
    SW2^2 = mean over directions and points of (theta.z)^2 exactly (-> 1 for N(0, I))."""
    z = jax.random.normal(jax.random.PRNGKey(4), (5000, 3))
    proj = projections(jax.random.PRNGKey(5), 3, 256)
    sw = float(sliced_wasserstein2(z, 2.0 * z, proj))
    assert abs(sw - float(jnp.sqrt(jnp.mean((z @ proj) ** 2)))) < 1e-5
    assert abs(sw - 1.0) < 0.05


def test_sliced_w2_rejects_mismatched_shapes():
    proj = projections(jax.random.PRNGKey(0), 2, 8)
    with pytest.raises(ValueError, match="same shape"):
        sliced_wasserstein2(jnp.zeros((10, 2)), jnp.zeros((11, 2)), proj)


def test_host_version_is_the_same_quantity():
    x = jax.random.normal(jax.random.PRNGKey(6), (3000, 5))
    y = 0.7 * jax.random.normal(jax.random.PRNGKey(7), (3000, 5)) + 0.3
    proj = projections(jax.random.PRNGKey(8), 5, 64)
    assert abs(sliced_wasserstein2_host(x, y, proj) - float(sliced_wasserstein2(x, y, proj))) < 1e-5
    with pytest.raises(ValueError, match="same shape"):
        sliced_wasserstein2_host(np.zeros((3, 2)), np.zeros((4, 2)), proj[:2])


# ---------------------------------------------------------------------------------------
# MMD, energy distance, mean log-likelihood, GMM component chi-square
#
# Monte Carlo tolerances: each check averages R independent draws of an estimator whose
# expectation is known exactly, and allows 5 standard errors (sample std / sqrt(R)) --
# a false-failure probability of ~6e-7 per check under normality, independent of the seed.
# ---------------------------------------------------------------------------------------
import functools  # noqa: E402
import math  # noqa: E402

import scipy.special  # noqa: E402
import scipy.stats  # noqa: E402

import samplax  # noqa: E402
from samplax.metrics import (  # noqa: E402
    DEFAULT_MMD_BANDWIDTHS, energy_distance, gmm_assign_components, gmm_assignment_probs, gmm_component_chi2,
    gmm_component_chi2_exact, mean_log_likelihood, mmd2_unbiased, mmd_bandwidths_median,
)

N_SE = 5.0


def _within_se(draws, truth, n_se=N_SE):
    """Mean of the draws within n_se standard errors of truth; returns (mean, se)."""
    draws = np.asarray(draws, np.float64)
    mean, se = draws.mean(), draws.std(ddof=1) / np.sqrt(draws.size)
    assert abs(mean - truth) <= n_se * se, (mean, truth, se)
    return mean, se


def _gauss_rbf_expectation(l, d, sa, sb, dmu):
    """E exp(-|X - Y|^2 / (2 l^2)) for independent X ~ N(mu_a, sa^2 I_d), Y ~ N(mu_b, sb^2 I_d),
    |mu_a - mu_b| = dmu.  Z = X - Y ~ N(delta, v I) with v = sa^2 + sb^2; per coordinate,
    completing the square in int N(z; delta_i, v) exp(-z^2 / (2 l^2)) dz gives
    sqrt(l^2 / (l^2 + v)) exp(-delta_i^2 / (2 (l^2 + v))); the d coordinates multiply."""
    v = sa**2 + sb**2
    return (l**2 / (l**2 + v)) ** (d / 2) * np.exp(-dmu**2 / (2 * (l**2 + v)))


def _mmd2_gauss(bandwidths, d, s1, s2, dmu):
    """Population MMD^2 = E k(X,X') + E k(Y,Y') - 2 E k(X,Y) for N(0, s1^2 I) vs N(m, s2^2 I)."""
    return sum(_gauss_rbf_expectation(l, d, s1, s1, 0.0) + _gauss_rbf_expectation(l, d, s2, s2, 0.0)
               - 2 * _gauss_rbf_expectation(l, d, s1, s2, dmu) for l in bandwidths)


def _brute_mmd2(x, y, bw):
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    k = lambda a, b: sum(np.exp(-np.sum((a - b) ** 2) / (2 * l * l)) for l in bw)  # noqa: E731
    n, m = len(x), len(y)
    kxx = sum(k(x[i], x[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    kyy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    kxy = sum(k(x[i], y[j]) for i in range(n) for j in range(m)) / (n * m)
    return kxx + kyy - 2 * kxy


def test_mmd2_matches_the_formula_on_small_arrays():
    """Exact: the U-statistic against a double loop in float64 (different n and m)."""
    x = jax.random.normal(jax.random.PRNGKey(10), (7, 3))
    y = 0.5 + 1.3 * jax.random.normal(jax.random.PRNGKey(11), (5, 3))
    bw = (0.3, 1.0, 2.5)
    assert abs(float(mmd2_unbiased(x, y, bw)) - _brute_mmd2(x, y, bw)) < 1e-5
    assert abs(float(jax.jit(mmd2_unbiased)(x, y, jnp.asarray(bw))) - _brute_mmd2(x, y, bw)) < 1e-5
    # the default ladder; a scalar bandwidth is one RBF; symmetric in (x, y)
    assert abs(float(mmd2_unbiased(x, y)) - _brute_mmd2(x, y, DEFAULT_MMD_BANDWIDTHS)) < 1e-5
    assert abs(float(mmd2_unbiased(x, y, 1.0)) - _brute_mmd2(x, y, (1.0,))) < 1e-5
    assert abs(float(mmd2_unbiased(y, x, bw)) - float(mmd2_unbiased(x, y, bw))) < 1e-6
    with jax.enable_x64(True):
        x64, y64 = jnp.asarray(np.asarray(x), jnp.float64), jnp.asarray(np.asarray(y), jnp.float64)
        v = mmd2_unbiased(x64, y64, bw)
        assert v.dtype == jnp.float64
        assert abs(float(v) - _brute_mmd2(x, y, bw)) < 1e-12


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_mmd2_is_unbiased_for_two_gaussians(dtype):
    """N(0, I_2) (n = 300) vs N((0.6, -0.3), 1.2^2 I_2) (m = 200): the mean over R = 64
    independent draws matches the closed-form population MMD^2 within 5 standard errors,
    and the population value is itself > 10 standard errors from 0 (the test has power)."""
    d, n, m, R, s2 = 2, 300, 200, 64, 1.2
    mu = np.array([0.6, -0.3])
    bw = (0.5, 1.0, 2.0)
    truth = _mmd2_gauss(bw, d, 1.0, s2, np.linalg.norm(mu))
    with jax.enable_x64(dtype == "float64"):
        dt = jnp.dtype(dtype)

        def one(key):
            kx, ky = jax.random.split(key)
            x = jax.random.normal(kx, (n, d), dt)
            y = jnp.asarray(mu, dt) + s2 * jax.random.normal(ky, (m, d), dt)
            return mmd2_unbiased(x, y, bw)

        draws = jax.jit(jax.vmap(one))(jax.random.split(jax.random.PRNGKey(12), R))
        assert draws.dtype == dt
    _, se = _within_se(draws, truth)
    assert truth > 10 * se


def test_mmd2_of_identical_distributions_has_mean_zero_and_goes_negative():
    """P = Q = N(0, I_3), n = m = 10, R = 400 draws: the U-statistic averages to 0 within
    5 standard errors and is negative for some draws; the biased V-statistic (diagonal
    terms kept) is >= 0 for every draw and its mean is many standard errors above 0."""
    d, n, R, bw = 3, 10, 400, (0.5, 1.0, 2.0)

    def one(key):
        kx, ky = jax.random.split(key)
        x, y = jax.random.normal(kx, (n, d)), jax.random.normal(ky, (n, d))
        return mmd2_unbiased(x, y, bw), x, y

    u, xs, ys = jax.jit(jax.vmap(one))(jax.random.split(jax.random.PRNGKey(13), R))
    _within_se(u, 0.0)
    assert np.any(np.asarray(u) < 0)
    # biased V-statistic of the same draws, computed independently in numpy
    def vstat(x, y):
        x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
        kk = lambda a, b: sum(np.exp(-((a[:, None] - b[None]) ** 2).sum(-1) / (2 * l * l)) for l in bw)  # noqa: E731
        return kk(x, x).mean() + kk(y, y).mean() - 2 * kk(x, y).mean()

    v = np.array([vstat(xs[i], ys[i]) for i in range(R)])
    assert np.all(v >= -1e-12)
    assert v.mean() > 10 * v.std(ddof=1) / np.sqrt(R)


def test_mmd_bandwidths_median():
    """Exact: scales times the median pairwise distance of the pooled points (scipy's pdist);
    population: for N(0, I_d), |z - z'|^2 ~ 2 chi^2_d so the median distance tends to
    sqrt(2 * chi2.ppf(0.5, d)) -- checked as a mean over R = 16 draws within 5 SE."""
    import scipy.spatial.distance as ssd

    x = jax.random.normal(jax.random.PRNGKey(14), (40, 3))
    y = jax.random.normal(jax.random.PRNGKey(15), (30, 3)) + 1.0
    med = np.median(ssd.pdist(np.concatenate([np.asarray(x), np.asarray(y)]).astype(np.float64)))
    got = np.asarray(mmd_bandwidths_median(x, y, scales=(0.5, 1.0, 2.0)))
    np.testing.assert_allclose(got, med * np.array([0.5, 1.0, 2.0]), rtol=1e-5)
    np.testing.assert_allclose(np.asarray(mmd_bandwidths_median(x, y, max_points=50))[2],
                               np.median(ssd.pdist(np.asarray(x, np.float64)[:40].tolist()
                                                   + np.asarray(y, np.float64)[:10].tolist())), rtol=1e-5)
    d, n, R = 3, 100, 16

    def one(key):
        kx, ky = jax.random.split(key)
        return mmd_bandwidths_median(jax.random.normal(kx, (n, d)), jax.random.normal(ky, (n, d)), (1.0,))[0]

    meds = jax.jit(jax.vmap(one))(jax.random.split(jax.random.PRNGKey(16), R))
    _within_se(meds, np.sqrt(2 * scipy.stats.chi2.ppf(0.5, d)))
    # None = median heuristic inside mmd2_unbiased
    assert np.isfinite(float(mmd2_unbiased(x, y, None)))


def test_two_sample_metrics_reject_bad_shapes():
    for f in (mmd2_unbiased, energy_distance):
        with pytest.raises(ValueError, match="same dimension"):
            f(jnp.zeros((10, 2)), jnp.zeros((10, 3)))
        with pytest.raises(ValueError, match="2-D"):
            f(jnp.zeros((10,)), jnp.zeros((10,)))
        with pytest.raises(ValueError, match="at least 2"):
            f(jnp.zeros((1, 2)), jnp.zeros((10, 2)))
    with pytest.raises(ValueError, match="bandwidths"):
        mmd2_unbiased(jnp.zeros((4, 2)), jnp.zeros((4, 2)), jnp.ones((2, 2)))
    with pytest.raises(ValueError, match="same dimension"):
        mmd_bandwidths_median(jnp.zeros((10, 2)), jnp.zeros((10, 3)))


def test_energy_distance_on_a_hand_computed_example():
    """x = {0, 1}, y = {2, 4}: cross mean (2 + 4 + 1 + 3) / 4 = 2.5, within-x 1, within-y 2,
    so 2 * 2.5 - 1 - 2 = 2; plus a brute-force check in 3-D with n != m."""
    assert abs(float(energy_distance(jnp.array([[0.0], [1.0]]), jnp.array([[2.0], [4.0]]))) - 2.0) < 1e-6
    x = np.asarray(jax.random.normal(jax.random.PRNGKey(17), (9, 3)), np.float64)
    y = np.asarray(jax.random.normal(jax.random.PRNGKey(18), (6, 3)), np.float64) + 0.4
    dist = lambda a, b: np.sqrt(((a[:, None] - b[None]) ** 2).sum(-1))  # noqa: E731
    brute = (2 * dist(x, y).mean() - dist(x, x).sum() / (9 * 8) - dist(y, y).sum() / (6 * 5))
    assert abs(float(jax.jit(energy_distance)(jnp.asarray(x, jnp.float32), jnp.asarray(y, jnp.float32))) - brute) < 1e-5
    with jax.enable_x64(True):
        assert abs(float(energy_distance(jnp.asarray(x), jnp.asarray(y))) - brute) < 1e-12
    # differentiable (finite gradients, the diagonal's sqrt(0) included)
    g = jax.grad(energy_distance)(jnp.asarray(x, jnp.float32), jnp.asarray(y, jnp.float32))
    assert np.all(np.isfinite(np.asarray(g)))


def test_energy_distance_of_shifted_normals_in_1d():
    """N(0, 1) (n = 400) vs N(1, 1) (m = 300): X - Y ~ N(-1, 2), whose folded-normal mean is
    E|X - Y| = sqrt(2) sqrt(2/pi) exp(-m^2/4) + m (1 - 2 Phi(-m / sqrt(2))), and
    E|X - X'| = E|Y - Y'| = sqrt(2) sqrt(2/pi) = 2 / sqrt(pi).  Mean of R = 64 draws within
    5 SE of 2 E|X - Y| - 4 / sqrt(pi)."""
    m, n, my, R = 1.0, 400, 300, 64
    exy = (math.sqrt(2) * math.sqrt(2 / math.pi) * math.exp(-m * m / 4)
           + m * (1 - 2 * scipy.stats.norm.cdf(-m / math.sqrt(2))))
    truth = 2 * exy - 4 / math.sqrt(math.pi)

    def one(key):
        kx, ky = jax.random.split(key)
        return energy_distance(jax.random.normal(kx, (n, 1)), m + jax.random.normal(ky, (my, 1)))

    draws = jax.jit(jax.vmap(one))(jax.random.split(jax.random.PRNGKey(19), R))
    _, se = _within_se(draws, truth)
    assert truth > 10 * se


def test_energy_distance_of_identical_distributions_has_mean_zero():
    """P = Q = N(0, I_2), n = m = 10, R = 400: mean 0 within 5 SE, some draws negative."""
    def one(key):
        kx, ky = jax.random.split(key)
        return energy_distance(jax.random.normal(kx, (10, 2)), jax.random.normal(ky, (10, 2)))

    draws = jax.jit(jax.vmap(one))(jax.random.split(jax.random.PRNGKey(20), 400))
    _within_se(draws, 0.0)
    assert np.any(np.asarray(draws) < 0)


@functools.lru_cache(maxsize=None)
def _gmm2d_neg_entropy_by_quadrature():
    """int p log p for gmm2d by the midpoint rule on [-1.8, 1.8]^2, h = 0.01 (float64).
    The boundary is >= 1.0 = 8.4 stds from every mean, and the integrand is analytic, so
    the midpoint rule converges geometrically: h = 0.01 integrates p to 1 within 1e-14
    and agrees with h = 0.004 to 1e-13 (checked once; ~0.56)."""
    _, _, info = samplax.load_problem("gmm2d")  # the float64 parameters of the problem file
    w, mu, tau = (np.asarray(info[k], np.float64) for k in ("weights", "means", "stds"))
    w = w / w.sum()
    h = 0.01
    g = np.arange(-1.8 + h / 2, 1.8, h)
    X, Y = np.meshgrid(g, g, indexing="ij")
    pts = np.stack([X.ravel(), Y.ravel()], -1)
    d2 = ((pts[:, None, :] - mu[None]) ** 2).sum(-1)
    logp = scipy.special.logsumexp(np.log(w) - np.log(2 * np.pi * tau**2) - d2 / (2 * tau**2), axis=1)
    p = np.exp(logp)
    return float(np.sum(p * logp) * h * h), float(np.sum(p) * h * h)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_mean_log_likelihood_estimates_the_negative_entropy_of_gmm2d(dtype):
    """Exact gmm2d samples (n = 20000): the mean log-density is within 5 SE (the sample std
    of log p / sqrt(n)) of -H(p) from a 2-D quadrature."""
    neg_h, mass = _gmm2d_neg_entropy_by_quadrature()
    assert abs(mass - 1.0) < 1e-12
    with jax.enable_x64(dtype == "float64"):
        gmm, _, _ = samplax.load_problem("gmm2d", dtype=jnp.dtype(dtype))
        x = gmm.sample(jax.random.PRNGKey(21), 20000)
        fn = lambda u: gmm.log_prob_ve(u, 0.0)  # noqa: E731
        got = jax.jit(lambda x_: mean_log_likelihood(fn, x_))(x)
        assert got.dtype == jnp.dtype(dtype)
        lp = np.asarray(fn(x), np.float64)
    assert abs(float(got) - lp.mean()) < 1e-4
    se = lp.std(ddof=1) / np.sqrt(lp.size)
    assert abs(float(got) - neg_h) <= N_SE * se, (float(got), neg_h, se)


def test_mean_log_likelihood_non_finite_and_shapes():
    """NaN/inf samples give NaN (documented convention, also under jit); a finite point of
    zero density gives -inf; shape errors raise ValueError."""
    fn = lambda u: -0.5 * jnp.sum(u**2, -1) - jnp.log(2 * jnp.pi)  # N(0, I_2)  # noqa: E731
    x = jnp.zeros((4, 2))
    assert abs(float(mean_log_likelihood(fn, x)) + math.log(2 * math.pi)) < 1e-6
    f = jax.jit(lambda x_: mean_log_likelihood(fn, x_))
    assert np.isnan(float(f(x.at[1, 0].set(jnp.nan))))
    assert np.isnan(float(f(x.at[2, 1].set(jnp.inf))))
    assert float(mean_log_likelihood(lambda u: jnp.where(u[:, 0] > 0, -jnp.inf, 0.0), x.at[0, 0].set(1.0))) == -np.inf
    with pytest.raises(ValueError, match="shape"):
        mean_log_likelihood(lambda u: jnp.sum(u), x)
    with pytest.raises(ValueError, match="n >= 1"):
        mean_log_likelihood(fn, jnp.zeros((0, 2)))


def test_gmm_component_chi2_passes_exact_samples():
    """Exact gmm2d samples (n = 2000, R = 200 seeds), against both the weights
    (approximation) and the Monte Carlo assignment frequencies (exact variant):
    * E[X^2] = K - 1 exactly under a multinomial null: the mean of the R statistics is
      within 5 SE of 7;
    * the number of p-values < 0.01 is ~ Binomial(200, 0.01) (mean 2): assert <= 9
      (P(>= 10) ~ 5e-5)."""
    gmm, _, _ = samplax.load_problem("gmm2d")
    K, n, R = gmm.weights.shape[0], 2000, 200
    q = gmm_assignment_probs(gmm, jax.random.PRNGKey(22), 100_000)
    assert abs(float(jnp.sum(q)) - 1.0) < 1e-5
    # gmm2d's components are well separated: assignment frequencies ~ the weights
    np.testing.assert_allclose(np.asarray(q), np.asarray(gmm.weights), atol=2e-3)

    def one(key):
        x = gmm.sample(key, n)
        return gmm_component_chi2(x, gmm)[::2], gmm_component_chi2(x, gmm, q)[::2]

    (s_w, p_w), (s_q, p_q) = jax.jit(jax.vmap(one))(jax.random.split(jax.random.PRNGKey(23), R))
    for s, p in ((s_w, p_w), (s_q, p_q)):
        _within_se(s, K - 1)
        assert int(np.sum(np.asarray(p) < 0.01)) <= 9
    # p-value = chi^2_{K-1} survival function (scipy cross-check), dof a Python int
    x = gmm.sample(jax.random.PRNGKey(24), n)
    stat, dof, pv = gmm_component_chi2_exact(x, gmm, jax.random.PRNGKey(22), 100_000)
    assert dof == K - 1
    assert abs(float(pv) - scipy.stats.chi2.sf(float(stat), dof)) < 1e-5
    assert abs(float(stat) - float(gmm_component_chi2(x, gmm, q)[0])) < 1e-3


@pytest.mark.parametrize("drop", range(8))
def test_gmm_component_chi2_fails_when_a_component_is_missing(drop):
    """Samples from gmm2d with component `drop` removed (n = 4000): its count is ~0 while
    n w_k >= 65 are expected, so X^2 >= n w_k - (misassigned neighbours) deterministically
    and p < 1e-6 for every component, including the smallest (w = 0.016)."""
    gmm, _, _ = samplax.load_problem("gmm2d")
    keep = np.array([k for k in range(8) if k != drop])
    bad = samplax.GaussianMixture.create(np.asarray(gmm.weights)[keep], np.asarray(gmm.means)[keep],
                                         np.asarray(gmm.stds)[keep])
    x = bad.sample(jax.random.PRNGKey(25 + drop), 4000)
    stat, dof, pv = gmm_component_chi2(x, gmm)
    assert float(pv) < 1e-6, (float(stat), float(pv))


def test_gmm_component_helpers_check_shapes():
    gmm, _, _ = samplax.load_problem("gmm2d")
    with pytest.raises(ValueError, match=r"\(n, 2\)"):
        gmm_assign_components(jnp.zeros((5, 3)), gmm)
    with pytest.raises(ValueError, match=r"\(n, 2\)"):
        gmm_component_chi2(jnp.zeros((5,)), gmm)
    with pytest.raises(ValueError, match="probs"):
        gmm_component_chi2(jnp.zeros((5, 2)), gmm, jnp.ones(3) / 3)
    a = gmm_assign_components(gmm.means + 1e-3, gmm)
    np.testing.assert_array_equal(np.asarray(a), np.arange(8))


# ---------------------------------------------------------------------------------------
# Frechet distance between Gaussians (float64, host)
# ---------------------------------------------------------------------------------------
import scipy.linalg  # noqa: E402

from samplax.metrics import frechet_distance, frechet_distance_features, gaussian_statistics  # noqa: E402


def _random_spd(rng, d, cond=100.0):
    """A random full covariance Q diag(l) Q^T with eigenvalues log-spaced in [1/cond, 1]."""
    q, _ = np.linalg.qr(rng.standard_normal((d, d)))
    return (q * np.geomspace(1.0 / cond, 1.0, d)) @ q.T


def _fd_scipy(mu1, c1, mu2, c2):
    """The textbook formula with scipy's sqrtm of the (non-symmetric) product C1 C2."""
    covmean = scipy.linalg.sqrtm(c1 @ c2)
    return float(np.sum((mu1 - mu2) ** 2) + np.trace(c1) + np.trace(c2) - 2 * np.trace(covmean).real)


def test_gaussian_statistics_is_the_unbiased_float64_estimate():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((50, 4)).astype(np.float32) * [1.0, 2.0, 0.5, 3.0] + [1.0, -1.0, 0.0, 2.0]
    mu, cov = gaussian_statistics(x)
    assert mu.dtype == np.float64 and cov.dtype == np.float64 and mu.shape == (4,) and cov.shape == (4, 4)
    np.testing.assert_allclose(mu, np.asarray(x, np.float64).mean(0), rtol=1e-14)
    np.testing.assert_allclose(cov, np.cov(np.asarray(x, np.float64), rowvar=False, ddof=1), rtol=1e-12)
    np.testing.assert_array_equal(cov, cov.T)
    for bad in (np.zeros(5), np.zeros((1, 3)), np.zeros((4, 3, 2))):
        with pytest.raises(ValueError, match="gaussian_statistics"):
            gaussian_statistics(bad)


def test_frechet_distance_of_equal_inputs_is_zero():
    rng = np.random.default_rng(1)
    for d in (1, 5, 64):
        mu, c = rng.standard_normal(d), _random_spd(rng, d, cond=1e4)
        assert frechet_distance(mu, c, mu, c) <= 1e-10 * np.trace(c)
    # also for a singular covariance (rank 3 in 10-D), where the square root of the
    # round-off eigenvalues of C1^{1/2} C2 C1^{1/2} would leave an error ~ 1e-8 tr C
    a = rng.standard_normal((10, 3))
    c = a @ a.T
    assert frechet_distance(np.zeros(10), c, np.zeros(10), c) <= 1e-12 * np.trace(c)
    x = rng.standard_normal((200, 6))
    assert frechet_distance_features(x, x) <= 1e-12 * np.trace(np.cov(x, rowvar=False))


def test_frechet_distance_of_diagonal_covariances():
    """Commuting diagonal covariances: FD = |mu1 - mu2|^2 + sum_i (sqrt(a_i) - sqrt(b_i))^2."""
    rng = np.random.default_rng(2)
    d = 7
    mu1, mu2 = rng.standard_normal(d), rng.standard_normal(d)
    a, b = rng.uniform(0.01, 3.0, d), rng.uniform(0.01, 3.0, d)
    truth = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    assert frechet_distance(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(truth, rel=1e-12)
    # zero variances allowed (a point mass): FD(N(0, 0), N(0, b)) = sum b
    assert frechet_distance(np.zeros(d), np.zeros((d, d)), np.zeros(d), np.diag(b)) == pytest.approx(b.sum(), rel=1e-12)
    # 1-D: (mu1 - mu2)^2 + (s1 - s2)^2
    assert frechet_distance([1.0], [[4.0]], [-2.0], [[0.25]]) == pytest.approx(9.0 + 1.5**2, rel=1e-14)


def test_frechet_distance_matches_scipy_sqrtm_for_full_covariances():
    rng = np.random.default_rng(3)
    for d in (2, 10, 64):
        for _ in range(3):
            mu1, mu2 = rng.standard_normal(d), rng.standard_normal(d)
            c1, c2 = _random_spd(rng, d), 2.0 * _random_spd(rng, d)
            got, ref = frechet_distance(mu1, c1, mu2, c2), _fd_scipy(mu1, c1, mu2, c2)
            assert got == pytest.approx(ref, rel=1e-8)
            assert frechet_distance(mu2, c2, mu1, c1) == pytest.approx(got, rel=1e-12)
    # from features: the same as from their statistics
    x, y = rng.standard_normal((300, 5)), 0.5 + 1.5 * rng.standard_normal((200, 5))
    assert frechet_distance_features(x, y) == frechet_distance(*gaussian_statistics(x), *gaussian_statistics(y))


def test_frechet_distance_is_rotation_invariant():
    """FD(Q mu1, Q C1 Q^T, Q mu2, Q C2 Q^T) = FD(mu1, C1, mu2, C2) for orthogonal Q."""
    rng = np.random.default_rng(4)
    d = 12
    mu1, mu2, c1, c2 = rng.standard_normal(d), rng.standard_normal(d), _random_spd(rng, d), _random_spd(rng, d)
    q, _ = np.linalg.qr(rng.standard_normal((d, d)))
    fd = frechet_distance(mu1, c1, mu2, c2)
    assert frechet_distance(q @ mu1, q @ c1 @ q.T, q @ mu2, q @ c2 @ q.T) == pytest.approx(fd, rel=1e-10)


def test_frechet_distance_of_commuting_covariances():
    """C1 = Q diag(a) Q^T, C2 = Q diag(b) Q^T share eigenvectors: the cross term is
    sum sqrt(a_i b_i), so FD = |dmu|^2 + sum (sqrt(a_i) - sqrt(b_i))^2; in particular
    FD(N(mu, C), N(mu, s^2 C)) = (1 - s)^2 tr C."""
    rng = np.random.default_rng(5)
    d = 9
    q, _ = np.linalg.qr(rng.standard_normal((d, d)))
    a, b = rng.uniform(0.1, 2.0, d), rng.uniform(0.1, 2.0, d)
    c1, c2 = (q * a) @ q.T, (q * b) @ q.T
    mu1, mu2 = rng.standard_normal(d), rng.standard_normal(d)
    truth = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    assert frechet_distance(mu1, c1, mu2, c2) == pytest.approx(truth, rel=1e-10)
    assert frechet_distance(mu1, c1, mu1, 9.0 * c1) == pytest.approx(4.0 * a.sum(), rel=1e-10)


def test_frechet_distance_rejects_bad_input():
    mu, c = np.zeros(3), np.eye(3)
    with pytest.raises(ValueError, match="mu1 and mu2"):
        frechet_distance(mu, c, np.zeros(4), np.eye(4))
    with pytest.raises(ValueError, match="mu1 and mu2"):
        frechet_distance(np.zeros((3, 1)), c, mu, c)
    with pytest.raises(ValueError, match=r"cov2 must be \(3, 3\)"):
        frechet_distance(mu, c, mu, np.eye(4))
    with pytest.raises(ValueError, match=r"cov1 must be \(3, 3\)"):
        frechet_distance(mu, np.ones(3), mu, c)
    with pytest.raises(ValueError, match="positive semi-definite"):
        frechet_distance(mu, np.diag([1.0, -1.0, 1.0]), mu, c)
    with pytest.raises(ValueError, match="same dimension"):
        frechet_distance_features(np.zeros((5, 2)), np.zeros((5, 3)))
    with pytest.raises(ValueError, match="n >= 2"):
        frechet_distance_features(np.zeros((1, 2)), np.zeros((5, 2)))
    # non-finite statistics (a diverged sampler) give NaN, not an exception
    assert np.isnan(frechet_distance(mu, c, np.array([0.0, np.nan, 0.0]), c))
    assert np.isnan(frechet_distance_features(np.full((4, 3), np.inf), np.ones((4, 3))))
