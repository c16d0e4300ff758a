"""One sampling run with Gaussian-score teleportation on gmm64d (exact model, exact moments):
the Gaussian closed form carries x_T from t = 1 to the switch (the rule's, tolerance 1e-3),
then DPM-Solver++(2M) runs from there (docs/teleport.md).

    python -m experiments.sample --config=configs/sample_teleport.py --workdir=runs/teleport \\
        --config.solver.options.base=unipc --config.nfe=8 --config.solver.options.switch=-2.0

The runner fits the Gaussian once per model (cached in ``workdir/cache/solver_stats``) and starts
the grid at the switch time (x_T is drawn at the schedule's t_max).  On a trained model (e.g. --config.model.name=digits
--config.model.checkpoint=runs/train_digits) the Gaussian fit is empirical (Ledoit-Wolf).
"""
from samplax.experiment import sample_config


def get_config():
    config = sample_config()
    config.model.name = "gmm64d"
    config.solver.name = "teleport"
    config.solver.options.base = "dpm_solver_pp"
    config.solver.options.tolerance = 1e-3      # the switch rule; or set switch (+ switch_kind)
    config.grid.spacing = "logsnr"
    config.nfe = 10
    config.n_samples = 4096
    return config
