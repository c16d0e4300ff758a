"""The class-conditional digits U-Net of configs/train_digits.py trained with RS2
(samplax.data_sampling.rs2): a fresh random 25% of the training split every round, without
replacement across rounds, for as many rounds as train_digits.py's epochs (4000 steps of 128
= 356 epochs), so a quarter of its steps (rs2_budget: 1002), the warm-up and cosine decay of
the learning rate compressed to them as in the paper:

    python -m experiments.train --config=configs/train_rs2_digits.py --workdir=runs/rs2_digits
    python -m experiments.sample --config=configs/digits.py --workdir=runs/rs2_digits_samples \
        --config.model.checkpoint=runs/rs2_digits
"""
import ml_collections

from configs.train_digits import get_config as full_config
from samplax.data import load_digits_dataset
from samplax.data_sampling.rs2 import apply_rs2_budget

FRACTION = 0.25
ROUNDS = 356          # train_digits.py: 4000 steps x 128 / 1438 examples
WARMUP_ROUNDS = 18    # train_digits.py: 200 warm-up steps = 17.8 epochs


def get_config():
    c = full_config()
    c.train.sampler = ml_collections.ConfigDict(dict(
        name="rs2", options=ml_collections.ConfigDict(dict(fraction=FRACTION, replacement=False, seed=0))))
    apply_rs2_budget(c, len(load_digits_dataset("train").labels), ROUNDS, WARMUP_ROUNDS)
    c.train.checkpoint_every = 250
    c.train.sample_every = 250
    return c
