"""PALM-Mean search (GP surrogate + epsilon-global minimisation of its posterior mean) for a
5-evaluation schedule on the 2-D Gaussian mixture.

    python -m experiments.search --config=configs/search_palm.py --workdir=runs/palm

The initial design (16 candidates: the hand-designed baselines, then random genotypes) picks
the template whose discrete choices stay fixed; then 4 candidates per iteration (the GP mean's
argmin and 3 perturbations) move its time points in a 4-dimensional Legendre embedding
(docs/palm_mean.md).  Same scoring and held-out check as configs/search_s3.py."""
from configs import search_s3


def get_config():
    config = search_s3.get_config()         # gmm2d, NFE 5 + AFS, 512 search / 4096 held-out points
    config.search.strategy = "palm_mean"
    config.search.iterations = 30          # 4 design iterations + 26 GP iterations = 120 evaluations
    config.search.population = 16         # the initial design
    config.search.palm.batch = 4
    config.search.palm.dims = 4
    return config
