"""DiffusionModel conversions and the exact analytic models (Gaussian mixture,
Gaussian), checked against answers computed independently in numpy/scipy."""
import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.integrate import solve_ivp
from scipy.special import ndtri

import samplax as sx
from samplax.models import DiffusionModel, Gaussian, GaussianMixture
from samplax.schedules import EDM, FlowLinear, VPCosine, VPDiscrete, VPLinear
from helpers import assert_rel, max_rel

KINDS = ("noise", "data", "velocity", "score", "flow")
CONVERSION_SCHEDULES = {
    "vp_discrete": VPDiscrete.linear,
    "vp_linear": VPLinear,
    "edm": EDM,
    "flow": FlowLinear,
}


_max_rel, _assert_rel = max_rel, assert_rel


def _gmm2d64():
    """gmm2d in float64 (call inside ``jax.enable_x64``)."""
    gmm, schedule, info = sx.load_problem("gmm2d", dtype=jnp.float64)
    assert gmm.means.dtype == jnp.float64
    return gmm, schedule, info


def _np_params(gmm):
    return np.asarray(gmm.weights, np.float64), np.asarray(gmm.means, np.float64), np.asarray(gmm.stds, np.float64)


def _np_posterior(x, a, s, w, mu, tau):
    """Bayes' rule for x = a x0 + s eps, x0 ~ sum_k w_k N(mu_k, tau_k^2 I):
    returns (E[x0 | x], E[eps | x], log p(x)), all in numpy float64."""
    d = mu.shape[1]
    var = a**2 * tau**2 + s**2                                     # (K,) marginal variance per component
    diff = x[:, None, :] - a * mu[None]                            # (B, K, d)
    logp = np.log(w) - 0.5 * d * np.log(2 * np.pi * var) - 0.5 * (diff**2).sum(-1) / var
    log_px = np.logaddexp.reduce(logp, axis=1)
    r = np.exp(logp - log_px[:, None])                             # p(k | x)
    x0_k = mu[None] + (a * tau**2 / var)[None, :, None] * diff     # E[x0 | x, k]
    eps_k = (s / var)[None, :, None] * diff                        # E[eps | x, k] = Cov(eps, x) Var(x)^-1 (x - E x)
    return (r[..., None] * x0_k).sum(1), (r[..., None] * eps_k).sum(1), log_px


def _times(schedule, n=5):
    lo, hi = schedule.t_min, schedule.t_max
    return np.geomspace(lo * 1.01, hi * 0.999, n)


# --- DiffusionModel views --------------------------------------------------------

@pytest.mark.parametrize("sched", sorted(CONVERSION_SCHEDULES))
def test_as_prediction_round_trip(sched):
    schedule = CONVERSION_SCHEDULES[sched]()
    with jax.enable_x64(True):
        gmm, _, _ = _gmm2d64()
        base = gmm.model(schedule)
        ts = _times(schedule, 4)
        # one time per sample: 8 samples at each of the times, drawn from the marginal there
        t = jnp.asarray(np.repeat(ts, 8))
        x = gmm.sample(jax.random.PRNGKey(0), t.shape[0], t, schedule)
        x0, eps = base.data_noise(x, t)
        a = np.asarray(schedule.alpha(t))[:, None]
        s = np.asarray(schedule.sigma(t))[:, None]
        # the exact pair is consistent: x = alpha x0 + sigma eps
        np.testing.assert_allclose(a * np.asarray(x0) + s * np.asarray(eps), np.asarray(x), rtol=1e-12, atol=1e-12)
        for kind in KINDS:
            m = base.as_prediction(kind)
            assert m.prediction == kind
            # the re-expressed model's native output is the base's view ...
            _assert_rel(m.raw(x, t), base.view(kind)(x, t), 1e-14)
            # ... and converting it back recovers (x0, eps)
            _assert_rel(m.data_noise(x, t), (x0, eps), 1e-10)
            for other in KINDS:
                _assert_rel(m.view(other)(x, t), base.view(other)(x, t), 1e-10)
        # a chain of re-expressions is still the identity
        chain = base.as_prediction("velocity").as_prediction("flow").as_prediction("score").as_prediction("data")
        _assert_rel(chain.data_noise(x, t), (x0, eps), 1e-10)


