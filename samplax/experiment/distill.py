"""Distillation runs (``kind = "distill"``): a trained diffusion model (the *teacher*, a training
workdir of :func:`samplax.experiment.trainer.run_train`) distilled into a student that samples in
fewer steps (``mode = "step"``), with fewer parameters (``"size"``), or both (``"both"``,
FastLightGen, arXiv:2603.01685) -- the losses and the paper's reading are in
:mod:`samplax.training.distill`.

    python -m experiments.train --config=configs/train_distill_digits.py --workdir=runs/distill_digits
    python -m experiments.train --config=configs/train_distill_digits.py --config.mode=step \
        --config.student.prune_fraction=0.0 --workdir=runs/distill_digits_step

* ``mode="step"``: the student is the teacher's network, initialised with the teacher's weights,
  trained by trajectory distillation to sample with DDIM at ``student.nfe``.
* ``mode="size"``: the student is the teacher's network with channels narrowed to about
  ``1 - student.prune_fraction`` of the parameters (``student.init``: "random", the default, or
  "inherit": the teacher's leading channels, U-Net only), trained by output matching; it samples like the teacher (``distill.teacher_solver`` at ``distill.teacher_nfe``).
* ``mode="both"``: the first ``distill.size_fraction`` of the steps are the size stage; its result
  is frozen as the light guide W and continues as the student, trained by trajectory
  distillation against the optimal teacher T + beta (T - W) (``distill.guide_beta``); samples
  with DDIM at ``student.nfe``.

The student always runs unconditionally (a class-conditional teacher with label dropout is used
through its null label).  The workdir holds ``config.json``, ``checkpoints/<step>/`` (Orbax:
:class:`DistillState` = parameters, EMA, optimiser state, the frozen guide, the step; the meta
records the teacher's step and SHA-256), ``train_log.jsonl`` and ``train_summary.json``.  Step
``k`` draws data batch ``k`` of ``train.data_seed`` and noise from ``fold_in(PRNGKey(train.seed),
k)``, so a run killed at any point and rerun resumes from its newest intact checkpoint and ends
with bitwise the parameters of an uninterrupted run; SIGTERM saves the step in flight and raises
:class:`samplax.experiment.trainer.TrainingPreempted`.  :func:`load_student` loads the student for
sampling (:func:`samplax.experiment.trainer.draw_samples`).
"""
from __future__ import annotations

import copy
import json
import os
import time
from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging

from samplax import io
from samplax.experiment import results as store
from samplax.experiment.checkpoints import (CheckpointMismatch, Checkpoints, restore_checkpoint, resume_run,
                                         state_checksum)
from samplax.experiment.config import ConfigError, Field, check_tree, float_range, int_range, one_of
from samplax.experiment.identity import identity
from samplax.training import distill as D

CHECKPOINT_DIR = "checkpoints"
LOG_FILE = "train_log.jsonl"
SUMMARY_FILE = "train_summary.json"
DERIVED = (store.CONFIG_FILE, CHECKPOINT_DIR, LOG_FILE, SUMMARY_FILE)
NON_IDENTITY_FIELDS = ("train.log_every", "train.checkpoint_every", "train.keep_checkpoints")
TEACHER_SOLVERS = ("dpm_solver_pp", "ddim", "unipc", "deis")
NETWORKS = ("unet", "mlp")
INITS = ("random", "inherit")   # a narrow student's initialisation (absent: "random")
#: test hook (tests/test_distill.py): the run raises SimulatedCrash after finishing this step
CRASH_ENV = "SAMPLAX_DISTILL_TEST_CRASH_AT"


class SimulatedCrash(RuntimeError):
    """Raised by the :data:`CRASH_ENV` test hook (an interruption between checkpoints)."""


