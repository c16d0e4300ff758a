"""Train a small causal (decoder-only, KV-cached) transformer language model on exact samples of
the Markov-chain language model markov4x8 (V = 4, L = 8; samplax.decoding.exact.load_lm), so its
distribution can be compared with the exact one by enumeration (docs/decoding_causal_lm.md):

    nice -n 10 python -m experiments.train --config=configs/train_causal_chain.py --workdir=runs/train_causal_chain

Load it as a samplax.decoding.LanguageModel with samplax.experiment.trainer.load_causal_lm(workdir).
"""
from samplax.experiment.config import causal_train_config


def get_config():
    c = causal_train_config()
    c.data.name = "markov4x8_lm"
    c.model.transformer.width = 32
    c.model.transformer.depth = 2
    c.model.transformer.heads = 4
    c.optim.learning_rate = 3e-3
    c.optim.warmup_steps = 100
    c.optim.ema_decay = 0.999
    c.train.num_steps = 2000
    c.train.batch_size = 256
    c.train.log_every = 100
    c.train.checkpoint_every = 500
    return c
