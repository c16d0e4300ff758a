"""Teleportation vs its base solvers on gmm64d: DPM-Solver++ and UniPC (order 2), each alone
and behind the Gaussian jump (the switch rule, tolerance 1e-3), 2 grids x 5 NFEs, 4096 samples.

    python -m experiments.sweep --config=configs/sweep_teleport.py --workdir=runs/sweep_teleport
    # a fixed switch at logSNR -2 instead of the rule:
    #   --config.sweep.solver_options.teleport.switch=-2.0

The Gaussian fit is cached per model in the workdir (docs/teleport.md).  The teleport rows
use base dpm_solver_pp; for UniPC behind the jump add
--config.sweep.solver_options.teleport.base=unipc.
"""
from configs import sweep_solvers


def get_config():
    config = sweep_solvers.get_config()
    config.model.name = "gmm64d"
    config.sweep.solvers = ("dpm_solver_pp", "unipc", "teleport")
    config.sweep.orders = (2,)
    config.sweep.grids = ("logsnr", "time_quadratic")
    config.sweep.nfes = (5, 6, 8, 10, 15)
    config.sweep.solver_options = {"teleport": {"base": "dpm_solver_pp", "tolerance": 1e-3}}
    config.n_samples = 4096
    return config
