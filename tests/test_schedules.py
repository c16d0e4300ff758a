"""Noise schedules: exact inverses, monotone log-SNR, closed-form values,
the discrete table reproduced at its nodes, dtype propagation and float32
accuracy against float64."""
import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from samplax.schedules import (EDM, SCHEDULES, VE, FlowLinear, VPCosine, VPDiscrete, VPLinear,
                               get_schedule)

FAMILIES = SCHEDULES  # name -> default constructor
VP_FAMILIES = ("vp_linear", "vp_cosine", "vp_discrete")
EPS32 = float(np.finfo(np.float32).eps)


QUANTITIES = ("log_alpha", "log_sigma", "alpha", "sigma", "lambda_", "sigma_tilde")


def _evaluate(sch, t):
    """Every schedule quantity at t (one jitted call: one compile instead of one
    per primitive in eager mode), as float64 numpy."""
    out = jax.jit(lambda t: {q: getattr(sch, q)(t) for q in QUANTITIES})(t)
    return {q: np.asarray(v, np.float64) for q, v in out.items()}


def _round_trip(sch):
    return jax.jit(lambda t: sch.t_from_lambda(sch.lambda_(t)))


def _times(schedule, n=400):
    """Times across [t_min, t_max]: uniform, plus log-spaced near t_min (where
    lambda is largest and the VP forms are most delicate)."""
    lo, hi = schedule.t_min, schedule.t_max
    lo_pos = lo if lo > 0 else 1e-3
    return np.sort(np.concatenate([np.linspace(lo, hi, n), np.geomspace(lo_pos, hi, n)]))


def _rel_err(r, t, floor=1e-3):
    """Relative error in t, measured on the scale max(|t|, floor)."""
    r, t = np.asarray(r, np.float64), np.asarray(t, np.float64)
    return np.abs(r - t) / np.maximum(np.abs(t), floor)


def _floor(name):
    # VE's t is affine in lambda with offset -log(sigma_min): near t = 0 (a valid
    # time) a float32 lambda pins t down only on the scale of the unit interval.
    # Every other family is measured relative to t itself (t_min >= 1e-3).
    return 1.0 if name == "ve" else 1e-3


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_t_from_lambda_round_trip_float32(name):
    sch = FAMILIES[name]()
    t = jnp.asarray(_times(sch, 10000), jnp.float32)
    back = _round_trip(sch)(t)
    assert back.dtype == jnp.float32
    err = _rel_err(back, t, _floor(name))
    assert err.max() <= 1e-6, (name, err.max(), float(t[np.argmax(err)]))


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_t_from_lambda_round_trip_float64(name):
    sch = FAMILIES[name]()
    with jax.enable_x64(True):
        t = jnp.asarray(_times(sch), jnp.float64)
        back = _round_trip(sch)(t)
        assert back.dtype == jnp.float64
        err = _rel_err(back, t, _floor(name))
    assert err.max() <= 1e-12, (name, err.max(), float(t[np.argmax(err)]))
    # and the other way round: lambda(t_from_lambda(lam)) on a lambda grid
    with jax.enable_x64(True):
        lam_grid = jnp.linspace(sch.lambda_(sch.t_max), sch.lambda_(sch.t_min), 301)
        lam_back = jax.jit(lambda lam: sch.lambda_(sch.t_from_lambda(lam)))(lam_grid)
        np.testing.assert_allclose(np.asarray(lam_back), np.asarray(lam_grid), rtol=0, atol=1e-11)


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_sigma_tilde_is_exp_minus_lambda_and_inverts(name):
    sch = FAMILIES[name]()
    with jax.enable_x64(True):
        t = jnp.asarray(_times(sch, 100), jnp.float64)
        v = _evaluate(sch, t)
        np.testing.assert_allclose(v["sigma_tilde"], np.exp(-v["lambda_"]), rtol=1e-13)
        np.testing.assert_allclose(v["sigma_tilde"], v["sigma"] / v["alpha"], rtol=1e-13)
        np.testing.assert_allclose(v["lambda_"], v["log_alpha"] - v["log_sigma"], rtol=1e-13, atol=1e-13)
        back = jax.jit(sch.t_from_sigma_tilde)(jnp.asarray(v["sigma_tilde"]))
        assert _rel_err(back, t).max() <= 1e-12


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_lambda_strictly_decreasing(name):
    sch = FAMILIES[name]()
    with jax.enable_x64(True):
        t = np.linspace(sch.t_min, sch.t_max, 20001)
        lam = np.asarray(jax.jit(sch.lambda_)(jnp.asarray(t)))
        assert np.all(np.isfinite(lam))
        assert np.all(np.diff(lam) < 0)
        # the inverse is decreasing too
        lam_grid = np.linspace(lam[-1], lam[0], 20001)
        assert np.all(np.diff(np.asarray(jax.jit(sch.t_from_lambda)(jnp.asarray(lam_grid)))) < 0)


