"""MMD finetuning runs (``kind = "mmd_finetune"``): start from a trained diffusion model
(``config.base``, a training workdir of :func:`samplax.experiment.trainer.run_train`) and
finetune its network so that a fixed few-step sampler's output matches the data under an
MMD loss, back-propagating through the sampler (MMD-DDM, Aiello et al. 2023;
:mod:`samplax.training.mmd`, docs/mmd_finetune.md).

    python -m experiments.train --config=configs/train_mmd_gmm2d.py --workdir=runs/mmd_gmm2d

A workdir holds ``config.json`` (the config and its identity), ``checkpoints/<step>/``
(Orbax: dict(params, opt_state); the meta records the base's checkpoint step),
``train_log.jsonl`` (one row per ``train.log_every`` steps: mean MMD^2 loss over the
interval) and ``train_summary.json`` (the evaluation of the finetuned and of the base
parameters under the same sampler: MMD^2 to data; sw2 to exact samples on the 2-D
problems; FD on digits).

The run is a pure function of its config and the base checkpoint: step ``k`` draws x_T
from ``fold_in(PRNGKey(train.seed), k)`` and its data batch is the base data set's batch
``k`` of seed ``train.data_seed``.  Checkpoints fall on multiples of ``log_every`` (the
config must make ``checkpoint_every`` one), so a run killed with kill -9 and rerun resumes
from its newest intact checkpoint and ends with bitwise the parameters and log of an
uninterrupted run; SIGTERM saves the step reached and raises TrainingPreempted.

The finetuned parameters load with :func:`load_finetuned` (a
:class:`samplax.experiment.trainer.Trained`, so ``trainer.draw_samples`` and everything
that takes a Trained samples them).
"""
from __future__ import annotations

import functools
import json
import math
import time
from typing import Optional

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging

from samplax import io
from samplax.experiment import results as store
from samplax.experiment.checkpoints import CheckpointMismatch, Checkpoints, restore_checkpoint, resume_run
from samplax.experiment.config import ConfigError, Field, check_tree, float_range, int_range, one_of
from samplax.experiment.identity import identity
from samplax.training.mmd import BANDWIDTHS, FEATURES, MMD_SOLVERS

CHECKPOINT_DIR = "checkpoints"
LOG_FILE = "train_log.jsonl"
SUMMARY_FILE = "train_summary.json"
DERIVED = (store.CONFIG_FILE, CHECKPOINT_DIR, LOG_FILE, SUMMARY_FILE)
NON_IDENTITY_FIELDS = ("train.log_every", "train.checkpoint_every", "train.keep_checkpoints", "train.remat",
                       "eval.num_samples", "eval.seed")
EVAL_DATA_SEED = 777  # the data seed of the evaluation reference batch (MMD^2; FD / sw2 use their own references)


def mmd_finetune_config() -> ml_collections.ConfigDict:
    """Defaults: DPM-Solver++ at NFE 4 on the logSNR grid, raw-sample RBF kernel with median
    bandwidths x (0.25 .. 4), Adam 1e-4, 500 steps of 256 generated vs 256 data samples."""
    c = ml_collections.ConfigDict()
    c.kind = "mmd_finetune"
    c.base = ""  # a training workdir (configs/train_*.py of kind "model", a continuous diffusion model)
    c.base_which = "ema"  # which base parameters to start from: "ema" or "params"
    c.sampler = ml_collections.ConfigDict(dict(solver="dpm_solver_pp", nfe=4, spacing="logsnr"))
    c.kernel = ml_collections.ConfigDict(dict(features="raw", bandwidth="median",
                                              scales=(0.25, 0.5, 1.0, 2.0, 4.0), energy_weight=0.0))
    c.optim = ml_collections.ConfigDict(dict(learning_rate=1e-4, grad_clip=1.0, warmup_steps=0))
    c.train = ml_collections.ConfigDict(dict(num_steps=500, gen_batch=256, data_batch=256, seed=0, data_seed=1,
                                             remat=False, log_every=50, checkpoint_every=100, keep_checkpoints=2))
    c.eval = ml_collections.ConfigDict(dict(num_samples=2000, seed=12345))
    return c


