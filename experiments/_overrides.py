"""Command-line values for the open mappings of a config (a factory's arguments, solver
options, sweep option axes), which a locked ml-collections config cannot take as
``--config.<path>=value`` because their keys are not known in advance.

``--config.model.args.std=0.25`` or ``--config.sweep.solver_options.unipc.variant=bh1``
is taken out of argv before absl parses it and applied after the config file is
loaded: the value is a Python literal (``0.25``, ``True``, ``'bh1'``, ``(1, 2)``) or else
the plain string.  ``--unset=config.sweep.solver_options.unipc.variant`` removes a key
(back to the solver's default); ``--unset`` of a key that is not there is an error.
"""
from __future__ import annotations

import ast
from typing import List, Tuple

import ml_collections

from samplax.experiment.errors import ConfigError

# the mappings whose keys are free (dotted paths below "config.")
OPEN_MAPPINGS = ("model.args", "model.data_args", "model.schedule_args", "solver.options", "sweep.solver_options",
                 "sampler.options", "sweep.sampler_options", "decoder.options", "sweep.decoder_options",
                 "problem.draft_options", "problem.reward_options", "problem.constraint_options", "problem.task_options",
                 "sweep.option_axes", "data.options", "schedule.options", "model.options", "train.sampler.options")


def _open_root(dotted: str):
    for root in OPEN_MAPPINGS:
        if dotted.startswith(root + "."):
            return root
    return None


def split(argv: List[str]) -> Tuple[List[str], list]:
    """(argv without the open-mapping overrides, [(dotted path, raw value), ...])."""
    rest, found = [], []
    for a in argv:
        if a.startswith("--config.") and "=" in a:
            dotted, raw = a[len("--config."):].split("=", 1)
            if _open_root(dotted):
                found.append((dotted, raw))
                continue
        rest.append(a)
    return rest, found


def parse_value(raw: str):
    try:
        return ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        return raw


def _walk(config, parts, path, create):
    node = config
    for p in parts:
        if not isinstance(node, (ml_collections.ConfigDict, dict)):
            raise ConfigError(path, f"{p!r} is inside a value that is not a mapping")
        if p not in node:
            if not create:
                raise ConfigError(path, f"is not set (have: {sorted(node.keys())})")
            node[p] = ml_collections.ConfigDict()
        node = node[p]
    if not isinstance(node, (ml_collections.ConfigDict, dict)):
        raise ConfigError(path, f"{parts[-1]!r} holds {node!r}, not a mapping")
    return node


def apply(config, overrides: list, unsets: List[str]) -> None:
    """Set each (dotted, raw) override and remove each ``--unset`` path, in place."""
    with config.unlocked() if hasattr(config, "unlocked") else _null():
        for dotted, raw in overrides:
            *parents, leaf = dotted.split(".")
            node = _walk(config, parents, "config." + dotted, create=True)
            node[leaf] = parse_value(raw)
        for path in unsets:
            dotted = path[len("config."):] if path.startswith("config.") else path
            if not _open_root(dotted):
                raise ConfigError("--unset", f"{path!r}: only keys of the open mappings can be removed; allowed: "
                                             f"keys under {['config.' + r for r in OPEN_MAPPINGS]}")
            *parents, leaf = dotted.split(".")
            node = _walk(config, parents, "config." + dotted, create=False)
            if leaf not in node:
                raise ConfigError("config." + dotted, f"is not set (have: {sorted(node.keys())})")
            del node[leaf]


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False
