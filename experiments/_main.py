"""What every entrypoint shares: the flags and the error handling around one library call.

Every bad input an entrypoint can see before it starts working -- a config file that
does not load or does not return a ConfigDict, a command-line override of an unknown
field or of the wrong type, a bad config value, a workdir that cannot be one, a
workdir of another config or in use by another process -- ends in ONE line on stderr,
``error: <field or argument>: <what is wrong>; allowed: ...``, and exit status 2, with
nothing written.
"""
from __future__ import annotations

import os
import runpy
import sys

import ml_collections
from absl import app, flags
from ml_collections import config_flags

from experiments import _overrides
from samplax.experiment import ConfigError, WorkdirConflict
from samplax.experiment.checkpoints import CheckpointMismatch
from samplax.experiment.results import check_workdir

_DEFAULT_CONFIG = {}


def default_config_path(name: str) -> str:
    """A config file of the installed ``configs`` package (works from any directory)."""
    import configs

    return os.path.join(os.path.dirname(os.path.abspath(configs.__file__)), os.path.basename(name))


def define_flags(default_config: str):
    default = default_config_path(default_config)
    _DEFAULT_CONFIG["path"] = default
    config = config_flags.DEFINE_config_file("config", default, "Path to an ml-collections config file (default: "
                                             f"the installed configs/{os.path.basename(default)}).", lock_config=True)
    flags.DEFINE_string("workdir", None, "Directory for results, plots and caches (local or gs://bucket/dir).",
                        required=True)
    flags.DEFINE_bool("restart", False, "Delete the workdir's results and start over.")
    flags.DEFINE_multi_string("unset", [], "Remove a key of an open mapping of the config, e.g. "
                              "config.sweep.solver_options.unipc.variant (see experiments/_overrides.py).")
    return config


# --config.<open mapping>.<key>=value overrides, taken out of argv before absl parses it
_OPEN_OVERRIDES: list = []


def fail(message: str) -> None:
    """Print ``error: <message>`` (one line) and exit with status 2."""
    print("error: " + " ".join(str(message).split("\n")), file=sys.stderr)
    sys.exit(2)


def run_main(fn, config_flag) -> None:
    """Call ``fn(config, workdir, restart=...)``; a bad workdir, a bad config, a conflicting
    or locked workdir or a checkpoint of another model prints one line and exits with
    status 2 (nothing written)."""
    try:
        # every entrypoint, before the library call (which checks it again); in a multi-process
        # run only the name here: process 0 alone checks the filesystem, and the others follow it
        config = config_flag.value
        _overrides.apply(config, _OPEN_OVERRIDES, flags.FLAGS.unset)
        distributed = bool(config.get("distributed", False))
        check_workdir(flags.FLAGS.workdir, filesystem=not distributed)
        fn(config, flags.FLAGS.workdir, restart=flags.FLAGS.restart)
    except (ConfigError, WorkdirConflict, CheckpointMismatch) as e:
        fail(str(e))


# ---------------------------------------------------------------------------------------
# The config file and the command-line overrides, checked before absl sees them
# ---------------------------------------------------------------------------------------
def _config_arg(argv):
    """The --config value of ``argv`` (the last one wins), else the entrypoint's default."""
    value = None
    for i, a in enumerate(argv):
        if a.startswith("--config="):
            value = a[len("--config="):]
        elif a == "--config" and i + 1 < len(argv):
            value = argv[i + 1]
    return value if value is not None else _DEFAULT_CONFIG.get("path")


def load_config_file(spec: str):
    """Run a config file's ``get_config()`` (``path`` or ``path:argument``, as
    ml_collections' config_flags reads it) and return its ConfigDict, or exit 2 with one
    line naming what is wrong."""
    path, arg = spec, None
    if not os.path.isfile(path) and ":" in spec:
        path, arg = spec.split(":", 1)
    if not path:
        fail("--config: is empty; allowed: a Python file with get_config() (e.g. configs/gmm.py)")
    if not os.path.isfile(path):
        fail(f"--config: {path}: no such file; allowed: a Python file with get_config() (e.g. configs/gmm.py)")
    try:
        module = runpy.run_path(path, run_name="config_file")
    except SyntaxError as e:
        fail(f"--config: {path} does not parse (line {e.lineno}: {e.msg}); allowed: a Python file with get_config()")
    except Exception as e:  # noqa: BLE001  (anything the file does at import)
        fail(f"--config: {path} raised {type(e).__name__} when loaded: {e}")
    get_config = module.get("get_config")
    if not callable(get_config):
        fail(f"--config: {path} has no get_config() function; allowed: a Python file defining "
             f"get_config() that returns an ml_collections.ConfigDict")
    try:
        cfg = get_config() if arg is None else get_config(arg)
    except Exception as e:  # noqa: BLE001
        fail(f"--config: {path}: get_config() raised {type(e).__name__}: {e}")
    if not isinstance(cfg, ml_collections.ConfigDict):
        fail(f"--config: {path}: get_config() returned {type(cfg).__name__} ({_short(cfg)}); allowed: an "
             f"ml_collections.ConfigDict (wrap a dict: ml_collections.ConfigDict(d))")
    return cfg