@pytest.mark.parametrize("sched", ["vp_linear", "vp_cosine", "edm", "flow", "vp_discrete"])
def test_flow_view_is_time_derivative_of_exact_ode(sched):
    """The 'flow' view is dx/dt along the probability-flow ODE: differentiate the
    Gaussian's closed-form ODE solution in its end time."""
    schedule = {"vp_linear": VPLinear, "vp_cosine": VPCosine, "edm": EDM, "flow": FlowLinear,
                "vp_discrete": VPDiscrete.linear}[sched]()
    with jax.enable_x64(True):
        g = Gaussian(mean=jnp.array([0.5, -1.0, 2.0]), std=jnp.array([0.3, 1.0, 2.5]))
        model = g.model(schedule)
        x = jax.random.normal(jax.random.PRNGKey(1), (4, 3))
        for t in _times(schedule, 4):
            if sched == "vp_discrete":
                t = (np.floor(t * 1000) + 0.5) / 1000  # mid-segment: alpha'(t) jumps at the table's nodes
            _, dxdt = jax.jvp(lambda tt, t0=t: g.ode_solution(x, t0, tt, schedule), (jnp.float64(t),),
                              (jnp.float64(1.0),))
            _assert_rel(model.flow(x, jnp.float64(t)), dxdt, 1e-11)
            # and the velocity view is alpha eps - sigma x0 (Salimans & Ho), also for the flow model
            _assert_rel(model.as_prediction("flow").velocity(x, t), model.velocity(x, t), 1e-10)


def test_diffusion_model_rejects_unknown_names():
    with pytest.raises(ValueError, match="prediction must be one of"):
        DiffusionModel(apply=lambda p, x, t: x, params=None, schedule=VPLinear(), prediction="epsilon")
    m = DiffusionModel(apply=lambda p, x, t: x, params=None, schedule=VPLinear(), prediction="noise")
    with pytest.raises(ValueError, match="kind must be"):
        m.view("x0")
    with pytest.raises(ValueError, match="kind must be"):
        m.as_prediction("data_noise")


# --- exact Gaussian mixture maths ---------------------------------------------------

def test_posterior_mean_1d_by_quadrature():
    """E[x0 | x_t] by Bayes' rule on a fine grid of x0 values (trapezoid rule),
    for a two-component 1-D mixture."""
    w, mu, tau = np.array([0.3, 0.7]), np.array([[-1.0], [1.5]]), np.array([0.3, 0.6])
    schedule = VPLinear()
    x0 = np.linspace(-10.0, 10.0, 40001)

    def normal_pdf(z, m, sd):
        return np.exp(-0.5 * ((z - m) / sd) ** 2) / (np.sqrt(2 * np.pi) * sd)

    prior = sum(wk * normal_pdf(x0, m[0], tk) for wk, m, tk in zip(w, mu, tau))
    with jax.enable_x64(True):
        gmm = GaussianMixture.create(w, mu, tau)
        model = gmm.model(schedule)
        for t in (0.05, 0.3, 0.7):
            a, s = float(schedule.alpha(t)), float(schedule.sigma(t))
            x = a * np.array([-2.0, -1.0, -0.2, 0.0, 0.4, 1.5, 2.5])
            lik = normal_pdf(x[:, None], a * x0[None], s)                # p(x | x0)
            post = prior[None] * lik
            mean = np.trapezoid(post * x0[None], x0, axis=1) / np.trapezoid(post, x0, axis=1)
            x0_hat, eps_hat = model.data_noise(jnp.asarray(x[:, None]), t)
            np.testing.assert_allclose(np.asarray(x0_hat)[:, 0], mean, rtol=1e-9, atol=1e-10)
            np.testing.assert_allclose(np.asarray(eps_hat)[:, 0], (x - a * mean) / s, rtol=1e-9, atol=1e-9)


def test_posterior_mean_2d_closed_form():
    with jax.enable_x64(True):
        gmm, schedule, _ = _gmm2d64()
        w, mu, tau = _np_params(gmm)
        model = gmm.model(schedule)
        for t in (0.002, 0.01, 0.1, 0.5, 0.9):
            x = np.asarray(gmm.sample(jax.random.PRNGKey(3), 32, t, schedule))
            a, s = float(schedule.alpha(t)), float(schedule.sigma(t))
            mean, eps, _ = _np_posterior(x, a, s, w, mu, tau)
            x0_hat, eps_hat = model.data_noise(jnp.asarray(x), t)
            _assert_rel(x0_hat, mean, 1e-11)
            _assert_rel(eps_hat, eps, 1e-11)