@pytest.mark.parametrize("name", VP_FAMILIES)
def test_vp_alpha_sigma_on_unit_circle(name):
    sch = FAMILIES[name]()
    with jax.enable_x64(True):
        v = _evaluate(sch, jnp.asarray(_times(sch)))
    np.testing.assert_allclose(v["alpha"] ** 2 + v["sigma"] ** 2, 1.0, rtol=0, atol=1e-14)
    # alpha^2 = sigmoid(2 lambda): the log-SNR is log(alpha / sigma) for a VP schedule
    np.testing.assert_allclose(v["alpha"] ** 2, 1.0 / (1.0 + np.exp(-2.0 * v["lambda_"])), rtol=1e-13)


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_lambda_float32_matches_float64(name):
    """Float32 schedule maths is as accurate as the float32 rounding of its
    O(1)-sized intermediates allows: a few ulps of max(1, |lambda|).  (A
    log(cos th) - log(cos th0) form of the cosine schedule was 3e-4 off.)"""
    sch = FAMILIES[name]()
    t32 = jnp.asarray(_times(sch), jnp.float32)
    v32 = _evaluate(sch, t32)
    with jax.enable_x64(True):
        v64 = _evaluate(sch, jnp.asarray(np.asarray(t32, np.float64)))
    scale = max(1.0, np.abs(v64["lambda_"]).max(), np.abs(v64["log_sigma"]).max())
    for q in ("log_alpha", "log_sigma", "lambda_"):
        err = np.abs(v32[q] - v64[q]).max()
        assert err <= 8 * EPS32 * scale, (name, q, err)


def test_vp_linear_closed_form():
    sch = VPLinear(beta_min=0.1, beta_max=20.0)
    with jax.enable_x64(True):
        assert float(sch.log_alpha(0.0)) == 0.0
        # log alpha(1) = -(beta_max - beta_min) / 4 - beta_min / 2
        assert float(sch.log_alpha(1.0)) == pytest.approx(-(20.0 - 0.1) / 4 - 0.1 / 2, rel=1e-15)
        # d log alpha / dt = -beta(t) / 2 with beta(t) = beta_min + t (beta_max - beta_min)
        t = jnp.linspace(0.0, 1.0, 11)
        dla = jax.vmap(jax.grad(sch.log_alpha))(t)
        np.testing.assert_allclose(np.asarray(dla), -0.5 * (0.1 + np.asarray(t) * 19.9), rtol=1e-14)


def test_vp_cosine_closed_form():
    sch = VPCosine(s=0.008)
    with jax.enable_x64(True):
        t = np.linspace(0.0, 0.999, 1000)
        expected = np.cos(np.pi / 2 * (t + 0.008) / 1.008) / np.cos(np.pi / 2 * 0.008 / 1.008)
        np.testing.assert_allclose(np.asarray(sch.alpha(jnp.asarray(t))), expected, rtol=1e-11)
        assert float(sch.alpha(0.0)) == 1.0
        assert float(sch.sigma(0.0)) == 0.0


