"""Training runs: a train config -> data, schedule, Flax network, loss, optax train step,
Orbax checkpoints, logs, TensorBoard scalars and preview PNGs; and loading a trained
model back as a DiffusionModel for sampling.

A training workdir holds::

    config.json            the config and its identity (a rerun of another config is refused)
    checkpoints/<step>/    Orbax: TrainState (params, EMA, optimiser state, step) + meta JSON
    train_log.jsonl        one row per log interval (loss, grad norm, learning rate, steps/s)
    train_summary.json     written at the end
    tb/                    TensorBoard scalars (tensorboardX)
    samples/step_<k>.png   preview samples drawn with the EMA parameters

Masked diffusion (``loss.objective = "masked"``, configs from
:func:`samplax.experiment.config.discrete_train_config`): token data (int32 sequences,
``Dataset.vocab_size`` V), a :class:`samplax.models.transformer.MaskedTransformer`, the
MDLM loss of :mod:`samplax.training.discrete_losses` on a masking schedule of
:mod:`samplax.discrete`, the same train step, EMA, checkpoints and resumption; a trained
model loads back as a :class:`samplax.discrete.DiscreteModel` with :func:`load_discrete_model`.

Causal language models (``loss.objective = "causal"``, configs from
:func:`samplax.experiment.config.causal_train_config`): token data, a
:class:`samplax.models.causal_lm.CausalTransformer` (decoder-only, KV cache), the next-token
cross-entropy :func:`samplax.training.discrete_losses.causal_lm_loss`, no noise schedule; a
trained model loads back as a :class:`samplax.decoding.LanguageModel` with :func:`load_causal_lm`.

The run is a pure function of its config: the batch of step k is
``dataset.batch(data_seed, k)``, the RNG of step k is ``fold_in(PRNGKey(seed), k)``.
So a run killed at any moment and restarted with the same command resumes from its
last complete (and intact: checksums) checkpoint and ends with the parameters of an
uninterrupted run.  SIGTERM saves the step in flight and raises TrainingPreempted (the
entrypoint exits with status 143): no step is lost.  Paths are ``samplax.io`` /
``etils.epath`` paths (a ``gs://`` workdir stays a URI).
"""
from __future__ import annotations

import json
import math
import os
import time
from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging

from samplax.data import make_dataset
from samplax.experiment import cache as refcache
from samplax.experiment import devices, user
from samplax.experiment import results as store
from samplax import io
from samplax.experiment.checkpoints import (CheckpointDamaged, CheckpointMismatch, Checkpoints, restore_checkpoint,
                                         resume_run)
from samplax.experiment.config import DEFAULT_DATA_SAMPLER, TRAIN_NON_IDENTITY_FIELDS, ConfigError, validate_train
from samplax.experiment.identity import identity
from samplax.experiment.progress import Progress
from samplax.models.analytic import load_problem
from samplax.models.networks import MLPScoreNet, network_apply, network_model
from samplax.schedules import get_schedule, prior_std
from samplax.training.losses import denoising_loss, edm_loss
from samplax.training.train import (init_data_state, init_train_state, learning_rate_schedule, make_optimizer,
                                    make_sampled_train_step, make_train_step, step_key)

CHECKPOINT_DIR = "checkpoints"
LOG_FILE = "train_log.jsonl"
SUMMARY_FILE = "train_summary.json"
TRAIN_DERIVED = (store.CONFIG_FILE, CHECKPOINT_DIR, LOG_FILE, SUMMARY_FILE, "tb", "samples")
EVAL_SEED_OFFSET = 1_000_003  # the fixed evaluation batch: data seed + this, step 0


# ---------------------------------------------------------------------------------------
# Config -> objects
# ---------------------------------------------------------------------------------------
def is_masked(cfg: dict) -> bool:
    """A masked-diffusion (discrete, token) training config."""
    return cfg["loss"]["objective"] == "masked"


def is_causal(cfg: dict) -> bool:
    """A causal language-model (next-token, token data) training config."""
    return cfg["loss"]["objective"] == "causal"


def is_classify(cfg: dict) -> bool:
    """A classifier training config (cross-entropy on the data set's labels)."""
    return cfg["loss"]["objective"] == "classify"


def build_schedule(cfg: dict):
    sc = cfg["schedule"]
    if is_causal(cfg) or is_classify(cfg):  # next-token prediction / classification: no noise schedule
        return None
    if is_masked(cfg):  # a masking schedule alpha(t) (validate_train checked the name)
        from samplax.discrete.base import mask_schedule

        return mask_schedule(sc["name"])
    name, options = sc["name"], dict(sc.get("options") or {})
    if sc.get("factory"):  # a user's schedule: "pkg.module:callable"(**options)
        return user.call_factory(sc["factory"], options, "config.schedule.factory", "config.schedule.options",
                                 user.is_schedule, "a samplax.schedules.NoiseSchedule")
    if name == "problem":
        if options:
            raise ConfigError("config.schedule.options", "the problem file's schedule takes no options")
        return load_problem(cfg["data"]["name"])[1]
    try:
        return get_schedule(name, **options)
    except TypeError as e:
        raise ConfigError("config.schedule.options", f"not accepted by schedule {name!r}: {e}") from None


