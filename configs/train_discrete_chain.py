"""Train a small bidirectional transformer (masked diffusion, MDLM loss) on exact samples of
the Markov chain markov4x8 (V = 4, L = 8), so its conditionals can be compared with the
exact denoiser's (benchmarks/discrete_learned.py):

    python -m experiments.train --config=configs/train_discrete_chain.py --workdir=runs/train_discrete_chain

Load it for sampling with samplax.experiment.trainer.load_discrete_model(workdir).
"""
from samplax.experiment.config import discrete_train_config


def get_config():
    c = discrete_train_config()
    c.data.name = "markov4x8_tokens"
    c.schedule.name = "linear"
    c.model.transformer.width = 64
    c.model.transformer.depth = 2
    c.model.transformer.heads = 4
    c.model.transformer.time_conditioned = False
    c.optim.learning_rate = 1e-3
    c.optim.warmup_steps = 100
    c.optim.ema_decay = 0.999
    c.train.num_steps = 3000
    c.train.batch_size = 256
    c.train.log_every = 100
    c.train.checkpoint_every = 500
    return c
