"""DPM-Solver-v3 beside DPM-Solver++ and UniPC: 3 solvers x 2 grids x 4 NFEs on gmm2d, 1024 samples.

    python -m experiments.sweep --config=configs/sweep_v3.py --workdir=runs/sweep_v3

dpm_solver_v3's statistics are estimated once (per model identity and statistics options) and
cached in the workdir by the runner once it wires Solver.prepare / bind.
"""
from configs import sweep_solvers


def get_config():
    config = sweep_solvers.get_config()
    config.sweep.solvers = ("dpm_solver_pp", "unipc", "dpm_solver_v3")
    config.sweep.orders = (3,)
    config.sweep.grids = ("logsnr", "time_uniform")
    config.sweep.nfes = (5, 6, 8, 10)
    config.sweep.solver_options = {"dpm_solver_v3": {"n_stats_samples": 1024, "stats_grid_size": 256}}
    config.n_samples = 1024
    return config
