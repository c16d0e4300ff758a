"""Solver x NFE sweep of a trained digits U-Net (Frechet distance vs the test split):

    python -m experiments.sweep --config=configs/sweep_digits.py --workdir=runs/sweep_digits \
        --config.model.checkpoint=runs/train_digits
"""
from samplax.experiment import sweep_config


def get_config():
    c = sweep_config()
    c.model.name = "digits"
    c.sweep.solvers = ("ddim", "dpm_solver_pp", "unipc", "ipndm")
    c.sweep.orders = (2, 3)
    c.sweep.grids = ("logsnr",)
    c.sweep.nfes = (5, 10, 20, 50)
    c.sweep.seeds = (0,)
    c.n_samples = 1438
    c.metrics.max_sw_samples = 1438
    c.metrics.save_samples = 100
    return c
