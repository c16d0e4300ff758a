"""Solvers under JAX transformations, dtypes and batch splits; non-finite reporting."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from samplax.models import DiffusionModel, load_problem, problem_start_points
from samplax.solvers import generate, get_solver, sample
from samplax.timesteps import time_grid

CASES = [("unipc", {}), ("dpm_solver_pp", {"order": 3}), ("heun", {}), ("dpm_solver", {"order": 3}),
         ("ipndm", {"order": 3, "afs": True}), ("deis", {}), ("ddim_eta", {"eta": 1.0}), ("sde_dpm_solver_pp_2m", {}),
         ("euler_maruyama", {}), ("pc_langevin", {})]
IDS = [f"{c[0]}{c[1]}" for c in CASES]


@pytest.fixture(scope="module")
def gmm2d():
    gmm, schedule, info = load_problem("gmm2d")
    x = jnp.asarray(problem_start_points(info, 16), jnp.float32)
    return gmm, schedule, info, x


@pytest.mark.parametrize("name,opts", CASES, ids=IDS)
def test_jit_vmap_equals_batched(gmm2d, name, opts):
    """vmap over single samples (each with its global index) = one batched call."""
    gmm, schedule, _, x = gmm2d
    solver = get_solver(name, **opts)
    model = gmm.model(schedule)
    grid = time_grid(schedule, 6, "time_quadratic", "zero")
    key = jax.random.PRNGKey(7)
    batched, _ = jax.jit(lambda x: sample(solver, model, x, grid, key))(x)

    def one(xi, idx):
        out, _ = sample(solver, model, xi[None], grid, key, index_offset=idx)
        return out[0]

    per_sample = jax.jit(jax.vmap(one))(x, jnp.arange(x.shape[0]))
    np.testing.assert_allclose(np.asarray(per_sample), np.asarray(batched), rtol=2e-5, atol=2e-5)


@pytest.mark.parametrize("name,opts", CASES[:6], ids=IDS[:6])
def test_float32_matches_float64(gmm2d, name, opts):
    gmm, schedule, info, _ = gmm2d
    solver = get_solver(name, **opts)
    x = problem_start_points(info, 256)
    grid32 = time_grid(schedule, 8, "logsnr", "denoise")
    out32, _ = jax.jit(lambda x: sample(solver, gmm.model(schedule), x, grid32))(jnp.asarray(x, jnp.float32))
    with jax.enable_x64(True):
        gmm64, _, _ = load_problem("gmm2d", dtype=jnp.float64)
        grid64 = time_grid(schedule, 8, "logsnr", "denoise", dtype=jnp.float64)
        out64, _ = jax.jit(lambda x: sample(solver, gmm64.model(schedule), x, grid64))(jnp.asarray(x))
        assert out64.dtype == jnp.float64
    assert out32.dtype == jnp.float32
    diff = np.abs(np.asarray(out32) - np.asarray(out64))
    # Typical samples agree to ~1e-6; a few near a boundary between modes amplify rounding more.
    assert diff.mean() < 1e-5 and diff.max() < 2e-4, (diff.mean(), diff.max())


@pytest.mark.parametrize("name,opts", [CASES[0], CASES[6], CASES[8]], ids=[IDS[0], IDS[6], IDS[8]])
def test_same_samples_for_any_batch(gmm2d, name, opts):
    """generate() draws x_T and the solver noise per sample from fold_in(key, index):
    batches of 1, 7 and 4096 (and an offset split) give the same samples."""
    gmm, schedule, _, _ = gmm2d
    solver = get_solver(name, **opts)
    model = gmm.model(schedule)
    grid = time_grid(schedule, 5, "time_quadratic", "zero")
    key = jax.random.PRNGKey(11)
    run = jax.jit(lambda n, off: generate(solver, model, grid, key, n, (2,), index_offset=off)[0], static_argnums=0)
    big = np.asarray(run(4096, 0))
    seven = np.asarray(run(7, 0))
    np.testing.assert_allclose(seven, big[:7], rtol=1e-5, atol=1e-6)
    for i in (0, 3, 4095):
        np.testing.assert_allclose(np.asarray(run(1, i))[0], big[i], rtol=1e-5, atol=1e-6)
    # the second half of a split batch
    np.testing.assert_allclose(np.asarray(run(7, 2048)), big[2048:2055], rtol=1e-5, atol=1e-6)
    # ... and different indices do get different noise
    assert np.min(np.abs(big[:100, None, 0] - big[None, :100, 0]) + np.eye(100)) > 0


def test_trajectory(gmm2d):
    gmm, schedule, _, x = gmm2d
    grid = time_grid(schedule, 6, "logsnr", "denoise")
    model = gmm.model(schedule)
    out, info = jax.jit(lambda x: sample(get_solver("ddim"), model, x, grid, return_trajectory=True))(x)
    assert info.trajectory.shape == (6,) + x.shape
    np.testing.assert_array_equal(np.asarray(info.trajectory[-1]), np.asarray(out))
    # step i of the trajectory is DDIM run on the first i+1 intervals
    short = time_grid(schedule, 3, "logsnr", "t_min", t_min=float(grid.t[3]))
    np.testing.assert_allclose(np.asarray(info.trajectory[2]),
                               np.asarray(sample(get_solver("ddim"), model, x, short)[0]), rtol=1e-5, atol=1e-5)


def _nan_model(model, t_bad, bad_sample=None):
    """Returns NaN predictions at times below t_bad (for one sample, or all)."""
    def apply(params, x, t):
        x0, eps = model.data_noise(x, t)
        bad = t < t_bad
        if bad_sample is not None:
            bad = bad & (jnp.arange(x.shape[0]) == bad_sample)[:, None]
        return jnp.where(bad, jnp.nan, x0), jnp.where(bad, jnp.nan, eps)
    return DiffusionModel(apply=apply, params=model.params, schedule=model.schedule, prediction="data_noise")


@pytest.mark.parametrize("name", ["ddim", "unipc", "heun"])
def test_first_nonfinite_step_is_reported(gmm2d, name):
    gmm, schedule, _, x = gmm2d
    grid = time_grid(schedule, 8, "time_uniform", "zero")
    t = np.asarray(grid.t)
    t_bad = 0.5 * (t[4] + t[5])  # the first evaluation below t_bad is at t_5
    model = _nan_model(gmm.model(schedule), t_bad)
    out, info = jax.jit(lambda x: sample(get_solver(name), model, x, grid))(x)
    # The model output at t_5 is made after step 4 lands there; it first enters x in step 5
    # (Heun evaluates at t_5 inside step 4 and UniPC's corrector uses that evaluation,
    # so their x goes bad one step earlier).
    expected = 4 if name in ("heun", "unipc") else 5
    assert int(info.first_nonfinite_step) == expected
    assert np.all(np.asarray(info.n_nonfinite)[:expected] == 0)
    assert int(info.n_nonfinite[expected]) == x.shape[0]
    # one bad sample is counted alone
    model1 = _nan_model(gmm.model(schedule), t_bad, bad_sample=3)
    out1, info1 = jax.jit(lambda x: sample(get_solver(name), model1, x, grid))(x)
    assert int(info1.first_nonfinite_step) == expected and int(info1.n_nonfinite[-1]) == 1
    assert np.all(np.isfinite(np.delete(np.asarray(out1), 3, axis=0)))
    # and a healthy run reports -1
    _, ok = jax.jit(lambda x: sample(get_solver(name), gmm.model(schedule), x, grid))(x)
    assert int(ok.first_nonfinite_step) == -1


def test_unipc_sigma_zero_end_is_finite(gmm2d):
    """UniPC in every variant ends finite on a grid ending at sigma = 0 (diffusers'
    bh1 gives NaN there); the last step is the denoising jump.  (Every other solver's
    sigma = 0 end is checked in test_nfe_is_exact.)"""
    gmm, schedule, _, x = gmm2d
    model = gmm.model(schedule)
    for variant in ("bh1", "bh2"):
        for pred in ("data", "noise"):
            for order in (1, 2, 3):
                solver = get_solver("unipc", order=order, variant=variant, prediction=pred, max_step_ratio=None,
                                    lower_order_final=False)
                grid = time_grid(schedule, 6, "time_quadratic", "zero")
                out, info = jax.jit(lambda x: sample(solver, model, x, grid))(x)
                assert int(info.first_nonfinite_step) == -1, (variant, pred, order)
