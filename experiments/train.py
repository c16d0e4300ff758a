"""Train a Flax diffusion model: python -m experiments.train --config=configs/train_gmm2d.py --workdir=DIR

The config's ``kind`` picks the loop (samplax.experiment.train_kinds): a model (default),
rejection-sampling fine-tuning ("raft"), offline RL ("offline_rl"), snapshot RL ("snapshot_rl").

Killed at any moment, the same command resumes from the last complete checkpoint.  On
SIGTERM (a preempted VM, ``kill``, a scheduler's stop) the step in flight is finished and
saved, and the process exits with status 143 (128 + SIGTERM) after one line on stderr;
the same command resumes from that step and ends bitwise equal to an uninterrupted run."""
import signal
import sys

from absl import logging

from experiments import _main
from samplax.experiment.train_kinds import run_training
from samplax.experiment.trainer import TrainingPreempted

_CONFIG = _main.define_flags("configs/train_gmm2d.py")
PREEMPTED_STATUS = 128 + signal.SIGTERM


def main(argv):
    del argv
    try:
        _main.run_main(run_training, _CONFIG)
    except TrainingPreempted as e:
        logging.warning("%s", e)
        print(f"preempted: {e}", file=sys.stderr)
        sys.exit(PREEMPTED_STATUS)


def cli():
    """The ``samplax-train`` command."""
    _main.start(main)


if __name__ == "__main__":
    cli()
