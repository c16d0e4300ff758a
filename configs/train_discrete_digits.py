"""Train a small bidirectional transformer (masked diffusion, MDLM loss) on scikit-learn's
8x8 digits as 64-token sequences (the pixel intensities 0..16 are the tokens, V = 17; the
80% training split), with first-hitting preview grids:

    python -m experiments.train --config=configs/train_discrete_digits.py --workdir=runs/train_discrete_digits

Load it for sampling with samplax.experiment.trainer.load_discrete_model(workdir).
"""
from samplax.experiment.config import discrete_train_config


def get_config():
    c = discrete_train_config()
    c.data.name = "digits_tokens"
    c.data.options.split = "train"
    c.schedule.name = "linear"
    c.model.transformer.width = 64
    c.model.transformer.depth = 2
    c.model.transformer.heads = 4
    c.model.transformer.time_conditioned = False
    c.optim.learning_rate = 2e-3
    c.optim.warmup_steps = 100
    c.optim.weight_decay = 1e-4
    c.optim.ema_decay = 0.999
    c.train.num_steps = 2500
    c.train.batch_size = 64
    c.train.log_every = 100
    c.train.checkpoint_every = 500
    c.train.sample_every = 0
    c.train.sample_count = 50
    return c
