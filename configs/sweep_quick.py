"""A small sweep (3 solvers x 2 grids x 2 NFEs, 1024 samples): a minute on a laptop."""
from configs import sweep_solvers


def get_config():
    config = sweep_solvers.get_config()
    config.sweep.solvers = ("ddim", "dpm_solver_pp", "unipc")
    config.sweep.orders = (2,)
    config.sweep.grids = ("logsnr", "time_quadratic")
    config.sweep.nfes = (5, 10)
    config.n_samples = 1024
    return config
