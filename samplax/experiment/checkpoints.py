"""Orbax checkpoints of a training run: the TrainState plus a JSON record, checked on restore.

A checkpoint directory ``<workdir>/checkpoints/<step>/`` holds two items:

* ``state``: the :class:`~samplax.training.train.TrainState` (step, params, EMA params,
  optimiser state), saved with ``StandardSave`` and restored with ``StandardRestore``
  into a *target built from a freshly initialised state* (optax states are tuples of
  named tuples that Orbax cannot rebuild from the files alone);
* ``meta``: JSON -- the step, the *model identity* (every config field that shapes the
  parameters or their meaning: what sampling needs), the *training identity* (every
  config field that changes the trained parameters: optimiser, steps, seeds, loss,
  data options ...; what resuming needs), ``state_sha256`` (a SHA-256 of the saved
  state's leaves: path, dtype, shape and bytes) and ``meta_sha256`` (of the meta itself).

:class:`Checkpoints` wraps ``orbax.checkpoint.CheckpointManager`` and is a context
manager, so the manager is always closed.  The directory is an ``etils.epath.Path``
(``samplax.io.as_path``: a ``gs://`` path stays a URI all the way to Orbax).  The save
cadence is Orbax's: ``save_interval_steps`` (a ``FixedIntervalPolicy``), the final step
(``SpecificStepsPolicy``) and Orbax's preemption policy, asked through
:meth:`Checkpoints.should_save`; :meth:`Checkpoints.reached_preemption` is Orbax's
preemption sync point (multi-process jobs under ``jax.distributed``).

Orbax writes a step into a temporary directory and renames it when complete, so a run
killed during a save leaves the previous checkpoint as the latest complete one.  What a
rename cannot protect against -- a file removed or truncated later, a garbage meta, an
emptied step directory, a flipped bit -- is found on restore: unreadable items, a meta
that fails its own checksum or a state whose leaves do not hash to ``state_sha256``
raise :class:`CheckpointDamaged`; :meth:`Checkpoints.restore_intact` then warns, names
the damaged step and falls back to the newest intact one.  A checkpoint of another
config raises :class:`CheckpointMismatch` naming the differing fields; nothing is loaded.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
from typing import Optional

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging

from samplax import io
from samplax.experiment.identity import settings_hash
from samplax.experiment.results import check_saved_config, config_diff

STATE, META = "state", "meta"
DAMAGED_SUFFIX = ".damaged"


@contextlib.contextmanager
def _quiet(level_kept=logging.WARNING):
    """Orbax logs a dozen INFO lines per save through absl: keep warnings only (or errors)."""
    level = logging.get_verbosity()
    logging.set_verbosity(min(level, level_kept))  # absl: a lower number is more severe
    try:
        yield
    finally:
        logging.set_verbosity(level)


class CheckpointMismatch(ValueError):
    """A checkpoint was written by a different config (or cannot be used at all)."""


class CheckpointDamaged(CheckpointMismatch):
    """A checkpoint's files are missing, unreadable or fail their checksums.

    A subclass of CheckpointMismatch so that every caller that refuses an unusable
    checkpoint (the entrypoints: one line, exit status 2) refuses a damaged one too."""


def _host_array(x) -> np.ndarray:
    """A leaf's full value on this host (a replicated multi-process array: its local copy)."""
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        if not x.is_fully_replicated:
            raise ValueError("state_checksum: leaves must be replicated or fully addressable")
        x = x.addressable_data(0)
    return np.ascontiguousarray(np.asarray(x))


