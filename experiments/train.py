"""Train a Flax diffusion model: python -m experiments.train --config=configs/train_gmm2d.py --workdir=DIR

Killed at any moment, the same command resumes from the last complete checkpoint."""
from experiments import _main
from samplax.experiment.trainer import run_train

_CONFIG = _main.define_flags("configs/train_gmm2d.py")


def main(argv):
    del argv
    _main.run_main(run_train, _CONFIG)


def cli():
    """The ``samplax-train`` command."""
    _main.start(main)


if __name__ == "__main__":
    cli()