# ---------------------------------------------------------------------------------------
# Validation: every field, before anything is written
# ---------------------------------------------------------------------------------------
def _schema():
    from samplax.timesteps import SPACINGS

    i, f, st = "int", "float", "str"
    pos, nonneg = int_range(1), int_range(0)
    return dict(
        kind=Field(st, check=one_of(("mmd_finetune",))),
        base=Field(st, check=_nonempty),
        base_which=Field(st, check=one_of(("ema", "params"))),
        sampler=dict(solver=Field(st, check=one_of(MMD_SOLVERS)), nfe=Field(i, check=int_range(1, 1000)),
                     spacing=Field(st, check=one_of(SPACINGS))),
        kernel=dict(features=Field(st, check=one_of(FEATURES)), bandwidth=Field(st, check=one_of(BANDWIDTHS)),
                    energy_weight=Field(f, check=float_range(0.0))),
        optim=dict(learning_rate=Field(f, check=float_range(0.0, lo_open=True)),
                   grad_clip=Field(f, check=float_range(0.0)), warmup_steps=Field(i, check=nonneg)),
        train=dict(num_steps=Field(i, check=pos), gen_batch=Field(i, check=int_range(2)),
                   data_batch=Field(i, check=int_range(2)), seed=Field(i, check=nonneg),
                   data_seed=Field(i, check=nonneg), remat=Field("bool"), log_every=Field(i, check=pos),
                   checkpoint_every=Field(i, check=pos), keep_checkpoints=Field(i, check=pos)),
        eval=dict(num_samples=Field(i, check=int_range(2)), seed=Field(i, check=nonneg)),
    )


def _nonempty(path, v):
    if not v.strip():
        raise ConfigError(path, "is empty; allowed: the workdir of a trained diffusion model "
                                "(python -m experiments.train --config=configs/train_gmm2d.py --workdir=...)")


def _check_scales(cfg: dict) -> None:
    path = "config.kernel.scales"
    kernel = cfg.get("kernel")
    if not isinstance(kernel, dict) or "scales" not in kernel:
        raise ConfigError(path, "missing required field (a tuple of positive numbers)")
    v = kernel["scales"]
    ok = isinstance(v, (list, tuple)) and len(v) > 0 and all(
        isinstance(e, (int, float)) and not isinstance(e, bool) and math.isfinite(e) and e > 0 for e in v)
    if not ok:
        raise ConfigError(path, f"got {v!r}; allowed: a non-empty tuple of finite numbers > 0 (bandwidths, or "
                                f"multiples of the median distance with kernel.bandwidth 'median')")


def validate_mmd_finetune(config) -> dict:
    """The config as a plain dict, checked field by field (ConfigError names the first bad
    field and what is allowed).  Touches no file (the base workdir is read by the run)."""
    cfg = config.to_dict() if hasattr(config, "to_dict") else dict(config)
    cfg = json.loads(json.dumps(cfg, default=lambda o: list(o) if isinstance(o, tuple) else str(o)))
    _check_scales(cfg)
    scales = cfg["kernel"].pop("scales")
    check_tree(_schema(), cfg, "config")
    cfg["kernel"]["scales"] = [float(s) for s in scales]
    t = cfg["train"]
    if t["checkpoint_every"] % t["log_every"]:
        raise ConfigError("config.train.checkpoint_every", f"got {t['checkpoint_every']}; allowed: a multiple of "
                                                           f"train.log_every ({t['log_every']}), so a resumed run "
                                                           f"logs what an uninterrupted one does")
    return cfg


# ---------------------------------------------------------------------------------------
# Config -> objects
# ---------------------------------------------------------------------------------------
def load_base(cfg: dict):
    """The base's :class:`samplax.experiment.trainer.Trained`; ConfigError("config.base") when
    it is not the workdir of a trained continuous diffusion model."""
    from samplax.experiment.trainer import is_causal, is_classify, is_masked, load_trained

    try:
        tr = load_trained(cfg["base"], which=cfg["base_which"])
    except (FileNotFoundError, ValueError) as e:
        raise ConfigError("config.base", f"{e}; allowed: the workdir of a finished training run of a continuous "
                                         f"diffusion model") from None
    c = tr.setup.cfg
    if is_masked(c) or is_causal(c) or is_classify(c):
        raise ConfigError("config.base", f"{cfg['base']} trained objective {c['loss']['objective']!r}; allowed: a "
                                         f"continuous diffusion model (objectives noise / data / velocity / edm ...)")
    return tr


def base_is_digits(tr) -> bool:
    return tr.setup.cfg["data"]["name"] == "digits" and tuple(tr.setup.dataset.shape) == (8, 8, 1)


