"""One sampling run: python -m experiments.sample --config=configs/gmm.py --workdir=DIR [--config.x=y ...]"""
from experiments import _main
from samplax.experiment import run_sample

_CONFIG = _main.define_flags("configs/gmm.py")


def main(argv):
    del argv
    _main.run_main(run_sample, _CONFIG)


def cli():
    """The ``samplax-sample`` command."""
    _main.start(main)


if __name__ == "__main__":
    cli()
