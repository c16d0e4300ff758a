"""Feynman–Kac correctors on gmm2d, corrected vs uncorrected, as sweep axes: particles per group
(4, 16, 64), correct (True = FKC weights and resampling, False = the same SDE unweighted), NFE
(25, 50, 100; one model call per step for the annealed target), 4096 samples.  Each row's
``target`` record / target_* metrics compare the samples with the exact annealed target p^2.

    python -m experiments.sweep --config=configs/sweep_fkc.py --workdir=runs/sweep_fkc
    # the resampling scheme and the ESS threshold are axes too:
    #   --config.sweep.option_axes.resampling='("systematic", "multinomial")'
    #   --config.sweep.option_axes.ess_threshold='(0.3, 1.0)'
    # the classifier-free-guidance target of component 3 at w = 3 (two model calls per step):
    #   --config.sweep.solver_options.fkc.target=cfg --config.sweep.solver_options.fkc.w=3.0
    #   --config.sweep.solver_options.fkc.label=3 --config.sweep.nfes='(50, 100, 200)'
"""
import ml_collections

from samplax.experiment import sweep_config


def get_config():
    config = sweep_config()
    config.model.name = "gmm2d"
    config.sweep.solvers = ("fkc",)
    config.sweep.grids = ("logsnr",)
    config.sweep.nfes = (25, 50, 100)
    config.sweep.seeds = (0,)
    config.sweep.solver_options = ml_collections.ConfigDict({"fkc": {"target": "anneal", "beta": 2.0}})
    config.sweep.option_axes = ml_collections.ConfigDict({"particles": (4, 16, 64), "correct": (True, False)})
    config.n_samples = 4096
    config.metrics.max_sw_samples = 4096
    return config
