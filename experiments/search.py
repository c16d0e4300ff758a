"""A solver-schedule search: python -m experiments.search --config=configs/search_s3.py --workdir=DIR

Killed at any moment (kill -9 included), the same command resumes from the newest intact
checkpoint and ends with the best schedule of an uninterrupted run (docs/search.md)."""
from experiments import _main
from samplax.experiment.search import run_search

_CONFIG = _main.define_flags("configs/search_s3.py")


def run(config, workdir, restart: bool = False):
    """A schedule search, or (``config.kind = "constrained_coefficients"``, configs/search_constrained.py)
    multistep coefficients learned under order conditions (samplax.search.constrained)."""
    if config.get("kind") == "constrained_coefficients":
        from samplax.search.constrained import run_constrained
        return run_constrained(config, workdir, restart=restart)
    return run_search(config, workdir, restart=restart)


def main(argv):
    del argv
    _main.run_main(run, _CONFIG)


def cli():
    """The ``samplax-search`` command."""
    _main.start(main)


if __name__ == "__main__":
    cli()
