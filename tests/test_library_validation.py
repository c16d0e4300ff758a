"""The library's own inputs are validated at call time with one error naming the
argument, and a solve reports what actually ran (per-step orders, safeguard) and
whether its grid is outside the solver's stable regime."""
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from samplax import timesteps
from samplax.metrics import projections, sliced_wasserstein2_host
from samplax.models import Gaussian, load_problem
from samplax.schedules import EDM, VE, VPLinear
from samplax.solvers import (MAX_NFE, SOLVERS, SolverOptionError, effective_orders, generate, get_solver, heun,
                             sample, stability_warning, step_orders, steps_for_nfe, unipc)
from samplax.solvers import multistep
from samplax.solvers.registry import solver_options
from samplax.solvers.singlestep import heun_gaussian_gain
from samplax.timesteps import grid_from_times, time_grid


@pytest.fixture(scope="module")
def gmm2d():
    gmm, schedule, _ = load_problem("gmm2d")
    return gmm, schedule, gmm.model(schedule)


# --- time_grid ---------------------------------------------------------------------

@pytest.mark.parametrize("kwargs, start, words", [
    (dict(t_max=2.0), "t_max: 2.0 is outside the schedule's time range [0.001, 1.0]", ["allowed", "<= 1.0"]),
    (dict(t_min=0.0), "t_min: 0.0 is outside", ["sigma = 0", "0.001 <= t_min < t_max"]),
    (dict(t_min=-0.5), "t_min: -0.5 is outside", ["allowed"]),
    (dict(t_min=1e-5), "t_min: 1e-05 is outside", ["[0.001, 1.0]"]),
    (dict(t_min=0.5, t_max=0.2), "t_min: 0.5 is not below t_max = 0.2", ["t_max > t_min", "allowed"]),
    (dict(t_min=0.5, t_max=0.5), "t_min: 0.5 is not below t_max = 0.5", ["allowed"]),
    (dict(t_max=float("nan")), "t_max: nan is not finite", ["allowed"]),
    (dict(t_min=float("inf")), "t_min: inf is not finite", ["allowed"]),
    (dict(t_max="1.0"), "t_max: '1.0' is not a real number", ["allowed"]),
    (dict(rho=float("inf")), "rho: inf is not finite", ["finite number > 0"]),
    (dict(rho=0.0), "rho: must be positive, got 0.0", ["finite number > 0"]),
    (dict(rho=-7.0), "rho: must be positive", []),
    (dict(rho="7"), "rho: '7' is not a real number", []),
    (dict(spacing="cosine"), "spacing: unknown spacing 'cosine'", ["logsnr", "karras"]),
    (dict(end="sigma_min"), "end: unknown end 'sigma_min'", ["zero", "denoise", "t_min"]),
    (dict(n_steps=2.0), "n_steps: must be a positive integer, got 2.0", ["integers >= 1"]),
    (dict(n_steps=True), "n_steps: must be a positive integer, got True", []),
    (dict(n_steps=0), "n_steps: must be a positive integer, got 0", []),
    (dict(spacing="trailing"), "spacing: 'trailing' needs a discrete schedule (VPDiscrete)", ["allowed"]),
])
def test_time_grid_rejects_bad_arguments(kwargs, start, words):
    args = dict(n_steps=5, spacing="karras", end="zero")
    args.update(kwargs)
    with pytest.raises(ValueError) as err:
        time_grid(VPLinear(), **args)
    msg = str(err.value)
    assert msg.startswith(start), msg
    for w in words:
        assert w in msg, (msg, w)


def test_time_grid_accepts_the_range_ends_and_their_float32_copies():
    sch = VPLinear()
    g = time_grid(sch, 4, "logsnr", "t_min", t_max=float(jnp.float32(1.0)), t_min=float(jnp.float32(1e-3)))
    assert np.all(np.isfinite(np.asarray(g.lam)))
    # VE's own t_min is 0 (sigma = sigma_min there): allowed; below it is not
    g = time_grid(VE(), 4, "logsnr", "zero", t_min=0.0)
    assert np.all(np.isfinite(np.asarray(g.sigma)))
    with pytest.raises(ValueError, match=r"^t_min: -0.1 is outside the schedule's time range \[0.0, 1.0\]"):
        time_grid(VE(), 4, "logsnr", "zero", t_min=-0.1)
    with pytest.raises(ValueError, match=r"^t_max: 100.0 is outside the schedule's time range \[0.002, 80.0\]"):
        time_grid(EDM(), 4, "karras", t_max=100.0)
    # numpy scalars are numbers
    g = time_grid(sch, np.int64(3), "karras", t_max=np.float32(0.9), rho=np.float64(5.0))
    assert g.n_steps == 3


