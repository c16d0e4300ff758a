"""Feynman–Kac correctors on gmm2d (exact model): SMC over reverse-SDE particles for the annealed
target p^2 (docs/fkc.md), 64 particles per group, systematic resampling at ESS < 0.5, 100 steps.
The row's ``target`` record compares the samples with the exact annealed target (2-D quadrature):
label TV, chi-square, mean / covariance error, sliced W2; ``smc`` has log Z, the smallest ESS and
how often it resampled.

    python -m experiments.sample --config=configs/sample_fkc.py --workdir=runs/fkc
    # the same SDE without the weights (the heuristic FKC corrects):
    #   --config.solver.options.correct=False
    # the target classifier-free guidance approximates, p(x)^(1-w) p(x|c)^w, for component 3:
    #   --config.solver.options.target=cfg --config.solver.options.w=3.0 --config.solver.options.label=3
    # a product of experts q(x) q(x|c):  --config.solver.options.target=product --config.solver.options.label=3
"""
from samplax.experiment import sample_config


def get_config():
    config = sample_config()
    config.model.name = "gmm2d"
    config.solver.name = "fkc"
    config.solver.options.target = "anneal"
    config.solver.options.beta = 2.0
    config.solver.options.particles = 64
    config.solver.options.resampling = "systematic"
    config.solver.options.ess_threshold = 0.5
    config.grid.spacing = "logsnr"
    config.nfe = 100
    config.n_samples = 4096
    config.metrics.max_sw_samples = 4096
    return config
