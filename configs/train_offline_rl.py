"""Offline RL with trajectory weighting (Hong et al., ICLR 2023) on CartPole-v1: 200
trajectories, 5% from a near-optimal controller and 95% random; behaviour cloning on
transitions drawn with return weights (alpha 0.1).  See docs/training_sampling_offline_rl.md.

    python -m experiments.train --config=configs/train_offline_rl.py --workdir=runs/offline_rl
    python -m experiments.train --config=configs/train_offline_rl.py --workdir=runs/offline_rl_cql_uniform \
        --config.rl.learner.name=cql --config.rl.weighting.name=uniform
"""
from samplax.experiment.rl_offline import offline_rl_config


def get_config():
    return offline_rl_config()