def state_checksum(state) -> str:
    """SHA-256 of a pytree's leaves: each leaf's path, dtype, shape and bytes, in order."""
    h = hashlib.sha256()
    for path, leaf in jax.tree_util.tree_flatten_with_path(state)[0]:
        a = _host_array(leaf)
        h.update(f"{jax.tree_util.keystr(path)}|{a.dtype.str}|{a.shape}|".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def _meta_digest(meta: dict) -> str:
    body = {k: v for k, v in meta.items() if k != "meta_sha256"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode()).hexdigest()


def _jsonable(d: Optional[dict]) -> Optional[dict]:
    return None if d is None else json.loads(json.dumps(d, default=str))


class Checkpoints:
    """``with Checkpoints(dir, model_identity, train_identity, keep=3, every=500, final_step=N) as ckpt: ...``

    * ``model_identity``: JSON-able dict, checked on every restore (sampling needs only it);
    * ``train_identity``: JSON-able dict, checked on restore when given (resuming a run);
      None skips it (loading a trained model for sampling);
    * ``keep``: the number of most recent checkpoints kept; ``every``: Orbax's
      ``save_interval_steps``; ``final_step``: a step always saved;
    * ``read_only``: open without creating or changing anything (validation, sampling)."""

    def __init__(self, directory, model_identity: dict, train_identity: Optional[dict] = None, keep: int = 3,
                 every: Optional[int] = None, final_step: Optional[int] = None, read_only: bool = False):
        self.directory = io.as_path(directory)
        self.model_identity = _jsonable(model_identity)
        self.model_hash = settings_hash(self.model_identity)
        self.train_identity = _jsonable(train_identity)
        self.train_hash = None if train_identity is None else settings_hash(self.train_identity)
        self.read_only = read_only
        policies = ocp.checkpoint_managers
        # Orbax's default policy adds InitialSavePolicy (a save at the first step asked
        # about): spelled out without it, so a fresh run does not save step 1.
        chosen = [policies.FixedIntervalPolicy(every)] if every else []
        if final_step:
            chosen.append(policies.SpecificStepsPolicy((int(final_step),)))
        chosen.append(policies.PreemptionCheckpointingPolicy())
        options = ocp.CheckpointManagerOptions(
            save_interval_steps=every or 1, max_to_keep=keep, create=not read_only, read_only=read_only,
            enable_async_checkpointing=False, cleanup_tmp_directories=not read_only,
            save_decision_policy=policies.AnySavePolicy(chosen))
        # read-only: Orbax warns that it ignores the save options and cannot write; expected here
        with _quiet(logging.ERROR if read_only else logging.WARNING):
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
    def path(self, step: int):
        return self.directory / str(int(step))

    def steps(self) -> list:
        return sorted(int(s) for s in self._manager.all_steps())

    def latest_step(self) -> Optional[int]:
        return self._manager.latest_step()

    def should_save(self, step: int) -> bool:
        """Orbax's decision: a multiple of ``every``, the final step, or a preemption sync point."""
        with _quiet():
            return bool(self._manager.should_save(int(step)))

    def reached_preemption(self, step: int) -> bool:
        """Orbax's preemption sync point (True only under jax.distributed with JAX's
        preemption service, once every process reached the step after a SIGTERM)."""
        return bool(self._manager.reached_preemption(int(step)))

    def read_meta(self, step: int) -> dict:
        """The meta of ``step``, checked against its own checksum; CheckpointDamaged if it
        cannot be read or is not a samplax meta of that step."""
        try:
            with _quiet():
                meta = self._manager.restore(step, args=ocp.args.Composite(**{META: ocp.args.JsonRestore()}))[META]
        except Exception as e:  # noqa: BLE001  (Orbax/JSON/TensorStore errors all mean: unreadable)
            raise CheckpointDamaged(f"checkpoint {self.path(step)}: meta unreadable ({type(e).__name__}: "
                                    f"{str(e).splitlines()[0][:200] if str(e) else ''})") from None
        if not isinstance(meta, dict) or not {"step", "model_hash", "model_identity"} <= set(meta):
            raise CheckpointDamaged(f"checkpoint {self.path(step)}: meta is not a samplax checkpoint record")
        if "meta_sha256" in meta and meta["meta_sha256"] != _meta_digest(meta):
            raise CheckpointDamaged(f"checkpoint {self.path(step)}: meta fails its checksum")
        if meta["step"] != int(step):
            raise CheckpointDamaged(f"checkpoint {self.path(step)}: meta says step {meta['step']!r}")
        return meta

    def check(self, step: int, meta: Optional[dict] = None) -> dict:
        """The meta of ``step``; CheckpointMismatch (naming the fields) if it was written by
        another model config or, when this object has a training identity, another
        training config."""
        meta = self.read_meta(step) if meta is None else meta
        where = self.path(step)
        if meta["model_hash"] != self.model_hash:
            diffs = config_diff(meta.get("model_identity"), self.model_identity)
            raise CheckpointMismatch(self._refusal(where, "model", diffs, "model identity digests differ"))
        if self.train_identity is None:
            return meta
        if "train_identity" not in meta:  # written before checkpoints carried the training identity
            logging.warning("checkpoint %s has no training identity (an older samplax): only its model identity "
                            "was checked", where)
            return meta
        if meta.get("train_hash") != self.train_hash:
            diffs = config_diff(meta.get("train_identity"), self.train_identity)
            raise CheckpointMismatch(self._refusal(where, "training", diffs, "training identity digests differ"))
        return meta

    @staticmethod
    def _refusal(where, kind: str, diffs: list, fallback: str) -> str:
        shown = "; ".join(diffs[:6]) + (f"; and {len(diffs) - 6} more" if len(diffs) > 6 else "") or fallback
        return (f"checkpoint {where} was written by a different {kind} config ({shown}; saved = the "
                f"checkpoint's); refusing to load it. Use another workdir, or --restart to start over.")

    # -- save / restore -------------------------------------------------------------------
    def save(self, step: int, state, meta: Optional[dict] = None) -> bool:
        """Save ``state`` as ``step`` (always: the caller asks :meth:`should_save` first)."""
        if self.read_only:
            raise RuntimeError(f"Checkpoints({self.directory}) is read-only")
        record = dict(meta or {}, step=int(step), model_hash=self.model_hash, model_identity=self.model_identity,
                      state_sha256=state_checksum(state))
        if self.train_identity is not None:
            record.update(train_hash=self.train_hash, train_identity=self.train_identity)
        record["meta_sha256"] = _meta_digest(record)
        with _quiet():
            saved = self._manager.save(int(step), args=ocp.args.Composite(**{
                STATE: ocp.args.StandardSave(state), META: ocp.args.JsonSave(record)}), force=True)
        logging.info("checkpoint: saved step %d in %s", step, self.directory)
        return saved

    def restore(self, target, step: int):
        """(state, meta) of ``step``, restored into the structure, dtypes and shardings of
        ``target`` (a freshly initialised state).  CheckpointMismatch for another config,
        CheckpointDamaged when an item is unreadable or the state fails its checksum."""
        meta = self.check(step)
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
        try:
            with _quiet():
                out = self._manager.restore(step, args=ocp.args.Composite(**{
                    STATE: ocp.args.StandardRestore(abstract)}))
            state = out[STATE]
        except Exception as e:  # noqa: BLE001  (missing item, truncated data: TensorStore/Orbax errors)
            first = str(e).splitlines()[0][:200] if str(e) else ""
            raise CheckpointDamaged(f"checkpoint {self.path(step)}: state unreadable ({type(e).__name__}: "
                                    f"{first})") from None
        if "state_sha256" in meta:
            got = state_checksum(state)
            if got != meta["state_sha256"]:
                raise CheckpointDamaged(f"checkpoint {self.path(step)}: state fails its checksum (sha256 "
                                        f"{got[:12]}..., saved {meta['state_sha256'][:12]}...)")
        return state, meta

    def restore_intact(self, target):
        """(state, meta, damaged) of the newest intact checkpoint, or (None, None, damaged)
        when the directory holds none; ``damaged`` lists (step, reason) of the newer
        damaged ones, each also logged as a warning.  CheckpointMismatch (another config)
        is raised, not skipped; CheckpointDamaged when checkpoints exist but none is intact."""
        damaged = []
        steps = self.steps()
        for step in reversed(steps):
            try:
                state, meta = self.restore(target, step)
            except CheckpointDamaged as e:
                logging.warning("checkpoint step %d is damaged, skipped: %s", step, e)
                damaged.append((step, str(e)))
                continue
            if damaged:
                logging.warning("using checkpoint step %d, the newest intact one (damaged: %s)", step,
                                ", ".join(str(s) for s, _ in damaged))
            return state, meta, damaged
        if damaged:
            raise CheckpointDamaged(f"no intact checkpoint in {self.directory}: " +
                                    "; ".join(f"step {s}: {r}" for s, r in damaged) +
                                    ". Use --restart to start over (deletes them).")
        return None, None, damaged

    def reload(self) -> None:
        """Re-read the step list from the directory (after another process changed it)."""
        self._manager.reload()

    def start(self, restored, damaged, fresh):
        """``(state, first step)`` of a single-process loop after :func:`resume_point`: the
        damaged newer steps go aside (``<step>.damaged``) so they can be saved again, then the
        restored ``(state, meta)`` (or ``fresh`` at step 0 when ``restored`` is None)."""
        for step, _ in sorted(damaged):
            self.set_aside(step)
        if damaged:
            self.reload()
        return (fresh, 0) if restored is None else (restored[0], int(restored[1]["step"]))

    def set_aside(self, step: int):
        """Move a damaged step out of Orbax's view (to ``<step>.damaged``, kept for
        inspection), so the run can save that step again; returns the new path.  Call
        :meth:`reload` afterwards (on every process of a multi-process job)."""
        if self.read_only:
            raise RuntimeError(f"Checkpoints({self.directory}) is read-only")
        src = self.path(step)
        dst = self.directory / f"{int(step)}{DAMAGED_SUFFIX}"
        k = 1
        while dst.exists():
            k += 1
            dst = self.directory / f"{int(step)}{DAMAGED_SUFFIX}{k}"
        if src.exists():
            src.rename(dst)
        logging.warning("checkpoint step %d moved aside to %s", step, dst)
        return dst


__all__ = ["Checkpoints", "CheckpointMismatch", "CheckpointDamaged", "state_checksum", "resume_point",
           "restore_checkpoint", "resume_run"]


def resume_point(directory, model_identity: dict, train_identity: Optional[dict], target):
    """Read-only, before a run writes anything: ``(state, meta, damaged)`` of the newest intact
    checkpoint under ``directory`` restored into ``target`` (:meth:`Checkpoints.restore_intact`),
    or ``(None, None, [])`` when the directory does not exist."""
    directory = io.as_path(directory)
    if not directory.exists():
        return None, None, []
    with Checkpoints(directory, model_identity, train_identity, read_only=True) as ro:
        return ro.restore_intact(target)


def resume_run(workdir, directory, model_identity: dict, config_identity: dict, train_identity: Optional[dict],
               target, restart: bool, check=None):
    """Read-only, before a run writes anything: ``(restored, damaged)`` for :meth:`Checkpoints.start`.
    ``restart``: ``(None, [])``.  Otherwise the workdir's saved config must be ``config_identity``
    (WorkdirConflict naming the fields), and ``restored`` is the newest intact checkpoint's
    ``(state, meta)`` (:func:`resume_point`; None when there is none), which ``check(meta)`` may
    refuse (e.g. a checkpoint made from another base model) by raising.  Shared by the trainer,
    the search and the offline-RL, MMD-finetune and distill loops."""
    if restart:
        return None, []
    check_saved_config(str(workdir), config_identity)
    state, meta, damaged = resume_point(directory, model_identity, train_identity, target)
    if state is None:
        return None, damaged
    if check is not None:
        check(meta)
    return (state, meta), damaged


def restore_checkpoint(directory, model_identity: dict, target, step: Optional[int] = None, what: str = ""):
    """``(state, meta, path)`` of checkpoint ``step`` under ``directory`` (default: the newest
    intact one), restored into the structure of ``target`` and checked against
    ``model_identity``; read only.  FileNotFoundError (naming ``what``, e.g. the workdir) when
    there is no complete checkpoint or no checkpoint of that step.  Shared by the loaders of
    training workdirs, MMD-finetuned models and distilled students."""
    what = what or str(directory)
    directory = io.as_path(directory)
    if not directory.exists():
        raise FileNotFoundError(f"{what}: no complete checkpoint under {directory}")
    with Checkpoints(directory, model_identity, read_only=True) as ckpt:
        if not ckpt.steps():
            raise FileNotFoundError(f"{what}: no complete checkpoint under {ckpt.directory}")
        if step is None:
            state, meta, _ = ckpt.restore_intact(target)
        elif int(step) not in ckpt.steps():
            raise FileNotFoundError(f"{what}: no checkpoint of step {step}; have {ckpt.steps()}")
        else:
            state, meta = ckpt.restore(target, int(step))
        return state, meta, str(ckpt.path(meta["step"]))