def build_dataset(cfg: dict):
    d = cfg["data"]
    if d.get("factory"):  # a user's data set: "pkg.module:callable"(**options) -> samplax.data.Dataset
        return user.call_factory(d["factory"], dict(d.get("options") or {}), "config.data.factory",
                                 "config.data.options", user.is_dataset,
                                 "a samplax.data.Dataset (name, shape, num_classes, batch(seed, step, batch_size))")
    try:
        return make_dataset(d["name"], **dict(d.get("options") or {}))
    except ValueError as e:
        raise ConfigError("config.data.options", str(e)) from None


def num_classes(cfg: dict, dataset) -> int:
    return int(dataset.num_classes) if cfg["model"]["class_conditional"] else 0


def build_network(cfg: dict, dataset):
    m = cfg["model"]
    k = num_classes(cfg, dataset)
    if m["class_conditional"] and dataset.num_classes == 0:
        raise ConfigError("config.model.class_conditional", f"data {dataset.name!r} has no labels")
    if m.get("factory"):  # a user's Flax module, called as module(x, s) or module(x, s, labels)
        extra = {"num_classes": k} if m["class_conditional"] else {}
        return user.call_factory(m["factory"], dict(m.get("options") or {}), "config.model.factory",
                                 "config.model.options", user.is_flax_module, "a flax.linen.Module", extra=extra)
    if is_classify(cfg):
        from samplax.models.classifier import DigitsClassifier, MLPClassifier

        if not dataset.num_classes:
            raise ConfigError("config.loss.objective", f"'classify' needs labelled data; data {dataset.name!r} has "
                              f"no labels")
        if m["network"] == "digits_cnn":
            if tuple(dataset.shape) != (8, 8, 1):
                raise ConfigError("config.model.network", f"'digits_cnn' takes 8x8x1 images; data {dataset.name!r} "
                                  f"has shape {dataset.shape}: use 'mlp'")
            return DigitsClassifier()
        return MLPClassifier(hidden=tuple(m["mlp"]["hidden"]), num_classes=int(dataset.num_classes))
    if m["network"] in ("transformer", "causal_transformer"):
        from samplax.models.causal_lm import CausalTransformer
        from samplax.models.transformer import MaskedTransformer

        if not getattr(dataset, "vocab_size", 0) or len(dataset.shape) != 1:
            raise ConfigError("config.model.network", f"'transformer' takes token sequences (a Dataset with "
                              f"vocab_size > 0 and shape (L,)); data {dataset.name!r} has shape {dataset.shape}")
        cls = CausalTransformer if m["network"] == "causal_transformer" else MaskedTransformer
        return cls(vocab_size=int(dataset.vocab_size), length=int(dataset.shape[0]), **dict(m["transformer"]))
    if m["network"] == "mlp":
        if len(dataset.shape) != 1:
            raise ConfigError("config.model.network", f"'mlp' takes vectors; data {dataset.name!r} has shape "
                              f"{dataset.shape}: use 'unet'")
        return MLPScoreNet(hidden=tuple(m["mlp"]["hidden"]), embed_dim=m["mlp"]["embed_dim"], num_classes=k)
    from samplax.models.unet import UNet

    if len(dataset.shape) != 3:
        raise ConfigError("config.model.network", f"'unet' takes images (H, W, C); data {dataset.name!r} has "
                          f"shape {dataset.shape}: use 'mlp'")
    u = m["unet"]
    levels = len(u["channels"])
    h, w = dataset.shape[:2]
    if h % 2 ** (levels - 1) or w % 2 ** (levels - 1):
        raise ConfigError("config.model.unet.channels", f"{levels} levels halve the image {levels - 1} times; "
                          f"{h}x{w} is not divisible by {2 ** (levels - 1)}")
    bad = [c for c in u["channels"] if c % u["groups"]]
    if bad:
        raise ConfigError("config.model.unet.groups", f"must divide every channel count {tuple(u['channels'])}, "
                          f"got {u['groups']}")
    return UNet(channels=tuple(u["channels"]), num_res_blocks=u["num_res_blocks"], attention=u["attention"],
                embed_dim=u["embed_dim"], groups=u["groups"], num_classes=k)


def precond(cfg: dict) -> str:
    return "edm" if cfg["loss"]["objective"] == "edm" else "none"


def prediction(cfg: dict) -> str:
    return "data" if cfg["loss"]["objective"] == "edm" else cfg["loss"]["objective"]


def model_identity(cfg: dict, dataset) -> dict:
    """Every field that shapes the parameters or the meaning of the network's output."""
    return dict(data=cfg["data"]["name"], data_shape=list(dataset.shape), schedule=cfg["schedule"],
                model=cfg["model"], objective=cfg["loss"]["objective"], num_classes=num_classes(cfg, dataset))


