"""Adaptive DPM-Solver-23 on the 2-D Gaussian mixture (exact answer known).

    python -m experiments.sample --config=configs/sample_adaptive.py --workdir=runs/adaptive \
        --config.solver.options.rtol=1e-3 --config.solver.options.atol=1e-3

``nfe`` is the NFE *cap* of the adaptive solve (its grid gives only t_max and t_min); the NFE
really spent is in each row's ``adaptive`` record (docs/adaptive_likelihood.md, section 2).
"""
from samplax.experiment import sample_config


def get_config():
    config = sample_config()
    config.model.name = "gmm2d"
    config.solver.name = "dpm_solver_adaptive"
    config.solver.order = 3
    config.solver.options.rtol = 1e-3
    config.solver.options.atol = 1e-3
    config.solver.options.prediction = "noise"
    config.grid.spacing = "logsnr"  # only t_max and t_min are used
    config.grid.end = "zero"        # the adaptive solve to t_min, then the jump x0_hat (counted)
    config.nfe = 500                # the cap; the gmm2d solve at tol 1e-3 spends ~130
    config.n_samples = 4096
    return config
