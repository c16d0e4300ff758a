"""Masked diffusion on an exact tiny model: the first-hitting sampler on the Markov chain
markov4x8 (4 tokens, length 8, 65,536 sequences enumerated), 100,000 sequences.  The row has the
TV to the exact distribution (with its sampling floor), a chi-square test and the model calls per
sequence (docs/discrete.md).

    python -m experiments.sample --config=configs/sample_discrete.py --workdir=runs/discrete
    # MDLM ancestral sampling in 8 steps:
    #   --config.sampler.name=ancestral --config.sampler.options.steps=8
    # the HMM problem:  --config.model.name=hmm8x5
"""
from samplax.experiment.discrete import discrete_config


def get_config():
    config = discrete_config()
    config.model.name = "markov4x8"
    config.sampler.name = "first_hitting"
    config.n_samples = 100_000
    return config