def _short(v, n: int = 60) -> str:
    r = repr(v)
    return r if len(r) <= n else r[: n - 3] + "..."


def _lookup(cfg, dotted: str):
    """(parent ConfigDict, leaf name, dotted path of the parent) or an error message."""
    node, parent = cfg, "config"
    *parents, leaf = dotted.split(".")
    for part in parents:
        keys = list(node.keys()) if hasattr(node, "keys") else []
        if part not in keys:
            return f"{parent}.{part}: unknown field; allowed fields of {parent}: {sorted(keys)}"
        node, parent = node[part], f"{parent}.{part}"
    if not isinstance(node, ml_collections.ConfigDict):
        return f"{parent}: is not a section (it holds {_short(node)}); it has no field {leaf!r}"
    if leaf not in node.keys():
        return f"{parent}.{leaf}: unknown field; allowed fields of {parent}: {sorted(node.keys())}"
    return node, leaf, parent


_TYPE_WORDS = {bool: "true or false", int: "an integer", float: "a number", str: "a string",
               tuple: "a tuple such as (5, 10)", list: "a list such as [5, 10]"}


def _override_problem(argv, cfg) -> str:
    """For the first ``--config.x=v`` override that names an unknown field or whose value
    does not parse as the field's type, the message naming it; else ''."""
    for a in argv:
        if not a.startswith("--config.") or "=" not in a:
            continue
        dotted, value = a[len("--config."):].split("=", 1)
        found = _lookup(cfg, dotted)
        if isinstance(found, str):
            return f"{found} (from {a!r})"
        node, leaf, parent = found
        try:
            kind = node.get_type(leaf)
        except Exception:  # noqa: BLE001
            kind = type(node[leaf])
        if isinstance(kind, type) and issubclass(kind, ml_collections.ConfigDict):
            return (f"config.{dotted}: is a section, not a value (from {a!r}); allowed: set its fields, e.g. "
                    f"--config.{dotted}.{sorted(node[leaf].keys())[0] if node[leaf].keys() else 'name'}=...")
        words = _TYPE_WORDS.get(kind, getattr(kind, "__name__", str(kind)))
        if not _parses_as(kind, value):
            return f"config.{dotted}: cannot parse {value!r} (from {a!r}) as {words}; allowed: {words}"
    return ""


_PARSERS = {bool: flags.BooleanParser(), int: flags.IntegerParser(), float: flags.FloatParser()}


def _parses_as(kind, value: str) -> bool:
    """Whether config_flags can parse ``value`` for a field of type ``kind`` (absl's own
    parsers, which config_flags uses for these types)."""
    parser = _PARSERS.get(kind)
    if parser is None:
        return True
    try:
        parser.parse(value)
    except ValueError:
        return False
    return True


def _parse(argv):
    argv, found = _overrides.split(argv)
    _OPEN_OVERRIDES[:] = found
    sys.argv[:] = argv  # config_flags reads its overrides from sys.argv
    cfg = load_config_file(_config_arg(argv[1:]))
    problem = _override_problem(argv[1:], cfg)
    if problem:
        fail(problem)
    try:
        return flags.FLAGS(argv)
    except flags.Error as e:
        text = " ".join(str(e).split())
        if "--workdir" in text and "must have a value" in text:
            fail("workdir: missing: --workdir must have a value; allowed: --workdir=DIR (a local directory or "
                 "gs://bucket/dir)")
        if "--config" in text or "config." in text:
            fail(f"config: cannot apply a --config override: {text}")
        fail(f"command line: {text}; allowed flags: --config=FILE, --config.<field>=VALUE, --workdir=DIR, "
             f"--restart, --unset=config.<open mapping>.<key>")
    except Exception as e:  # noqa: BLE001  (config_flags' KeyError/AttributeError/TypeError ...)
        fail(f"config: cannot apply a --config override: {type(e).__name__}: {e}")


def start(main) -> None:
    app.run(main, flags_parser=_parse)
