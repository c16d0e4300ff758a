"""Snapshot RL training loop: PPO on a gymnax environment whose episodes may start at
snapshots of a teacher's trajectories (:mod:`samplax.rl.snapshot`, S3RL of Zhao et al. 2024).

    python -m experiments.train --config=configs/train_snapshot_rl.py --workdir=DIR

A workdir holds::

    config.json            the config and its identity (a rerun of another config is refused)
    checkpoints/<update>/  Orbax: the whole PPOState -- params, optimiser, the running
                           environments' states and observations, the snapshot buffer and its
                           counters, the base key and the update counter
    train_log.jsonl        one row per chunk: step (updates done), env_steps, eval_return (the sampled
                           policy in the original env; eval_return_greedy: its argmax),
                           train_return, snapshot starts, losses, elapsed_s
    train_summary.json     the final row, the number of updates, the final state's checksum

The loop runs ``train.updates_per_chunk`` PPO updates per jitted call (a ``lax.scan``) and
saves a checkpoint after every chunk; the key of update u is ``fold_in(key, u)``, so a run
killed (kill -9) and rerun with the same command resumes from the last chunk and ends with
bitwise the same state as an uninterrupted run.
"""
from __future__ import annotations

import json
import math
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from samplax import io
from samplax.experiment import results as store
from samplax.experiment.checkpoints import Checkpoints, resume_point, state_checksum
from samplax.experiment.config import Field, check_tree, float_range, int_range, one_of, positive_tuple
from samplax.experiment.errors import ConfigError
from samplax.experiment.identity import identity

CHECKPOINT_DIR, LOG_FILE, SUMMARY_FILE = "checkpoints", "train_log.jsonl", "train_summary.json"
DERIVED = (CHECKPOINT_DIR, LOG_FILE, SUMMARY_FILE)
NON_IDENTITY = ("train.keep_checkpoints",)
EVAL_STREAM, BUFFER_STREAM, TEACHER_STREAM = 7, 11, 13
MAX_ENV_STEPS = 10**9


def snapshot_rl_config() -> ml_collections.ConfigDict:
    """The defaults (configs/train_snapshot_rl.py overrides a few)."""
    c = ml_collections.ConfigDict()
    c.kind = "snapshot_rl"
    c.seed = 0
    c.rl = ml_collections.ConfigDict(dict(env="Acrobot-v1", num_envs=16, num_steps=64, hidden=(64, 64)))
    c.rl.ppo = ml_collections.ConfigDict(dict(
        learning_rate=2.5e-4, anneal_lr=True, gamma=0.99, gae_lambda=0.95, clip_eps=0.2, vf_coef=0.5,
        ent_coef=0.01, max_grad_norm=0.5, update_epochs=4, num_minibatches=4))
    c.rl.snapshot = ml_collections.ConfigDict(dict(
        enabled=True, teacher="ppo", teacher_epsilon=0.3, teacher_updates=15, teacher_episodes=8,
        selection="cluster", num_clusters=8, truncation=100, prob=0.5, until_fraction=0.5))
    c.train = ml_collections.ConfigDict(dict(total_env_steps=61_440, updates_per_chunk=10, eval_episodes=32,
                                             keep_checkpoints=2))
    return c


# ---------------------------------------------------------------------------------------
# Validation (before anything is written)
# ---------------------------------------------------------------------------------------
def _schema():
    from samplax.rl.ppo import ENVS
    from samplax.rl.snapshot import SELECTIONS, TEACHERS

    f, i, b, s = "float", "int", "bool", "str"
    return {
        "kind": Field(s, check=one_of(("snapshot_rl",))),
        "seed": Field(i, check=int_range(0, 2**31 - 1)),
        "rl": {
            "env": Field(s, check=one_of(ENVS)),
            "num_envs": Field(i, check=int_range(1, 4096)),
            "num_steps": Field(i, check=int_range(1, 100_000)),
            "hidden": Field("tuple[int]", check=positive_tuple),
            "ppo": {
                "learning_rate": Field(f, check=float_range(0.0, 1.0, lo_open=True)),
                "anneal_lr": Field(b),
                "gamma": Field(f, check=float_range(0.0, 1.0)),
                "gae_lambda": Field(f, check=float_range(0.0, 1.0)),
                "clip_eps": Field(f, check=float_range(0.0, 10.0, lo_open=True)),
                "vf_coef": Field(f, check=float_range(0.0, 1e3)),
                "ent_coef": Field(f, check=float_range(0.0, 1e3)),
                "max_grad_norm": Field(f, check=float_range(0.0, 1e6, lo_open=True)),
                "update_epochs": Field(i, check=int_range(1, 1000)),
                "num_minibatches": Field(i, check=int_range(1, 10**6)),
            },
            "snapshot": {
                "enabled": Field(b),
                "teacher": Field(s, check=one_of(TEACHERS)),
                "teacher_epsilon": Field(f, check=float_range(0.0, 1.0)),
                "teacher_updates": Field(i, check=int_range(1, 10**6)),
                "teacher_episodes": Field(i, check=int_range(1, 4096)),
                "selection": Field(s, check=one_of(SELECTIONS)),
                "num_clusters": Field(i, check=int_range(1, 1024)),
                "truncation": Field(i, check=int_range(0, 10**6)),
                "prob": Field(f, check=float_range(0.0, 1.0)),
                "until_fraction": Field(f, check=float_range(0.0, 1.0)),
            },
        },
        "train": {
            "total_env_steps": Field(i, check=int_range(1, MAX_ENV_STEPS)),
            "updates_per_chunk": Field(i, check=int_range(1, 10**6)),
            "eval_episodes": Field(i, check=int_range(1, 4096)),
            "keep_checkpoints": Field(i, check=int_range(1, 1000)),
        },
    }


