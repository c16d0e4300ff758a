"""Offline RL runs (``kind = "offline_rl"``): a mixed-quality data set generated on a gymnax
env, trajectory weighting (Hong et al., ICLR 2023; :mod:`samplax.rl.offline`), a learner
(behaviour cloning or discrete CQL), Orbax checkpoints, logs, and the learned policy's
evaluation return.

    python -m experiments.train --config=configs/train_offline_rl.py --workdir=runs/offline_rl

A workdir holds ``config.json`` (the config and its identity), ``checkpoints/<step>/``
(Orbax: :class:`samplax.rl.offline.OfflineState` = step, parameters, target parameters,
optimiser state, the sampler's per-trajectory draw counts; the meta records the data
set's SHA-256), ``train_log.jsonl`` (one row per ``train.log_every`` steps: mean loss and
learner metrics over the interval) and ``train_summary.json`` (the learned greedy policy's
return over ``eval.num_episodes`` episodes, the data set's returns, and the expected
return of the sampled behaviour policy, uniform and weighted).

The run is a pure function of its config: the data set is regenerated from
``rl.data.seed`` (checked against the checkpoint's recorded hash), step ``k`` draws with
``fold_in(PRNGKey(train.seed), k)``, and the steps run in ``lax.scan`` chunks cut at the
same absolute steps (multiples of ``gcd(log_every, checkpoint_every)``) in every run.  So
a run killed with kill -9 and rerun resumes from its newest intact checkpoint and ends
with bitwise the parameters of an uninterrupted run; SIGTERM saves the chunk in flight and
raises :class:`samplax.experiment.trainer.TrainingPreempted`.
"""
from __future__ import annotations

import hashlib
import json
import math
import time

import jax
import ml_collections
import numpy as np
import optax
from absl import logging

from samplax import io
from samplax.experiment import results as store
from samplax.experiment.checkpoints import CheckpointMismatch, Checkpoints, resume_run
from samplax.experiment.config import Field, check_tree, float_range, int_range, one_of, positive_tuple
from samplax.experiment.identity import identity

CHECKPOINT_DIR = "checkpoints"
LOG_FILE = "train_log.jsonl"
SUMMARY_FILE = "train_summary.json"
DERIVED = (store.CONFIG_FILE, CHECKPOINT_DIR, LOG_FILE, SUMMARY_FILE)
NON_IDENTITY_FIELDS = ("train.log_every", "train.checkpoint_every", "train.keep_checkpoints")


def offline_rl_config() -> ml_collections.ConfigDict:
    """Defaults: CartPole-v1, 200 trajectories of which 5% from the controller and the rest
    random, return weighting (alpha 0.1, transition level), behaviour cloning."""
    c = ml_collections.ConfigDict()
    c.kind = "offline_rl"
    c.rl = ml_collections.ConfigDict(dict(
        env="CartPole-v1",
        max_steps=500,  # episode cap (data and evaluation)
        data=ml_collections.ConfigDict(dict(num_trajectories=200, good_fraction=0.05, good_epsilon=0.0,
                                            bad_epsilon=1.0, seed=0)),
        weighting=ml_collections.ConfigDict(dict(name="return", alpha=0.1, level="transition", uniform_mix=0.0)),
        learner=ml_collections.ConfigDict(dict(name="bc", hidden=(64, 64), gamma=0.99, cql_alpha=1.0,
                                               target_tau=0.005)),
    ))
    c.optim = ml_collections.ConfigDict(dict(learning_rate=1e-3, grad_clip=0.0))
    c.train = ml_collections.ConfigDict(dict(num_steps=3000, batch_size=256, seed=0, log_every=250,
                                             checkpoint_every=1000, keep_checkpoints=2))
    c.eval = ml_collections.ConfigDict(dict(num_episodes=20, seed=12345))
    return c


# ---------------------------------------------------------------------------------------
# Validation: every field, before anything is written
# ---------------------------------------------------------------------------------------
def _schema():
    from samplax.rl.envs import ENVS
    from samplax.rl.offline import LEARNERS, LEVELS, WEIGHTINGS

    i, f, st = "int", "float", "str"
    pos, nonneg, unit = int_range(1), int_range(0), float_range(0.0, 1.0)
    return dict(
        kind=Field(st, check=one_of(("offline_rl",))),
        rl=dict(env=Field(st, check=one_of(ENVS)), max_steps=Field(i, check=pos),
                data=dict(num_trajectories=Field(i, check=pos), good_fraction=Field(f, check=unit),
                          good_epsilon=Field(f, check=unit), bad_epsilon=Field(f, check=unit),
                          seed=Field(i, check=nonneg)),
                weighting=dict(name=Field(st, check=one_of(WEIGHTINGS)),
                               alpha=Field(f, check=float_range(0.0, lo_open=True)),
                               level=Field(st, check=one_of(LEVELS)), uniform_mix=Field(f, check=unit)),
                learner=dict(name=Field(st, check=one_of(LEARNERS)), hidden=Field("tuple[int]", check=positive_tuple),
                             gamma=Field(f, check=unit), cql_alpha=Field(f, check=float_range(0.0)),
                             target_tau=Field(f, check=float_range(0.0, 1.0, lo_open=True)))),
        optim=dict(learning_rate=Field(f, check=float_range(0.0, lo_open=True)),
                   grad_clip=Field(f, check=float_range(0.0))),
        train=dict(num_steps=Field(i, check=pos), batch_size=Field(i, check=pos), seed=Field(i, check=nonneg),
                   log_every=Field(i, check=pos), checkpoint_every=Field(i, check=pos),
                   keep_checkpoints=Field(i, check=pos)),
        eval=dict(num_episodes=Field(i, check=pos), seed=Field(i, check=nonneg)),
    )