@pytest.mark.parametrize("sched", ["vp_discrete", "edm"])
def test_tweedie_score_is_grad_log_density(sched):
    with jax.enable_x64(True):
        gmm, schedule, _ = _gmm2d64()
        schedule = VPDiscrete.linear() if sched == "vp_discrete" else EDM()
        model = gmm.model(schedule)
        grad_log_p = jax.jit(jax.grad(lambda x, t: jnp.sum(gmm.log_prob(x, t, schedule))))
        for t in _times(schedule, 5):
            x = gmm.sample(jax.random.PRNGKey(4), 32, t, schedule)
            _assert_rel(model.score(x, t), grad_log_p(x, t), 1e-8)


def test_log_prob_matches_numpy_and_integrates_to_one():
    with jax.enable_x64(True):
        gmm, schedule, _ = _gmm2d64()
        w, mu, tau = _np_params(gmm)
        h = 0.01
        g = np.arange(-4.0, 4.0 + h / 2, h)
        xx, yy = np.meshgrid(g, g, indexing="ij")
        pts = jnp.asarray(np.stack([xx.ravel(), yy.ravel()], -1))
        log_prob = jax.jit(lambda x, t: gmm.log_prob(x, t, schedule))
        for t in (0.05, 0.5):
            a, s = float(schedule.alpha(t)), float(schedule.sigma(t))
            lp = np.asarray(log_prob(pts, t))
            np.testing.assert_allclose(lp[::997], _np_posterior(np.asarray(pts[::997]), a, s, w, mu, tau)[2],
                                       rtol=1e-12, atol=1e-12)
            total = np.trapezoid(np.trapezoid(np.exp(lp).reshape(xx.shape), g, axis=1), g)
            assert abs(total - 1.0) < 1e-3, total


# Family-wise significance of the moment test: 5 two-sided z-tests (2 means,
# 3 covariance entries), Bonferroni-corrected.
ALPHA = 1e-3
Z_CRIT = float(-ndtri(ALPHA / (2 * 5)))


def _moment_z_scores(x, mean, cov):
    """z-scores of the sample mean and sample covariance (taken about the exact
    mean, so each is an average of iid terms) against the exact values; the
    covariance standard errors use the sample fourth moments."""
    n = x.shape[0]
    z = list((x.mean(0) - mean) / np.sqrt(np.diag(cov) / n))
    c = x - mean
    for i, j in ((0, 0), (0, 1), (1, 1)):
        prod = c[:, i] * c[:, j]
        z.append((prod.mean() - cov[i, j]) / (prod.std() / np.sqrt(n)))
    return np.array(z)


@pytest.mark.parametrize("t", [0.1, 0.3])
def test_exact_sampling_matches_marginal_moments(t):
    n = 60000
    with jax.enable_x64(True):
        gmm, schedule, _ = _gmm2d64()
        w, mu, tau = _np_params(gmm)
        a, s = float(schedule.alpha(t)), float(schedule.sigma(t))
        # exact moments of p0, written out independently: mean and covariance of a mixture
        mu_mix = w @ mu
        cov0 = (w[:, None, None] * np.einsum("ki,kj->kij", mu - mu_mix, mu - mu_mix)).sum(0) + (w @ tau**2) * np.eye(2)
        np.testing.assert_allclose(np.asarray(gmm.mean()), mu_mix, rtol=1e-14, atol=1e-15)
        np.testing.assert_allclose(np.asarray(gmm.covariance()), cov0, rtol=1e-14, atol=1e-15)
        mean_t, cov_t = a * mu_mix, a**2 * cov0 + s**2 * np.eye(2)

        key = jax.random.PRNGKey(5)
        x = np.asarray(gmm.sample(key, n, t, schedule))
        z = _moment_z_scores(x, mean_t, cov_t)
        assert np.abs(z).max() < Z_CRIT, z

        # mutation: the same draw of x0 with the noise scaled by 1.2 must fail the same test
        k0, k1 = jax.random.split(key)
        x0 = np.asarray(gmm.sample(k0, n))
        bad = a * x0 + 1.2 * s * np.asarray(jax.random.normal(k1, x0.shape, jnp.float64))
        assert np.abs(_moment_z_scores(bad, mean_t, cov_t)).max() > Z_CRIT
        good = a * x0 + s * np.asarray(jax.random.normal(k1, x0.shape, jnp.float64))
        assert np.abs(_moment_z_scores(good, mean_t, cov_t)).max() < Z_CRIT


