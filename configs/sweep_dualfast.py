"""DualFast next to its base solvers on gmm2d: 3 bases x 2 grids x 3 NFEs, DualFast at
three mixing coefficients (0 = the base exactly) and both references, 1024 samples.

    python -m experiments.sweep --config=configs/sweep_dualfast.py --workdir=runs/sweep_dualfast

The dualfast rows take their base from sweep.solver_options (one base per sweep: change it
with --config.sweep.solver_options.dualfast.base=unipc); sweep.option_axes adds the mixing
and reference axes, which only dualfast has.
"""
import ml_collections

from samplax.experiment import sweep_config


def get_config():
    config = sweep_config()
    config.model.name = "gmm2d"
    config.sweep.solvers = ("ddim", "dpm_solver_pp", "unipc", "dualfast")
    config.sweep.orders = (2,)
    config.sweep.grids = ("logsnr", "time_uniform")
    config.sweep.nfes = (5, 8, 10)
    config.sweep.seeds = (0,)
    config.sweep.solver_options = ml_collections.ConfigDict({"dualfast": {"base": "dpm_solver_pp"}})
    config.sweep.option_axes = ml_collections.ConfigDict({"mixing": (0.0, 0.25, 0.5),
                                                          "reference": ("first", "previous")})
    config.n_samples = 1024
    return config
