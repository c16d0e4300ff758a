"""Sample a U-Net trained on 8x8 digits (configs/train_digits.py) with any solver:

    python -m experiments.sample --config=configs/digits.py --workdir=runs/digits \
        --config.model.checkpoint=runs/train_digits --config.solver.name=unipc --config.nfe=10

The metric is the Frechet distance of classifier features against the held-out test
split (``fd``; ``reference.fd_floor`` is the training split's own FD).  Unconditional
by default; ``--config.model.guidance=2.0`` samples class i mod 10 with
classifier-free guidance of scale 2.
"""
from samplax.experiment import sample_config


def get_config():
    c = sample_config()
    c.model.name = "digits"
    c.solver.name = "dpm_solver_pp"
    c.grid.spacing = "logsnr"
    c.nfe = 10
    c.n_samples = 1438          # the size of the training split, so fd and fd_floor use as many samples
    c.metrics.max_sw_samples = 1438
    c.metrics.save_samples = 200
    return c
