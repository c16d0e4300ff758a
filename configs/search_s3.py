"""S^3 predictor-based search for a 5-evaluation schedule on the 2-D Gaussian mixture.

    python -m experiments.search --config=configs/search_s3.py --workdir=runs/s3

The best schedule is checked on the problem's 4096 benchmark start points (the ones of
docs/benchmarks/solver_accuracy.md), which the search never sees."""
from samplax.experiment.search import search_config


def get_config():
    config = search_config()
    config.model.name = "gmm2d"
    config.nfe = 5
    config.afs = True  # the analytic first step, as the best hand-designed NFE-5 rows: 6 steps for 5 evaluations
    config.search.strategy = "s3"
    config.search.iterations = 40
    config.search.population = 64
    config.search.s3.top_k = 64
    config.search.s3.candidates = 4096
    config.search.n_search_samples = 512
    config.search.eval_prior = "problem"
    config.search.n_eval_samples = 4096
    config.checkpoint_every = 5
    return config