def distill_config() -> ml_collections.ConfigDict:
    """Defaults: FastLightGen (mode "both") of the digits U-Net, 30 % pruned, 4 steps."""
    c = ml_collections.ConfigDict()
    c.kind = "distill"
    c.teacher = "runs/train_digits"   # a training workdir (kind "model")
    c.teacher_step = -1               # its checkpoint; -1: the newest intact one
    c.mode = "both"                   # "step" | "size" | "both"
    c.student = ml_collections.ConfigDict(dict(prune_fraction=0.3, nfe=4))
    c.distill = ml_collections.ConfigDict(dict(
        teacher_solver="dpm_solver_pp",  # the teacher's ODE solver (interval targets; its own sampler)
        teacher_steps=5,                 # K: teacher steps per student interval
        teacher_nfe=20,                  # the teacher's (and a size-only student's) sampling NFE
        guide_beta=0.5,                  # "both": optimal teacher T + beta (T - W)
        size_fraction=0.5,               # "both": share of the steps spent on the size stage
        data_weight=0.0,                 # size stage: + this x the plain denoising loss
    ))
    c.train = ml_collections.ConfigDict(dict(num_steps=1000, batch_size=128, learning_rate=1e-3, grad_clip=1.0,
                                             ema_decay=0.99, seed=0, data_seed=0, log_every=50,
                                             checkpoint_every=250, keep_checkpoints=2))
    return c


# ---------------------------------------------------------------------------------------
# Validation: every field, before anything is written (the teacher's workdir is read by the run)
# ---------------------------------------------------------------------------------------
def _nonempty(path, v):
    if not v.strip():
        raise ConfigError(path, "must name the teacher's training workdir; allowed: a non-empty path")


def _schema() -> dict:
    i, f, st = "int", "float", "str"
    pos, nonneg = int_range(1), int_range(0)
    return dict(
        kind=Field(st, check=one_of(("distill",))),
        teacher=Field(st, check=_nonempty),
        teacher_step=Field(i, check=int_range(-1)),
        mode=Field(st, check=one_of(D.MODES)),
        student=dict(prune_fraction=Field(f, check=float_range(0.0, 0.9)), nfe=Field(i, check=int_range(1, 50)),
                     init=Field(st, required=False, check=one_of(INITS))),
        distill=dict(teacher_solver=Field(st, check=one_of(TEACHER_SOLVERS)), teacher_steps=Field(i, check=int_range(1, 64)),
                     teacher_nfe=Field(i, check=int_range(1, 200)), guide_beta=Field(f, check=float_range(0.0, 10.0)),
                     size_fraction=Field(f, check=float_range(0.0, 1.0, lo_open=True, hi_open=True)),
                     data_weight=Field(f, check=float_range(0.0))),
        train=dict(num_steps=Field(i, check=pos), batch_size=Field(i, check=pos),
                   learning_rate=Field(f, check=float_range(0.0, lo_open=True)), grad_clip=Field(f, check=float_range(0.0)),
                   ema_decay=Field(f, check=float_range(0.0, 1.0, hi_open=True)), seed=Field(i, check=nonneg),
                   data_seed=Field(i, check=nonneg), log_every=Field(i, check=pos), checkpoint_every=Field(i, check=pos),
                   keep_checkpoints=Field(i, check=pos)),
    )


def validate_distill(config) -> dict:
    """The config as a plain dict, every field checked (ConfigError naming ``config.<field>`` and
    what is allowed), cross-field constraints included.  Touches no file."""
    cfg = config.to_dict() if hasattr(config, "to_dict") else copy.deepcopy(dict(config))
    check_tree(_schema(), cfg, "config")
    mode, st, t = cfg["mode"], cfg["student"], cfg["train"]
    if mode == "step" and st["prune_fraction"] != 0:
        raise ConfigError("config.student.prune_fraction", f"must be 0 with mode='step' (the student keeps the "
                          f"teacher's size), got {st['prune_fraction']}; allowed: 0, or mode 'size' / 'both'")
    if mode != "step" and st["prune_fraction"] == 0:
        raise ConfigError("config.student.prune_fraction", f"must be > 0 with mode={mode!r} (a smaller student); "
                          f"allowed: (0, 0.9], or mode 'step'")
    if mode != "size" and t["batch_size"] % st["nfe"]:
        raise ConfigError("config.train.batch_size", f"must be a multiple of config.student.nfe={st['nfe']} (one "
                          f"slice of the batch per student interval), got {t['batch_size']}")
    if mode == "both" and not 1 <= round(cfg["distill"]["size_fraction"] * t["num_steps"]) < t["num_steps"]:
        raise ConfigError("config.distill.size_fraction", f"must leave at least one step to each stage of "
                          f"train.num_steps={t['num_steps']}, got {cfg['distill']['size_fraction']}")
    return cfg