def build_loss(cfg: dict, net, schedule, dataset):
    """``loss_fn(params, batch, key) -> (loss, aux)`` with batch = (x, labels or None)."""
    if is_classify(cfg):
        def classify_loss_fn(params, batch, key):  # deterministic: key unused
            x, y = batch
            logits = net.apply(params, x)
            per_example = optax.softmax_cross_entropy_with_integer_labels(logits, y)
            return jnp.mean(per_example), dict(per_example=per_example,
                                               correct=(jnp.argmax(logits, -1) == y).astype(jnp.float32))
        return classify_loss_fn
    if is_causal(cfg):
        from samplax.training.discrete_losses import causal_lm_loss

        def causal_loss_fn(params, batch, key):  # deterministic: key unused
            return causal_lm_loss(lambda x: jax.nn.log_softmax(net.apply(params, x), axis=-1), batch[0])
        return causal_loss_fn
    if is_masked(cfg):
        from samplax.training.discrete_losses import masked_diffusion_loss

        vocab = int(dataset.vocab_size)

        def masked_loss_fn(params, batch, key):
            return masked_diffusion_loss(lambda z, t: jax.nn.log_softmax(net.apply(params, z, t), axis=-1),
                                         batch[0], key, schedule, vocab)
        return masked_loss_fn
    apply = network_apply(net, schedule, cfg["model"]["time_input"], precond=precond(cfg),
                          sigma_data=cfg["model"]["sigma_data"])
    loss = cfg["loss"]
    k = num_classes(cfg, dataset)
    drop = cfg["model"]["label_dropout"]

    def loss_fn(params, batch, key):
        x, y = batch
        labels = y if k else None
        if loss["objective"] == "edm":
            return edm_loss(lambda xt, s, *lab: apply(params, xt, s, *lab), x, key, p_mean=loss["p_mean"],
                            p_std=loss["p_std"], sigma_data=cfg["model"]["sigma_data"], labels=labels,
                            label_dropout=drop, num_classes=k)
        return denoising_loss(lambda xt, t, *lab: apply(params, xt, t, *lab), x, key, schedule,
                              target=loss["objective"], weighting=loss["weighting"], discrete=loss["discrete"],
                              labels=labels, label_dropout=drop, num_classes=k)
    return loss_fn


def data_dtype(dataset):
    """int32 for token data (vocab_size > 0), float32 otherwise."""
    return np.int32 if getattr(dataset, "vocab_size", 0) else np.float32


def init_params(cfg: dict, net, dataset):
    x = jnp.zeros((1,) + tuple(dataset.shape), data_dtype(dataset))
    s = jnp.zeros((1,), jnp.float32)
    key = jax.random.fold_in(jax.random.PRNGKey(cfg["train"]["seed"]), 2**31 - 1)
    if is_causal(cfg) or is_classify(cfg):  # the causal network takes tokens only; a classifier x only
        return jax.jit(net.init)(key, x)
    init = jax.jit(net.init) if is_masked(cfg) else net.init  # (eager flax init costs seconds of dispatch)
    return init(key, x, s)


def build_optimizer(cfg: dict):
    o, n = cfg["optim"], cfg["train"]["num_steps"]
    return make_optimizer(o["learning_rate"], n, o["warmup_steps"], o["weight_decay"], o["b1"], o["b2"],
                          o["grad_clip"] or None, o["end_lr_fraction"])


def train_identity(cfg: dict) -> dict:
    """The config without its non-identity fields; the default data sampler ("stream", the
    order every run had before samplers existed) is left out too, so older runs keep their identity."""
    ident = identity(cfg, TRAIN_NON_IDENTITY_FIELDS)
    if sampler_name(cfg) == DEFAULT_DATA_SAMPLER:
        ident["train"].pop("sampler", None)
    ident.pop("kind", None)
    return ident


def sampler_name(cfg: dict) -> str:
    return (cfg["train"].get("sampler") or {}).get("name", DEFAULT_DATA_SAMPLER)


def build_sampler(cfg: dict, dataset):
    """The config's samplax.data_sampling sampler (None for "stream"); ConfigError when the data
    set has no in-memory arrays or an option is refused."""
    name = sampler_name(cfg)
    if name == DEFAULT_DATA_SAMPLER:
        return None
    from samplax.data_sampling import get_sampler

    if dataset.arrays is None or not dataset.size:
        raise ConfigError("config.train.sampler.name", f"sampler {name!r} picks examples of a finite data set held "
                          f"in memory (samplax.data.Dataset.arrays); data {dataset.name!r} has none; allowed here: "
                          f"{DEFAULT_DATA_SAMPLER!r}")
    try:
        return get_sampler(name, int(dataset.size), int(cfg["train"]["batch_size"]),
                           dict(cfg["train"]["sampler"].get("options") or {}))
    except (ValueError, TypeError) as e:
        raise ConfigError("config.train.sampler.options", str(e)) from None


class Setup(NamedTuple):
    cfg: dict
    dataset: object
    schedule: object
    net: object
    optimizer: object
    identity: dict
    sampler: object = None  # a samplax.data_sampling.DataSampler, or None for the data set's own order


def setup(config) -> Setup:
    """Validate a training config and build its objects (no files touched)."""
    cfg = validate_train(config)
    dataset = build_dataset(cfg)
    schedule = build_schedule(cfg)
    net = build_network(cfg, dataset)
    return Setup(cfg, dataset, schedule, net, build_optimizer(cfg), model_identity(cfg, dataset),
                 build_sampler(cfg, dataset))


# ---------------------------------------------------------------------------------------
# Validation before anything is written
# ---------------------------------------------------------------------------------------
def check_workdir(workdir):
    """The workdir as an epath.Path, or ConfigError("workdir", ...) when samplax cannot
    write there (:func:`samplax.experiment.results.check_workdir`)."""
    return store.check_workdir(workdir, filesystem=devices.is_writer())


