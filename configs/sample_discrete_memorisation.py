"""Masked diffusion on the exact Markov chain markov4x8 with the memorisation metric on
(docs/hamming.md): for the first 256 samples, the Hamming distance to the nearest of 4096 exact
draws standing for the training set (and of 4096 other exact draws, the held-out reference), and
windows of length 4 searched at every alignment of every reference sequence, with the counts of
occurrences within distance 1.

    python -m experiments.sample --config=configs/sample_discrete_memorisation.py --workdir=runs/discrete_memorisation
    # a trained network (its training set is the reference), e.g. digits tokens:
    #   --config.model.checkpoint=runs/train_discrete_digits --config.model.name=digits_tokens \
    #   --config.metrics.memorisation_window=16
    # the same metric on any discrete sample / sweep config:  --config.metrics.memorisation=True
"""
from samplax.experiment.discrete import discrete_config


def get_config():
    config = discrete_config()
    config.model.name = "markov4x8"
    config.sampler.name = "first_hitting"
    config.n_samples = 4096
    config.metrics.memorisation = True
    config.metrics.memorisation_window = 4
    config.metrics.memorisation_k = 1
    return config
