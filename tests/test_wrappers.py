"""Guidance and thresholding wrappers, checked against the exact
label-conditional Gaussian mixture and against numpy re-implementations of
their defining formulas."""
import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import samplax as sx
from samplax.models import GaussianMixture, classifier_free_guidance, dynamic_thresholding, static_clipping
from samplax.schedules import VPLinear
from helpers import assert_rel, max_rel

B = 32


_max_rel, _assert_rel = max_rel, assert_rel


def _setup(t=0.3, per_sample_t=False):
    """gmm2d (float64; call inside enable_x64), its schedule, points x drawn
    from the marginal at t, and one label per sample."""
    gmm, schedule, _ = sx.load_problem("gmm2d", dtype=jnp.float64)
    if per_sample_t:
        t = jnp.asarray(np.linspace(0.05, 0.9, B))
    x = gmm.sample(jax.random.PRNGKey(0), B, t, schedule)
    labels = jnp.arange(B) % gmm.means.shape[0]
    return gmm, schedule, x, t, labels


# --- classifier-free guidance ------------------------------------------------------

@pytest.mark.parametrize("per_sample_t", [False, True], ids=["scalar_t", "per_sample_t"])
def test_cfg_scale_one_is_conditional_and_zero_unconditional(per_sample_t):
    with jax.enable_x64(True):
        gmm, schedule, x, t, labels = _setup(per_sample_t=per_sample_t)
        fn = gmm.conditional_apply(schedule)
        cond_model = gmm.model(schedule, label=labels)
        uncond_model = gmm.model(schedule)

        def guided(scale):
            return classifier_free_guidance(fn, gmm, schedule, "data_noise", labels, -1, scale)

        # u + 1 (c - u) is c up to one rounding; u + 0 (c - u) is u
        chex.assert_trees_all_close(guided(1.0).data_noise(x, t), cond_model.data_noise(x, t), rtol=1e-13, atol=1e-14)
        chex.assert_trees_all_close(guided(0.0).data_noise(x, t), uncond_model.data_noise(x, t), rtol=1e-15, atol=0)
        # the conditional and unconditional models really differ here
        assert _max_rel(cond_model.noise(x, t), uncond_model.noise(x, t)) > 1e-2


@pytest.mark.parametrize("scale", [-0.5, 2.5, 7.5])
def test_cfg_is_affine_combination_of_two_calls(scale):
    with jax.enable_x64(True):
        gmm, schedule, x, t, labels = _setup()
        fn = gmm.conditional_apply(schedule)
        x0_c, eps_c = fn(gmm, x, t, labels)
        x0_u, eps_u = fn(gmm, x, t, jnp.full((B,), -1))
        g = classifier_free_guidance(fn, gmm, schedule, "data_noise", labels, -1, scale)
        x0_g, eps_g = g.data_noise(x, t)
        _assert_rel(eps_g, eps_u + scale * (eps_c - eps_u), 1e-13)
        _assert_rel(x0_g, x0_u + scale * (x0_c - x0_u), 1e-13)
        # guiding eps and guiding x0 are the same thing: the pair still satisfies x = alpha x0 + sigma eps
        a, s = schedule.alpha(t), schedule.sigma(t)
        _assert_rel(a * x0_g + s * eps_g, x, 1e-13)

        # a noise-prediction model guided in its native output gives the same eps, and x0 from it
        noise_fn = lambda p, x, t, c: fn(p, x, t, c)[1]  # noqa: E731
        gn = classifier_free_guidance(noise_fn, gmm, schedule, "noise", labels, -1, scale)
        _assert_rel(gn.noise(x, t), eps_g, 1e-13)
        _assert_rel(gn.data(x, t), x0_g, 1e-12)


def test_cfg_scalar_condition_and_vmapped_scale():
    with jax.enable_x64(True):
        gmm, schedule, x, t, _ = _setup()
        fn = gmm.conditional_apply(schedule)
        # a scalar condition is broadcast to the batch
        g = classifier_free_guidance(fn, gmm, schedule, "data_noise", 3, -1, 1.0)
        _assert_rel(g.data_noise(x, t), gmm.model(schedule, label=3).data_noise(x, t), 1e-14)
        # the scale lives in params, so a batch of scales is one vmap
        scales = jnp.array([0.0, 1.0, 3.0])
        g = classifier_free_guidance(fn, gmm, schedule, "data_noise", 3, -1, 0.0)
        inner, c, null, _ = g.params
        eps_batch = jax.vmap(lambda w: g.apply((inner, c, null, w), x, t)[1])(scales)
        for i, w in enumerate(np.asarray(scales)):
            one = classifier_free_guidance(fn, gmm, schedule, "data_noise", 3, -1, w)
            _assert_rel(eps_batch[i], one.noise(x, t), 1e-14)