def check_preview(cfg: dict) -> None:
    """The preview solver must reach the preview NFE (checked only when previews are drawn)."""
    t = cfg["train"]
    if not t["sample_count"] or is_masked(cfg) or is_causal(cfg) or is_classify(cfg):  # no solver/NFE
        return
    from samplax.solvers import get_solver, steps_for_nfe

    solver = get_solver(t["sample_solver"])
    if solver.prepare is not None:  # dpm_solver_v3, teleport: statistics of the model being trained
        raise ConfigError("config.train.sample_solver", f"{t['sample_solver']!r} needs model statistics "
                          f"(Solver.prepare) that change while training; allowed: a solver without a prepare "
                          f"step, e.g. 'dpm_solver_pp' or 'unipc' (sample the trained model with "
                          f"experiments.sample instead)")
    try:
        steps_for_nfe(solver, int(t["sample_nfe"]))
    except ValueError as e:
        raise ConfigError("config.train.sample_nfe", f"{e} (config.train.sample_solver="
                          f"{t['sample_solver']!r}); allowed: one of those NFEs, or another solver") from None


def check_devices(cfg: dict, n_dev: int) -> None:
    b = cfg["train"]["batch_size"]
    if b % n_dev:
        raise ConfigError("config.train.batch_size", f"must be divisible by the number of devices ({n_dev}), "
                          f"got {b}")


# ---------------------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------------------
class TrainingPreempted(Exception):
    """SIGTERM (or Orbax's preemption sync point) stopped the run after saving ``step``;
    the same command resumes from it."""

    def __init__(self, step: int, checkpoint: str, reason: str):
        self.step, self.checkpoint, self.reason = step, checkpoint, reason
        super().__init__(f"train: {reason} at step {step}; saved the checkpoint {checkpoint}. Rerun the same "
                         f"command to resume.")


class SigtermFlag:
    """A SIGTERM handler that only records the signal, so the loop can finish the step in
    flight, save it and stop.  Installed by a single process only: under jax.distributed,
    JAX's preemption service owns SIGTERM and Orbax's ``reached_preemption`` agrees on the
    step across processes (a per-process flag could stop them at different steps)."""

    def __init__(self):
        self.received = None
        self._previous = None

    def __enter__(self):
        import signal
        import threading

        if jax.process_count() == 1 and threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.received is not None:  # a second SIGTERM: stop now, as without the handler
            import signal

            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGTERM)
            return
        self.received = signum
        logging.warning("train: SIGTERM received; saving after the step in flight")

    def __exit__(self, *exc):
        import signal

        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
            self._previous = None


def rewrite_log(path, last_step: int) -> None:
    """Keep the log rows up to the restored checkpoint (later ones are recomputed)."""
    if not io.exists(path):
        return
    io.cut_partial_line(path)
    keep = []
    for line in io.read_bytes(path).decode("utf-8", "replace").splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            logging.warning("%s: dropping an unparsable line", path)
            continue
        if isinstance(row, dict) and isinstance(row.get("step"), int) and row["step"] <= last_step:
            keep.append(line + "\n")
    io.atomic_write_text(path, "".join(keep))


def _finite(state) -> jax.Array:
    leaves = jax.tree.leaves((state.params, state.ema_params))
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves]))


def run_train(config, workdir, restart: bool = False) -> dict:
    """Train (or resume) the model of ``config`` in ``workdir`` (see :func:`_run_train`),
    holding the workdir's lock from its first write on (a second run in the same
    workdir is refused with WorkdirLocked), with JAX's persistent compilation cache on."""
    refcache.enable_compilation_cache()
    return store.run_releasing_lock(_run_train, config, workdir, restart)


