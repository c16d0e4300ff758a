"""One sampling run on the 2-D Gaussian mixture (exact answer known).

    python -m experiments.sample --config=configs/gmm.py --workdir=runs/gmm \
        --config.solver.name=unipc --config.solver.order=3 --config.nfe=8
"""
from samplax.experiment import sample_config


def get_config():
    config = sample_config()
    config.model.name = "gmm2d"
    config.solver.name = "dpm_solver_pp"
    # solver.order unset: each solver's default (2 here); set it with --config.solver.order=3
    config.grid.spacing = "logsnr"
    config.nfe = 10
    config.n_samples = 4096
    return config
