"""One DPM-Solver-v3 sampling run on the 2-D Gaussian mixture (exact answer known).

    python -m experiments.sample --config=configs/sample_v3.py --workdir=runs/v3 --config.nfe=8

The solver's empirical model statistics (``prepare``: 1024 data samples on 257 logSNR nodes) are
estimated once per model and cached in the workdir by the runner
(``workdir/cache/solver_stats``); change them with --config.solver.options.n_stats_samples=4096 /
--config.solver.options.stats_grid_size=512.
"""
from samplax.experiment import sample_config


def get_config():
    config = sample_config()
    config.model.name = "gmm2d"
    config.solver.name = "dpm_solver_v3"
    config.solver.options.n_stats_samples = 1024
    config.solver.options.stats_grid_size = 256
    config.grid.spacing = "logsnr"
    config.nfe = 10
    config.n_samples = 4096
    return config