def _run_train(config, workdir, restart: bool, holder: dict) -> dict:
    """Train (or resume) the model of ``config`` in ``workdir``; returns the summary.

    Everything is validated before anything is written: ConfigError (bad config, workdir,
    preview solver/NFE, batch size vs devices), WorkdirConflict (workdir of another
    config), CheckpointMismatch (a checkpoint of another model or training config) or
    CheckpointDamaged (checkpoints, none intact).  A damaged newest checkpoint is moved
    aside (``<step>.damaged``) with a warning and the run resumes from the newest intact
    one.  SIGTERM saves the step in flight and raises TrainingPreempted; a non-finite
    loss or parameter raises FloatingPointError before it is saved."""
    # jax.distributed must start before anything touches a backend (setup() builds the data set)
    devices.maybe_initialize_distributed(validate_train(config)["distributed"])
    s = setup(config)
    cfg, t = s.cfg, s.cfg["train"]
    wd = check_workdir(workdir)
    check_preview(cfg)
    writer = devices.is_writer()
    mesh = devices.batch_mesh()
    n_dev = mesh.devices.size
    check_devices(cfg, n_dev)
    ident = train_identity(cfg)
    ckpt_dir = wd / CHECKPOINT_DIR
    rep = devices.replicated(mesh)
    fresh = jax.device_put(fresh_train_state(s), rep)

    # the checkpoint to resume, its compatibility and integrity: read-only, before any write
    restored, damaged = resume_run(wd, ckpt_dir, s.identity, ident, ident, fresh, restart)

    # writing starts here, under the workdir's lock (checked again there)
    if writer:
        holder["lock"] = store.WorkdirLock(wd)
        holder["lock"].acquire()
        store.open_run(wd, "train", cfg, ident, restart, TRAIN_DERIVED)

    loss_fn = build_loss(cfg, s.net, s.schedule, s.dataset)
    k = num_classes(cfg, s.dataset) or (int(s.dataset.num_classes) if is_classify(cfg) else 0)
    x_sh = devices.batch_sharding(mesh, 1 + len(s.dataset.shape))
    y_sh = devices.batch_sharding(mesh, 1)
    batch_sh = (x_sh, y_sh if k else None)
    lr_at = learning_rate_schedule(cfg["optim"]["learning_rate"], t["num_steps"], cfg["optim"]["warmup_steps"],
                                   cfg["optim"]["end_lr_fraction"])
    if s.sampler is None:  # the data set's own order: batch k built on the host
        step_fn = make_train_step(loss_fn, s.optimizer, cfg["optim"]["ema_decay"], cfg["optim"]["ema_warmup"])
        jit_step = jax.jit(step_fn, in_shardings=(rep, batch_sh, rep), out_shardings=(rep, rep), donate_argnums=0)

        def batch_at(step: int):
            x, y = s.dataset.batch(t["data_seed"], step, t["batch_size"])
            x = devices.put_global(np.asarray(x, data_dtype(s.dataset)), x_sh)
            return (x, devices.put_global(np.asarray(y, np.int32), y_sh) if k else None)
    else:  # a data sampler: draw, gather and step in one jitted function on the whole data set
        def constrain(batch):
            x, y = batch
            return (jax.lax.with_sharding_constraint(x, x_sh),
                    None if y is None else jax.lax.with_sharding_constraint(y, y_sh))

        step_fn = make_sampled_train_step(loss_fn, s.optimizer, s.sampler, t["data_seed"], lr_at,
                                          cfg["optim"]["ema_decay"], cfg["optim"]["ema_warmup"], constrain)
        jit_step = jax.jit(step_fn, in_shardings=(rep, rep, rep), out_shardings=(rep, rep), donate_argnums=0)
        x_all, y_all = s.dataset.arrays
        arrays = (jax.device_put(np.asarray(x_all, data_dtype(s.dataset)), rep),
                  jax.device_put(np.asarray(y_all, np.int32), rep) if k else None)

        def batch_at(step: int):
            del step
            return arrays
    all_finite = jax.jit(lambda st, losses: jnp.logical_and(_finite(st), jnp.all(jnp.isfinite(losses))))

    eval_batch = s.dataset.batch(t["data_seed"] + EVAL_SEED_OFFSET, 0, t["batch_size"])
    eval_batch = (jnp.asarray(eval_batch[0]), eval_batch[1] if k else None)
    eval_loss = jax.jit(lambda p: loss_fn(p, eval_batch, jax.random.PRNGKey(EVAL_SEED_OFFSET))[0])
    held_out = classifier_eval(cfg, loss_fn, s.dataset)

    tb = None
    log_path = wd / LOG_FILE
    with Checkpoints(ckpt_dir, s.identity, ident, keep=t["keep_checkpoints"], every=t["checkpoint_every"],
                     final_step=t["num_steps"]) as ckpt, SigtermFlag() as sigterm:
        if damaged:  # move the damaged newer steps aside (process 0), so their steps can be saved again
            for step, _ in damaged:
                if writer:
                    ckpt.set_aside(step)
            devices.agree_flag(True)  # a barrier: process 0 has moved them
            ckpt.reload()
        if restored is None:
            state, start = fresh, 0
            logging.info("train: starting at step 0 in %s", wd)
        else:
            state, meta = restored
            state = jax.device_put(state, rep)
            start = int(meta["step"])
            logging.info("train: resuming from the checkpoint of step %d in %s", start, ckpt.directory)
        del fresh, restored
        if writer:
            rewrite_log(log_path, start)
            from tensorboardX import SummaryWriter

            tb = SummaryWriter(str(wd / "tb"))
        try:
            t0 = time.perf_counter()
            compiled = jit_step.lower(state, batch_at(start), step_key(t["seed"], start)).compile()
            compile_s = time.perf_counter() - t0
            loop_t0 = time.perf_counter()
            logging.info("train: compiled the train step in %.1fs (%d device(s))", compile_s, n_dev)
            progress = Progress(t["num_steps"] - start, "steps", every_s=0.0)
            window, w_t0, w_start = [], time.perf_counter(), start
            unchecked, checked_at = [], start  # losses since the last finiteness check
            last = dict(loss=None)
            for step in range(start, t["num_steps"]):
                state, metrics = compiled(state, batch_at(step), step_key(t["seed"], step))
                window.append(metrics)
                unchecked.append(metrics["loss"])
                done = step + 1
                if done % t["log_every"] == 0 or done == t["num_steps"]:
                    m = jax.device_get(window)
                    rate = (done - w_start) / max(time.perf_counter() - w_t0, 1e-9)
                    row = dict(step=done, loss=float(np.mean([w["loss"] for w in m])),
                               grad_norm=float(np.mean([w["grad_norm"] for w in m])),
                               learning_rate=float(lr_at(step)), ema_decay=float(m[-1]["ema_decay"]),
                               eval_loss_ema=float(eval_loss(state.ema_params)), steps_per_s=rate,
                               elapsed_s=time.perf_counter() - loop_t0)
                    if held_out is not None:
                        row.update(held_out(state.ema_params, state.params))
                    if not math.isfinite(row["loss"]):
                        raise FloatingPointError(f"train: loss became non-finite between steps {w_start} and {done}"
                                                 f" (last checkpoint kept in {ckpt.directory})")
                    last = row
                    if writer:
                        io.append_line(log_path, (json.dumps(io.json_clean(row), sort_keys=True,
                                                             allow_nan=False) + "\n").encode())
                        for name, v in row.items():
                            if name != "step":
                                tb.add_scalar(f"train/{name}", v, done)
                        tb.flush()
                    progress.update(done - w_start, f"loss {row['loss']:.4f} eval(EMA) {row['eval_loss_ema']:.4f}")
                    window, w_t0, w_start = [], time.perf_counter(), done
                preempted = sigterm.received is not None or ckpt.reached_preemption(done)
                if preempted or ckpt.should_save(done):
                    if not bool(all_finite(state, jnp.stack(unchecked))):
                        raise FloatingPointError(
                            f"train: non-finite loss or parameters between steps {checked_at} and {done}; not "
                            f"saved (the last good checkpoint, step {ckpt.latest_step()}, is kept in "
                            f"{ckpt.directory})")
                    unchecked, checked_at = [], done
                    ckpt.save(done, state)
                if writer and t["sample_count"] and ((t["sample_every"] and done % t["sample_every"] == 0)
                                                     or done == t["num_steps"]):
                    write_preview(s, state.ema_params, wd / "samples" / f"step_{done:07d}.png", done)
                if preempted and done < t["num_steps"]:
                    reason = "SIGTERM" if sigterm.received is not None else "preemption sync point"
                    raise TrainingPreempted(done, str(ckpt.path(done)), reason)
            if start == t["num_steps"]:
                compile_s = 0.0
        finally:
            if tb is not None:
                tb.close()
    summary = dict(workdir=str(wd), steps=t["num_steps"], resumed_from=start, compile_s=compile_s,
                   final=last, checkpoint=str(ckpt_dir / str(t["num_steps"])),
                   n_devices=n_dev, device_kind=jax.devices()[0].device_kind)
    if writer:
        io.atomic_write_json(wd / SUMMARY_FILE, summary)
    return summary


