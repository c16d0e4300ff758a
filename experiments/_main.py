"""What every entrypoint shares: the flags and the error handling around one library call."""
from __future__ import annotations

import sys

from absl import app, flags, logging
from ml_collections import config_flags

from samplax.experiment import ConfigError, WorkdirConflict


def define_flags(default_config: str):
    config = config_flags.DEFINE_config_file("config", default_config, "Path to an ml-collections config file.",
                                             lock_config=True)
    flags.DEFINE_string("workdir", None, "Directory for results, plots and caches.", required=True)
    flags.DEFINE_bool("restart", False, "Delete the workdir's results and start over.")
    return config


def run_main(fn, config_flag) -> None:
    """Call ``fn(config, workdir, restart=...)``; a bad config or a conflicting workdir
    prints one message and exits with status 2 (nothing written)."""
    try:
        fn(config_flag.value, flags.FLAGS.workdir, restart=flags.FLAGS.restart)
    except (ConfigError, WorkdirConflict) as e:
        logging.error("%s", e)
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


def start(main) -> None:
    app.run(main)
