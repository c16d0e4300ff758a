"""Minority guidance and autoguidance (samplax/models/guidance.py), checked against closed forms:

* the minority score of a Gaussian (Tweedie is linear: an exact per-draw formula and its mean);
* minority guidance with the exact mixture-level classifier at strength 1 IS the conditional
  model of that level (Bayes), strength 0 IS the base model; the lowest-weight component's
  frequency rises with the strength (two-proportion z-tests, |z| > 5);
* autoguidance at scale 1 is the good model, with bad = good it is the good model for every
  scale, and between two Gaussians the guided PF-ODE is the closed-form linear map (the
  sampled variance follows it: chi-square test at p > 1e-3);
* mutants (wrong sign, wrong sigma conversion, swapped good/bad) fail these checks;
* bad options raise ValueError naming the option.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import samplax as sx
from samplax.models import Gaussian, DiffusionModel
from samplax.models.base import _bcast
from samplax.models.guidance import (autoguidance, autoguidance_gaussian_gain, minority_guidance, minority_levels,
                                     minority_score, mixture_level_classifier, quantize_scores)
from samplax.smc.targets import MixtureTarget

MINORITY = 7  # the lowest-weight component of gmm2d (weight 0.016)


def _gmm():
    gmm, sch, _ = sx.load_problem("gmm2d", dtype=jnp.float64)
    return gmm, sch


def _level_classifier(gmm, sch):
    lev = np.zeros(8, int)
    lev[MINORITY] = 1
    return mixture_level_classifier(gmm, sch, lev)


# --- minority score ----------------------------------------------------------------------

def test_minority_score_gaussian_closed_form():
    with jax.enable_x64(True):
        _, sch = _gmm()
        d, mu, s = 3, jnp.array([0.2, -0.4, 1.0]), 0.7
        model = Gaussian(mu, jnp.full((d,), s)).model(sch)
        t = 0.06
        a, sig = float(sch.alpha(t)), float(sch.sigma(t))
        k = a * s**2 / (a**2 * s**2 + sig**2)
        c = 1 - k * a
        x0 = mu + jnp.array([[0.0, 0.0, 0.0], [0.5, -1.0, 2.0], [3.0, 0.1, -0.2]])
        # one given draw: x0 - x0_hat = c (x0 - mu) - k sigma eps exactly
        eps = jax.random.normal(jax.random.PRNGKey(0), (1,) + x0.shape, jnp.float64)
        exact_draw = jnp.sum((c * (x0 - mu) - k * sig * eps[0]) ** 2, axis=1)
        got = minority_score(model, x0, t, None, num_draws=1, noise=eps)
        np.testing.assert_allclose(np.asarray(got), np.asarray(exact_draw), rtol=1e-12)
        # the expectation (Eq. 7): c^2 ||x0 - mu||^2 + k^2 sigma^2 d; mean of n draws within 5 standard errors
        n = 4000
        expected = c**2 * jnp.sum((x0 - mu) ** 2, 1) + k**2 * sig**2 * d
        draws = jax.random.normal(jax.random.PRNGKey(1), (n,) + x0.shape, jnp.float64)
        per = jax.jit(jax.vmap(lambda e: minority_score(model, x0, t, None, 1, noise=e[None])))(draws)  # (n, B)
        z = (per.mean(0) - expected) / (per.std(0) / np.sqrt(n))
        assert np.all(np.abs(np.asarray(z)) < 5), z
        # it ranks by distance from the mode: the minority score is monotone in ||x0 - mu||
        assert float(expected[0]) < float(expected[1]) < float(expected[2])


def test_quantile_levels_are_equal_frequency():
    scores = np.random.default_rng(0).permutation(np.arange(100.0))
    q = minority_levels(scores, 4)
    np.testing.assert_allclose(q, np.quantile(scores, [0.25, 0.5, 0.75, 1.0]))
    lev = quantize_scores(scores, q)
    assert np.bincount(lev).tolist() == [25, 25, 25, 25]
    # level j iff q_{j-1} < score <= q_j
    for j in range(4):
        lo = -np.inf if j == 0 else q[j - 1]
        assert np.all((scores[lev == j] > lo) & (scores[lev == j] <= q[j]))


# --- minority guidance -------------------------------------------------------------------

def _mutant(model, ca, cp, w, kind):
    """Wrong-sign or wrong-sigma-conversion versions of the guidance term."""
    def apply(p, x, t):
        x0, eps = model.data_noise(x, t)
        g = jax.grad(lambda xx: jnp.sum(jax.nn.log_softmax(ca(cp, xx, t))[:, -1]))(x)
        a, s = _bcast(sch_of(model).alpha(t), x), _bcast(sch_of(model).sigma(t), x)
        if kind == "sign":
            e = eps + w * s * g
        elif kind == "sigma":  # eps = -score, forgetting sigma
            e = eps - w * g
        else:  # "inverse": eps = -score / sigma
            e = eps - w * g / s
        return (x - s * e) / a, e
    return DiffusionModel(apply=apply, params=None, schedule=model.schedule, prediction="data_noise")


def sch_of(m):
    return m.schedule


def test_minority_guidance_exact_identities_and_mutants():
    with jax.enable_x64(True):
        gmm, sch = _gmm()
        base = gmm.model(sch)
        ca, cp = _level_classifier(gmm, sch)
        cond = gmm.model(sch, label=MINORITY)
        g0 = jax.jit(minority_guidance(base, ca, cp, 0.0).data_noise)
        g1 = minority_guidance(base, ca, cp, 1.0)
        g1_dn, g1_score = jax.jit(g1.data_noise), jax.jit(g1.score)
        base_dn, cond_dn = jax.jit(base.data_noise), jax.jit(cond.data_noise)
        mutants = {k: jax.jit(_mutant(base, ca, cp, 1.0, k).noise) for k in ("sign", "sigma", "inverse")}
        for t in (0.05, 0.3):  # sigma 0.2 and 0.6 (a sigma near 1 would hide the sigma mutants)
            t = jnp.float64(t)
            x = gmm.sample(jax.random.PRNGKey(1), 32, t, sch)
            # strength 0: the base model exactly
            for u, v in zip(g0(x, t), base_dn(x, t)):
                np.testing.assert_array_equal(np.asarray(u), np.asarray(v))
            # strength 1 with the exact level classifier: the conditional model of the level (Bayes)
            x0c, ec = cond_dn(x, t)
            for u, v in zip(g1_dn(x, t), (x0c, ec)):
                np.testing.assert_allclose(np.asarray(u), np.asarray(v), rtol=1e-10, atol=1e-12)
            # every view agrees (score = base score + grad log p)
            np.testing.assert_allclose(np.asarray(g1_score(x, t)), np.asarray(-ec / sch.sigma(t)), rtol=1e-9,
                                       atol=1e-9)
            # mutants break the identity (by more than a tenth of the guidance term)
            term = np.max(np.abs(np.asarray(ec - base_dn(x, t)[1])))
            for kind, mut in mutants.items():
                assert np.max(np.abs(np.asarray(mut(x, t) - ec))) > 0.1 * term, kind
        # per-sample times
        tt = jnp.linspace(0.05, 0.9, 32)
        x = gmm.sample(jax.random.PRNGKey(2), 32, 0.4, sch)
        np.testing.assert_allclose(np.asarray(g1_dn(x, tt)[1]), np.asarray(cond_dn(x, tt)[1]), rtol=1e-9, atol=1e-12)


def test_minority_guidance_moves_mass_to_lowest_weight_component():
    """Frequency of the lowest-weight component under UniPC-2 (10 steps) from 4000 common x_T:
    rises strictly with the strength (z > 5 each step); at 1 every sample is in it; the
    wrong-sign mutant lowers it."""
    with jax.enable_x64(True):
        gmm, sch = _gmm()
        base = gmm.model(sch)
        ca, cp = _level_classifier(gmm, sch)
        target = MixtureTarget(gmm, assignment="weights")
        n = 4000
        x_T = jax.random.normal(jax.random.PRNGKey(0), (n, 2), jnp.float64)
        grid = sx.time_grid(sch, 10, "logsnr", end="zero", dtype=jnp.float64)
        solver = sx.get_solver("unipc", order=2)
        run = jax.jit(lambda w: sx.sample(solver, minority_guidance(base, ca, cp, w), x_T, grid)[0])
        strengths = (0.0, 0.25, 0.5, 1.0)
        p = [float(np.mean(np.asarray(target.label(run(jnp.float64(w)))) == MINORITY)) for w in strengths]
        assert abs(p[0] - float(gmm.weights[MINORITY])) < 5 * np.sqrt(0.016 * 0.984 / n) + 0.01, p
        for a, b in zip(p[:-1], p[1:]):
            se = np.sqrt((a * (1 - a) + b * (1 - b)) / n) + 1e-12
            assert (b - a) / se > 5, p
        assert p[-1] > 0.999, p
        mut = jax.jit(lambda: sx.sample(solver, _mutant(base, ca, cp, 0.5, "sign"), x_T, grid)[0])()
        assert float(np.mean(np.asarray(target.label(mut)) == MINORITY)) < p[0], p


def test_minority_guidance_bad_options():
    with jax.enable_x64(True):
        gmm, sch = _gmm()
        base = gmm.model(sch)
        ca, cp = _level_classifier(gmm, sch)
        for bad in (-1.0, float("nan"), float("inf"), [1.0, 2.0]):
            with pytest.raises(ValueError, match="strength"):
                minority_guidance(base, ca, cp, bad)
        for bad in (-1, 1.5, True, "last"):
            with pytest.raises(ValueError, match="target_level"):
                minority_guidance(base, ca, cp, 1.0, target_level=bad)
        x = gmm.sample(jax.random.PRNGKey(0), 4, 0.5, sch)
        with pytest.raises(ValueError, match="target_level 2 is out of range"):
            minority_guidance(base, ca, cp, 1.0, target_level=2).noise(x, 0.5)
        with pytest.raises(ValueError, match="model"):
            minority_guidance(gmm, ca, cp, 1.0)
        with pytest.raises(ValueError, match="classifier_apply"):
            minority_guidance(base, None, cp, 1.0)
        with pytest.raises(ValueError, match="num_draws"):
            minority_score(base, x, 0.06, jax.random.PRNGKey(0), num_draws=0)
        with pytest.raises(ValueError, match="t must be in"):
            minority_score(base, x, 2.0, jax.random.PRNGKey(0))
        with pytest.raises(ValueError, match="num_levels"):
            minority_levels(np.arange(10.0), 1)
        with pytest.raises(ValueError, match="component_levels"):
            mixture_level_classifier(gmm, sch, [0, 1])


# --- autoguidance ------------------------------------------------------------------------

def test_autoguidance_identities():
    with jax.enable_x64(True):
        gmm, sch = _gmm()
        good = gmm.model(sch)
        wide = gmm.replace(stds=gmm.stds * 2.0).model(sch)
        t = 0.3
        x = gmm.sample(jax.random.PRNGKey(0), 32, t, sch)
        for u, v in zip(autoguidance(good, wide, 1.0).data_noise(x, t), good.data_noise(x, t)):
            np.testing.assert_allclose(np.asarray(u), np.asarray(v), rtol=1e-13, atol=1e-15)
        for w in (0.0, 0.5, 2.0, 7.0):
            for u, v in zip(autoguidance(good, good, w).data_noise(x, t), good.data_noise(x, t)):
                np.testing.assert_array_equal(np.asarray(u), np.asarray(v))
        # affine in the output, and the pair stays consistent with x = alpha x0 + sigma eps
        w = 2.5
        x0g, eg = autoguidance(good, wide, w).data_noise(x, t)
        (x01, e1), (x00, e0) = good.data_noise(x, t), wide.data_noise(x, t)
        np.testing.assert_allclose(np.asarray(eg), np.asarray(e0 + w * (e1 - e0)), rtol=1e-13)
        np.testing.assert_allclose(np.asarray(x0g), np.asarray(x00 + w * (x01 - x00)), rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(np.asarray(sch.alpha(t) * x0g + sch.sigma(t) * eg), np.asarray(x), rtol=1e-12)
        # mixed prediction types go through (x0, eps): same numbers
        noise_good = good.as_prediction("noise")
        mixed = autoguidance(noise_good, wide, w)
        assert mixed.prediction == "data_noise"
        np.testing.assert_allclose(np.asarray(mixed.noise(x, t)), np.asarray(eg), rtol=1e-12)
        assert autoguidance(noise_good, wide.as_prediction("noise"), w).prediction == "noise"


def test_autoguidance_gaussian_closed_form_variance():
    """Good N(mu, diag s1^2), bad N(mu, diag s0^2): the guided PF-ODE (UniPC-3, 40 logSNR steps to
    t_min) is the closed-form linear map, and the sampled variance from the exact prior is
    (s1^2 + S^2) m^2 alpha_min^2 (chi-square test, p > 1e-3); a swapped (bad-good) mutant fails."""
    with jax.enable_x64(True):
        _, sch = _gmm()
        mu, s1, s0 = jnp.array([0.3, -0.2]), jnp.array([0.5, 1.0]), jnp.array([0.8, 1.5])
        good, bad = Gaussian(mu, s1).model(sch), Gaussian(mu, s0).model(sch)
        tmax, tmin = sch.t_max, sch.t_min
        a_T, a_0 = float(sch.alpha(tmax)), float(sch.alpha(tmin))
        S, S_min = float(sch.sigma(tmax)) / a_T, float(sch.sigma(tmin)) / a_0
        grid = sx.time_grid(sch, 40, "logsnr", end="t_min", dtype=jnp.float64)
        solver = sx.get_solver("unipc", order=3)
        n = 4000
        x_T = a_T * mu + jnp.sqrt(a_T**2 * s1**2 + float(sch.sigma(tmax)) ** 2) * jax.random.normal(
            jax.random.PRNGKey(3), (n, 2), jnp.float64)
        run = jax.jit(lambda m: sx.sample(solver, m, x_T, grid)[0])
        for w in (1.0, 2.0, 3.0):
            m = autoguidance_gaussian_gain(s1, s0, w, S, S_min)
            x0 = run(autoguidance(good, bad, w))
            exact = a_0 * (mu + m * (x_T / a_T - mu))
            rel = np.max(np.abs(np.asarray(x0 - exact)) / np.abs(np.asarray(exact - a_0 * mu)))
            assert rel < 2e-3, (w, rel)
            var_exact = a_0**2 * m**2 * (s1**2 + S**2)
            stat = (n - 1) * np.var(np.asarray(x0), axis=0, ddof=1) / var_exact
            p = jax.scipy.stats.chi2.cdf(stat, n - 1)
            assert np.all((p > 5e-4) & (p < 1 - 5e-4)), (w, stat)
            if w == 2.0:  # w > 1 with a wider bad model narrows the samples below the good model's
                assert np.all(var_exact < a_0**2 * s1**2)
                mut = run(autoguidance(good, bad, 1 - w))  # = autoguidance(bad, good, w): the roles swapped
                assert np.max(np.abs(np.asarray(mut - exact)) / np.abs(np.asarray(exact - a_0 * mu))) > 0.1
        # as S -> infinity the variance is the geometric interpolation s1^(2w) s0^(2(1-w))
        big = 1e6
        np.testing.assert_allclose(autoguidance_gaussian_gain(s1, s0, 2.0, big) ** 2 * big**2,
                                   np.asarray(s1**4 / s0**2), rtol=1e-6)


def test_autoguidance_bad_options():
    with jax.enable_x64(True):
        gmm, sch = _gmm()
        good = gmm.model(sch)
        for bad in (float("nan"), float("inf"), [1.0, 2.0]):
            with pytest.raises(ValueError, match="scale"):
                autoguidance(good, good, bad)
        with pytest.raises(ValueError, match="bad"):
            autoguidance(good, gmm, 2.0)
        with pytest.raises(ValueError, match="schedule"):
            autoguidance(good, gmm.model(sx.get_schedule("vp_cosine")), 2.0)