def test_eps_prediction_has_no_cancellation():
    """At sigma = 0.002 (EDM's t_min) in float32 the mixture's direct eps_hat
    matches float64 to 1e-5, while (x - alpha x0_hat) / sigma loses ~3 digits:
    x - alpha x0_hat is ~1e-4 of |x|."""
    schedule = EDM()
    t = float(np.float32(schedule.t_min))
    gmm32, _, _ = sx.load_problem("gmm2d")
    with jax.enable_x64(True):
        gmm64 = gmm32.astype(jnp.float64)  # the same (float32-rounded) mixture
        x64 = np.asarray(gmm64.sample(jax.random.PRNGKey(6), 32, t, schedule))
    x32 = jnp.asarray(x64, jnp.float32)
    x64 = np.asarray(x32, np.float64)        # both precisions see the same inputs
    t32 = jnp.float32(t)

    @jax.jit
    def direct_and_naive(x, t):
        x0, eps = gmm32.model(schedule).data_noise(x, t)
        return eps, (x - schedule.alpha(t) * x0) / schedule.sigma(t)

    eps_32, naive_32 = direct_and_naive(x32, t32)
    chex.assert_type([eps_32, naive_32], jnp.float32)
    chex.assert_shape([eps_32, naive_32], (32, 2))
    with jax.enable_x64(True):
        _, eps_64 = gmm64.model(schedule).data_noise(jnp.asarray(x64), jnp.float64(t))
    direct_err = _max_rel(eps_32, eps_64)
    naive_err = _max_rel(naive_32, eps_64)
    assert direct_err <= 1e-5, direct_err
    assert naive_err > 20 * 1e-5, naive_err
    # and the noise view hands out the direct value, not a recomputation from x0_hat
    assert _max_rel(gmm32.model(schedule).noise(x32, t32), eps_64) <= 1e-5


# --- Gaussian: closed-form probability-flow ODE ----------------------------------------

GAUSS_SCHEDULES = {"vp_linear": VPLinear, "edm": EDM, "vp_discrete": VPDiscrete.linear}


def _gaussian():
    return Gaussian(mean=jnp.array([0.5, -1.0, 2.0]), std=jnp.array([0.3, 1.0, 2.5]))


def _three_times(schedule):
    lo, hi = schedule.t_min, schedule.t_max
    return hi, float(np.sqrt(lo * hi)), lo * 3.0


@pytest.mark.parametrize("sched", sorted(GAUSS_SCHEDULES))
def test_gaussian_ode_solution_semigroup(sched):
    schedule = GAUSS_SCHEDULES[sched]()
    t1, t2, t3 = _three_times(schedule)
    with jax.enable_x64(True):
        g = _gaussian()
        x = jax.random.normal(jax.random.PRNGKey(7), (8, 3)) * 2.0
        for end in (t3, None):
            composed = g.ode_solution(g.ode_solution(x, t1, t2, schedule), t2, end, schedule)
            _assert_rel(composed, g.ode_solution(x, t1, end, schedule), 1e-13)
        # running it backwards returns the start point
        _assert_rel(g.ode_solution(g.ode_solution(x, t1, t3, schedule), t3, t1, schedule), x, 1e-13)


@pytest.mark.parametrize("sched", sorted(GAUSS_SCHEDULES))
def test_gaussian_ode_maps_marginal_to_marginal(sched):
    """The flow is affine, so it carries N(m1, s1^2) onto N(m2, s2^2) exactly
    when it sends m1 + s1 z to m2 + s2 z for every z."""
    schedule = GAUSS_SCHEDULES[sched]()
    t1, t2, t3 = _three_times(schedule)
    with jax.enable_x64(True):
        g = _gaussian()
        z = jax.random.normal(jax.random.PRNGKey(8), (16, 3))
        for ta, tb in ((t1, t2), (t2, t3), (t1, t3)):
            (m1, s1), (m2, s2) = g.marginal(ta, schedule), g.marginal(tb, schedule)
            _assert_rel(g.ode_solution(m1 + s1 * z, ta, tb, schedule), m2 + s2 * z, 1e-13)
            # and the marginal is alpha mu, sqrt(alpha^2 std^2 + sigma^2)
            a, s = float(schedule.alpha(tb)), float(schedule.sigma(tb))
            np.testing.assert_allclose(np.asarray(s2), np.sqrt(a**2 * np.asarray(g.std) ** 2 + s**2), rtol=1e-14)
        m0, _ = g.marginal(t1, schedule)
        np.testing.assert_allclose(np.asarray(g.ode_solution(m0[None], t1, None, schedule))[0], np.asarray(g.mean),
                                   rtol=1e-13)


