"""Train a class-conditional U-Net (label dropout 0.1, so it is also unconditional and
can be guided) on scikit-learn's 8x8 digits (the 80% training split):

    python -m experiments.train --config=configs/train_digits.py --workdir=runs/train_digits
    python -m experiments.sample --config=configs/digits.py --workdir=runs/digits \
        --config.model.checkpoint=runs/train_digits
"""
from samplax.experiment.config import train_config


def get_config():
    c = train_config()
    c.data.name = "digits"
    c.data.options.split = "train"
    c.schedule.name = "vp_cosine"
    c.model.network = "unet"
    c.model.class_conditional = True
    c.model.label_dropout = 0.1
    c.model.unet.channels = (32, 64)
    c.model.unet.num_res_blocks = 1
    c.model.unet.attention = True
    c.model.unet.embed_dim = 64
    c.model.unet.groups = 8
    c.loss.objective = "noise"
    c.optim.learning_rate = 2e-3
    c.optim.warmup_steps = 200
    c.optim.ema_decay = 0.999
    c.train.num_steps = 4000
    c.train.batch_size = 128
    c.train.log_every = 100
    c.train.checkpoint_every = 500
    c.train.sample_every = 1000
    c.train.sample_count = 100
    return c
