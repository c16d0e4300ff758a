"""DPS against TDS on the exact gmm2d posterior (inpainting coordinate 0: y = 0.3, noise std 0.1):
DPS at guidance scales 0.5, 1, 2 (one particle: plain guidance), TDS with 4, 16 and 64 particles per
group, corrected and uncorrected, at NFE 25 and 50, 4096 samples.

    python -m experiments.sweep --config=configs/sweep_posterior.py --workdir=runs/sweep_posterior
    # a random projection: --config.sweep.solver_options.dps.operator=projection
    #                      --config.sweep.solver_options.tds.operator=projection

``scale`` only exists for dps and ``particles`` / ``correct`` only for tds, so each axis
multiplies only its own solver's rows.
"""
import ml_collections

from samplax.experiment import sweep_config

MEASUREMENT = {"operator": "inpaint", "m": 1, "y_value": 0.3, "noise_std": 0.1}


def get_config():
    config = sweep_config()
    config.model.name = "gmm2d"
    config.sweep.solvers = ("dps", "tds")
    config.sweep.grids = ("logsnr",)
    config.sweep.nfes = (25, 50)
    config.sweep.seeds = (0,)
    config.sweep.solver_options = ml_collections.ConfigDict({"dps": dict(MEASUREMENT), "tds": dict(MEASUREMENT)})
    config.sweep.option_axes = ml_collections.ConfigDict({"scale": (0.5, 1.0, 2.0), "particles": (4, 16, 64),
                                                          "correct": (True, False)})
    config.n_samples = 4096
    config.metrics.max_sw_samples = 4096
    return config