def test_ve_closed_form():
    sch = VE(sigma_min=0.01, sigma_max=50.0)
    with jax.enable_x64(True):
        assert float(sch.sigma(0.0)) == pytest.approx(0.01, rel=1e-15)
        assert float(sch.sigma(1.0)) == pytest.approx(50.0, rel=1e-14)
        t = jnp.linspace(0.0, 1.0, 11)
        np.testing.assert_array_equal(np.asarray(sch.alpha(t)), 1.0)
        # geometric: sigma(t) = sigma_min (sigma_max / sigma_min)^t
        np.testing.assert_allclose(np.asarray(sch.sigma(t)), 0.01 * 5000.0 ** np.asarray(t), rtol=1e-14)


def test_edm_closed_form():
    sch = EDM(sigma_min=0.002, sigma_max=80.0)
    assert (sch.t_min, sch.t_max) == (0.002, 80.0)
    with jax.enable_x64(True):
        t = jnp.geomspace(0.002, 80.0, 17)
        np.testing.assert_allclose(np.asarray(sch.sigma(t)), np.asarray(t), rtol=1e-15)
        np.testing.assert_array_equal(np.asarray(sch.alpha(t)), 1.0)
        np.testing.assert_allclose(np.asarray(sch.lambda_(t)), -np.log(np.asarray(t)), rtol=1e-15)


def test_flow_closed_form():
    sch = FlowLinear()
    with jax.enable_x64(True):
        t = jnp.linspace(0.001, 0.999, 17)
        np.testing.assert_allclose(np.asarray(sch.alpha(t)), 1.0 - np.asarray(t), rtol=1e-15)
        np.testing.assert_allclose(np.asarray(sch.sigma(t)), np.asarray(t), rtol=1e-15)
        assert float(sch.t_from_lambda(0.0)) == 0.5  # alpha = sigma at t = 1/2


# --- the discrete table ---------------------------------------------------------

def _betas_random(n=50, seed=0):
    return np.random.default_rng(seed).uniform(1e-3, 0.2, n)


@pytest.mark.parametrize("betas", [np.linspace(1e-4, 2e-2, 1000), _betas_random()], ids=["ddpm_linear", "random50"])
def test_vp_discrete_reproduces_table_at_nodes(betas):
    sch = VPDiscrete.from_betas(betas)
    n = betas.size
    alphas_cumprod = np.cumprod(1.0 - betas)
    with jax.enable_x64(True):
        idx = np.arange(n)
        t_nodes = np.asarray(sch.t_from_index(idx))
        np.testing.assert_allclose(t_nodes, (idx + 1) / n, rtol=1e-15)
        np.testing.assert_allclose(np.asarray(sch.index_from_t(jnp.asarray(t_nodes))), idx, atol=1e-9)
        v = _evaluate(sch, jnp.asarray(t_nodes))
        np.testing.assert_allclose(v["alpha"] ** 2, alphas_cumprod, rtol=1e-12)
        np.testing.assert_allclose(v["sigma"] ** 2, 1 - alphas_cumprod, rtol=1e-12)
        # the inverse hits the nodes exactly too
        lam_nodes = 0.5 * np.log(alphas_cumprod / (1 - alphas_cumprod))
        np.testing.assert_allclose(np.asarray(jax.jit(sch.t_from_lambda)(jnp.asarray(lam_nodes))), t_nodes, rtol=1e-12)
    assert sch.t_min == 1.0 / n and sch.t_max == 1.0


def test_vp_discrete_linear_is_ddpm_table():
    a = VPDiscrete.linear()
    b = VPDiscrete.from_betas(np.linspace(1e-4, 2e-2, 1000))
    assert a.log_alpha_table == b.log_alpha_table
    assert a.num_train_timesteps == 1000


def test_vp_discrete_piecewise_linear_in_log_alpha():
    betas = _betas_random(40, seed=1)
    sch = VPDiscrete.from_betas(betas)
    n = betas.size
    la_nodes = 0.5 * np.cumsum(np.log1p(-betas))
    rng = np.random.default_rng(2)
    i = rng.integers(0, n - 1, 64)
    f = rng.uniform(0, 1, 64)
    with jax.enable_x64(True):
        t = (i + 1 + f) / n
        got = np.asarray(jax.jit(sch.log_alpha)(jnp.asarray(t)))
        np.testing.assert_allclose(got, (1 - f) * la_nodes[i] + f * la_nodes[i + 1], rtol=1e-12)
        # so d log alpha / dt is constant on each segment: N (la[i+1] - la[i])
        slope = np.asarray(jax.jit(jax.vmap(jax.grad(sch.log_alpha)))(jnp.asarray(t)))
        np.testing.assert_allclose(slope, n * (la_nodes[i + 1] - la_nodes[i]), rtol=1e-9)