def build_features(cfg: dict, tr):
    """phi of the kernel: None (raw samples) or the digits classifier's feature layer."""
    if cfg["kernel"]["features"] == "raw":
        return None
    if not base_is_digits(tr):
        raise ConfigError("config.kernel.features", f"'classifier' is the digits classifier's feature layer; the "
                                                    f"base trained on {tr.setup.cfg['data']['name']!r}; allowed: 'raw'")
    from samplax.experiment import cache as refcache
    from samplax.models.classifier import DigitsClassifier, load_or_train_digits_classifier

    cparams, _ = load_or_train_digits_classifier(refcache.cache_dir())
    net = DigitsClassifier(features=int(cparams["feature"]["kernel"].shape[-1]))
    return lambda x: net.apply({"params": cparams}, x.reshape((x.shape[0], 8, 8, 1)), return_features=True)


def build_sampler(cfg: dict, tr):
    from samplax.training.mmd import few_step_sampler

    sc = cfg["sampler"]
    try:
        return few_step_sampler(sc["solver"], sc["nfe"], tr.setup.schedule, sc["spacing"])
    except ValueError as e:
        raise ConfigError("config.sampler.nfe", str(e)) from None


def build_optimizer(cfg: dict):
    o, n = cfg["optim"], cfg["train"]["num_steps"]
    lr = o["learning_rate"] if not o["warmup_steps"] else optax.linear_schedule(
        0.0, o["learning_rate"], min(o["warmup_steps"], n))
    parts = [optax.clip_by_global_norm(o["grad_clip"])] if o["grad_clip"] > 0 else []
    return optax.chain(*parts, optax.adam(lr))


# One DiffusionModel (hence one network function) per model identity and one jitted step per
# (model, step settings) in a process, so reruns, resumes and evaluations reuse compiled programs.
_TEMPLATES, _STEPS = {}, {}


def _model_key(tr) -> str:
    return json.dumps(tr.setup.identity, sort_keys=True, default=str)


def model_fn(tr):
    """params -> the base network's DiffusionModel with those parameters (unconditional)."""
    from samplax.experiment.trainer import trained_model

    key = _model_key(tr)
    if key not in _TEMPLATES:
        _TEMPLATES[key] = trained_model(tr.setup, tr.params)
    template = _TEMPLATES[key]
    return lambda p: template.replace(params=p)


def finetune_step(cfg: dict, tr, sampler, optimizer, features):
    """The jitted step of :func:`samplax.training.mmd.make_finetune_step` for the config
    (memoised per model identity and the fields the step depends on)."""
    from samplax.schedules import prior_std
    from samplax.training.mmd import make_finetune_step

    t, k = cfg["train"], cfg["kernel"]
    key = (_model_key(tr), json.dumps([cfg["sampler"], k, cfg["optim"], t["num_steps"], t["gen_batch"], t["remat"]],
                                      sort_keys=True))
    if key not in _STEPS:
        _STEPS[key] = make_finetune_step(model_fn(tr), sampler, optimizer, tr.setup.dataset.shape, t["gen_batch"],
                                         prior_std(tr.setup.schedule), features, k["bandwidth"], k["scales"],
                                         t["remat"], k["energy_weight"])
    return _STEPS[key]


def model_identity(tr) -> dict:
    return dict(kind="mmd_finetune", base=tr.setup.identity)


# ---------------------------------------------------------------------------------------
# Evaluation (the summary's, and the benchmark's)
# ---------------------------------------------------------------------------------------
@functools.partial(jax.jit, static_argnames=("solver", "n", "shape"))
def _generate(model, grid, key, prior, solver, n, shape):
    from samplax.solvers import generate

    x = generate(solver, model, grid, key, n, shape, prior_std=prior)
    return x[0] if isinstance(x, tuple) else x


def few_step_samples(tr, params, sampler, n: int, seed: int) -> np.ndarray:
    """n samples of the sampler with ``params`` from x_T of ``seed`` (the solver's own
    ``generate``: x_T per sample index, independent of n's split)."""
    from samplax.schedules import prior_std

    return np.asarray(_generate(model_fn(tr)(params), sampler.grid, jax.random.PRNGKey(seed),
                                float(prior_std(tr.setup.schedule)), sampler.solver, int(n),
                                tuple(tr.setup.dataset.shape)))


