"""Adaptive DPM-Solver-12 / -23 (samplax.solvers.adaptive): the tolerance is met on a Gaussian
with a closed-form PF-ODE solution, the NFE grows with the order's rate, the NFE accounting is
exact (counted model calls), rejections happen and are handled, the cap and non-finite outputs
stop the solve."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import counting_model

from samplax.models import DiffusionModel, load_problem, problem_start_points
from samplax.models.analytic import Gaussian
from samplax.solvers import sample
from samplax.solvers.adaptive import adaptive_sample, dpm_solver_adaptive, sample_with_info
from samplax.timesteps import time_grid

T_END = 1e-3
TOLS = (1e-3, 1e-4, 1e-5)


@pytest.fixture
def x64():
    with jax.enable_x64(True):
        yield


@pytest.fixture(scope="module")
def gmm2d():
    with jax.enable_x64(True):
        gmm, schedule, info = load_problem("gmm2d", dtype=jnp.float64)
        x = jnp.asarray(problem_start_points(info, 64))
        ref = gmm.ode_solution(x, 1.0, T_END, schedule, n_steps=1000)
        lam_end = float(schedule.lambda_(jnp.asarray(T_END)))
    return gmm, schedule, x, ref, lam_end


@pytest.mark.parametrize("order", [2, 3])
def test_gaussian_tolerance_met_and_nfe_rate(x64, order):
    """On N(mu, diag(s^2)) (closed-form PF-ODE), for three tolerances (rtol = atol = tol) the
    error of every coordinate stays within a small factor of its tolerance
    atol + rtol |x| (0.1x to 3x), and the NFE grows like tol^(-1/order): the fitted slope of
    log NFE against log tol lies within [-1/order - 0.1, -1/order + 0.12] (measured: -0.45
    for order 2, -0.24 for order 3, whose step count is still pre-asymptotic)."""
    _, schedule, _ = load_problem("gmm2d", dtype=jnp.float64)
    g = Gaussian(mean=jnp.array([0.5, -0.3, 0.2, 0.0]), std=jnp.array([0.2, 0.5, 0.1, 1.0]))
    model = g.model(schedule)
    x = jax.random.normal(jax.random.PRNGKey(0), (32, 4), jnp.float64)
    ref = np.asarray(g.ode_solution(x, 1.0, T_END, schedule))
    run = jax.jit(lambda tol: adaptive_sample(model, x, 1.0, T_END, order=order, rtol=tol, atol=tol, max_nfe=20000))
    nfes = []
    for tol in TOLS:
        out, info = run(jnp.asarray(tol))
        ratio = np.max(np.abs(np.asarray(out) - ref) / (tol * (1 + np.abs(ref))))
        assert 0.1 <= ratio <= 3.0, (order, tol, ratio)
        assert not bool(info.cap_hit) and not bool(info.nonfinite)
        nfes.append(int(info.nfe))
    slope = np.polyfit(np.log(TOLS), np.log(nfes), 1)[0]
    assert -1 / order - 0.1 <= slope <= -1 / order + 0.12, (order, nfes, slope)


@pytest.mark.parametrize("order,denoise", [(2, False), (3, True)])
def test_gmm2d_nfe_exact_and_rejections_handled(gmm2d, order, denoise):
    """The model calls counted at run time equal info.nfe = accepted + (order - 1) x trials
    (+1 denoise); on gmm2d the controller rejects steps (at tol 1e-3) and the accepted solution
    still meets the tolerance (mean error below tol, max below 10 tol).  The denoising case runs
    the Solver form (dpm_solver_adaptive on a grid ending at sigma = 0 whose step count, 300, is
    the NFE cap) through sample_with_info."""
    gmm, schedule, x, ref, lam_end = gmm2d
    counter = [0]
    with jax.enable_x64(True):
        model = counting_model(gmm.model(schedule), counter)
        if denoise:
            solver = dpm_solver_adaptive(order=order, rtol=1e-3, atol=1e-3)
            grid = time_grid(schedule, 300, "logsnr", end="zero", t_min=T_END, dtype=jnp.float64)
            out, _, info = jax.jit(lambda x: sample_with_info(solver, model, x, grid))(x)
            ref = np.asarray(gmm.model(schedule).data(ref, jnp.asarray(T_END)))
        else:
            out, info = jax.jit(lambda x: adaptive_sample(model, x, 1.0, T_END, order=order, rtol=1e-3,
                                                          atol=1e-3))(x)
        out = np.asarray(out)
        jax.effects_barrier()
    n_acc, n_rej, nfe = int(info.n_accept), int(info.n_reject), int(info.nfe)
    assert counter[0] == nfe
    assert nfe == n_acc + (order - 1) * (n_acc + n_rej) + denoise
    assert n_rej > 0 and not bool(info.cap_hit)
    assert float(info.lam_reached) == pytest.approx(lam_end, abs=1e-12)
    err = np.linalg.norm(out - np.asarray(ref), axis=-1)
    assert err.mean() < 1e-3 and err.max() < 1e-2, (err.mean(), err.max())


def test_cap_forces_the_end_within_max_nfe(gmm2d):
    """With a cap far below the NFE the tolerance needs, the solve still ends at t_end, spends at
    most max_nfe evaluations and reports cap_hit."""
    gmm, schedule, x, _, lam_end = gmm2d
    with jax.enable_x64(True):
        for max_nfe in (9,):
            _, info = jax.jit(lambda x: adaptive_sample(gmm.model(schedule), x, 1.0, T_END, order=3, rtol=1e-5,
                                                        atol=1e-5, max_nfe=max_nfe, denoise=True))(x[:8])
            assert bool(info.cap_hit) and int(info.nfe) <= max_nfe
            assert float(info.lam_reached) == pytest.approx(lam_end, abs=1e-12)


def test_nonfinite_model_stops_the_solve(gmm2d):
    """A model that returns NaN below t = 0.5: the solve stops there (no endless rejections) and
    reports it."""
    gmm, schedule, x, _, lam_end = gmm2d
    with jax.enable_x64(True):
        base = gmm.model(schedule)

        def broken(params, x_, t):
            x0, eps = base.data_noise(x_, t)
            return x0 + jnp.where(t < 0.5, jnp.nan, 0.0), eps + jnp.where(t < 0.5, jnp.nan, 0.0)
        model = DiffusionModel(apply=broken, params=None, schedule=schedule, prediction="data_noise")
        _, info = jax.jit(lambda x: adaptive_sample(model, x, 1.0, T_END, order=2, max_nfe=500))(x[:8])
    assert bool(info.nonfinite) and int(info.nfe) < 500
    assert float(info.lam_reached) < lam_end


def test_solver_form_through_sample(gmm2d):
    """dpm_solver_adaptive through samplax.sample gives the sample of adaptive_sample from
    grid.t[0] to the last node above sigma = 0 followed by the jump x0_hat there."""
    gmm, schedule, x, _, lam_end = gmm2d
    with jax.enable_x64(True):
        model = gmm.model(schedule)
        solver = dpm_solver_adaptive(order=2, rtol=1e-3, atol=1e-3)
        grid = time_grid(schedule, 300, "logsnr", end="zero", dtype=jnp.float64)
        out, _ = jax.jit(lambda x: sample(solver, model, x, grid))(x[:8])
        ref, _ = adaptive_sample(model, x[:8], grid.t[0], grid.t[-2], order=2, rtol=1e-3, atol=1e-3, max_nfe=300,
                                 denoise=True)
    np.testing.assert_allclose(np.asarray(out), np.asarray(ref), rtol=1e-12, atol=1e-12)


def test_bad_options_name_the_argument():
    with pytest.raises(ValueError, match="order"):
        dpm_solver_adaptive(order=4)
    with pytest.raises(ValueError, match="rtol"):
        dpm_solver_adaptive(rtol=-1.0)
    with pytest.raises(ValueError, match="prediction"):
        dpm_solver_adaptive(prediction="velocity")
    gmm, schedule, info = load_problem("gmm2d")
    with pytest.raises(ValueError, match="max_nfe"):
        adaptive_sample(gmm.model(schedule), jnp.zeros((2, 2)), 1.0, T_END, order=3, max_nfe=3, denoise=True)


def test_per_sample_control_equals_solving_each_sample_alone(gmm2d):
    """per_sample=True (vmapped) gives each sample exactly the solve and the NFE it gets alone."""
    gmm, schedule, x, _, _ = gmm2d
    with jax.enable_x64(True):
        model = gmm.model(schedule)
        run = jax.jit(lambda x, ps: adaptive_sample(model, x, 1.0, T_END, order=2, rtol=1e-2, atol=1e-2,
                                                    per_sample=ps), static_argnums=1)
        out, info = run(x[:3], True)
        for i in range(3):
            one, one_info = run(x[i:i + 1], False)
            np.testing.assert_allclose(np.asarray(out[i]), np.asarray(one[0]), rtol=1e-12, atol=1e-12)
            assert int(info.nfe[i]) == int(one_info.nfe) and int(info.n_reject[i]) == int(one_info.n_reject)


def test_runner_records_the_spent_nfe_and_the_cap(tmp_path):
    """From a config: ``nfe`` is the cap, the row records the NFE really spent (equal to a direct
    ``sample_with_info`` on the same start points), and a cap that forces the last step warns."""
    import json

    from samplax.experiment import run_sample, sample_config
    from samplax.experiment.report import nfe_text

    cfg = sample_config()
    cfg.solver.name = "dpm_solver_adaptive"
    cfg.solver.options.rtol = 1e-3
    cfg.solver.options.atol = 1e-3
    cfg.update(dict(nfe=500, n_samples=64, dtype="float64", prior="problem"))
    cfg.metrics.save_samples = 64
    cfg.metrics.reference_steps = 200  # mean_l2 < 1e-2 below needs no finer reference
    rows = run_sample(cfg, str(tmp_path / "a"))
    (row,) = rows
    a = row["adaptive"]
    with jax.enable_x64(True):
        gmm, schedule, info = load_problem("gmm2d", dtype=jnp.float64)
        x = jnp.asarray(problem_start_points(info, 64))
        grid = time_grid(schedule, 500, "logsnr", "zero")
        x0, _, ainfo = jax.jit(lambda x: sample_with_info(dpm_solver_adaptive(rtol=1e-3, atol=1e-3),
                                                          gmm.model(schedule), x, grid))(x)
    assert a["nfe_mean"] == a["nfe_max"] == a["nfe_min"] == int(ainfo.nfe) < 500  # one step sequence per batch
    assert row["nfe"] == 500 and row["nfe_actual"] == a["nfe_max"] and not a["cap_hit"] and row["warning"] is None
    assert a["n_accept_mean"] == int(ainfo.n_accept) and a["n_reject_mean"] == int(ainfo.n_reject)
    saved = np.load(tmp_path / "a" / row["samples_file"])
    np.testing.assert_allclose(saved, np.asarray(x0, np.float32), rtol=1e-6, atol=1e-6)
    assert row["metrics"]["mean_l2"] < 1e-2
    assert nfe_text(row) == f"{a['nfe_mean']:.0f} (cap 500)"
    # a cap too small for the tolerance: the last step is forced, the row says so
    cfg.nfe = 8
    (capped,) = run_sample(cfg, str(tmp_path / "b"))
    assert capped["adaptive"]["cap_hit"] and capped["adaptive"]["nfe_max"] <= 8
    assert "hit its NFE cap (8)" in capped["warning"]
    stored = [json.loads(line) for line in open(tmp_path / "b" / "results.jsonl")]
    assert stored[0]["adaptive"]["cap_hit"] is True