def test_time_range_check_skips_traced_values():
    """Searches may build grids under jit: a traced t_max / t_min is not checked (and
    does not break tracing), a concrete one is."""
    sch = VPLinear()
    jaxpr = jax.make_jaxpr(lambda v: (timesteps._check_interval(sch, v, sch.t_min), v * 2)[1])(5.0)
    assert jaxpr is not None
    with pytest.raises(ValueError, match="^t_max: 5.0"):
        timesteps._check_interval(sch, 5.0, sch.t_min)


# --- sample / generate ---------------------------------------------------------------

@pytest.mark.parametrize("x, err, start", [
    (jnp.zeros((4, 2), jnp.int32), TypeError, "x_T: dtype int32 is not a floating-point dtype"),
    (jnp.zeros((4, 2), bool), TypeError, "x_T: dtype bool is not a floating-point dtype"),
    (jnp.zeros((0, 2)), ValueError, "x_T: empty batch, shape (0, 2)"),
    (jnp.zeros((4, 0)), ValueError, "x_T: empty batch, shape (4, 0)"),
    (jnp.zeros((2,)), ValueError, "x_T: must have a leading batch axis"),
])
def test_sample_rejects_bad_x_T(gmm2d, x, err, start):
    _, schedule, model = gmm2d
    grid = time_grid(schedule, 4, "logsnr")
    with pytest.raises(err) as e:
        sample(get_solver("ddim"), model, x, grid)
    assert str(e.value).startswith(start), str(e.value)
    if err is TypeError:
        assert "allowed: float16, bfloat16, float32, float64" in str(e.value)


def test_sample_rejects_increasing_and_nan_grids(gmm2d):
    _, schedule, model = gmm2d
    x = jnp.zeros((4, 2))
    increasing = grid_from_times(schedule, jnp.array([0.1, 0.5, 1.0]), end="zero")
    with pytest.raises(ValueError, match=r"^grid: times must be strictly decreasing .*allowed"):
        sample(get_solver("ddim"), model, x, increasing)
    nan = grid_from_times(VPLinear(), jnp.array([1.0, 0.5, 0.0]), end="t_min")  # sigma(0) = 0: lambda = inf
    bad = nan.replace(lam=nan.lam.at[1].set(jnp.nan))
    with pytest.raises(ValueError, match=r"^grid: node 1 .*allowed: finite alpha > 0"):
        sample(get_solver("ddim"), model, x, bad)
    with pytest.raises(ValueError, match="^key: solver euler_maruyama is stochastic and needs a PRNG key"):
        sample(get_solver("euler_maruyama"), model, x, time_grid(schedule, 4, "logsnr"))


def test_sample_rejects_x_T_wider_than_the_grid(gmm2d):
    """float64 x_T on a float32 grid would silently get float32-accurate coefficients."""
    _, schedule, model = gmm2d
    grid32 = time_grid(schedule, 4, "logsnr")
    with jax.enable_x64(True):
        with pytest.raises(TypeError, match="^x_T: dtype float64 is wider than the grid's float32"):
            sample(get_solver("ddim"), model, jnp.zeros((3, 2), jnp.float64), grid32)
        # narrower x_T on a float64 grid is fine (the solve runs in x_T's dtype)
        grid64 = time_grid(schedule, 4, "logsnr", dtype=jnp.float64)
        out, _ = sample(get_solver("ddim"), model, jnp.ones((3, 2), jnp.float32), grid64)
        assert out.dtype == jnp.float32 and np.all(np.isfinite(np.asarray(out)))