def classifier_eval(cfg: dict, loss_fn, dataset):
    """For objective "classify" with a held-out split (``Dataset.eval_arrays``): a function
    ``(ema_params, params) -> dict(eval_accuracy, eval_loss, eval_accuracy_raw)`` on the whole
    split (EMA parameters; ``_raw``: the parameters themselves); None otherwise."""
    if not is_classify(cfg) or dataset.eval_arrays is None:
        return None
    x, y = dataset.eval_arrays
    batch = (jnp.asarray(np.asarray(x, data_dtype(dataset))), jnp.asarray(np.asarray(y, np.int32)))
    key = jax.random.PRNGKey(EVAL_SEED_OFFSET)

    @jax.jit
    def metrics(ema_params, params):
        loss, aux = loss_fn(ema_params, batch, key)
        _, aux_raw = loss_fn(params, batch, key)
        return dict(eval_accuracy=jnp.mean(aux["correct"]), eval_loss=loss,
                    eval_accuracy_raw=jnp.mean(aux_raw["correct"]))

    return lambda ema_params, params: {k: float(v) for k, v in jax.device_get(metrics(ema_params, params)).items()}


# ---------------------------------------------------------------------------------------
# Previews and loading trained models
# ---------------------------------------------------------------------------------------
def trained_model(s: Setup, params, labels=None):
    """The DiffusionModel of a network's parameters (labels: per-sample class, or None)."""
    return network_model(s.net, params, s.schedule, prediction(s.cfg), time_input=s.cfg["model"]["time_input"],
                         precond=precond(s.cfg), sigma_data=s.cfg["model"]["sigma_data"], labels=labels)


def draw_samples(s: Setup, params, n: int, solver_name: str = "dpm_solver_pp", nfe: int = 20, seed: int = 0,
                 labels=None) -> np.ndarray:
    """n samples of the trained model with a solver (logSNR grid ending at sigma = 0)."""
    from samplax.solvers import generate, get_solver, steps_for_nfe
    from samplax.timesteps import time_grid

    solver = get_solver(solver_name)
    grid = time_grid(s.schedule, steps_for_nfe(solver, nfe), "logsnr")
    model = trained_model(s, params, labels)
    std = prior_std(s.schedule)
    x = jax.jit(lambda m: generate(solver, m, grid, jax.random.PRNGKey(seed), n, s.dataset.shape,
                                   prior_std=std))(model)
    return np.asarray(x[0] if isinstance(x, tuple) else x)


