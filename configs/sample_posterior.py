"""Posterior sampling with an exact answer: gmm2d prior, observe y = x[0] + noise (inpainting of
coordinate 0, y = 0.3, noise std 0.1); the twisted diffusion sampler (TDS, SMC with 16 particles per
group) against the exact posterior mixture (Kalman-updated components).  The row's ``target``
record has the label TV / chi-square (one draw per group), mean and covariance errors and the
sliced W2 to exact posterior samples (docs/posterior_sampling.md).

    python -m experiments.sample --config=configs/sample_posterior.py --workdir=runs/posterior
    # DPS (guidance only, biased): --config.solver.name=dps --config.solver.options='{"scale": 1.0}'
    # a random projection instead: --config.solver.options.operator=projection
    # the twisted proposal without its weights: --config.solver.options.correct=False

Cost: TDS evaluates the denoiser and its gradient once per particle and step (the runner's
nfe_actual counts the gradient's backward pass as a second evaluation).
"""
from samplax.experiment import sample_config


def get_config():
    config = sample_config()
    config.model.name = "gmm2d"
    config.solver.name = "tds"
    config.solver.options.operator = "inpaint"
    config.solver.options.m = 1
    config.solver.options.y_value = 0.3
    config.solver.options.noise_std = 0.1
    config.solver.options.particles = 16
    config.grid.spacing = "logsnr"
    config.nfe = 50
    config.n_samples = 4096
    config.metrics.max_sw_samples = 4096
    return config
