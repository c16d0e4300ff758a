"""The digits CNN classifier trained with RS2 (samplax.data_sampling.rs2): a fresh random 10%
of the training split every round, without replacement across rounds, for 40 rounds, the
learning-rate schedule (warm-up + cosine) compressed to those 40 rounds' steps as in the
paper (rs2_budget: ceil(40 * 144 / 64) = 90 steps instead of the full data's 899):

    python -m experiments.train --config=configs/train_rs2_digits_classifier.py \
        --workdir=runs/rs2_digits_classifier

Log rows carry eval_accuracy (held-out split) and elapsed_s: time-to-accuracy.  With
replacement across rounds: --config.train.sampler.options.replacement=True.  A changed
fraction on the command line does not re-derive train.num_steps: edit ROUNDS / the fraction
here instead (or call samplax.data_sampling.rs2.apply_rs2_budget).
"""
import ml_collections

from samplax.data import load_digits_dataset
from samplax.data_sampling.rs2 import apply_rs2_budget
from samplax.experiment.config import classify_train_config

FRACTION = 0.1
ROUNDS = 40


def get_config():
    c = classify_train_config()
    c.train.batch_size = 64
    c.train.sampler = ml_collections.ConfigDict(dict(
        name="rs2", options=ml_collections.ConfigDict(dict(fraction=FRACTION, replacement=False, seed=0))))
    apply_rs2_budget(c, len(load_digits_dataset("train").labels), ROUNDS)
    c.train.log_every = 10
    c.train.checkpoint_every = 30
    return c
