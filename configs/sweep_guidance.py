"""Guidance strength as a sweep axis on gmm2d (exact model): minority guidance (its classifier
trained once per model in prepare and cached in the workdir: every strength reuses it) and
autoguidance with a wider bad model, next to the unguided DPM-Solver++(2M) and UniPC-2 at the
same grid, 4096 samples, NFE 10 and 20.  The rows' mean_log_density is the exact mean log p0 of
the samples (minority guidance lowers it, autoguidance raises it: docs/guidance.md).

    python -m experiments.sweep --config=configs/sweep_guidance.py --workdir=runs/sweep_guidance

``strength`` only exists for minority and ``scale`` only for autoguided, so each axis multiplies
only its own solver's rows.  The autoguided rows spend two model calls per evaluation: at NFE 20
they take 10 solver steps (compare them with the unguided NFE 10 rows for equal steps).
"""
import ml_collections

from samplax.experiment import sweep_config


def get_config():
    config = sweep_config()
    config.model.name = "gmm2d"
    config.sweep.solvers = ("dpm_solver_pp", "unipc", "minority", "autoguided")
    config.sweep.orders = (2,)
    config.sweep.grids = ("logsnr",)
    config.sweep.nfes = (10, 20)
    config.sweep.seeds = (0,)
    config.sweep.solver_options = ml_collections.ConfigDict({"autoguided": {"bad_std": 1.5}})
    config.sweep.option_axes = ml_collections.ConfigDict({"strength": (0.5, 1.0, 2.0, 4.0),
                                                          "scale": (1.5, 2.0, 3.0)})
    config.n_samples = 4096
    return config