def validate_offline_rl(config) -> dict:
    """The config as a plain dict, checked field by field (ConfigError names the first bad
    field and what is allowed).  Touches no file."""
    cfg = config.to_dict() if hasattr(config, "to_dict") else dict(config)
    cfg = json.loads(json.dumps(cfg, default=lambda o: list(o) if isinstance(o, tuple) else str(o)))
    check_tree(_schema(), cfg, "config")
    cfg["rl"]["learner"]["hidden"] = [int(h) for h in cfg["rl"]["learner"]["hidden"]]
    return cfg


# ---------------------------------------------------------------------------------------
# Config -> objects
# ---------------------------------------------------------------------------------------
def build_data(cfg: dict):
    """``(env, trajectories, is_good)`` of the config (deterministic in rl.data.seed)."""
    from samplax.rl import envs

    r, d = cfg["rl"], cfg["rl"]["data"]
    env = envs.make_env(r["env"], r["max_steps"])
    trajs, is_good = envs.mixed_dataset(env, jax.random.PRNGKey(d["seed"]), d["num_trajectories"],
                                        d["good_fraction"], d["good_epsilon"], d["bad_epsilon"])
    return env, jax.device_get(trajs), is_good


def data_checksum(trajs) -> str:
    h = hashlib.sha256()
    for x in trajs:
        a = np.ascontiguousarray(np.asarray(x))
        h.update(f"{a.dtype.str}|{a.shape}|".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def sampling_probabilities(cfg: dict, trajs) -> np.ndarray:
    from samplax.rl.offline import trajectory_probabilities

    w = cfg["rl"]["weighting"]
    return trajectory_probabilities(np.asarray(trajs.returns), np.asarray(trajs.length), w["name"], w["alpha"],
                                    w["level"], w["uniform_mix"], first_obs=np.asarray(trajs.obs[:, 0]))


def build_learner(cfg: dict, env):
    from samplax.rl.envs import MLP
    from samplax.rl.offline import make_learner

    lc, o = cfg["rl"]["learner"], cfg["optim"]
    parts = [optax.clip_by_global_norm(o["grad_clip"])] if o["grad_clip"] > 0 else []
    optimizer = optax.chain(*parts, optax.adam(o["learning_rate"]))
    net = MLP(tuple(lc["hidden"]), env.num_actions)
    return net, make_learner(lc["name"], net, env.obs_dim, optimizer, lc["gamma"], lc["cql_alpha"], lc["target_tau"])


def evaluate_policy(env, net, params, seed: int, num_episodes: int) -> np.ndarray:
    """Returns of the greedy policy of ``params`` over ``num_episodes`` episodes."""
    from samplax.rl.envs import greedy_policy, rollout

    fn = jax.jit(lambda p, k: rollout(env, greedy_policy(net.apply, p), k, num_episodes).returns)
    return np.asarray(fn(params, jax.random.PRNGKey(seed)), np.float64)


def model_identity(cfg: dict, env) -> dict:
    return dict(kind="offline_rl", env=cfg["rl"]["env"], learner=cfg["rl"]["learner"]["name"],
                hidden=list(cfg["rl"]["learner"]["hidden"]), num_actions=env.num_actions, obs_dim=env.obs_dim)


def _chunk_bounds(start: int, num_steps: int, every: int):
    """Chunks [a, b) cut at the multiples of ``every`` (the same cuts in every run)."""
    a = start
    while a < num_steps:
        b = min((a // every + 1) * every, num_steps)
        yield a, b
        a = b


# ---------------------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------------------
def run_offline_rl(config, workdir, restart: bool = False) -> dict:
    """Run (or resume) an offline RL run in ``workdir``; returns the summary (module doc).

    ConfigError (bad field, bad workdir), WorkdirConflict (a workdir of another config or
    locked) or CheckpointMismatch / CheckpointDamaged are raised before anything is written."""
    from samplax.experiment.trainer import SigtermFlag, TrainingPreempted, rewrite_log
    from samplax.rl.offline import behaviour_return, flat_transitions, init_state, make_train_chunk
    from samplax.rl.offline import trajectory_probabilities, trajectory_sampler

    cfg = validate_offline_rl(config)
    wd = store.check_workdir(workdir)
    t = cfg["train"]
    ident = identity(cfg, drop=NON_IDENTITY_FIELDS)
    env, trajs, is_good = build_data(cfg)
    digest = data_checksum(trajs)
    probs = sampling_probabilities(cfg, trajs)
    lengths = np.asarray(trajs.length)
    sampler = trajectory_sampler(probs, lengths, env.max_steps, t["batch_size"], cfg["rl"]["weighting"]["name"],
                                 cfg["rl"]["weighting"])
    net, learner = build_learner(cfg, env)
    fresh = init_state(learner, sampler, t["seed"])
    mid = model_identity(cfg, env)
    ckpt_dir = wd / CHECKPOINT_DIR

    def same_data(meta0):
        if meta0.get("data_sha256") != digest:
            raise CheckpointMismatch(f"checkpoint {ckpt_dir / str(meta0['step'])} was trained on another data "
                                     f"set (sha256 {str(meta0.get('data_sha256'))[:12]}..., now "
                                     f"{digest[:12]}...); use another workdir or --restart")

    restored, damaged = resume_run(wd, ckpt_dir, mid, ident, ident, fresh, restart, same_data)

    with store.WorkdirLock(wd):
        store.open_run(wd, "offline_rl", cfg, ident, restart, DERIVED)
        data = jax.device_put(flat_transitions(trajs))
        every = math.gcd(t["log_every"], t["checkpoint_every"])
        chunks = {}

        def chunk_fn(n):
            if n not in chunks:
                chunks[n] = jax.jit(make_train_chunk(learner, sampler, n))
            return chunks[n]

        log_path = wd / LOG_FILE
        with Checkpoints(ckpt_dir, mid, ident, keep=t["keep_checkpoints"], every=t["checkpoint_every"],
                         final_step=t["num_steps"]) as ckpt, SigtermFlag() as sigterm:
            state, start = ckpt.start(restored, damaged, fresh)  # newer damaged steps go aside (<step>.damaged)
            logging.info("offline_rl: starting at step %d in %s", start, wd)
            rewrite_log(log_path, start)
            window, t0 = [], time.perf_counter()
            for a, b in _chunk_bounds(start, t["num_steps"], every):
                state, metrics = chunk_fn(b - a)(state, data, t["seed"])
                window.append(jax.device_get(metrics))
                if b % t["log_every"] == 0 or b == t["num_steps"]:
                    row = dict(step=b, steps_per_s=(sum(len(m["loss"]) for m in window)
                                                    / max(time.perf_counter() - t0, 1e-9)))
                    for k in window[0]:
                        row[k] = float(np.mean(np.concatenate([m[k] for m in window])))
                    if not math.isfinite(row["loss"]):
                        raise FloatingPointError(f"offline_rl: loss became non-finite before step {b} (last "
                                                 f"checkpoint kept in {ckpt.directory})")
                    io.append_line(log_path, (json.dumps(io.json_clean(row), sort_keys=True) + "\n").encode())
                    window, t0 = [], time.perf_counter()
                preempted = sigterm.received is not None
                if preempted or ckpt.should_save(b):
                    ckpt.save(b, state, dict(data_sha256=digest))
                if preempted and b < t["num_steps"]:
                    raise TrainingPreempted(b, str(ckpt.path(b)), "SIGTERM")

        ev = cfg["eval"]
        returns = evaluate_policy(env, net, state.learner.params, ev["seed"], ev["num_episodes"])
        g = np.asarray(trajs.returns, np.float64)
        uniform = trajectory_probabilities(g, lengths, "uniform", level=cfg["rl"]["weighting"]["level"])
        summary = dict(
            workdir=str(wd), steps=t["num_steps"], resumed_from=start, checkpoint=str(ckpt_dir / str(t["num_steps"])),
            eval_return_mean=float(returns.mean()), eval_return_std=float(returns.std()),
            eval_returns=returns.tolist(), eval_episodes=ev["num_episodes"],
            data=dict(num_trajectories=len(g), num_good=int(is_good.sum()), mean_return=float(g.mean()),
                      good_return_mean=float(g[is_good].mean()) if is_good.any() else None,
                      bad_return_mean=float(g[~is_good].mean()) if (~is_good).any() else None,
                      transitions=int(lengths.sum()), sha256=digest),
            behaviour_return_uniform=behaviour_return(uniform, g),
            behaviour_return_weighted=behaviour_return(probs, g),
            sampled_good_fraction=float(probs[is_good].sum()),
            sampler_draws_good=int(np.asarray(state.sampler["draws"])[is_good].sum()),
            sampler_draws=int(np.asarray(state.sampler["draws"]).sum()),
            final=json.loads(io.read_bytes(log_path).decode().splitlines()[-1]) if io.exists(log_path) else None)
        io.atomic_write_json(wd / SUMMARY_FILE, summary)
    return summary


__all__ = ["offline_rl_config", "validate_offline_rl", "run_offline_rl", "build_data", "evaluate_policy",
           "sampling_probabilities", "NON_IDENTITY_FIELDS"]
