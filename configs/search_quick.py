"""A tiny search (seconds; for tests and a first look): random search, 4 iterations of 8
candidates scored on 64 start points, checked on 256 held-out ones."""
from samplax.experiment.search import search_config


def get_config():
    config = search_config()
    config.model.name = "gmm2d"
    config.nfe = 5
    config.search.strategy = "random"
    config.search.iterations = 4
    config.search.population = 8
    config.search.n_search_samples = 64
    config.search.n_eval_samples = 256
    config.reference.exact_steps = 200
    config.checkpoint_every = 2
    return config