# ---------------------------------------------------------------------------------------
# Teacher, student, state
# ---------------------------------------------------------------------------------------
def load_teacher(cfg: dict):
    """The teacher's :class:`~samplax.experiment.trainer.Trained` (EMA parameters); ConfigError
    ("config.teacher" / "config.teacher_step") when it cannot be distilled.  Reads only."""
    from samplax.experiment.trainer import is_causal, is_classify, is_masked, load_trained

    try:
        tr = load_trained(cfg["teacher"], None if cfg["teacher_step"] < 0 else cfg["teacher_step"])
    except (FileNotFoundError, ValueError) as e:
        field = "config.teacher_step" if "no checkpoint of step" in str(e) else "config.teacher"
        raise ConfigError(field, f"cannot load the teacher: {e}") from None
    c = tr.setup.cfg
    if is_masked(c) or is_causal(c) or is_classify(c) or c["model"].get("factory") or \
            c["model"]["network"] not in NETWORKS:
        raise ConfigError("config.teacher", f"{cfg['teacher']} trains objective {c['loss']['objective']!r} with "
                          f"network {c['model'].get('network')!r}; allowed: a diffusion model (noise / data / "
                          f"velocity / ... objective) with a built-in network {list(NETWORKS)}")
    return tr


def _widths(cfg: dict) -> tuple:
    m = cfg["model"]
    return tuple(m["unet"]["channels"]) if m["network"] == "unet" else tuple(m["mlp"]["hidden"])


def _with_widths(cfg: dict, widths) -> dict:
    out = copy.deepcopy(cfg)
    if out["model"]["network"] == "unet":
        out["model"]["unet"]["channels"] = tuple(int(c) for c in widths)
    else:
        out["model"]["mlp"]["hidden"] = tuple(int(c) for c in widths)
    return out


def network_param_count(train_cfg: dict, widths=None, dataset=None) -> int:
    """Parameters of a training config's network (with ``widths`` replacing its channels / hidden
    widths), counted on shapes only (``dataset``: the config's, built when not given)."""
    from samplax.experiment.trainer import build_dataset, build_network, data_dtype

    c = train_cfg if widths is None else _with_widths(train_cfg, widths)
    ds = build_dataset(c) if dataset is None else dataset
    net = build_network(c, ds)
    x = jnp.zeros((1,) + tuple(ds.shape), data_dtype(ds))
    return D.param_count(jax.eval_shape(net.init, jax.random.PRNGKey(0), x, jnp.zeros((1,), jnp.float32)))


def student_setup(cfg: dict, teacher_setup):
    """(student trainer Setup, its widths): the teacher's config with the widths of
    :func:`samplax.training.distill.narrow_channels` (granularity: the U-Net's GroupNorm groups, 8
    for an MLP)."""
    from samplax.experiment.trainer import setup

    tcfg = teacher_setup.cfg
    frac = cfg["student"]["prune_fraction"]
    if frac == 0:
        return teacher_setup, _widths(tcfg)
    gran = tcfg["model"]["unet"]["groups"] if tcfg["model"]["network"] == "unet" else 8
    ds = teacher_setup.dataset
    if tcfg["model"]["network"] == "unet":   # closed form (checked against the network in the tests)
        u = tcfg["model"]["unet"]
        k = int(ds.num_classes) if tcfg["model"]["class_conditional"] else 0

        def count(w):
            return D.unet_param_count(w, u["num_res_blocks"], u["attention"], u["embed_dim"], k, ds.shape[-1])
    else:
        def count(w):
            return network_param_count(tcfg, w, ds)
    widths = D.narrow_channels(_widths(tcfg), gran, frac, count)
    return setup(_with_widths(tcfg, widths)), widths