@pytest.mark.parametrize("bad", [
    np.array([0.1]),                       # too short
    np.full((3, 3), 0.1),                  # not 1-D
    np.array([0.1, 0.0, 0.2]),             # beta = 0
    np.array([0.1, 1.0, 0.2]),             # beta = 1
    np.array([0.1, -0.1, 0.2]),            # negative
    np.array([0.1, 1.5]),                  # > 1
    np.array([0.1, np.nan, 0.2]),          # nan
])
def test_vp_discrete_rejects_bad_betas(bad):
    with pytest.raises(ValueError, match="VPDiscrete.from_betas"):
        VPDiscrete.from_betas(bad)


# --- dtype and registry ------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_dtype_follows_input(name):
    sch = FAMILIES[name]()
    t = 0.5 * (sch.t_min + sch.t_max)
    fns = ("log_alpha", "log_sigma", "alpha", "sigma", "lambda_", "sigma_tilde", "t_from_lambda")
    every = jax.jit(lambda t: [getattr(sch, f)(t) for f in fns])
    out = every(jnp.full((3,), t, jnp.float32))
    chex.assert_type(out, jnp.float32)
    chex.assert_shape(out, (3,))
    with jax.enable_x64(True):
        chex.assert_type(every(jnp.full((3,), t, jnp.float64)), jnp.float64)
        # and float64 really carries float64 precision (not a float32 computation upcast)
        lam = float(sch.lambda_(jnp.float64(t)))
        assert _rel_err(sch.t_from_lambda(jnp.float64(lam)), t) <= 1e-13


def test_get_schedule_builds_each_family():
    expected = {"vp_linear": VPLinear, "vp_cosine": VPCosine, "vp_discrete": VPDiscrete, "ve": VE, "edm": EDM,
                "flow": FlowLinear}
    assert sorted(SCHEDULES) == sorted(expected)
    for name, cls in expected.items():
        sch = get_schedule(name)
        assert type(sch) is cls and sch.kind == name
    assert get_schedule("ve", sigma_max=80.0).sigma_max == 80.0


def test_get_schedule_rejects_unknown_name():
    with pytest.raises(ValueError) as exc:
        get_schedule("vp_quadratic")
    msg = str(exc.value)
    assert "vp_quadratic" in msg
    for name in SCHEDULES:
        assert name in msg


def test_ve_lambda_log_sigma_relation():
    # alpha = 1 families: lambda = -log sigma exactly.
    for sch in (VE(), EDM()):
        with jax.enable_x64(True):
            t = jnp.linspace(sch.t_min, sch.t_max, 9)
            np.testing.assert_allclose(np.asarray(sch.lambda_(t)), -np.log(np.asarray(sch.sigma(t))), rtol=1e-14,
                                       atol=1e-15)
    assert math.isinf(VE.t_zero)


def test_prior_std_is_one_for_vp_and_sigma_max_scale_for_ve_edm_flow():
    from samplax.schedules import EDM, VE, FlowLinear, VPCosine, VPDiscrete, VPLinear, prior_std

    for sch in (VPLinear(), VPCosine(), VPDiscrete.linear()):
        assert prior_std(sch) == 1.0  # exactly: VP runs draw x_T unchanged
    assert prior_std(EDM()) == pytest.approx((1 + 80.0**2) ** 0.5, rel=1e-6)
    assert prior_std(EDM(), 10.0) == pytest.approx((1 + 100.0) ** 0.5, rel=1e-6)
    ve = VE()
    assert prior_std(ve) == pytest.approx((1 + float(ve.sigma(ve.t_max)) ** 2) ** 0.5, rel=1e-6)
    assert prior_std(FlowLinear()) == pytest.approx((0.001**2 + 0.999**2) ** 0.5, rel=1e-6)