def image_grid(images: np.ndarray, cols: int = 10, pad: int = 1) -> np.ndarray:
    """(N, H, W, C) in [-1, 1] -> one (rows*(H+pad), cols*(W+pad)) array in [0, 1]."""
    n, h, w = images.shape[:3]
    rows = -(-n // cols)
    out = np.ones((rows * (h + pad) + pad, cols * (w + pad) + pad))
    for i in range(n):
        r, c = divmod(i, cols)
        out[pad + r * (h + pad): pad + r * (h + pad) + h, pad + c * (w + pad): pad + c * (w + pad) + w] = \
            np.clip((images[i, ..., 0] + 1.0) / 2.0, 0.0, 1.0)
    return out


def write_preview(s: Setup, params, path: str, step: int) -> Optional[str]:
    """A PNG of samples: an image grid (one row per class when conditional) or a 2-D scatter
    (masked diffusion: digits_tokens only, decoded with the first-hitting sampler)."""
    t = s.cfg["train"]
    if is_causal(s.cfg):  # no picture of a token LM; sample it with samplax.decoding
        return None
    if is_masked(s.cfg):
        return _write_discrete_preview(s, params, path, step)
    k = num_classes(s.cfg, s.dataset)
    n = t["sample_count"]
    labels = jnp.arange(n, dtype=jnp.int32) % k if k else None
    x = draw_samples(s, params, n, t["sample_solver"], t["sample_nfe"], labels=labels)
    if len(s.dataset.shape) == 3:
        if k:  # order by class: column j of row r is sample r + k j
            x = x[np.argsort(np.arange(n) % k, kind="stable")]
        pic = image_grid(x, cols=10 if not k else -(-n // k))
        kind = "image"
    elif s.dataset.shape == (2,):
        pic = x
        kind = "scatter"
    else:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 5))
    if kind == "image":
        ax.imshow(pic, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
        ax.axis("off")
    else:
        ref = np.asarray(s.dataset.batch(t["data_seed"] + EVAL_SEED_OFFSET, 1, max(n, 1000))[0])
        ax.scatter(ref[:, 0], ref[:, 1], s=2, c="0.7", label="data")
        ax.scatter(pic[:, 0], pic[:, 1], s=3, c="C3", label="model")
        ax.legend(loc="upper right", fontsize=8)
        ax.set_aspect("equal")
    cond = ", row r: class r" if (k and kind == "image") else ""
    ax.set_title(f"{s.cfg['data']['name']} step {step}: {t['sample_solver']}, NFE {t['sample_nfe']}{cond}", fontsize=9)
    fig.tight_layout()
    io.atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=100, format="png"), suffix=".png")
    plt.close(fig)
    return path


def _write_discrete_preview(s: Setup, params, path: str, step: int) -> Optional[str]:
    if s.dataset.name != "digits_tokens":
        return None
    from samplax.data import tokens_to_digits
    from samplax.discrete.base import decode
    from samplax.discrete.registry import SAMPLERS

    n = s.cfg["train"]["sample_count"]
    model = discrete_model(s, params)
    x, _ = jax.jit(lambda k: decode(SAMPLERS["first_hitting"](), model, k, n))(jax.random.PRNGKey(0))
    pic = image_grid(tokens_to_digits(np.asarray(x)), cols=10)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 5))
    ax.imshow(pic, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    ax.axis("off")
    ax.set_title(f"digits_tokens step {step}: first_hitting, NFE {s.dataset.shape[0]}", fontsize=9)
    fig.tight_layout()
    io.atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=100, format="png"), suffix=".png")
    plt.close(fig)
    return path


def discrete_model(s: Setup, params):
    """The :class:`samplax.discrete.DiscreteModel` of a masked-diffusion network's parameters
    (:func:`samplax.discrete.learned.learned_model`)."""
    from samplax.discrete.learned import learned_model

    if not is_masked(s.cfg):
        raise ValueError(f"discrete_model: the run trains {s.cfg['loss']['objective']!r}, not a masked-diffusion "
                         f"model (loss.objective 'masked')")
    m = s.cfg["model"]  # a user network (factory) may read t; the transformer only when time-conditioned
    time_agnostic = m.get("factory") is None and not m["transformer"]["time_conditioned"]
    return learned_model(s.net, params, int(s.dataset.vocab_size), int(s.dataset.shape[0]),
                         time_agnostic=time_agnostic, name=f"learned:{s.cfg['data']['name']}")


class Trained(NamedTuple):
    """A trained model loaded from a training workdir."""

    setup: Setup
    params: object
    step: int
    checkpoint: str


def _saved_train_config(workdir) -> dict:
    path = io.as_path(workdir) / store.CONFIG_FILE
    if not path.exists():
        raise FileNotFoundError(f"{workdir} is not a training workdir: no {store.CONFIG_FILE}")
    try:
        saved = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path} is not valid JSON ({e})") from None
    if not isinstance(saved, dict) or saved.get("kind") != "train" or not isinstance(saved.get("config"), dict):
        kind = saved.get("kind") if isinstance(saved, dict) else None
        raise ValueError(f"{workdir} holds a {kind!r} run, not a training run")
    return saved


def latest_checkpoint_step(workdir) -> int:
    """The step of the newest intact checkpoint of a training workdir (restored and
    checksummed; damaged newer steps are skipped with a warning)."""
    return load_trained(workdir, which="params").step


def fresh_train_state(s: Setup):
    """Step 0 of a run: initial parameters, optimiser state and (with a data sampler) its state."""
    state = init_train_state(init_params(s.cfg, s.net, s.dataset), s.optimizer)
    if s.sampler is not None:  # the sampler's state rides in the TrainState, hence in every checkpoint
        state = state.replace(data=init_data_state(s.sampler))
    return state