def test_cfg_rejects_unknown_prediction():
    gmm, schedule, _ = sx.load_problem("gmm2d")
    with pytest.raises(ValueError, match="unknown prediction"):
        classifier_free_guidance(gmm.conditional_apply(schedule), gmm, schedule, "x0", 0, -1, 2.0)


# --- thresholding -------------------------------------------------------------------

def _wide_model():
    """A 16-d mixture with means up to |3|, so that data predictions exceed 1."""
    rng = np.random.default_rng(0)
    means = rng.uniform(-3.0, 3.0, (4, 16))
    gmm = GaussianMixture.create([0.1, 0.2, 0.3, 0.4], means, [0.3, 0.5, 0.2, 0.4])
    schedule = VPLinear()
    t = 0.2
    x = gmm.sample(jax.random.PRNGKey(1), B, t, schedule)
    return gmm.model(schedule), schedule, x, t


def test_dynamic_thresholding_identity_at_p1_and_large_max_val():
    with jax.enable_x64(True):
        model, _, x, t = _wide_model()
        x0 = np.asarray(model.data(x, t))
        assert np.abs(x0).max() > 1.0
        out = dynamic_thresholding(model, percentile=1.0, max_val=float(np.abs(x0).max()) * 1.01)
        assert out.prediction == "data"
        np.testing.assert_array_equal(np.asarray(out.data(x, t)), x0)


@pytest.mark.parametrize("percentile, max_val", [(1.0, 0.5), (0.9, 1.0), (0.6, 0.8)])
def test_dynamic_thresholding_formula(percentile, max_val):
    with jax.enable_x64(True):
        model, schedule, x, t = _wide_model()
        x0 = np.asarray(model.data(x, t))
        wrapped = dynamic_thresholding(model, percentile=percentile, max_val=max_val)
        out = np.asarray(wrapped.data(x, t))
        # s = max(quantile_p |x0|, max_val) per sample; x0 <- clip(x0, -s, s) max_val / s
        s = np.maximum(np.quantile(np.abs(x0), percentile, axis=1), max_val)[:, None]
        assert np.all(s > max_val)  # every sample is thresholded at these settings
        np.testing.assert_allclose(out, np.clip(x0, -s, s) * max_val / s, rtol=1e-14, atol=0)
        assert np.abs(out).max() <= max_val * (1 + 1e-15)
        # entries below the threshold are scaled by max_val / s, the rest land on +-max_val
        inside = np.abs(x0) <= s
        np.testing.assert_allclose(out[inside], (x0 * max_val / s)[inside], rtol=1e-14)
        np.testing.assert_allclose(out[~inside], np.sign(x0[~inside]) * max_val, rtol=1e-14)
        if percentile == 1.0:
            assert inside.all()
        # the other views are consistent with the thresholded data prediction
        a, sg = float(schedule.alpha(t)), float(schedule.sigma(t))
        np.testing.assert_allclose(np.asarray(wrapped.noise(x, t)), (np.asarray(x) - a * out) / sg, rtol=1e-12)


def test_static_clipping():
    with jax.enable_x64(True):
        model, _, x, t = _wide_model()
        x0 = np.asarray(model.data(x, t))
        c = 0.7
        out = np.asarray(static_clipping(model, bound=c).data(x, t))
        inside = np.abs(x0) <= c
        assert inside.any() and (~inside).any()
        assert np.abs(out).max() <= c
        np.testing.assert_array_equal(out[inside], x0[inside])
        np.testing.assert_array_equal(out[~inside], np.sign(x0[~inside]) * c)
        # a bound above every |x0| changes nothing
        big = static_clipping(model, bound=float(np.abs(x0).max()) + 1.0)
        np.testing.assert_array_equal(np.asarray(big.data(x, t)), x0)


@pytest.mark.parametrize("kwargs, match", [
    (dict(percentile=0.0), "percentile"),
    (dict(percentile=-0.1), "percentile"),
    (dict(percentile=1.5), "percentile"),
    (dict(percentile=float("nan")), "percentile"),
    (dict(max_val=0.0), "max_val"),
    (dict(max_val=-1.0), "max_val"),
    (dict(max_val=float("nan")), "max_val"),
])
def test_dynamic_thresholding_rejects_bad_arguments(kwargs, match):
    model = sx.load_problem("gmm2d")[0].model(VPLinear())
    with pytest.raises(ValueError, match=match):
        dynamic_thresholding(model, **kwargs)


@pytest.mark.parametrize("bound", [0.0, -2.0, float("nan")])
def test_static_clipping_rejects_bad_bound(bound):
    model = sx.load_problem("gmm2d")[0].model(VPLinear())
    with pytest.raises(ValueError, match="bound"):
        static_clipping(model, bound=bound)