def validate(config) -> dict:
    """The config as a plain dict, every field checked (ConfigError naming the field)."""
    if isinstance(config, ml_collections.ConfigDict):
        cfg = config.to_dict()
    elif isinstance(config, dict):
        cfg = json.loads(json.dumps(config, default=list))
    else:
        raise ConfigError("config", f"must be an ml_collections.ConfigDict, got {type(config).__name__}")
    check_tree(_schema(), cfg, "config")
    rl = cfg["rl"]
    batch = rl["num_envs"] * rl["num_steps"]
    if batch % rl["ppo"]["num_minibatches"]:
        raise ConfigError("config.rl.ppo.num_minibatches", f"must divide rl.num_envs * rl.num_steps = {batch}, got "
                                                           f"{rl['ppo']['num_minibatches']}")
    if cfg["train"]["total_env_steps"] < batch:
        raise ConfigError("config.train.total_env_steps", f"must be at least one update's rl.num_envs * "
                                                          f"rl.num_steps = {batch} steps, got "
                                                          f"{cfg['train']['total_env_steps']}")
    return cfg


def num_updates(cfg: dict) -> int:
    """PPO updates of a run: total_env_steps // (num_envs * num_steps)."""
    return cfg["train"]["total_env_steps"] // (cfg["rl"]["num_envs"] * cfg["rl"]["num_steps"])


# ---------------------------------------------------------------------------------------
# Building the learner and the snapshot buffer
# ---------------------------------------------------------------------------------------
def ppo_config(cfg: dict, updates: int):
    from samplax.rl.ppo import PPOConfig

    rl = cfg["rl"]
    return PPOConfig(num_envs=rl["num_envs"], num_steps=rl["num_steps"], hidden=tuple(rl["hidden"]),
                     num_updates=updates, **rl["ppo"])


def build_learner(cfg: dict):
    """(ppo, sampler): the PPO functions and the initial snapshot sampler state (a dummy
    array when snapshots are disabled)."""
    from samplax.rl import ppo as ppolib
    from samplax.rl import snapshot as sn

    rl, snap = cfg["rl"], cfg["rl"]["snapshot"]
    updates = num_updates(cfg)
    pcfg = ppo_config(cfg, updates)
    if not snap["enabled"]:
        return ppolib.make_ppo(rl["env"], pcfg), jnp.zeros((), jnp.int32)
    base = jax.random.PRNGKey(cfg["seed"])
    if snap["teacher"] == "heuristic":
        policy = sn.heuristic_policy(rl["env"], snap["teacher_epsilon"])
    else:  # "ppo": an earlier agent trained briefly with standard resets, acting stochastically
        tcfg = pcfg._replace(num_updates=snap["teacher_updates"])
        teacher = ppolib.make_ppo(rl["env"], tcfg)
        tstate, _ = teacher.run(teacher.init(jax.random.fold_in(base, TEACHER_STREAM), jnp.zeros((), jnp.int32)),
                                snap["teacher_updates"])
        tparams = tstate.params

        def policy(key, obs):
            return jax.random.categorical(key, teacher.network.apply(tparams, obs)[0]).astype(jnp.int32)

    sampler = sn.build_sampler(rl["env"], jax.random.fold_in(base, BUFFER_STREAM), teacher_policy=policy,
                               num_episodes=snap["teacher_episodes"], num_clusters=snap["num_clusters"],
                               selection=snap["selection"], prob=snap["prob"])
    until = int(math.floor(snap["until_fraction"] * updates))
    learner = ppolib.make_ppo(rl["env"], pcfg, starter=sn.snapshot_starter, horizon=snap["truncation"],
                              snapshot_updates=until)
    return learner, sampler


# ---------------------------------------------------------------------------------------
# The loop
# ---------------------------------------------------------------------------------------
def evaluate(cfg: dict, learner, params, update: int):
    """(sampled-policy returns, greedy returns) of ``train.eval_episodes`` episodes in the
    original environment; the key depends only on the seed and the update."""
    key = jax.random.fold_in(jax.random.PRNGKey(cfg["seed"] + EVAL_STREAM), update)
    n = cfg["train"]["eval_episodes"]
    return (np.asarray(learner.evaluate(params, key, n, False)), np.asarray(learner.evaluate(params, key, n, True)))


