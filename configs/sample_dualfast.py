"""One DualFast sampling run on the 2-D Gaussian mixture (exact answer known).

    python -m experiments.sample --config=configs/sample_dualfast.py --workdir=runs/dualfast \
        --config.solver.options.base=unipc --config.solver.options.mixing=0.3 --config.nfe=8

DualFast (samplax.solvers.dualfast, docs/dualfast.md) wraps a base solver; its options
(base, mixing, reference, decay, mix_view) go under config.solver.options, the base's
order under config.solver.order (default 2; DDIM needs 1).
"""
from samplax.experiment import sample_config


def get_config():
    config = sample_config()
    config.model.name = "gmm2d"
    config.solver.name = "dualfast"
    config.solver.options.base = "dpm_solver_pp"
    config.solver.options.mixing = 0.5
    config.solver.options.reference = "first"
    config.solver.options.decay = "linear"
    config.solver.options.mix_view = "noise"
    config.grid.spacing = "logsnr"
    config.nfe = 10
    config.n_samples = 4096
    return config
