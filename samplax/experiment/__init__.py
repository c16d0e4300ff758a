"""The experiment layer: config -> objects (explicit registries), the runner, the
results store, device sharding, plots and progress.

Every entrypoint of ``experiments/`` is a thin absl main around one of these
functions, which take ``(config, workdir)`` and work the same from a notebook::

    from samplax import experiment
    cfg = experiment.sweep_config()
    cfg.sweep.nfes = (5, 10)
    rows = experiment.run_sweep(cfg, "/tmp/sweep")
    df = experiment.load_results("/tmp/sweep")
"""
from samplax.experiment.config import ConfigError, sample_config, sweep_config
from samplax.experiment.plan import make_plan
from samplax.experiment.results import WorkdirConflict, WorkdirLock, WorkdirLocked, load_results, read_results
from samplax.experiment.runner import run, run_sample, run_sweep
from samplax.experiment.search import run_search, search_config

__all__ = ["ConfigError", "WorkdirConflict", "WorkdirLock", "WorkdirLocked", "read_results", "sample_config", "sweep_config", "make_plan", "load_results", "run",
           "run_sample", "run_sweep", "run_search", "search_config"]
