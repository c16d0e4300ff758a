"""Minority guidance on gmm2d (exact model): DPM-Solver++(2M) at NFE 20 on the model guided towards
the most unique of 10 quantile levels of the minority score (Um et al. 2024, with squared L2 for
LPIPS), strength 2.  The classifier is trained in the solver's prepare step (20000 exact samples,
4000 Adam steps, about 40 s on 2 CPU cores) and cached in ``workdir/cache/solver_stats``.

    python -m experiments.sample --config=configs/sample_minority.py --workdir=runs/minority \\
        --config.solver.options.strength=4.0

The row's mean_log_density (exact mean log p0 of the samples) falls as the strength grows
(docs/benchmarks/guidance.md has the table with the component masses).
"""
from samplax.experiment import sample_config


def get_config():
    config = sample_config()
    config.model.name = "gmm2d"
    config.solver.name = "minority"
    config.solver.options.base = "dpm_solver_pp"
    config.solver.options.strength = 2.0
    config.grid.spacing = "logsnr"
    config.nfe = 20
    config.n_samples = 4096
    return config