def sample_metrics(tr, x: np.ndarray, data_batch: Optional[np.ndarray] = None) -> dict:
    """Metrics of samples ``x`` of the base's data: mmd2 (raw, median bandwidths) against
    ``data_batch`` when given; sw2 to exact samples (the experiment runner's reference set and
    directions) on the 2-D problems; digits FD (test split) on digits."""
    from samplax.metrics import mmd2_unbiased, mmd_bandwidths_median

    out = {}
    flat = np.asarray(x, np.float64).reshape(len(x), -1)
    if not np.all(np.isfinite(flat)):
        return dict(nonfinite=True)
    if data_batch is not None:
        y = np.asarray(data_batch, np.float64).reshape(len(data_batch), -1)
        bw = mmd_bandwidths_median(jnp.asarray(y[: len(y) // 2]), jnp.asarray(y[len(y) // 2:]))
        out["mmd2"] = float(mmd2_unbiased(jnp.asarray(flat, jnp.float32), jnp.asarray(y, jnp.float32), bw))
    name = tr.setup.cfg["data"]["name"]
    from samplax.models.analytic import PROBLEMS

    if name in PROBLEMS:
        out["sw2"] = exact_sw2(name, flat)
    elif base_is_digits(tr):
        from samplax.experiment import cache as refcache
        from samplax.models.classifier import digits_fd, digits_reference_statistics, load_or_train_digits_classifier

        cparams, _ = load_or_train_digits_classifier(refcache.cache_dir())
        ref = digits_reference_statistics(cparams, "test")
        out["fd"] = float(digits_fd(cparams, flat.reshape((-1, 8, 8, 1)).astype(np.float32), reference=ref))
    return out


def exact_sw2(problem: str, x: np.ndarray, n_proj: int = 128) -> float:
    """Sliced W2 of samples x (n, d) to n exact samples of ``problem`` (the experiment runner's
    EXACT_KEY set and PROJ_KEY directions, so the numbers compare with its sweeps)."""
    from samplax.experiment.runner import EXACT_KEY, PROJ_KEY
    from samplax.metrics import projections, sliced_wasserstein2_host
    from samplax.models.analytic import load_problem

    gmm, _, _ = load_problem(problem)
    with jax.enable_x64(True):
        exact = np.asarray(gmm.astype(jnp.float64).sample(jax.random.PRNGKey(EXACT_KEY), len(x), dtype=jnp.float64))
    proj = np.asarray(projections(jax.random.PRNGKey(PROJ_KEY), x.shape[1], n_proj, jnp.float32), np.float64)
    return sliced_wasserstein2_host(x, exact, proj)


def evaluate(tr, params, sampler, num_samples: int, seed: int) -> dict:
    data = np.asarray(tr.setup.dataset.batch(EVAL_DATA_SEED, 0, num_samples)[0])
    return sample_metrics(tr, few_step_samples(tr, params, sampler, num_samples, seed), data)


# ---------------------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------------------
def run_mmd_finetune(config, workdir, restart: bool = False) -> dict:
    """Run (or resume) MMD finetuning in ``workdir``; returns the summary (module doc).

    ConfigError (bad field, base not a trained diffusion model, bad workdir),
    WorkdirConflict or CheckpointMismatch / CheckpointDamaged are raised before anything is
    written."""
    from samplax.experiment import cache as refcache

    refcache.enable_compilation_cache()
    return store.run_releasing_lock(_run, config, workdir, restart)


def _run(config, workdir, restart: bool, holder: dict) -> dict:
    from samplax.experiment.trainer import SigtermFlag, TrainingPreempted, rewrite_log

    cfg = validate_mmd_finetune(config)
    wd = store.check_workdir(workdir)
    t = cfg["train"]
    ident = identity(cfg, drop=NON_IDENTITY_FIELDS)
    tr = load_base(cfg)
    features = build_features(cfg, tr)
    sampler = build_sampler(cfg, tr)
    optimizer = build_optimizer(cfg)
    fresh = dict(params=tr.params, opt_state=optimizer.init(tr.params))
    mid = model_identity(tr)
    ckpt_dir = wd / CHECKPOINT_DIR
    base_meta = dict(base_step=tr.step, base_checkpoint=tr.checkpoint)

    def same_base(meta0):
        if meta0.get("base_step") != tr.step:
            raise CheckpointMismatch(f"checkpoint {ckpt_dir / str(meta0['step'])} finetuned base step "
                                     f"{meta0.get('base_step')}, the base's newest is now {tr.step}; use "
                                     f"another workdir or --restart")

    restored, damaged = resume_run(wd, ckpt_dir, mid, ident, ident, fresh, restart, same_base)

    holder["lock"] = store.WorkdirLock(wd)
    holder["lock"].acquire()
    store.open_run(wd, "mmd_finetune", cfg, ident, restart, DERIVED)
    step_fn = finetune_step(cfg, tr, sampler, optimizer, features)
    root = jax.random.PRNGKey(t["seed"])
    log_path = wd / LOG_FILE
    with Checkpoints(ckpt_dir, mid, ident, keep=t["keep_checkpoints"], every=t["checkpoint_every"],
                     final_step=t["num_steps"]) as ckpt, SigtermFlag() as sigterm:
        state, start = ckpt.start(restored, damaged, fresh)  # newer damaged steps go aside (<step>.damaged)
        logging.info("mmd_finetune: starting at step %d in %s", start, wd)
        rewrite_log(log_path, start)
        params, opt_state = state["params"], state["opt_state"]
        window, t0 = [], time.perf_counter()
        for step in range(start, t["num_steps"]):
            data = tr.setup.dataset.batch(t["data_seed"], step, t["data_batch"])[0]
            params, opt_state, loss = step_fn(params, opt_state, jax.random.fold_in(root, step),
                                              jnp.asarray(data, jnp.float32))
            window.append(loss)
            b = step + 1
            if b % t["log_every"] == 0 or b == t["num_steps"]:
                losses = np.asarray(jax.device_get(window), np.float64)
                row = dict(step=b, loss=float(losses.mean()), steps_per_s=len(losses) / max(time.perf_counter() - t0,
                                                                                               1e-9))
                if not math.isfinite(row["loss"]):
                    raise FloatingPointError(f"mmd_finetune: loss became non-finite before step {b} (last "
                                             f"checkpoint kept in {ckpt.directory})")
                io.append_line(log_path, (json.dumps(io.json_clean(row), sort_keys=True) + "\n").encode())
                logging.info("mmd_finetune: step %d/%d loss %.5g", b, t["num_steps"], row["loss"])
                window, t0 = [], time.perf_counter()
            preempted = sigterm.received is not None
            if preempted or ckpt.should_save(b):
                ckpt.save(b, dict(params=params, opt_state=opt_state), base_meta)
            if preempted and b < t["num_steps"]:
                raise TrainingPreempted(b, str(ckpt.path(b)), "SIGTERM")

    ev = cfg["eval"]
    summary = dict(
        workdir=str(wd), base=cfg["base"], base_step=tr.step, steps=t["num_steps"], resumed_from=start,
        checkpoint=str(ckpt_dir / str(t["num_steps"])), sampler=dict(cfg["sampler"], n_steps=sampler.grid.n_steps),
        eval_base=evaluate(tr, tr.params, sampler, ev["num_samples"], ev["seed"]),
        eval_finetuned=evaluate(tr, params, sampler, ev["num_samples"], ev["seed"]),
        final=json.loads(io.read_bytes(log_path).decode().splitlines()[-1]) if io.exists(log_path) else None)
    io.atomic_write_json(wd / SUMMARY_FILE, summary)
    return summary


# ---------------------------------------------------------------------------------------
# Loading the finetuned model
# ---------------------------------------------------------------------------------------
def load_finetuned(workdir, step: Optional[int] = None):
    """The finetuned parameters of an mmd_finetune workdir's checkpoint ``step`` (default the
    newest intact one) as a :class:`samplax.experiment.trainer.Trained` of the base's setup
    (so :func:`samplax.experiment.trainer.draw_samples` and :func:`few_step_samples` take
    it); also returns the run's saved config.  Reads only."""
    from samplax.experiment.trainer import Trained

    wd = io.as_path(workdir)
    path = wd / store.CONFIG_FILE
    if not path.exists():
        raise FileNotFoundError(f"{workdir} is not an mmd_finetune workdir: no {store.CONFIG_FILE}")
    saved = json.loads(path.read_text())
    if not isinstance(saved, dict) or saved.get("kind") != "mmd_finetune":
        raise ValueError(f"{workdir} holds a {saved.get('kind') if isinstance(saved, dict) else None!r} run, not an "
                         f"mmd_finetune run")
    cfg = saved["config"]
    tr = load_base(cfg)
    optimizer = build_optimizer(cfg)
    fresh = dict(params=tr.params, opt_state=optimizer.init(tr.params))
    state, meta, where = restore_checkpoint(wd / CHECKPOINT_DIR, model_identity(tr), fresh, step, what=str(workdir))
    return Trained(tr.setup, state["params"], int(meta["step"]), where), cfg


__all__ = ["mmd_finetune_config", "validate_mmd_finetune", "run_mmd_finetune", "load_finetuned", "load_base",
           "build_sampler", "few_step_samples", "sample_metrics", "exact_sw2", "evaluate", "NON_IDENTITY_FIELDS"]