def sample_spec(cfg: dict) -> D.SampleSpec:
    """How the run's student samples: DDIM at student.nfe (step / both), the teacher's sampler
    (size)."""
    if cfg["mode"] == "size":
        return D.SampleSpec(cfg["distill"]["teacher_solver"], cfg["distill"]["teacher_nfe"])
    return D.SampleSpec(D.STUDENT_SOLVER, cfg["student"]["nfe"])


class DistillState(NamedTuple):
    params: dict
    ema_params: dict
    opt_state: tuple
    guide: dict              # "both": the frozen light model W of the size stage (else the initial params)
    step: jax.Array          # int32 (): steps done


def _optimizer(t: dict):
    parts = [optax.clip_by_global_norm(t["grad_clip"])] if t["grad_clip"] > 0 else []
    return optax.chain(*parts, optax.adam(t["learning_rate"]))


def fresh_state(cfg: dict, teacher, s_student) -> DistillState:
    """Step 0: the teacher's weights (mode step), else a fresh init of the narrow student."""
    from samplax.experiment.trainer import init_params

    if cfg["mode"] == "step":
        params = jax.tree.map(jnp.array, teacher.params)
    else:
        c = copy.deepcopy(s_student.cfg)
        c["train"]["seed"] = cfg["train"]["seed"]
        params = init_params(c, s_student.net, s_student.dataset)
        if cfg["student"].get("init", "random") == "inherit":
            tm = teacher.setup.cfg["model"]
            if tm["network"] != "unet":
                raise ConfigError("config.student.init", f"'inherit' prunes a U-Net's channels; the teacher's network "
                                  f"is {tm['network']!r}; allowed here: 'random'")
            params = D.inherit_unet_params(teacher.params, params, tm["unet"]["channels"],
                                           s_student.cfg["model"]["unet"]["channels"], tm["unet"]["num_res_blocks"])
    return DistillState(params, params, _optimizer(cfg["train"]).init(params), params, jnp.zeros((), jnp.int32))


def switch_stage(cfg: dict, state: DistillState) -> DistillState:
    """"both" at the size -> step boundary: freeze the light model as the guide, restart Adam and
    the EMA from it."""
    p = state.params
    return DistillState(p, p, _optimizer(cfg["train"]).init(p), p, state.step)


