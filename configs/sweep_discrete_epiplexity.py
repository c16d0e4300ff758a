"""A masked-diffusion sweep with the optional epiplexity metric (samplax.metrics.epiplexity; off in
every other config): each row also gets the epiplexity and the time-bounded entropy of its decoded
sequences in bits (prequential coding with a small autoregressive observer, docs/epiplexity.md).  On
the exact Markov chain markov4x8 the row's ``reference.neg_entropy`` is the exact entropy per
sequence, the floor of the entropy estimate per sample.

    python -m experiments.sweep --config=configs/sweep_discrete_epiplexity.py --workdir=runs/discrete_epiplexity
    # a trained masked-diffusion digits model (configs/train_discrete_digits.py):
    #   --config.model.checkpoint=runs/train_discrete_digits --config.model.name=digits_tokens
"""
from samplax.experiment.discrete import discrete_sweep_config


def get_config():
    config = discrete_sweep_config()
    config.model.name = "markov4x8"
    config.sweep.samplers = ("ancestral", "first_hitting")
    config.sweep.option_axes.steps = (2, 4, 8)
    config.sweep.seeds = (0,)
    config.n_samples = 4096
    config.metrics.epiplexity = True
    config.metrics.epiplexity_options = dict(hidden=128, batch_size=16, steps=64, learning_rate=3e-3,
                                             eval_size=256, seeds=(0, 1, 2))
    return config
