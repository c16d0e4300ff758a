"""run_table's loop (step 0 peeled, model output consumed in the iteration that
computes it, history as separate carried arrays) against the solvers' own
stepwise engines: samples, trajectories and non-finite diagnostics."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import samplax as sx
from samplax.solvers.unified import run_table



@pytest.fixture(autouse=True)
def _x64():
    """float64 for these tests only (a global config update would leak into the other
    tests of the same worker)."""
    with jax.enable_x64(True):
        yield

CASES = [("ddim", {}), ("dpm_solver_pp", {"order": 3}), ("unipc", {"order": 3}), ("ipndm_v", {"order": 3})]


@pytest.mark.parametrize("end", ["zero", "denoise"])
@pytest.mark.parametrize("name,opts", CASES)
def test_trajectory_and_diagnostics_match_stepwise(name, opts, end):
    gmm, schedule, info = sx.load_problem("gmm2d", dtype=jnp.float64)
    model = gmm.model(schedule)
    x = jnp.asarray(sx.problem_start_points(info, 6))
    x = x.at[2, 1].set(jnp.nan)  # one non-finite sample from the start
    grid = sx.time_grid(schedule, 5, "logsnr", end=end, dtype=jnp.float64)
    solver = sx.get_solver(name, **opts)
    a, ia = run_table(model, x, solver.table(grid, schedule), return_trajectory=True)
    b, ib = sx.sample(solver, model, x, grid, return_trajectory=True, stepwise=True)
    ok = np.isfinite(np.asarray(b)).all(1)
    assert ok.sum() == 5
    np.testing.assert_allclose(np.asarray(a)[ok], np.asarray(b)[ok], rtol=0, atol=1e-12)
    tr_a, tr_b = np.asarray(ia.trajectory), np.asarray(ib.trajectory)
    assert tr_a.shape == tr_b.shape == (5, 6, 2)
    np.testing.assert_allclose(tr_a[:, ok], tr_b[:, ok], rtol=0, atol=1e-12)
    np.testing.assert_array_equal(np.asarray(ia.n_nonfinite), np.asarray(ib.n_nonfinite))
    np.testing.assert_array_equal(np.asarray(ia.n_nonfinite), np.ones(5, np.int32))
    assert int(ia.first_nonfinite_step) == int(ib.first_nonfinite_step) == 0
    # diagnostics=False: the same samples, only the final count
    c, ic = run_table(model, x, solver.table(grid, schedule), diagnostics=False)
    np.testing.assert_array_equal(np.asarray(c)[ok], np.asarray(a)[ok])
    np.testing.assert_array_equal(np.asarray(ic.n_nonfinite), np.array([0, 0, 0, 0, 1], np.int32))


def test_one_step_table():
    gmm, schedule, info = sx.load_problem("gmm2d", dtype=jnp.float64)
    model = gmm.model(schedule)
    x = jnp.asarray(sx.problem_start_points(info, 4))
    grid = sx.time_grid(schedule, 1, "logsnr", end="zero", dtype=jnp.float64)
    solver = sx.get_solver("ddim")
    a, ia = run_table(model, x, solver.table(grid, schedule), return_trajectory=True)
    # one DDIM step into sigma = 0 is the data prediction at t_0
    np.testing.assert_allclose(np.asarray(a), np.asarray(model.data(x, grid.t[0])), rtol=0, atol=1e-12)
    assert ia.trajectory.shape == (1, 4, 2)
