"""8 solvers x 4 time grids x 6 NFEs on gmm2d (192 rows), 4096 samples each.

    python -m experiments.sweep --config=configs/sweep_solvers.py --workdir=runs/sweep
Every axis is a tuple, so it can be overridden: --config.sweep.nfes='(5,10)'.
Solvers without an order option (euler, ddim) run once at their own order.
"""
from samplax.experiment import sweep_config


def get_config():
    config = sweep_config()
    config.model.name = "gmm2d"
    config.sweep.solvers = ("euler", "ddim", "dpm_solver_multistep", "dpm_solver_pp", "unipc", "deis", "ipndm",
                            "ipndm_v")
    config.sweep.orders = (3,)
    config.sweep.grids = ("time_uniform", "time_quadratic", "logsnr", "karras")
    config.sweep.nfes = (5, 6, 8, 10, 15, 20)
    config.sweep.seeds = (0,)
    config.n_samples = 4096
    return config