def load_train_state(workdir, step: Optional[int] = None):
    """``(setup, state, meta, checkpoint path)``: the whole TrainState (parameters, EMA,
    optimiser and data-sampler state) of a training workdir's checkpoint ``step`` (default:
    the newest intact one), checked as in :func:`load_trained`.  Reads only."""
    wd = io.as_path(workdir)
    saved = _saved_train_config(wd)
    s = setup(saved["config"])
    fresh = fresh_train_state(s)
    state, meta, where = restore_checkpoint(wd / CHECKPOINT_DIR, s.identity, fresh, step, what=str(workdir))
    return s, state, meta, where


def load_trained(workdir, step: Optional[int] = None, which: str = "ema") -> Trained:
    """The parameters (``which`` = "ema" or "params") of a training workdir's checkpoint
    ``step`` (default: the newest intact one), restored into a freshly initialised
    structure and checked against the model identity and the saved checksums.  Reads
    only; a damaged ``step`` raises CheckpointDamaged (a ValueError), and so does a
    workdir whose checkpoints are all damaged."""
    if which not in ("ema", "params"):
        raise ValueError(f"which: must be 'ema' or 'params', got {which!r}")
    s, state, meta, where = load_train_state(workdir, step)
    params = state.ema_params if which == "ema" else state.params
    return Trained(s, params, int(meta["step"]), where)


def load_trained_discrete(workdir, step: Optional[int] = None, which: str = "ema"):
    """``(model, info)``: :func:`load_trained`'s checkpoint ``step`` (default the newest intact
    one; ``which`` = "ema" or "params") of a masked-diffusion run as a
    :class:`samplax.discrete.DiscreteModel` with its vocabulary, length and ``time_agnostic``
    flag (True unless the transformer is time-conditioned), and ``info`` = dict(problem = the
    exact problem of ``<problem>_tokens`` data or None, data = that problem or the data set's
    name, step, checkpoint, vocab_size, length, time_agnostic)."""
    tr = load_trained(workdir, step, which)
    if not is_masked(tr.setup.cfg):
        raise ValueError(f"{workdir} trained objective {tr.setup.cfg['loss']['objective']!r}, not a masked-diffusion "
                         f"model (loss.objective 'masked'); load it with load_trained")
    model = discrete_model(tr.setup, tr.params)
    name = tr.setup.cfg["data"]["name"]
    problem = name[:-len("_tokens")] if name.endswith("_tokens") and name != "digits_tokens" else None
    info = dict(problem=problem, data=problem or name, step=tr.step, checkpoint=tr.checkpoint,
                vocab_size=model.vocab_size, length=model.length, time_agnostic=model.time_agnostic)
    return model, info


def load_discrete_model(workdir, step: Optional[int] = None, which: str = "ema"):
    """The :class:`samplax.discrete.DiscreteModel` of :func:`load_trained_discrete`."""
    return load_trained_discrete(workdir, step, which)[0]


def load_causal_lm(workdir, step: Optional[int] = None, which: str = "ema"):
    """The :class:`samplax.decoding.LanguageModel` of a causal run's checkpoint ``step``
    (default the newest intact one; ``which`` = "ema" or "params"), through
    :func:`samplax.models.causal_lm.causal_language_model`, named ``causal:<data name>``."""
    return load_trained_causal(workdir, step, which)[0]


def load_trained_causal(workdir, step: Optional[int] = None, which: str = "ema"):
    """``(lm, info)``: :func:`load_causal_lm`'s LanguageModel and info = dict(lm = the exact
    LM's name for ``<name>_lm`` / ``<name>_tokens`` data or None, data, step, checkpoint,
    vocab_size, length)."""
    from samplax.models.causal_lm import causal_language_model

    tr = load_trained(workdir, step, which)
    if not is_causal(tr.setup.cfg):
        raise ValueError(f"{workdir} trained objective {tr.setup.cfg['loss']['objective']!r}, not a causal language "
                         f"model (loss.objective 'causal'); load it with load_trained")
    if tr.setup.cfg["model"].get("factory"):
        raise ValueError(f"{workdir} trained a user network (config.model.factory); load_causal_lm wraps the "
                         f"built-in 'causal_transformer' only: wrap yours with load_trained")
    name = tr.setup.cfg["data"]["name"]
    lm = causal_language_model(tr.setup.net, tr.params, name=f"causal:{name}")
    exact = None
    for suffix in ("_lm", "_tokens"):
        if name.endswith(suffix) and name != "digits_tokens":
            exact = name[:-len(suffix)]
    info = dict(lm=exact, data=name, step=tr.step, checkpoint=tr.checkpoint, vocab_size=lm.vocab_size,
                length=lm.length)
    return lm, info


__all__ = ["run_train", "setup", "load_trained", "load_discrete_model", "load_trained_discrete", "discrete_model",
           "load_causal_lm", "load_trained_causal", "is_causal", "is_masked", "latest_checkpoint_step", "Trained", "TrainingPreempted",
           "draw_samples", "image_grid", "write_preview", "trained_model", "model_identity", "train_identity",
           "check_workdir", "check_preview", "CheckpointMismatch", "CheckpointDamaged"]
