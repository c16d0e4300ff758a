"""Orbax checkpoints of a training run: the TrainState plus a JSON record.

A checkpoint directory ``<workdir>/checkpoints/<step>/`` holds two items:

* ``state``: the :class:`~samplax.training.train.TrainState` (step, params, EMA params,
  optimiser state), saved with ``StandardSave`` and restored with ``StandardRestore``
  into a *target built from a freshly initialised state* (optax states are tuples of
  named tuples that Orbax cannot rebuild from the files alone);
* ``meta``: JSON -- the step, the data-order and RNG seeds (the data and RNG state:
  both are pure functions of (seed, step)), and the *model identity* (a digest of every
  config field that shapes the parameters or their meaning).

:class:`Checkpoints` wraps ``orbax.checkpoint.CheckpointManager`` and is a context
manager, so the manager is always closed (an unclosed manager can keep a background
save running and lose the last checkpoint).  Paths are made absolute.  Orbax writes a
step into a temporary directory and renames it when complete, so a run killed during
a save leaves the previous checkpoint as the latest complete one.  Restoring a
checkpoint whose model identity differs from the current one raises
:class:`CheckpointMismatch` naming the differing fields; nothing is loaded.
"""
from __future__ import annotations

import contextlib
import json
import os
from typing import Optional

import jax
import orbax.checkpoint as ocp
from absl import logging

from samplax.experiment.plan import settings_hash
from samplax.experiment.results import config_diff

STATE, META = "state", "meta"


@contextlib.contextmanager
def _quiet():
    """Orbax logs a dozen INFO lines per save through absl: keep warnings only."""
    level = logging.get_verbosity()
    logging.set_verbosity(min(level, logging.WARNING))  # absl: a lower number is more severe
    try:
        yield
    finally:
        logging.set_verbosity(level)


class CheckpointMismatch(ValueError):
    """A checkpoint was written by a different model config."""


class Checkpoints:
    """``with Checkpoints(dir, model_identity, keep=3) as ckpt: ...``

    ``model_identity`` is a JSON-able dict (see module docstring); ``keep`` the number
    of most recent checkpoints kept."""

    def __init__(self, directory: str, model_identity: dict, keep: int = 3):
        self.directory = os.path.abspath(directory)
        self.model_identity = json.loads(json.dumps(model_identity, default=str))
        self.model_hash = settings_hash(self.model_identity)
        options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True, enable_async_checkpointing=False,
                                               cleanup_tmp_directories=True)
        with _quiet():
            self._manager = ocp.CheckpointManager(self.directory, options=options, item_names=(STATE, META))

    # -- context manager: always closed -------------------------------------------------
    def __enter__(self) -> "Checkpoints":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if self._manager is not None:
            with _quiet():
                self._manager.wait_until_finished()
                self._manager.close()
            self._manager = None

    # -- queries --------------------------------------------------------------------------
    def steps(self) -> list:
        return list(self._manager.all_steps())

    def latest_step(self) -> Optional[int]:
        return self._manager.latest_step()

    def read_meta(self, step: int) -> dict:
        with _quiet():
            return self._manager.restore(step, args=ocp.args.Composite(**{META: ocp.args.JsonRestore()}))[META]

    def check(self, step: int) -> dict:
        """The meta of ``step``; CheckpointMismatch if its model identity differs."""
        meta = self.read_meta(step)
        if meta.get("model_hash") != self.model_hash:
            diffs = config_diff(meta.get("model_identity"), self.model_identity)
            shown = "; ".join(diffs[:6]) or "model identity digests differ"
            raise CheckpointMismatch(
                f"checkpoint {os.path.join(self.directory, str(step))} was written by a different model config "
                f"({shown}; saved = the checkpoint's); refusing to load it. Use another workdir, or --restart to start over.")
        return meta

    # -- save / restore -------------------------------------------------------------------
    def save(self, step: int, state, meta: dict, force: bool = True) -> bool:
        meta = dict(meta, step=int(step), model_hash=self.model_hash, model_identity=self.model_identity)
        with _quiet():
            saved = self._manager.save(int(step), args=ocp.args.Composite(**{
                STATE: ocp.args.StandardSave(state), META: ocp.args.JsonSave(meta)}), force=force)
        logging.info("checkpoint: saved step %d in %s", step, self.directory)
        return saved

    def restore(self, target, step: Optional[int] = None):
        """(state, meta) of ``step`` (default: the latest), restored into the structure,
        dtypes and shardings of ``target`` (a freshly initialised state); None when the
        directory holds no checkpoint.  Refuses a checkpoint of another model config."""
        step = self.latest_step() if step is None else step
        if step is None:
            return None
        meta = self.check(step)
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
        with _quiet():
            out = self._manager.restore(step, args=ocp.args.Composite(**{
                STATE: ocp.args.StandardRestore(abstract), META: ocp.args.JsonRestore()}))
        return out[STATE], meta


__all__ = ["Checkpoints", "CheckpointMismatch"]