def make_steps(cfg: dict, teacher, s_student):
    """(size_step, steps_step): jitted ``(state, teacher_params, x0, key) -> (state, metrics)``."""
    from samplax.experiment.trainer import trained_model
    from samplax.solvers import get_solver

    t, dd = cfg["train"], cfg["distill"]
    opt = _optimizer(t)
    sched = s_student.schedule
    n = cfg["student"]["nfe"]
    grid = D.student_grid(sched, n)
    subs = D.segment_grids(sched, n, dd["teacher_steps"])
    solver = get_solver(dd["teacher_solver"])
    ts = teacher.setup
    beta = dd["guide_beta"] if cfg["mode"] == "both" else 0.0

    def update(state, loss_fn, *args):
        (loss, aux), g = jax.value_and_grad(loss_fn, has_aux=True)(state.params, *args)
        u, o = opt.update(g, state.opt_state, state.params)
        p = optax.apply_updates(state.params, u)
        ema = jax.tree.map(lambda e, q: t["ema_decay"] * e + (1 - t["ema_decay"]) * q, state.ema_params, p)
        return DistillState(p, ema, o, state.guide, state.step + 1), dict(loss=loss, aux=aux)

    def size_step(state, tparams, x0, key):
        kt, ke = jax.random.split(key)
        tt = jax.random.uniform(kt, (x0.shape[0],), x0.dtype, sched.t_min, sched.t_max)
        eps = jax.random.normal(ke, x0.shape, x0.dtype)

        def loss_fn(p):
            return D.size_distillation_loss(trained_model(s_student, p), trained_model(ts, tparams), x0, tt, eps,
                                            dd["data_weight"])
        return update(state, loss_fn)

    def steps_step(state, tparams, x0, key):
        x0 = x0.reshape((n, x0.shape[0] // n) + x0.shape[1:])
        eps = jax.random.normal(key, x0.shape, x0.dtype)
        weak = trained_model(s_student, state.guide) if beta else None
        target = D.optimal_teacher(trained_model(ts, tparams), weak, beta)

        def loss_fn(p):
            return D.step_distillation_loss(trained_model(s_student, p), target, grid, subs, solver, x0, eps)
        return update(state, loss_fn)

    return jax.jit(size_step), jax.jit(steps_step)


def model_identity(cfg: dict, teacher, widths) -> dict:
    return dict(kind="distill", teacher_model=teacher.setup.identity, mode=cfg["mode"], widths=list(widths))


# ---------------------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------------------
def run_distill(config, workdir, restart: bool = False) -> dict:
    """Run (or resume) a distillation in ``workdir``; returns the summary (module docstring).
    ConfigError (a bad field, the teacher, the workdir), WorkdirConflict or CheckpointMismatch /
    CheckpointDamaged are raised before anything is written."""
    from samplax.experiment import cache as refcache

    refcache.enable_compilation_cache()
    return store.run_releasing_lock(_run_distill, config, workdir, restart)


def _run_distill(config, workdir, restart: bool, holder: dict) -> dict:
    from samplax.experiment.trainer import SigtermFlag, TrainingPreempted, rewrite_log

    cfg = validate_distill(config)
    wd = store.check_workdir(workdir)
    teacher = load_teacher(cfg)
    teacher_sha = state_checksum(teacher.params)
    s_student, widths = student_setup(cfg, teacher.setup)
    t, mode = cfg["train"], cfg["mode"]
    ident = identity(cfg, NON_IDENTITY_FIELDS)
    mid = model_identity(cfg, teacher, widths)
    ckpt_dir = wd / CHECKPOINT_DIR
    fresh = fresh_state(cfg, teacher, s_student)

    def same_teacher(meta0):
        if meta0.get("teacher_sha256") != teacher_sha:
            raise CheckpointMismatch(f"checkpoint {ckpt_dir / str(meta0['step'])} was distilled from another "
                                     f"teacher checkpoint (step {meta0.get('teacher_step')}, now {teacher.step});"
                                     f" pin config.teacher_step, use another workdir or --restart")

    restored, damaged = resume_run(wd, ckpt_dir, mid, ident, ident, fresh, restart, same_teacher)

    holder["lock"] = store.WorkdirLock(wd)
    holder["lock"].acquire()
    store.open_run(wd, "distill", cfg, ident, restart, DERIVED)

    size_step, steps_step = make_steps(cfg, teacher, s_student)
    n_size = {"size": t["num_steps"], "step": 0}.get(mode, round(cfg["distill"]["size_fraction"] * t["num_steps"]))
    meta = dict(teacher_sha256=teacher_sha, teacher_step=teacher.step)
    tparams = teacher.params
    log_path = wd / LOG_FILE
    with Checkpoints(ckpt_dir, mid, ident, keep=t["keep_checkpoints"], every=t["checkpoint_every"],
                     final_step=t["num_steps"]) as ckpt, SigtermFlag() as sigterm:
        state, start = ckpt.start(restored, damaged, fresh)
        logging.info("distill: %s, starting at step %d in %s", mode, start, wd)
        rewrite_log(log_path, start)
        window, t0, last = [], time.perf_counter(), None
        for step in range(start, t["num_steps"]):
            if step == n_size and mode == "both":
                state = switch_stage(cfg, state)
            stage = "size" if step < n_size else "step"
            x0 = jnp.asarray(np.asarray(s_student.dataset.batch(t["data_seed"], step, t["batch_size"])[0], np.float32))
            key = jax.random.fold_in(jax.random.PRNGKey(t["seed"]), step)
            state, metrics = (size_step if stage == "size" else steps_step)(state, tparams, x0, key)
            window.append(float(metrics["loss"]))
            done = step + 1
            if done % t["log_every"] == 0 or done == t["num_steps"]:
                if not np.all(np.isfinite(window)):
                    raise FloatingPointError(f"distill: loss became non-finite before step {done} (last checkpoint "
                                             f"kept in {ckpt.directory})")
                last = dict(step=done, stage=stage, loss=float(np.mean(window)),
                            steps_per_s=len(window) / max(time.perf_counter() - t0, 1e-9))
                if stage == "step":
                    last["interval_loss"] = [float(v) for v in np.asarray(metrics["aux"])]
                io.append_line(log_path, (json.dumps(io.json_clean(last), sort_keys=True) + "\n").encode())
                window, t0 = [], time.perf_counter()
            preempted = sigterm.received is not None
            if preempted or ckpt.should_save(done):
                ckpt.save(done, state, meta)
            if preempted and done < t["num_steps"]:
                raise TrainingPreempted(done, str(ckpt.path(done)), "SIGTERM")
            if os.environ.get(CRASH_ENV) == str(done):
                raise SimulatedCrash(f"distill: simulated crash after step {done}")

    spec = sample_spec(cfg)
    n_teacher = D.param_count(teacher.params)
    n_student = D.param_count(state.params)
    summary = dict(workdir=str(wd), mode=mode, steps=t["num_steps"], size_steps=n_size, resumed_from=start,
                   teacher=cfg["teacher"], teacher_step=teacher.step, teacher_widths=list(_widths(teacher.setup.cfg)),
                   student_widths=list(widths), teacher_params=n_teacher, student_params=n_student,
                   param_fraction=n_student / n_teacher, solver=spec.solver, nfe=spec.nfe,
                   final=last if last is not None else _last_row(log_path),
                   params_sha256=state_checksum(state.params), checkpoint=str(ckpt_dir / str(t["num_steps"])))
    io.atomic_write_json(wd / SUMMARY_FILE, summary)
    return summary


def _last_row(path):
    if not io.exists(path):
        return None
    lines = io.read_bytes(path).decode().splitlines()
    return json.loads(lines[-1]) if lines else None


# ---------------------------------------------------------------------------------------
# Loading the student
# ---------------------------------------------------------------------------------------
def load_student(workdir, step: Optional[int] = None, which: str = "ema"):
    """``(trained, spec)``: the student of a distill workdir's checkpoint ``step`` (default the
    newest intact one) as a :class:`samplax.experiment.trainer.Trained` (its setup builds the
    student network; ``which`` = "ema" or "params") and its :class:`SampleSpec` (solver, NFE):
    ``draw_samples(trained.setup, trained.params, n, spec.solver, spec.nfe)``.  Reads only."""
    from samplax.experiment.trainer import Trained

    if which not in ("ema", "params"):
        raise ValueError(f"which: must be 'ema' or 'params', got {which!r}")
    wd = io.as_path(workdir)
    path = wd / store.CONFIG_FILE
    if not path.exists():
        raise FileNotFoundError(f"{workdir} is not a distill workdir: no {store.CONFIG_FILE}")
    saved = json.loads(path.read_text())
    if not isinstance(saved, dict) or saved.get("kind") != "distill":
        raise ValueError(f"{workdir} holds a {saved.get('kind') if isinstance(saved, dict) else None!r} run, not a "
                         f"distill run")
    cfg = validate_distill(saved["config"])
    teacher = load_teacher(cfg)
    s_student, widths = student_setup(cfg, teacher.setup)
    fresh = fresh_state(cfg, teacher, s_student)
    state, meta, where = restore_checkpoint(wd / CHECKPOINT_DIR, model_identity(cfg, teacher, widths), fresh, step,
                                            what=str(workdir))
    params = state.ema_params if which == "ema" else state.params
    return Trained(s_student, params, int(meta["step"]), where), sample_spec(cfg)


__all__ = ["distill_config", "validate_distill", "run_distill", "load_student", "load_teacher", "student_setup",
           "sample_spec", "network_param_count", "DistillState", "SimulatedCrash", "CRASH_ENV"]
