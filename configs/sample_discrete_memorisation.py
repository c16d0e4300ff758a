"""configs/sample_discrete.py (first-hitting sampler on the exact Markov chain markov4x8) with the
memorisation metric on (docs/hamming.md), for 4096 samples: the first 256 are compared with 4096
exact draws standing for the training set (and 4096 other draws, the held-out reference), their
windows of length 4 searched at every alignment, with the counts of occurrences within distance 1.

    python -m experiments.sample --config=configs/sample_discrete_memorisation.py --workdir=runs/discrete_memorisation
    # a trained network (its training set is the reference), e.g. digits tokens:
    #   --config.model.checkpoint=runs/train_discrete_digits --config.metrics.memorisation_window=16
    # the same metric on any discrete sample / sweep config:  --config.metrics.memorisation=True
"""
from configs import sample_discrete


def get_config():
    config = sample_discrete.get_config()
    config.n_samples = 4096
    config.metrics.memorisation = True
    config.metrics.memorisation_window = 4
    config.metrics.memorisation_k = 1
    return config
