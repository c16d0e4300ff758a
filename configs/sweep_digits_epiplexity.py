"""Solver x NFE sweep of a trained digits U-Net with the optional epiplexity metric beside the FD:
each row's ``metrics.epiplexity`` holds the epiplexity and time-bounded entropy (bits) of its samples
quantised to the digits' 17 grey levels (samplax.metrics.epiplexity, docs/epiplexity.md), measured on
the first min(n_samples, chunk_size, metrics.max_sw_samples) samples (at least steps * batch_size +
eval_size of the observer options, else None).

    python -m experiments.sweep --config=configs/sweep_digits_epiplexity.py --workdir=runs/sweep_digits_epiplexity \
        --config.model.checkpoint=runs/train_digits
"""
from configs import sweep_digits


def get_config():
    c = sweep_digits.get_config()  # the digits solver x NFE sweep, with the metric on
    c.model.checkpoint = "runs/train_digits"
    c.sweep.solvers = ("euler", "dpm_solver_pp", "unipc")
    c.sweep.nfes = (4, 8, 16, 32)
    c.n_samples = 1280
    c.metrics.max_sw_samples = 1280
    c.metrics.epiplexity = True
    c.metrics.epiplexity_options = dict(hidden=128, batch_size=16, steps=64, learning_rate=3e-3,
                                        eval_size=256, seeds=(0, 1, 2))
    return c
