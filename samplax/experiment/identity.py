"""What a row, a config or a checkpoint *is*: the hash of its settings and a config's
identity (the config without the fields that only say how it is computed).

A module of its own, below the plan, the trainer and the checkpoints, so that none of
them imports another for these two functions (the experiment modules import each other
in one direction only: see DESIGN.md's layers).
"""
from __future__ import annotations

import hashlib
import json

from samplax.experiment.config import NON_IDENTITY_FIELDS


def settings_hash(spec: dict, digits: int = 12) -> str:
    """Identity of a row (or of any JSON-able settings): sha1 of the sorted JSON, the
    first ``digits`` hex digits (12 for rows; the reference cache uses 16)."""
    return hashlib.sha1(json.dumps(spec, sort_keys=True, default=str).encode()).hexdigest()[:digits]


def identity(config: dict, drop=NON_IDENTITY_FIELDS) -> dict:
    """The config without the fields that do not change results (``drop``: dotted paths,
    NON_IDENTITY_FIELDS for sample/sweep configs)."""
    out = json.loads(json.dumps(config, default=str))
    for dotted in drop:
        *parents, leaf = dotted.split(".")
        d = out
        for p in parents:
            d = d.get(p, {})
        d.pop(leaf, None)
    return out


__all__ = ["settings_hash", "identity"]
