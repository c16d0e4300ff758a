"""PPO on Acrobot-v1 with S3RL snapshot starts (samplax.rl.snapshot): an earlier PPO agent
(the teacher, 15 updates with standard resets) plays 8 episodes; their states are clustered
by K-means (status classification); during the first half of training half of the episode
starts are snapshots drawn cluster-uniformly, truncated after 100 steps.  Standard resets
for comparison:

    python -m experiments.train --config=configs/train_snapshot_rl.py --workdir=runs/snapshot_rl
    python -m experiments.train --config=configs/train_snapshot_rl.py --workdir=runs/standard_rl \\
        --config.rl.snapshot.enabled=False
"""
from samplax.experiment.rl_snapshot import snapshot_rl_config


def get_config():
    c = snapshot_rl_config()
    c.rl.env = "Acrobot-v1"
    c.train.total_env_steps = 61_440  # 60 updates of 16 envs x 64 steps
    return c
