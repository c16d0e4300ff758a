"""A masked-diffusion sweep on the exact Markov chain markov4x8: samplers x steps x seeds; each
sampler runs the axis values of the options it has (first_hitting has no ``steps``: it runs once).
The report (results.md, plots/tv_vs_nfe.png) is the accuracy-calls frontier: TV to the exact
distribution against the model calls per sequence (docs/discrete.md).

    python -m experiments.sweep --config=configs/sweep_discrete.py --workdir=runs/discrete_sweep
    # parallel decoders as axes, e.g. a confidence threshold:
    #   --config.sweep.samplers='("ancestral","first_hitting")' --config.sweep.option_axes.steps='(2,4,8,16,32)'
"""
from samplax.experiment.discrete import discrete_sweep_config


def get_config():
    config = discrete_sweep_config()
    config.model.name = "markov4x8"
    config.sweep.samplers = ("ancestral", "first_hitting")
    config.sweep.option_axes.steps = (2, 4, 8, 16, 32)
    config.sweep.seeds = (0,)
    config.n_samples = 100_000
    return config
