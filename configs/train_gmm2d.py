"""Train an MLP noise predictor on samples of the 2-D Gaussian mixture gmm2d (its own
discrete VP schedule), so its samples can be compared with the exact model's:

    python -m experiments.train --config=configs/train_gmm2d.py --workdir=runs/train_gmm2d
    python -m experiments.sample --config=configs/gmm.py --workdir=runs/gmm_trained \
        --config.model.checkpoint=runs/train_gmm2d
"""
from samplax.experiment.config import train_config


def get_config():
    c = train_config()
    c.data.name = "gmm2d"
    c.schedule.name = "problem"
    c.model.network = "mlp"
    c.model.mlp.hidden = (256, 256, 256)
    c.loss.objective = "noise"
    c.optim.learning_rate = 2e-3
    c.optim.warmup_steps = 200
    c.optim.ema_decay = 0.999
    c.train.num_steps = 6000
    c.train.batch_size = 512
    c.train.log_every = 200
    c.train.checkpoint_every = 1000
    c.train.sample_every = 2000
    c.train.sample_count = 2000
    return c
