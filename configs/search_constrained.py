"""Learn the coefficients of an exponential multistep method (3 outputs per step, order-2
conditions kept) on gmm2d at NFE 5, by the exact augmented Lagrangian with randomized
sketching and by the quadratic-penalty baseline (samplax/search/constrained.py).

    python -m experiments.search --config=configs/search_constrained.py --workdir=/tmp/constrained --config.nfe=8
    python -m samplax.search.constrained --config configs/search_constrained.py --workdir /tmp/constrained
"""
from samplax.search.constrained import constrained_config


def get_config():
    config = constrained_config()
    config.problem = "gmm2d"
    config.nfe = 5
    config.history = 3
    config.order = 2
    config.methods = ("eal", "penalty")
    return config
