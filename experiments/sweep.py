"""A sweep: python -m experiments.sweep --config=configs/sweep_solvers.py --workdir=DIR [--config.sweep.nfes='(5,10)']"""
from experiments import _main
from samplax.experiment import run_sweep

_CONFIG = _main.define_flags("configs/sweep_solvers.py")


def main(argv):
    del argv
    _main.run_main(run_sweep, _CONFIG)


def cli():
    """The ``samplax-sweep`` command."""
    _main.start(main)


if __name__ == "__main__":
    cli()