def test_gaussian_ode_rhs_is_eps_hat():
    """d/ds of the closed-form solution u(s) equals eps_hat(u(s); s) (central differences)."""
    with jax.enable_x64(True):
        g = _gaussian()
        u0 = jax.random.normal(jax.random.PRNGKey(9), (8, 3)) * 3.0
        s0 = 20.0
        for s1 in (10.0, 1.0, 0.3, 0.05):
            h = 1e-4 * s1
            fd = (g.ode_solve_ve(u0, s0, s1 + h) - g.ode_solve_ve(u0, s0, s1 - h)) / (2 * h)
            u1 = g.ode_solve_ve(u0, s0, s1)
            _assert_rel(fd, g.denoise_ve(u1, s1)[1], 1e-7)


def test_gmm_ode_reference_matches_scipy_dop853():
    with jax.enable_x64(True):
        gmm, schedule, info = _gmm2d64()
        w, mu, tau = _np_params(gmm)
        a1, s1 = float(schedule.alpha(1.0)), float(schedule.sigma(1.0))
        s_from = s1 / a1
        u0 = sx.problem_start_points(info, 8) / a1
        ours = np.asarray(gmm.ode_solve_ve(jnp.asarray(u0), s_from, 0.0))

    def rhs(s, y):  # du/ds = E[eps | u = x0 + s eps], numpy, by the VP-form posterior with alpha = 1
        return _np_posterior(y.reshape(-1, 2), 1.0, s, w, mu, tau)[1].ravel()

    sol = solve_ivp(rhs, (s_from, 0.0), u0.ravel(), method="DOP853", rtol=1e-12, atol=1e-12)
    assert sol.success
    # the accuracy ode_solve_ve's docstring promises for the benchmark problems
    np.testing.assert_allclose(ours, sol.y[:, -1].reshape(-1, 2), rtol=0, atol=1e-9)


def test_single_component_gmm_is_the_gaussian():
    mean, std = np.array([0.5, -1.0, 2.0]), 0.7
    with jax.enable_x64(True):
        gmm = GaussianMixture.create([1.0], mean[None], [std])
        g = Gaussian(mean=jnp.asarray(mean), std=jnp.full((3,), std))
        for schedule in (VPDiscrete.linear(), EDM()):
            x = jax.random.normal(jax.random.PRNGKey(10), (8, 3))
            for t in _times(schedule, 4):
                chex.assert_trees_all_close(gmm.model(schedule).data_noise(x, t), g.model(schedule).data_noise(x, t),
                                            rtol=1e-13, atol=1e-13)
        schedule = VPDiscrete.linear()
        x = jax.random.normal(jax.random.PRNGKey(11), (8, 3))
        for t_to in (0.3, None):
            _assert_rel(gmm.ode_solution(x, 1.0, t_to, schedule), g.ode_solution(x, 1.0, t_to, schedule), 1e-10)


def test_label_conditional_model_is_the_component_model():
    with jax.enable_x64(True):
        gmm, schedule, _ = _gmm2d64()
        w, mu, tau = _np_params(gmm)
        t = 0.2
        x = gmm.sample(jax.random.PRNGKey(12), 32, t, schedule)
        cond = jax.jit(lambda label, x: gmm.model(schedule, label=label).data_noise(x, t))
        single = jax.jit(lambda g, x: g.model(schedule).data_noise(x, t))
        for k in range(mu.shape[0]):
            gk = GaussianMixture.create([1.0], mu[k:k + 1], tau[k:k + 1])
            _assert_rel(cond(k, x), single(gk, x), 1e-12)
        # label -1 is the unconditional model
        _assert_rel(cond(-1, x), single(gmm, x), 1e-14)
        # one label per sample
        labels = jnp.arange(32) % (mu.shape[0] + 1) - 1
        per_sample = cond(labels, x)
        for k in range(-1, mu.shape[0]):
            rows = np.asarray(labels) == k
            _assert_rel(jax.tree_util.tree_map(lambda o: o[rows], per_sample),
                        jax.tree_util.tree_map(lambda o: o[rows], cond(k, x)), 1e-14)

        # labels shared by several components: the sub-mixture with renormalised weights
        labels_k = np.array([0, 1, 0, 1, 2, 2, 0, 1])
        shared = GaussianMixture.create(w, mu, tau, labels=labels_k)
        for k in range(3):
            sel = labels_k == k
            sub = GaussianMixture.create(w[sel], mu[sel], tau[sel])
            _assert_rel(shared.model(schedule, label=k).data_noise(x, t), single(sub, x), 1e-12)
            # and it is Bayes' rule on the sub-mixture, in numpy
            a, s = float(schedule.alpha(t)), float(schedule.sigma(t))
            mean, _, _ = _np_posterior(np.asarray(x), a, s, w[sel] / w[sel].sum(), mu[sel], tau[sel])
            _assert_rel(shared.model(schedule, label=k).data(x, t), mean, 1e-11)
