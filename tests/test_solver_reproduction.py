"""The authors' own numbers, reproduced.

The official DPM-Solver and UniPC codes and the diff-sampler toolbox (iPNDM)
were run in float64 on exactly our benchmark problems (discrete linear-beta VP
in DPM-Solver's continuous time, x_T = default_rng(d).standard_normal((4096, d))
at t = 1, M steps to t = 1e-3 then one denoising evaluation unless stated).
Same algorithm, grid and start points must give the same number: we require
agreement to 1e-3 relative (the references are quoted to 4 significant digits).
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from samplax.models import load_problem, problem_start_points
from samplax.solvers import dpm_solver_multistep, dpm_solver_pp, ipndm, sample, unipc
from samplax.timesteps import time_grid

# (id, solver factory, spacing, steps, end, target at sigma=0 (None: at t_min), gmm2d, gmm64d)
ROWS = [
    ("unipc_bh1_o2_tq_4", lambda: unipc(2, "bh1", official_rhos=True, max_step_ratio=None, max_step=None), "time_quadratic", 4, "denoise", 0.09728, 0.5963),
    ("dpm_ms3_logsnr_9", lambda: dpm_solver_multistep(3, third_order="official", lower_order_final_below=10,
                                                       max_step_ratio=None, max_step=None), "logsnr", 9,
     "denoise", 0.02981, 0.1503),
    ("unipc_bh2_o2_tq_9", lambda: unipc(2, "bh2", official_rhos=True, max_step_ratio=None, max_step=None), "time_quadratic", 9, "denoise", 0.03496, 0.1387),
    ("dpm_ms3_tq_19", lambda: dpm_solver_multistep(3, third_order="official", lower_order_final_below=10,
                                                       max_step_ratio=None, max_step=None), "time_quadratic",
     19, "denoise", 0.003769, 0.01699),
    ("dpmpp_2m_logsnr_10_tmin", lambda: dpm_solver_pp(2, lower_order_final_below=10, max_step_ratio=None, max_step=None), "logsnr", 10,
     "t_min", 0.05116, 0.1620),
    ("ipndm3_tq_afs_10", lambda: ipndm(3, afs=True), "time_quadratic", 10, "denoise", 0.01811, 0.04007),
    ("ipndm3_tq_19", lambda: ipndm(3), "time_quadratic", 19, "denoise", 0.002700, 0.008654),
]

# The NFE of each official configuration (M steps + 1 denoise; AFS saves one; the t_min row has none).
NFE = {"unipc_bh1_o2_tq_4": 5, "dpm_ms3_logsnr_9": 10, "unipc_bh2_o2_tq_9": 10, "dpm_ms3_tq_19": 20,
       "dpmpp_2m_logsnr_10_tmin": 10, "ipndm3_tq_afs_10": 10, "ipndm3_tq_19": 20}


@pytest.fixture(scope="module", params=["gmm2d", "gmm64d"])
def problem(request):
    name = request.param
    with jax.enable_x64(True):
        gmm, schedule, info = load_problem(name, dtype=jnp.float64)
        x_T = jnp.asarray(problem_start_points(info))
        # Richardson-extrapolated RK4 with 250 steps: its mean L2 distance to a 1000-step solve is
        # 3.4e-8 on gmm64d and 3.5e-9 on gmm2d (both to t_min and to sigma = 0), which moves a
        # mean-L2 error by at most as much: 250x below the smallest tolerance (1e-3 x 0.0087 on
        # gmm64d; 770x below 1e-3 x 0.0027 on gmm2d); 1000 steps cost 3.3x the time.
        # The solution at sigma = 0 continues it from t_min (50 steps: 7e-8 from a 1000-step solve
        # from t = 1 on gmm64d), which halves the fixture's time.
        ref_tmin = gmm.ode_solution(x_T, 1.0, 1e-3, schedule, n_steps=250)
        ref_zero = np.asarray(gmm.ode_solution(ref_tmin, 1e-3, None, schedule, n_steps=50))
        ref_tmin = np.asarray(ref_tmin)
    return name, gmm, schedule, x_T, ref_zero, ref_tmin


@pytest.mark.slow
def test_official_numbers(problem):
    name, gmm, schedule, x_T, ref_zero, ref_tmin = problem
    results = {}
    with jax.enable_x64(True):
        model = gmm.model(schedule)
        for rid, make, spacing, steps, end, t2d, t64d in ROWS:
            grid = time_grid(schedule, steps, spacing, end, t_max=1.0, t_min=1e-3, dtype=jnp.float64)
            solver = make()
            x, info = jax.jit(lambda x: sample(solver, model, x, grid))(x_T)
            ref = ref_zero if end == "denoise" else ref_tmin
            err = float(np.mean(np.linalg.norm(np.asarray(x) - ref, axis=-1)))
            target = t2d if name == "gmm2d" else t64d
            assert solver.nfe(steps, end) == NFE[rid]
            results[rid] = (err, target)
            assert int(info.first_nonfinite_step) == -1
    bad = {k: v for k, v in results.items() if abs(v[0] / v[1] - 1) > 1e-3}
    assert not bad, f"{name}: (ours, official) differ by more than 1e-3 relative: {bad}"
