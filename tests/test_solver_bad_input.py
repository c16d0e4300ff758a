"""Bad input is rejected at construction with a ValueError that names the argument
and what is allowed -- never inside jit, never as a silent NaN."""
import jax.numpy as jnp
import pytest

from samplax.models import load_problem
from samplax.solvers import get_solver, sample, steps_for_nfe
from samplax.timesteps import time_grid

CASES = [
    (lambda: get_solver("dpm_solver_ppp"), ["unknown name", "dpm_solver_pp"]),
    (lambda: get_solver("unipc", orderr=2), ["unknown option", "orderr", "order"]),
    (lambda: get_solver("dpm_solver_pp", order=4), ["order", "1..3"]),
    (lambda: get_solver("dpm_solver_multistep", order=0), ["order", "1..3"]),
    (lambda: get_solver("deis", order=5), ["order", "1..4"]),
    (lambda: get_solver("ipndm", order=2.0), ["order", "integer"]),
    (lambda: get_solver("dpm_solver", order=4), ["order", "[1, 2, 3]"]),
    (lambda: get_solver("dpm_solver_pp_singlestep", order=0), ["order", "[1, 2, 3]"]),
    (lambda: get_solver("unipc", variant="bh3"), ["variant", "bh1", "bh2"]),
    (lambda: get_solver("unipc", prediction="velocity"), ["prediction", "data", "noise"]),
    (lambda: get_solver("dpm_solver_pp", solver_type="midpoint"), ["solver_type", "dpmsolver", "taylor"]),
    (lambda: get_solver("dpm_solver_pp", third_order="paper"), ["third_order", "exact", "official"]),
    (lambda: get_solver("unipc", max_step_ratio=0.0), ["max_step_ratio", "positive"]),
    (lambda: get_solver("ddim_eta", eta=-0.5), ["eta", ">= 0"]),
    (lambda: get_solver("pc_langevin", snr=0.0), ["snr", "positive"]),
    (lambda: get_solver("pc_langevin", n_corrector=-1), ["n_corrector", ">= 0"]),
    (lambda: steps_for_nfe(get_solver("dpm_solver_pp", order=3), 2, "zero"), ["nfe=2", "impossible", "possible NFEs"]),
    (lambda: steps_for_nfe(get_solver("dpm_solver", order=3), 3, "denoise"), ["nfe=3", "impossible"]),
    (lambda: steps_for_nfe(get_solver("heun"), 4, "denoise"), ["nfe=4", "impossible"]),
    (lambda: steps_for_nfe(get_solver("unipc", order=3, afs=True), 1, "zero"), ["nfe=1", "impossible"]),
    (lambda: steps_for_nfe(get_solver("ddim"), 0, "zero"), ["nfe", "positive integer"]),
    (lambda: steps_for_nfe(get_solver("ddim"), 10**9, "zero"), ["nfe=1000000000", "maximum 100000"]),
    # options of the wrong type are never taken as truthy
    (lambda: get_solver("unipc", corrector="no"), ["corrector: 'no'", "a bool"]),
    (lambda: get_solver("dpm_solver_pp", afs="false"), ["afs: 'false'", "a bool"]),
    (lambda: get_solver("deis", lower_order_final="0"), ["lower_order_final: '0'", "a bool"]),
    (lambda: get_solver("unipc", max_step="2.0"), ["max_step: '2.0'", "a real number"]),
    (lambda: get_solver("dpm_solver_multistep", order=2.5), ["order: 2.5", "an integer"]),
]


@pytest.mark.parametrize("make,words", CASES, ids=[f"case{i}" for i in range(len(CASES))])
def test_bad_solver_arguments(make, words):
    with pytest.raises(ValueError) as err:
        make()
    msg = str(err.value)
    for w in words:
        assert w in msg, f"{msg!r} should mention {w!r}"


@pytest.fixture(scope="module")
def problem():
    gmm, schedule, _ = load_problem("gmm2d")
    return gmm.model(schedule), schedule


def test_grid_too_short_for_the_order(problem):
    model, schedule = problem
    grid = time_grid(schedule, 2, "logsnr", "zero")
    with pytest.raises(ValueError, match="at least 3 steps"):
        sample(get_solver("dpm_solver_pp", order=3), model, jnp.zeros((4, 2)), grid)


def test_sample_needs_batch_axis_and_key(problem):
    model, schedule = problem
    grid = time_grid(schedule, 4, "logsnr", "zero")
    with pytest.raises(ValueError, match="leading batch axis"):
        sample(get_solver("ddim"), model, jnp.zeros((2,)), grid)
    with pytest.raises(TypeError, match="^x_T: dtype int32 is not a floating-point dtype"):
        sample(get_solver("ddim"), model, jnp.zeros((4, 2), jnp.int32), grid)
    with pytest.raises(ValueError, match="^x_T: empty batch"):
        sample(get_solver("ddim"), model, jnp.zeros((0, 2)), grid)
    with pytest.raises(ValueError, match="stochastic and needs a PRNG key"):
        sample(get_solver("euler_maruyama"), model, jnp.zeros((4, 2)), grid)
