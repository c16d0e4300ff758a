"""What ``experiments.train`` runs: a config's top-level ``kind`` picks the training loop.

* no ``kind`` (or ``kind = "model"``): :func:`samplax.experiment.trainer.run_train`, the
  diffusion / masked / causal / classifier trainer, with its data sampler
  (``config.train.sampler``, :mod:`samplax.data_sampling`);
* ``"raft"``: rejection-sampling fine-tuning of a causal LM with a per-prompt sample
  allocation (:mod:`samplax.experiment.raft`);
* ``"offline_rl"``: an offline RL learner on a mixed-quality data set with trajectory
  weighting (:mod:`samplax.experiment.rl_offline`);
* ``"snapshot_rl"``: online RL on a gymnax environment with snapshot start states
  (:mod:`samplax.experiment.rl_snapshot`);
* ``"distill"``: step / size / both (FastLightGen) distillation of a trained diffusion model
  (:mod:`samplax.experiment.distill`);
* ``"mmd_finetune"``: MMD finetuning of a trained diffusion model through its few-step sampler
  (:mod:`samplax.experiment.mmd_finetune`).

Each loop validates its whole config before writing anything (one ConfigError naming the
field), holds the workdir's lock, and keeps its state -- sampler state included -- in Orbax
checkpoints, so a run killed with kill -9 and rerun draws what an uninterrupted run draws.
The loops are imported when used (each pulls its own dependencies, e.g. gymnax)."""
from __future__ import annotations

import importlib

from samplax.experiment.config import ConfigError

#: kind -> "module:function" called as function(config, workdir, restart=...)
TRAIN_KINDS = {
    "model": "samplax.experiment.trainer:run_train",
    "raft": "samplax.experiment.raft:run_raft",
    "offline_rl": "samplax.experiment.rl_offline:run_offline_rl",
    "snapshot_rl": "samplax.experiment.rl_snapshot:run_snapshot_rl",
    "mmd_finetune": "samplax.experiment.mmd_finetune:run_mmd_finetune",
    "distill": "samplax.experiment.distill:run_distill",
}


#: kind -> "module:function" that checks a config of that kind (ConfigError naming the field), touching no file
TRAIN_VALIDATORS = {
    "model": "samplax.experiment.config:validate_train",
    "raft": "samplax.experiment.raft:validate_raft",
    "offline_rl": "samplax.experiment.rl_offline:validate_offline_rl",
    "snapshot_rl": "samplax.experiment.rl_snapshot:validate",
    "mmd_finetune": "samplax.experiment.mmd_finetune:validate_mmd_finetune",
    "distill": "samplax.experiment.distill:validate_distill",
}


def _resolve(spec: str):
    module, fn = spec.split(":")
    return getattr(importlib.import_module(module), fn)


def train_kind(config) -> str:
    """The config's ``kind`` ("model" when absent); ConfigError("config.kind") when unknown."""
    kind = config.get("kind", "model") if hasattr(config, "get") else "model"
    if not isinstance(kind, str) or kind not in TRAIN_KINDS:
        raise ConfigError("config.kind", f"unknown training kind {kind!r}; allowed: {sorted(TRAIN_KINDS)}")
    return kind


def run_training(config, workdir, restart: bool = False):
    """Run (or resume) the training loop of ``config``'s kind in ``workdir``; returns its summary."""
    return _resolve(TRAIN_KINDS[train_kind(config)])(config, workdir, restart=restart)


def validate_training(config) -> dict:
    """Check a training config of any kind; returns it as a plain dict (ConfigError on a bad field)."""
    return _resolve(TRAIN_VALIDATORS[train_kind(config)])(config)


__all__ = ["TRAIN_KINDS", "TRAIN_VALIDATORS", "train_kind", "run_training", "validate_training"]