def _row(cfg, learner, state, metrics, done: int, batch: int, elapsed: float) -> dict:
    m = jax.device_get(metrics)
    ev, gr = evaluate(cfg, learner, state.params, done)
    eps = int(np.sum(m.episodes))
    return dict(step=done, env_steps=done * batch, eval_return=float(ev.mean()), eval_return_std=float(ev.std()),
                eval_return_greedy=float(gr.mean()),
                train_return=(float(np.sum(m.return_sum)) / eps) if eps else None, train_episodes=eps,
                snapshot_starts=int(np.sum(m.snapshot_starts)), snapshot_episodes=int(np.sum(m.snapshot_episodes)),
                loss=float(np.mean(m.losses.loss)), entropy=float(np.mean(m.losses.entropy)),
                approx_kl=float(np.mean(m.losses.approx_kl)), elapsed_s=elapsed)


def run_snapshot_rl(config, workdir, restart: bool = False) -> dict:
    """Train (or resume) PPO with snapshot starts per ``config`` in ``workdir``; returns the
    summary.  Validation first (ConfigError naming the field), then the workdir's lock."""
    from samplax.experiment import cache as refcache

    refcache.enable_compilation_cache()
    return store.run_releasing_lock(_run, config, workdir, restart)


def _run(config, workdir, restart: bool, holder: dict) -> dict:
    from samplax.experiment.trainer import SigtermFlag, TrainingPreempted, rewrite_log

    cfg = validate(config)
    wd = store.check_workdir(workdir)
    ident = identity(cfg, NON_IDENTITY)
    model_ident = dict(kind="snapshot_rl", env=cfg["rl"]["env"], hidden=list(cfg["rl"]["hidden"]))
    ckpt_dir = wd / CHECKPOINT_DIR
    if not restart:
        store.check_saved_config(str(wd), ident)

    learner, sampler = build_learner(cfg)
    fresh = learner.init(jax.random.PRNGKey(cfg["seed"]), sampler)
    restored = None
    if not restart:
        st, meta, _ = resume_point(ckpt_dir, model_ident, ident, fresh)
        if st is not None:
            restored = (st, int(meta["step"]))

    holder["lock"] = store.WorkdirLock(wd)
    holder["lock"].acquire()
    store.open_run(wd, "snapshot_rl", cfg, ident, restart, DERIVED)

    total = num_updates(cfg)
    chunk = cfg["train"]["updates_per_chunk"]
    batch = cfg["rl"]["num_envs"] * cfg["rl"]["num_steps"]
    log_path = wd / LOG_FILE
    state, start = (fresh, 0) if restored is None else restored
    rewrite_log(log_path, start)  # keep the rows up to the restored update (later ones are recomputed)
    last = None
    with Checkpoints(ckpt_dir, model_ident, ident, keep=cfg["train"]["keep_checkpoints"], every=None,
                     final_step=total) as ckpt, SigtermFlag() as sigterm:
        logging.info("snapshot_rl: %s at update %d of %d in %s", "resuming" if start else "starting", start,
                     total, wd)
        t0 = time.perf_counter()
        done = start
        while done < total:
            n = min(chunk, total - done)
            state, metrics = learner.run(state, n)
            done += n
            row = _row(cfg, learner, state, metrics, done, batch, time.perf_counter() - t0)
            if not all(math.isfinite(row[k]) for k in ("loss", "eval_return")):
                raise FloatingPointError(f"snapshot_rl: non-finite loss or return at update {done}; the last "
                                         f"checkpoint ({ckpt.latest_step()}) is kept")
            # the row first: a kill between the two leaves a row past the last checkpoint, dropped on resume
            io.append_line(log_path, (json.dumps(io.json_clean(row), sort_keys=True) + "\n").encode())
            ckpt.save(done, state)
            last = row
            if sigterm.received is not None and done < total:
                raise TrainingPreempted(done, str(ckpt.path(done)), "SIGTERM")
    if last is None and io.exists(log_path):  # resumed at the end: the last logged row
        lines = io.read_bytes(log_path).decode().splitlines()
        last = json.loads(lines[-1]) if lines else None
    summary = dict(workdir=str(wd), updates=total, env_steps=total * batch, resumed_from=start, final=last,
                   state_sha256=state_checksum(state), params_sha256=state_checksum(state.params),
                   snapshot_draws=(int(state.sampler.draws) if cfg["rl"]["snapshot"]["enabled"] else 0))
    io.atomic_write_json(wd / SUMMARY_FILE, summary)
    return summary


__all__ = ["snapshot_rl_config", "validate", "num_updates", "build_learner", "evaluate", "run_snapshot_rl"]
