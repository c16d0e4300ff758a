"""What every entrypoint shares: the flags and the error handling around one library call."""
from __future__ import annotations

import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from experiments import _overrides
from samplax.experiment import ConfigError, WorkdirConflict
from samplax.experiment.checkpoints import CheckpointMismatch


def default_config_path(name: str) -> str:
    """A config file of the installed ``configs`` package (works from any directory)."""
    import configs

    return os.path.join(os.path.dirname(os.path.abspath(configs.__file__)), os.path.basename(name))


def define_flags(default_config: str):
    config = config_flags.DEFINE_config_file("config", default_config_path(default_config),
                                             "Path to an ml-collections config file (default: the installed "
                                             f"configs/{os.path.basename(default_config)}).", lock_config=True)
    flags.DEFINE_string("workdir", None, "Directory for results, plots and caches.", required=True)
    flags.DEFINE_bool("restart", False, "Delete the workdir's results and start over.")
    flags.DEFINE_multi_string("unset", [], "Remove a key of an open mapping of the config, e.g. "
                              "config.sweep.solver_options.unipc.variant (see experiments/_overrides.py).")
    return config


_OPEN_OVERRIDES: list = []


def run_main(fn, config_flag) -> None:
    """Call ``fn(config, workdir, restart=...)``; a bad config, a conflicting workdir or a
    checkpoint of another model prints one message and exits with status 2 (nothing written)."""
    try:
        config = config_flag.value
        _overrides.apply(config, _OPEN_OVERRIDES, flags.FLAGS.unset)
        fn(config, flags.FLAGS.workdir, restart=flags.FLAGS.restart)
    except (ConfigError, WorkdirConflict, CheckpointMismatch) as e:
        logging.error("%s", e)
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


def _unknown_override(argv) -> str:
    """For an override of a field the config does not have, the message naming it."""
    import runpy

    path = next((a.split("=", 1)[1] for a in argv if a.startswith("--config=")), None)
    if path is None:
        return ""
    try:
        cfg = runpy.run_path(path)["get_config"]()
    except Exception:  # noqa: BLE001  (config_flags reports a broken file itself)
        return ""
    for a in argv:
        if not a.startswith("--config."):
            continue
        dotted = a[len("--config."):].split("=", 1)[0]
        node, parent = cfg, "config"
        for part in dotted.split("."):
            keys = list(node.keys()) if hasattr(node, "keys") else []
            if part not in keys:
                return (f"{parent}.{part}: unknown field (from {a!r}); allowed fields of {parent}: "
                        f"{sorted(keys)}")
            node, parent = node[part], f"{parent}.{part}"
    return ""


def _parse(argv):
    argv, found = _overrides.split(argv)
    _OPEN_OVERRIDES[:] = found
    sys.argv[:] = argv  # config_flags reads its overrides from sys.argv
    try:
        return flags.FLAGS(argv)
    except (AttributeError, KeyError) as e:
        msg = _unknown_override(argv) or f"cannot apply a --config override: {e}"
        print(f"error: {msg}", file=sys.stderr)
        sys.exit(2)


def start(main) -> None:
    app.run(main, flags_parser=_parse)
