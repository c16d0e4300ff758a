"""Convergence orders, measured (diffrax-style): the log-log slope of the error
between fixed noise levels (grid ending at sigma_min > 0) against the number of
steps must be within 0.25 of the solver's declared order.

References: the single Gaussian's closed-form probability-flow ODE, and the
GMM's ODE solved in float64 by Richardson-extrapolated RK4 (error ~1e-9).

Multistep methods start with lower-order steps (warm-up).  One first-order
step contributes O(h^2) to the global error, so for a method of order p >= 3
the end-to-end slope tends to 2 asymptotically (true of the official codes as
well; UniPC avoids it because its warm-up steps are corrected).  The steady-state
order of a multistep formula is therefore measured as numerical analysis
defines it: with exact starting values (the history at the K-1 nodes before
the start taken on the exact solution).  End-to-end slopes are checked too,
with the bound that the warm-up allows.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from samplax.models import Gaussian, load_problem, problem_start_points
from samplax.schedules import VPLinear
from samplax.solvers import get_solver, sample
from samplax.solvers.multistep import MultistepState
from samplax.timesteps import grid_from_times, time_grid

T_HI, T_LO = 0.8, 0.05
N_BATCH = 128


@pytest.fixture(scope="module")
def gmm_problem():
    with jax.enable_x64(True):
        gmm, schedule, info = load_problem("gmm2d", dtype=jnp.float64)
        x = jnp.asarray(problem_start_points(info, N_BATCH))
        ref = gmm.ode_solution(x, T_HI, T_LO, schedule, n_steps=2000)
    return gmm, schedule, x, ref


@pytest.fixture(scope="module")
def gauss_problem():
    with jax.enable_x64(True):
        schedule = VPLinear()
        g = Gaussian(mean=jnp.array([0.7, -0.3, 0.1]), std=jnp.array([0.2, 0.5, 0.05]))
        x = jax.random.normal(jax.random.PRNGKey(3), (N_BATCH, 3), jnp.float64)
        ref = g.ode_solution(x, T_HI, T_LO, schedule)
    return g, schedule, x, ref


def _slope(ns, errs):
    return -np.polyfit(np.log(ns), np.log(errs), 1)[0]


def _end_to_end_errors(solver, model, schedule, x, ref, ns):
    errs = []
    for n in ns:
        grid = time_grid(schedule, n, "logsnr", "t_min", t_max=T_HI, t_min=T_LO, dtype=jnp.float64)
        out, _ = jax.jit(lambda x: sample(solver, model, x, grid))(x)
        errs.append(float(jnp.mean(jnp.linalg.norm(out - ref, axis=-1))))
    return errs


# (registry name, options, declared order, step counts)
ONE_STEP = [
    ("euler", {}, 1, [16, 32, 64, 128]),
    ("ddim", {}, 1, [16, 32, 64, 128]),
    ("heun", {}, 2, [8, 16, 32, 64]),
    ("dpm_solver", {"order": 1}, 1, [16, 32, 64, 128]),
    ("dpm_solver", {"order": 2}, 2, [8, 16, 32, 64]),
    ("dpm_solver", {"order": 3}, 3, [16, 24, 32, 48]),
    ("dpm_solver_pp_singlestep", {"order": 2}, 2, [8, 16, 32, 64]),
    ("dpm_solver_pp_singlestep", {"order": 3}, 3, [16, 24, 32, 48]),
    ("unipc", {"order": 1, "lower_order_final": False}, 2, [16, 32, 64, 128]),
    ("unipc", {"order": 2, "lower_order_final": False}, 3, [16, 32, 64, 128]),
    ("unipc", {"order": 2, "variant": "bh1", "lower_order_final": False}, 3, [16, 32, 64, 128]),
    ("unipc", {"order": 2, "prediction": "noise", "lower_order_final": False}, 3, [16, 32, 64, 128]),
    ("dpm_solver_pp", {"order": 2, "lower_order_final": False}, 2, [16, 32, 64, 128]),
    ("dpm_solver_multistep", {"order": 2, "lower_order_final": False}, 2, [16, 32, 64, 128]),
]


@pytest.mark.parametrize("name,opts,order,ns", ONE_STEP, ids=[f"{r[0]}-{r[1]}" for r in ONE_STEP])
@pytest.mark.parametrize("which", ["gauss", "gmm"])
def test_end_to_end_order(name, opts, order, ns, which, gmm_problem, gauss_problem):
    solver = get_solver(name, **opts)
    assert solver.order == order
    with jax.enable_x64(True):
        if which == "gmm":
            gmm, schedule, x, ref = gmm_problem
            model = gmm.model(schedule)
        else:
            g, schedule, x, ref = gauss_problem
            model = g.model(schedule)
        errs = _end_to_end_errors(solver, model, schedule, x, ref, ns)
    slope = _slope(ns, errs)
    assert abs(slope - order) <= 0.25, f"{name}{opts} on {which}: slope {slope:.2f}, declared {order}, errors {errs}"


def _exact_start_errors(solver, model, schedule, x, ref_fn, ns, variable):
    """Global error with exact starting values: the grid is uniform in ``variable``
    ('lam' or 'sigma_tilde') from T_HI to T_LO, extended by K-1 nodes before T_HI
    where the exact solution is known; the multistep engine then runs at full
    order from the first step."""
    k = solver.min_steps  # = the multistep order
    lam_hi, lam_lo = float(schedule.lambda_(T_HI)), float(schedule.lambda_(T_LO))
    errs = []
    for n in ns:
        if variable == "lam":
            h = (lam_lo - lam_hi) / n
            lams = lam_hi + h * np.arange(-(k - 1), n + 1)
        else:
            s_hi, s_lo = np.exp(-lam_hi), np.exp(-lam_lo)
            d = (s_lo - s_hi) / n
            lams = -np.log(s_hi + d * np.arange(-(k - 1), n + 1))
        times = np.array(schedule.t_from_lambda(jnp.asarray(lams)))
        times[k - 1] = T_HI
        times[-1] = T_LO
        grid = grid_from_times(schedule, times, end="t_min", dtype=jnp.float64)
        view = model.view(solver.view)
        hist_pts = [ref_fn(x, T_HI, float(times[k - 1 - j])) if j else x for j in range(k)]
        hist = jnp.stack([view(p, float(times[k - 1 - j])) for j, p in enumerate(hist_pts)])
        state = MultistepState(x=x, hist=hist)
        step = jax.jit(lambda st, i: solver.step(model, grid, st, i, None, False))
        last = jax.jit(lambda st, i: solver.step(model, grid, st, i, None, True))
        total = grid.n_steps
        for i in range(k - 1, total - 1):
            state = step(state, i)
        state = last(state, total - 1)
        errs.append(float(jnp.mean(jnp.linalg.norm(state.x - ref_fn(x, T_HI, T_LO), axis=-1))))
    return errs


MULTISTEP = [
    ("dpm_solver_multistep", {"order": 3}, 3, "lam"),
    ("dpm_solver_pp", {"order": 3}, 3, "lam"),
    ("dpm_solver_pp", {"order": 2}, 2, "lam"),
    ("deis", {"order": 2}, 2, "lam"),
    ("deis", {"order": 3}, 3, "lam"),
    ("deis", {"order": 4}, 4, "lam"),
    ("ipndm_v", {"order": 3}, 3, "lam"),
    ("ipndm_v", {"order": 4}, 4, "lam"),
    ("unipc", {"order": 3, "corrector": False}, 3, "lam"),
]
# Polynomials in t or sigma_tilde (DEIS, iPNDM_v) on a lambda-uniform grid reach
# their asymptotic regime later than the lambda-based methods.
NS_MULTISTEP = {"deis": [32, 64, 128, 256], "ipndm_v": [32, 64, 128, 256], "dpm_solver_multistep": [32, 64, 128, 256]}


@pytest.mark.parametrize("name,opts,order,variable", MULTISTEP, ids=[f"{r[0]}-{r[1]}" for r in MULTISTEP])
@pytest.mark.parametrize("which", ["gauss", "gmm"])
def test_multistep_order_exact_start(name, opts, order, variable, which, gmm_problem, gauss_problem):
    solver = get_solver(name, lower_order_final=False, max_step_ratio=None, **opts)
    assert solver.order == order
    ns = NS_MULTISTEP.get(name, [16, 24, 32, 48, 64])
    with jax.enable_x64(True):
        if which == "gmm":
            gmm, schedule, x, _ = gmm_problem

            def ref_fn(x_, t_from, t_to):
                return gmm.ode_solution(x_, t_from, t_to, schedule, n_steps=1000)
            model = gmm.model(schedule)
        else:
            g, schedule, x, _ = gauss_problem

            def ref_fn(x_, t_from, t_to):
                return g.ode_solution(x_, t_from, t_to, schedule)
            model = g.model(schedule)
        errs = _exact_start_errors(solver, model, schedule, x, ref_fn, ns, variable)
    slope = _slope(ns, errs)
    assert abs(slope - order) <= 0.25, f"{name}{opts} on {which}: slope {slope:.2f}, declared {order}, errors {errs}"


@pytest.mark.parametrize("name,opts", [("dpm_solver_pp", {"order": 3}), ("dpm_solver_multistep", {"order": 3}),
                                       ("deis", {"order": 3})])
def test_multistep_end_to_end_at_least_second_order(name, opts, gmm_problem):
    """With the usual first-order warm-up the global slope is between 2 and the
    declared order (see the module docstring)."""
    gmm, schedule, x, ref = gmm_problem
    solver = get_solver(name, lower_order_final=False, **opts)
    ns = [16, 32, 64, 128]
    with jax.enable_x64(True):
        errs = _end_to_end_errors(solver, gmm.model(schedule), schedule, x, ref, ns)
    slope = _slope(ns, errs)
    assert 2.0 - 0.25 <= slope <= solver.order + 0.25, f"{name}: slope {slope:.2f}, errors {errs}"


def test_lower_order_final_costs_order(gmm_problem):
    """A first-order last step limits the global order to 2 (why the papers apply
    lower_order_final only at small step counts)."""
    gmm, schedule, x, ref = gmm_problem
    ns = [16, 32, 64, 128]
    with jax.enable_x64(True):
        model = gmm.model(schedule)
        with_lof = _end_to_end_errors(get_solver("unipc", order=3, lower_order_final=True), model, schedule, x, ref, ns)
        without = _end_to_end_errors(get_solver("unipc", order=3, lower_order_final=False), model, schedule, x, ref, ns)
    assert abs(_slope(ns, with_lof) - 2.0) <= 0.3
    assert _slope(ns, without) > 3.5
