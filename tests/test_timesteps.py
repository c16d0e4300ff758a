"""Time grids: each spacing's defining property, the three ways to end, the
diffusers integer spacings, and validation of explicit grids."""
import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from samplax.schedules import EDM, VE, FlowLinear, VPCosine, VPDiscrete, VPLinear
from samplax.timesteps import ENDS, SPACINGS, time_grid

SCHEDULES = {
    "vp_discrete": VPDiscrete.linear,
    "vp_linear": VPLinear,
    "vp_cosine": VPCosine,
    "ve": VE,
    "edm": EDM,
    "flow": FlowLinear,
}
CONTINUOUS_SPACINGS = ("time_uniform", "time_quadratic", "logsnr", "karras", "log_sigma")
RHO = 7.0


def _grid64(schedule, n_steps, spacing, end, **kw):
    with jax.enable_x64(True):
        g = time_grid(schedule, n_steps, spacing, end=end, dtype=jnp.float64, **kw)
        return {k: np.asarray(getattr(g, k)) for k in ("t", "alpha", "sigma", "lam")}, g


def _spaced_quantity(spacing, schedule, t):
    """The quantity that the spacing makes uniform across the nodes, as a
    function of time (float64, evaluated independently of timesteps.py)."""
    with jax.enable_x64(True):
        t = jnp.asarray(t, jnp.float64)
        if spacing == "time_uniform":
            q = t
        elif spacing == "time_quadratic":
            q = jnp.sqrt(t)
        elif spacing == "logsnr":
            q = schedule.lambda_(t)
        elif spacing == "karras":
            q = (schedule.sigma(t) / schedule.alpha(t)) ** (1.0 / RHO)
        else:  # log_sigma
            q = jnp.log(schedule.sigma(t))
        return np.asarray(q)


@pytest.mark.parametrize("spacing", CONTINUOUS_SPACINGS)
@pytest.mark.parametrize("sched", sorted(SCHEDULES))
def test_spacing_defining_property(sched, spacing):
    schedule = SCHEDULES[sched]()
    n = 10
    v, g = _grid64(schedule, n, spacing, "t_min", rho=RHO)
    t = v["t"]
    assert t.shape == (n + 1,) and g.n_steps == n
    q = _spaced_quantity(spacing, schedule, t)
    dq = np.diff(q)
    # constant increments: every step equals (q(t_min) - q(t_max)) / n
    step = (q[-1] - q[0]) / n
    np.testing.assert_allclose(dq, step, rtol=1e-6, atol=0)
    # ends exactly where asked
    assert t[0] == schedule.t_max and t[-1] == schedule.t_min
    assert np.all(np.diff(t) < 0)
    # the alpha / sigma / lambda columns are the schedule's at the nodes
    with jax.enable_x64(True):
        tt = jnp.asarray(t)
        np.testing.assert_allclose(v["alpha"], np.asarray(schedule.alpha(tt)), rtol=1e-14)
        np.testing.assert_allclose(v["sigma"], np.asarray(schedule.sigma(tt)), rtol=1e-14)
        np.testing.assert_allclose(v["lam"], np.asarray(schedule.lambda_(tt)), rtol=1e-14, atol=1e-14)


def test_karras_on_edm_is_the_karras_formula():
    # Karras et al. 2022, Eq. 5: sigma_i = (smax^(1/rho) + i/(n-1) (smin^(1/rho) - smax^(1/rho)))^rho
    sch = EDM(sigma_min=0.002, sigma_max=80.0)
    n = 10
    v, _ = _grid64(sch, n, "karras", "zero", rho=RHO)
    i = np.arange(n)
    expected = (80.0 ** (1 / RHO) + i / (n - 1) * (0.002 ** (1 / RHO) - 80.0 ** (1 / RHO))) ** RHO
    np.testing.assert_allclose(v["t"][:-1], expected, rtol=1e-12)
    np.testing.assert_allclose(v["sigma"][:-1], expected, rtol=1e-12)
    assert v["t"][-1] == 0.0 and v["sigma"][-1] == 0.0