@pytest.mark.filterwarnings("ignore:Explicitly requested dtype float64")
def test_sample_unchanged_for_good_inputs_and_traced_grids(gmm2d):
    _, schedule, model = gmm2d
    solver = get_solver("dpm_solver_pp")
    grid = time_grid(schedule, 5, "logsnr")
    x = np.random.default_rng(0).standard_normal((8, 2))
    a, _ = sample(solver, model, jnp.asarray(x, jnp.float32), grid)
    b, _ = sample(solver, model, x, grid)  # numpy float64 is float32 without x64
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    # a batch of grids under vmap is traced: not checked, still runs
    grids = jax.tree_util.tree_map(lambda u, v: jnp.stack([u, v]), grid, time_grid(schedule, 5, "karras"))
    out = jax.vmap(lambda g: sample(solver, model, jnp.asarray(x, jnp.float32), g)[0])(grids)
    np.testing.assert_allclose(np.asarray(out[0]), np.asarray(a), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("kwargs, err, start", [
    (dict(n=0), ValueError, "n: must be a positive integer"),
    (dict(n=4.0), ValueError, "n: must be a positive integer"),
    (dict(shape=(0,)), ValueError, "shape: must be a tuple of integers >= 1"),
    (dict(shape=(2.0,)), ValueError, "shape: must be a tuple of integers >= 1"),
    (dict(dtype=jnp.int32), TypeError, "dtype: int32 is not a floating-point dtype"),
    (dict(prior_std=0.0), ValueError, "prior_std: must be a finite number > 0"),
    (dict(prior_std=float("inf")), ValueError, "prior_std: must be a finite number > 0"),
    (dict(prior_std="1"), ValueError, "prior_std: must be a finite number > 0"),
])
def test_generate_rejects_bad_arguments(gmm2d, kwargs, err, start):
    _, schedule, model = gmm2d
    args = dict(n=4, shape=(2,))
    args.update(kwargs)
    with pytest.raises(err) as e:
        generate(get_solver("ddim"), model, time_grid(schedule, 3, "logsnr"), jax.random.PRNGKey(0), **args)
    assert str(e.value).startswith(start), str(e.value)


# --- steps_for_nfe ---------------------------------------------------------------------

def _search(solver, nfe, end):
    """The original search (n = 1 .. 2 nfe + 2), kept here as the reference."""
    possible = {}
    for n in range(1, 2 * nfe + 3):
        if n >= solver.min_steps:
            possible.setdefault(solver.nfe(n, end), n)
    if nfe not in possible:
        return "impossible", sorted(v for v in possible if v <= max(nfe * 2, 10))[:12]
    return possible[nfe]


def test_steps_for_nfe_identical_to_the_search():
    checked = 0
    for name in SOLVERS:
        variants = [{}, {"afs": True}]
        if "order" in solver_options(name):
            variants += [{"order": o} for o in (1, 2, 3, 4)]
        if name == "pc_langevin":
            variants += [{"n_corrector": 0}, {"n_corrector": 3}]
        for kw in variants:
            try:
                solver = get_solver(name, **kw)
            except ValueError:
                continue
            for end in ("zero", "denoise", "t_min"):
                for nfe in range(1, 41):
                    want = _search(solver, nfe, end)
                    if isinstance(want, tuple):
                        with pytest.raises(ValueError) as e:
                            steps_for_nfe(solver, nfe, end)
                        assert f"possible NFEs include {want[1]}" in str(e.value)
                    else:
                        assert steps_for_nfe(solver, nfe, end) == want, (name, kw, end, nfe)
                    checked += 1
    assert checked > 3000


def test_steps_for_nfe_is_bounded():
    t0 = time.perf_counter()
    with pytest.raises(ValueError, match=r"^nfe=1000000000 is above the maximum 100000 .*allowed: integers in"):
        steps_for_nfe(get_solver("dpm_solver_pp"), 10**9)
    assert steps_for_nfe(get_solver("ddim"), MAX_NFE) == MAX_NFE
    assert steps_for_nfe(get_solver("heun"), MAX_NFE - 1) == MAX_NFE // 2
    with pytest.raises(ValueError, match=r"^nfe=100000 is impossible for solver heun"):
        steps_for_nfe(get_solver("heun"), MAX_NFE)
    assert steps_for_nfe(get_solver("ddim"), np.int64(7)) == 7
    for bad in (True, 2.0, "5", 0):
        with pytest.raises(ValueError, match="^nfe must be a positive integer"):
            steps_for_nfe(get_solver("ddim"), bad)
    assert time.perf_counter() - t0 < 1.0


# --- solver option types ------------------------------------------------------------------

@pytest.mark.parametrize("name, options, start, allowed", [
    ("unipc", dict(corrector="no"), "corrector: 'no' (str) is not a bool", "a bool (True or False)"),
    ("unipc", dict(afs="false"), "afs: 'false' (str) is not a bool", "a bool"),
    ("heun", dict(afs=1), "afs: 1 (int) is not a bool", "a bool"),
    ("dpm_solver_pp", dict(lower_order_final="0"), "lower_order_final: '0' (str) is not a bool", "a bool"),
    ("dpm_solver_pp", dict(max_step_ratio="2.0"), "max_step_ratio: '2.0' (str) is not a real number",
     "a real number (int or float) or None"),
    ("dpm_solver_pp", dict(max_step=True), "max_step: True (bool) is not a real number", "or None"),
    ("ddim_eta", dict(eta="0.5"), "eta: '0.5' (str) is not a real number", "a real number"),
    ("pc_langevin", dict(snr="0.1"), "snr: '0.1' (str) is not a real number", "a real number"),
    ("ipndm", dict(order=2.5), "order: 2.5 (float) is not an integer", "an integer (int)"),
    ("dpm_solver", dict(order=2.0), "order: 2.0 (float) is not an integer", "an integer"),
    ("pc_langevin", dict(n_corrector=1.0), "n_corrector: 1.0 (float) is not an integer", "an integer"),
    ("unipc", dict(lower_order_final_below="10"), "lower_order_final_below: '10' (str) is not an integer",
     "an integer (int) or None"),
    ("unipc", dict(official_rhos="yes"), "official_rhos: 'yes' (str) is not a bool", "a bool (True or False) or None"),
    ("unipc", dict(variant="bh3"), "variant: 'bh3' (str) is not one of the choices", "one of ['bh1', 'bh2']"),
    ("unipc", dict(prediction=1), "prediction: 1 (int) is not one of the choices", "one of ['data', 'noise']"),
    ("ipndm_v", dict(coefficients="official"), "coefficients: 'official'", "one of ['exact', 'diff_sampler']"),
    ("dpm_solver_multistep", dict(solver_type="heun"), "solver_type: 'heun'", "one of ['dpmsolver', 'taylor']"),
])
def test_solver_options_are_type_checked(name, options, start, allowed):
    with pytest.raises(SolverOptionError) as e:
        get_solver(name, **options)
    msg = str(e.value)
    assert msg.startswith(start) and allowed in msg.split("; allowed: ")[1], msg
    assert isinstance(e.value, ValueError) and isinstance(e.value, TypeError)


def test_factories_check_options_when_called_directly():
    with pytest.raises(SolverOptionError, match="^corrector: 'no'"):
        unipc(corrector="no")
    with pytest.raises(SolverOptionError, match="^afs: 'false'"):
        heun(afs="false")


def test_correct_options_build_the_same_solver(gmm2d):
    """ints for floats, numpy scalars and None where allowed are accepted, with the same result."""
    _, schedule, model = gmm2d
    grid = time_grid(schedule, 6, "karras")
    x = jax.random.normal(jax.random.PRNGKey(0), (16, 2))
    a, _ = sample(get_solver("unipc", order=3, max_step_ratio=2.0, max_step=2.0, corrector=True), model, x, grid)
    b, _ = sample(get_solver("unipc", order=np.int64(3), max_step_ratio=2, max_step=np.float32(2.0),
                             corrector=np.True_, official_rhos=None, lower_order_final_below=None), model, x, grid)
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


# --- what ran: per-step orders ------------------------------------------------------------

def test_dpmpp_2m_at_nfe_5_on_logsnr_is_ddim(gmm2d):
    """DPM-Solver++(2M) at NFE 5 on gmm2d's logSNR grid: every logSNR step is
    h = 2.42 > SAFEGUARD_MAX_STEP = 2, so the safeguard lowers steps 1 and 2 to order 1;
    step 0 is the warm-up, step 3 (into t_min) lower-order-final, step 4 the jump to
    sigma = 0.  The solve is DDIM; without the max_step cap it is not."""
    _, schedule, model = gmm2d
    solver = get_solver("dpm_solver_pp", order=2)
    grid = time_grid(schedule, steps_for_nfe(solver, 5, "zero"), "logsnr", end="zero")
    so = step_orders(solver, grid)
    assert so.orders.tolist() == [1, 1, 1, 1, 1]
    assert so.nominal.tolist() == [1, 2, 2, 1, 1]
    assert so.safeguarded.tolist() == [False, True, True, False, False] and so.any_safeguarded
    assert so.reasons == ("warm-up", "safeguard", "safeguard", "lower-order-final", "jump to sigma=0")
    np.testing.assert_allclose(np.diff(np.asarray(grid.lam))[:4], 2.416, atol=1e-3)
    x = jax.random.normal(jax.random.PRNGKey(1), (64, 2))
    out, _ = sample(solver, model, x, grid)
    ddim, _ = sample(get_solver("ddim"), model, x, grid)
    np.testing.assert_allclose(np.asarray(out), np.asarray(ddim), rtol=0, atol=1e-6)
    uncapped = get_solver("dpm_solver_pp", order=2, max_step=None)
    assert effective_orders(uncapped, grid).tolist() == [1, 2, 2, 1, 1]
    out2, _ = sample(uncapped, model, x, grid)
    assert np.max(np.abs(np.asarray(out2) - np.asarray(ddim))) > 1e-2


# (solver factory and options, (its view, its coefficient function, lambda-based), spacing, n_steps)
AGREEMENT = [
    (("dpm_solver_pp", dict(order=2)), ("data", multistep._dpm_coeffs(True, "dpmsolver"), True), "logsnr", 5),
    (("dpm_solver_pp", dict(order=3)), ("data", multistep._dpm_coeffs(True, "dpmsolver"), True), "karras", 8),
    (("dpm_solver_multistep", dict(order=3)), ("noise", multistep._dpm_coeffs(False, "dpmsolver"), True),
     "time_uniform", 10),
    (("deis", dict(order=3)), ("noise", multistep._deis_tab_coeffs, False), "time_quadratic", 10),
    (("unipc", dict(order=3, corrector=False)), ("data", multistep._unipc_coeffs(True, "bh2", True)[0], True),
     "karras", 8),
    (("ipndm_v", dict(order=4, max_step_ratio=1.5)), ("noise", multistep._ipndm_v_coeffs, False), "time_uniform", 8),
]


@pytest.mark.parametrize("spec, coeffs, spacing, n", AGREEMENT, ids=[a[0][0] + str(a[3]) for a in AGREEMENT])
def test_effective_orders_agree_with_the_run(spec, coeffs, spacing, n):
    """Instrumented check, independent of the order logic: from sample()'s float64
    trajectory and the model outputs along it, step i's result is reproduced by the
    method's order-p formula for the reported p, and not by the other orders where
    they differ."""
    view, coeff_fn, lam_based = coeffs
    solver = get_solver(spec[0], **spec[1])
    with jax.enable_x64(True):
        gmm, schedule, _ = load_problem("gmm2d", dtype=jnp.float64)
        model = gmm.model(schedule)
        grid = time_grid(schedule, n, spacing, "zero", dtype=jnp.float64)
        x = jax.random.normal(jax.random.PRNGKey(2), (32, 2), jnp.float64)
        _, info = sample(solver, model, x, grid, return_trajectory=True)
        xs = [x] + list(info.trajectory)
        m = [model.view(view)(xs[j], grid.t[j]) for j in range(n)]
        orders = effective_orders(solver, grid)
        distinguished = 0
        for i in range(n):
            cands = {}
            # a lambda-based method's step into sigma = 0 only has its first-order form
            for q in ([1] if (lam_based and i == n - 1) else range(1, min(solver.min_steps, i + 1) + 1)):
                a, c = coeff_fn(grid, schedule, i, q)
                cands[q] = np.asarray(a * xs[i] + sum(cj * m[i - j] for j, cj in enumerate(c)))
            got = np.asarray(xs[i + 1])
            tol = 1e-9 * (1 + np.max(np.abs(got)))
            p = int(orders[i])
            assert np.max(np.abs(cands[p] - got)) <= tol, (i, p, {q: np.max(np.abs(v - got)) for q, v in cands.items()})
            for q, v in cands.items():
                if q != p and np.max(np.abs(v - cands[p])) > 1e-6:
                    assert np.max(np.abs(v - got)) > tol
                    distinguished += 1
    assert distinguished >= 1


def test_effective_orders_of_one_step_methods_and_grid_batches(gmm2d):
    _, schedule, _ = gmm2d
    grid = time_grid(schedule, 4, "logsnr", "zero")
    assert effective_orders(get_solver("heun"), grid).tolist() == [2, 2, 2, 1]
    assert effective_orders(get_solver("dpm_solver", order=3), grid).tolist() == [3, 3, 3, 1]
    assert effective_orders(get_solver("euler_maruyama"), grid).tolist() == [1, 1, 1, 1]
    grid_d = time_grid(schedule, 4, "logsnr", "denoise")
    assert effective_orders(get_solver("heun"), grid_d).tolist() == [2, 2, 2, 2]
    grids = jax.tree_util.tree_map(lambda u, v: jnp.stack([u, v]), time_grid(schedule, 6, "logsnr"),
                                   time_grid(schedule, 6, "time_quadratic"))
    batch = step_orders(get_solver("dpm_solver_pp", order=3), grids)
    assert batch.orders.shape == (2, 6)
    for k, sp in enumerate(("logsnr", "time_quadratic")):
        one = effective_orders(get_solver("dpm_solver_pp", order=3), time_grid(schedule, 6, sp))
        assert batch.orders[k].tolist() == one.tolist()


# --- stability warnings ------------------------------------------------------------------

def test_heun_gain_is_what_heun_does_on_gaussian_data():
    """The criterion's model is exact: Heun on N(0, s^2) data (the real solver) over the
    exact flow equals heun_gaussian_gain, step by step."""
    s = 0.5
    with jax.enable_x64(True):
        sch = VPLinear()
        g = Gaussian(mean=jnp.zeros((1,), jnp.float64), std=jnp.full((1,), s, jnp.float64))
        model = g.model(sch)
        grid = time_grid(sch, 6, "karras", "zero", dtype=jnp.float64)
        x = jnp.ones((1, 1), jnp.float64)
        _, info = sample(heun(), model, x, grid, return_trajectory=True)
        st, a = np.asarray(grid.sigma_tilde), np.asarray(grid.alpha)
        got = np.asarray(info.trajectory)[:-1, 0, 0] / a[1:-1]  # x_tilde after each Heun step
        exact = (1.0 / a[0]) * np.sqrt((s**2 + st[1:-1] ** 2) / (s**2 + st[0] ** 2))
        np.testing.assert_allclose(got / exact, heun_gaussian_gain(st, s), rtol=1e-10)


def test_heun_stability_warning_known_bad_and_good_cases(gmm2d):
    """gmm2d, 4096 samples, sliced W2 to exact samples (floor ~0.03): Heun at NFE 11 on
    the log-sigma grid (first step sigma_tilde 157 -> 0.43, ratio 363) returns finite
    garbage (measured 19.9) and is flagged; on the time-quadratic grid it is 0.105 and
    not flagged; DDIM is never flagged."""
    gmm, schedule, model = gmm2d
    solver = get_solver("heun")
    n = steps_for_nfe(solver, 11, "zero")
    bad = time_grid(schedule, n, "log_sigma", "zero")
    good = time_grid(schedule, n, "time_quadratic", "zero")
    msg = stability_warning(solver, bad)
    assert msg.startswith("heun: outside its stable regime") and "157 -> 0.434" in msg, msg
    assert stability_warning(solver, good) is None
    assert stability_warning(get_solver("ddim"), bad) is None
    x = jax.random.normal(jax.random.PRNGKey(0), (4096, 2))
    exact = np.asarray(gmm.sample(jax.random.PRNGKey(1), 4096))
    proj = projections(jax.random.PRNGKey(2), 2, 64)
    run = jax.jit(lambda x, g: sample(solver, model, x, g)[0])
    w_bad = sliced_wasserstein2_host(np.asarray(run(x, bad)), exact, proj)
    w_good = sliced_wasserstein2_host(np.asarray(run(x, good)), exact, proj)
    assert w_bad > 5.0 and w_good < 0.2, (w_bad, w_good)


@pytest.mark.parametrize("nfe, spacing, flagged", [
    (5, "logsnr", True), (7, "karras", True), (9, "logsnr", True), (11, "karras", True), (31, "log_sigma", True),
    (11, "logsnr", False), (11, "time_uniform", False), (15, "karras", False), (21, "logsnr", False),
])
def test_heun_stability_warning_table(gmm2d, nfe, spacing, flagged):
    """The measured gmm2d table (docs/solvers.md): flagged rows had sliced W2 >= 0.64,
    unflagged ones <= 0.42, for a floor of 0.03."""
    _, schedule, _ = gmm2d
    solver = get_solver("heun")
    grid = time_grid(schedule, steps_for_nfe(solver, nfe, "zero"), spacing, "zero")
    assert (stability_warning(solver, grid) is not None) == flagged


def test_heun_edm_defaults_not_flagged():
    solver = get_solver("heun")
    grids = jax.tree_util.tree_map(lambda u: jnp.stack([u, u]), time_grid(EDM(), 3, "karras", "zero"))
    with pytest.raises(ValueError, match=r"^grid: stability_warning takes one grid"):
        stability_warning(solver, grids)
    assert stability_warning(solver, time_grid(EDM(), 18, "karras", "zero")) is None
    assert stability_warning(solver, time_grid(EDM(), 3, "karras", "zero")) is not None