def test_log_sigma_equals_logsnr_when_alpha_is_one():
    for sch in (VE(), EDM()):
        a, _ = _grid64(sch, 10, "log_sigma", "t_min")
        b, _ = _grid64(sch, 10, "logsnr", "t_min")
        np.testing.assert_allclose(a["t"], b["t"], rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("spacing", CONTINUOUS_SPACINGS)
@pytest.mark.parametrize("end", ENDS)
def test_ends(spacing, end):
    sch = VPDiscrete.linear()
    n = 10
    v, g = _grid64(sch, n, spacing, end)
    t = v["t"]
    assert g.end == end and g.n_steps == n and t.shape == (n + 1,)
    assert g.ends_at_zero == (end == "zero") and g.denoise == (end == "denoise")
    assert np.all(np.diff(t) < 0)
    assert t[0] == sch.t_max
    if end == "zero":
        # n nodes from t_max to t_min, then sigma = 0: n steps, the last a pure denoise
        assert t[-2] == sch.t_min
        assert t[-1] == sch.t_zero
        assert v["sigma"][-1] == 0.0 and v["alpha"][-1] == 1.0 and v["lam"][-1] == np.inf
        assert np.all(v["sigma"][:-1] > 0) and np.all(np.isfinite(v["lam"][:-1]))
        # the spacing is over those n nodes
        q = _spaced_quantity(spacing, sch, t[:-1])
        np.testing.assert_allclose(np.diff(q), (q[-1] - q[0]) / (n - 1), rtol=1e-6)
    else:
        assert t[-1] == sch.t_min
        assert np.all(v["sigma"] > 0)


def test_zero_end_on_alpha_one_schedules():
    for sch in (VE(), EDM(), FlowLinear()):
        v, _ = _grid64(sch, 10, "logsnr", "zero")
        assert v["t"][-1] == sch.t_zero and v["sigma"][-1] == 0.0 and v["alpha"][-1] == 1.0
        assert np.all(np.diff(v["t"]) < 0) and np.all(np.diff(v["lam"]) > 0)


def test_single_step_zero_grid_is_one_denoise():
    sch = VPLinear()
    v, g = _grid64(sch, 1, "logsnr", "zero")
    np.testing.assert_array_equal(v["t"], [sch.t_max, 0.0])
    assert g.n_steps == 1 and v["sigma"][-1] == 0.0


# --- diffusers integer spacings --------------------------------------------------

N_TRAIN = 1000


def _diffusers_indices(spacing, n):
    """Training indices diffusers' schedulers use for n inference steps (N = 1000)."""
    if spacing == "linspace":
        return np.round(np.linspace(0, N_TRAIN - 1, n))[::-1]
    if spacing == "leading":
        return (np.arange(n) * (N_TRAIN // n))[::-1]
    return np.round(np.arange(N_TRAIN, 0, -N_TRAIN / n)) - 1  # trailing


def test_diffusers_index_lists_by_hand():
    # the three definitions written out for n = 10
    np.testing.assert_array_equal(_diffusers_indices("linspace", 10), [999, 888, 777, 666, 555, 444, 333, 222, 111, 0])
    np.testing.assert_array_equal(_diffusers_indices("leading", 10), [900, 800, 700, 600, 500, 400, 300, 200, 100, 0])
    np.testing.assert_array_equal(_diffusers_indices("trailing", 10), [999, 899, 799, 699, 599, 499, 399, 299, 199, 99])


@pytest.mark.parametrize("spacing", ["linspace", "leading", "trailing"])
@pytest.mark.parametrize("n", [10, 25])
def test_diffusers_spacings(spacing, n):
    sch = VPDiscrete.linear()
    idx = _diffusers_indices(spacing, n)
    expected_t = (idx + 1.0) / N_TRAIN
    # end="zero": n solver nodes at those indices, then sigma = 0 (DDIM's final alpha_prod = 1)
    v, g = _grid64(sch, n, spacing, "zero")
    assert g.n_steps == n
    np.testing.assert_allclose(v["t"][:-1], expected_t, rtol=1e-15)
    np.testing.assert_allclose(np.asarray(sch.index_from_t(v["t"][:-1])), idx, atol=1e-9)
    assert v["sigma"][-1] == 0.0
    # alpha at the nodes is the training table's: alphas_cumprod[idx]
    alphas_cumprod = np.cumprod(1.0 - np.linspace(1e-4, 2e-2, N_TRAIN))
    np.testing.assert_allclose(v["alpha"][:-1] ** 2, alphas_cumprod[idx.astype(int)], rtol=1e-12)
    # end="t_min" with n - 1 steps has the same n nodes
    w, _ = _grid64(sch, n - 1, spacing, "t_min")
    np.testing.assert_allclose(w["t"], expected_t, rtol=1e-15)


def test_diffusers_spacing_needs_discrete_schedule():
    with pytest.raises(ValueError, match="VPDiscrete"):
        time_grid(VPLinear(), 10, "trailing")


def test_diffusers_spacing_rejects_repeated_indices():
    # 2000 nodes on a 1000-entry table must repeat an index
    with pytest.raises(ValueError, match="repeats a training index"):
        time_grid(VPDiscrete.linear(), 2000, "linspace", end="zero")


# --- explicit times and validation ----------------------------------------------

def test_explicit_times_are_used_as_nodes():
    sch = VPLinear()
    times = [1.0, 0.6, 0.3, 0.1, 0.001]
    v, g = _grid64(sch, 0, "ignored", "zero", times=times)
    np.testing.assert_array_equal(v["t"][:-1], times)
    assert g.n_steps == len(times) and v["sigma"][-1] == 0.0
    v, g = _grid64(sch, 0, "ignored", "denoise", times=times)
    np.testing.assert_array_equal(v["t"], times)
    assert g.n_steps == len(times) - 1 and g.denoise


@pytest.mark.parametrize("times, match", [
    ([0.5, 0.7, 0.1], "strictly decreasing"),            # increasing step
    ([0.5, 0.5, 0.1], "strictly decreasing"),            # repeated node
    ([0.5, np.nan, 0.1], "finite"),                      # nan
    ([1.5, 0.5, 0.1], r"within \[t_min, t_max\]"),       # above t_max
    ([0.5, 0.1, 1e-5], r"within \[t_min, t_max\]"),      # below t_min
    ([[0.5, 0.1], [0.4, 0.05]], "1-D"),                  # not 1-D
    ([0.5], "at least 2"),                               # a single node
])
def test_explicit_times_validated(times, match):
    with pytest.raises(ValueError, match=match):
        time_grid(VPLinear(), 0, times=times)


def test_unknown_spacing_names_allowed_values():
    with pytest.raises(ValueError) as exc:
        time_grid(VPLinear(), 10, "cosine")
    msg = str(exc.value)
    assert "'cosine'" in msg and all(s in msg for s in SPACINGS)


def test_unknown_end_names_allowed_values():
    with pytest.raises(ValueError) as exc:
        time_grid(VPLinear(), 10, "logsnr", end="sigma_min")
    msg = str(exc.value)
    assert "'sigma_min'" in msg and all(e in msg for e in ENDS)


@pytest.mark.parametrize("n_steps", [0, -3, 2.5])
def test_bad_n_steps_rejected(n_steps):
    with pytest.raises(ValueError, match="n_steps"):
        time_grid(VPLinear(), n_steps, "logsnr")


def test_bad_interval_and_rho_rejected():
    with pytest.raises(ValueError, match="t_max > t_min"):
        time_grid(VPLinear(), 10, "logsnr", t_max=0.1, t_min=0.5)
    with pytest.raises(ValueError, match="rho"):
        time_grid(EDM(), 10, "karras", rho=0.0)


def test_custom_interval():
    sch = VPLinear()
    v, _ = _grid64(sch, 10, "logsnr", "t_min", t_max=0.8, t_min=0.05)
    assert v["t"][0] == 0.8 and v["t"][-1] == 0.05
    np.testing.assert_allclose(np.diff(v["lam"]), (v["lam"][-1] - v["lam"][0]) / 10, rtol=1e-9)


def test_float32_grid_default_dtype():
    g = time_grid(VPDiscrete.linear(), 10, "logsnr", end="zero")
    chex.assert_type([g.t, g.alpha, g.sigma, g.lam], jnp.float32)
    chex.assert_shape([g.t, g.alpha, g.sigma, g.lam], (11,))
    with jax.enable_x64(True):
        assert time_grid(VPDiscrete.linear(), 10, "logsnr", end="zero").t.dtype == jnp.float64
