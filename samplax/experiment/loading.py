"""A config's model section -> the objects a run needs (:class:`LoadedModel`).

Three kinds of model:

* a built-in analytic model (``model.name`` in :data:`registry.MODELS`: ``gmm2d``, ``gmm64d``);
* a network trained by ``experiments.train`` (``model.checkpoint`` = its workdir; the
  checkpoint's model identity is checked);
* a user's model (``model.factory = "pkg.module:callable"`` returning a
  :class:`~samplax.models.base.DiffusionModel`, with ``model.args``), optionally given
  plain Flax parameters from an Orbax checkpoint samplax did not write
  (``model.checkpoint`` = that checkpoint, passed as ``params=``).

``model.name`` says which distribution the model samples, which decides the metrics:
a built-in problem (exact metrics), a samplax data set (sliced W2 against fresh data,
the Frechet distance on digits), or any other label (then ``model.data`` may name the
reference data).  ``model.schedule`` (a factory spec) replaces the schedule of an
analytic model, and is passed as ``schedule=`` to a user factory that takes it.

This module sits above :mod:`registry` (names only) and :mod:`trainer`, so that
config -> registry -> trainer -> config is no longer a circle.
"""
from __future__ import annotations

import collections
import functools
import inspect
import json
import math
import os
from typing import Optional

import jax
import jax.numpy as jnp

from samplax import io as sio
from samplax.experiment import registry, user
from samplax.experiment.errors import ConfigError
from samplax.experiment.registry import LoadedModel
from samplax.models.analytic import load_problem


USER_FIELDS = ("factory", "args", "shape", "data", "data_args", "schedule", "schedule_args")


def _freeze(d) -> str:
    return json.dumps(d, sort_keys=True, default=str)


def _cast(tree, dtype):
    return jax.tree.map(lambda a: jnp.asarray(a, dtype) if jnp.issubdtype(jnp.asarray(a).dtype, jnp.floating)
                        else a, tree)


def is_training_workdir(path: str) -> bool:
    p = sio.as_path(path) / "config.json"
    if not p.exists():
        return False
    try:
        return json.loads(p.read_text()).get("kind") == "train"
    except (ValueError, OSError):
        return False


def resolve_model(model_cfg: dict) -> dict:
    """The model section with the checkpoint path made absolute (URIs kept) and its step
    fixed (latest when unset), so a row names exactly the parameters it used."""
    m = dict(model_cfg)
    factory = m.get("factory")

    def unset(f):
        return m.get(f) in (None, {}, (), [])

    if not factory:
        for f in ("args", "shape", "data", "data_args"):
            if not unset(f):
                extra = "; a built-in or trained model's data is config.model.name" if f.startswith("data") else ""
                raise ConfigError(f"config.model.{f}", "only applies to a user model (config.model.factory)" + extra)
    if unset("schedule") and not unset("schedule_args"):
        raise ConfigError("config.model.schedule_args", "only applies with config.model.schedule")
    if unset("data") and not unset("data_args"):
        raise ConfigError("config.model.data_args", "only applies with config.model.data")
    if not m.get("checkpoint"):
        for f in ("step", "guidance"):
            if m.get(f) is not None:
                raise ConfigError(f"config.model.{f}", "only applies to a model with a checkpoint "
                                                       "(config.model.checkpoint)")
        if not factory and m["name"] not in registry.MODELS:
            raise ConfigError("config.model.name", f"unknown model {m['name']!r}; allowed: "
                                                   f"{sorted(registry.MODELS)}, or set config.model.factory")
        return m
    problem = sio.check_writable_location(m["checkpoint"])
    if problem and "scheme" not in problem:
        raise ConfigError("config.model.checkpoint", problem)
    path = os.fspath(sio.as_path(m["checkpoint"]))
    if factory and not is_training_workdir(path):
        if m.get("guidance") is not None:
            raise ConfigError("config.model.guidance", "applies to samplax-trained class-conditional networks; "
                                                       "a user factory applies its own guidance")
        m.update(checkpoint=path, step=_plain_step(path, m.get("step")))
        return m
    if factory:
        raise ConfigError("config.model.factory", f"{path} is a samplax training workdir: sample it without a "
                                                  f"factory (its network is rebuilt from its config)")
    # the newest intact step: restored (and checksummed) once here, and kept for the run
    step = _trained(path, None, m.get("params") or "ema").step if m.get("step") is None else m["step"]
    m.update(checkpoint=path, step=int(step))
    return m


# ---------------------------------------------------------------------------------------
# Plain Flax parameters in an Orbax checkpoint samplax did not write
# ---------------------------------------------------------------------------------------
def _numeric_children(path) -> list:
    p = sio.as_path(path)
    if not p.is_dir():
        return []
    return sorted(int(c.name) for c in p.iterdir() if c.name.isdigit() and c.is_dir())


def _plain_step(path: str, step: Optional[int]) -> Optional[int]:
    """A CheckpointManager directory (numbered steps): the step used (latest when unset);
    a single checkpoint directory: None."""
    if not sio.as_path(path).exists():
        raise ConfigError("config.model.checkpoint", f"{path} does not exist")
    steps = _numeric_children(path)
    if not steps:
        if step is not None:
            raise ConfigError("config.model.step", f"{path} is a single checkpoint (no numbered step directories); "
                                                   f"leave step unset")
        return None
    if step is None:
        return steps[-1]
    if step not in steps:
        raise ConfigError("config.model.step", f"{path} has no step {step}; allowed: {steps}")
    return int(step)


@functools.lru_cache(maxsize=8)
def restore_plain_params(path: str, step: Optional[int]):
    """The pytree of a plain Orbax checkpoint: ``path/<step>/<item>`` of a CheckpointManager
    (its single item, or the one named ``params``/``default``), or ``path`` itself."""
    import orbax.checkpoint as ocp

    target = sio.as_path(path)
    if step is not None:
        target = target / str(step)
        items = [c for c in target.iterdir() if c.is_dir() and not c.name.startswith(("_", "."))]
        names = [c.name for c in items]
        pick = next((n for n in ("params", "default", "state") if n in names), names[0] if len(names) == 1 else None)
        if pick is None:
            raise ConfigError("config.model.checkpoint", f"{target} holds items {names}: name one 'params'")
        target = target / pick
    try:
        with ocp.StandardCheckpointer() as ckptr:
            return ckptr.restore(target)
    except Exception as e:  # noqa: BLE001  (Orbax/TensorStore raise many kinds)
        raise ConfigError("config.model.checkpoint", f"cannot restore plain parameters from {target}: "
                                                     f"{type(e).__name__}: {e}") from None


# ---------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------
def _user_schedule(m: dict):
    spec = m.get("schedule")
    if not spec:
        return None
    return user.call_factory(spec, m.get("schedule_args"), "config.model.schedule", "config.model.schedule_args",
                             user.is_schedule, "a samplax.schedules.NoiseSchedule")


def _reference_dataset(m: dict):
    """The reference data of a model's metrics: config.model.data (a data set name or a
    factory spec), else the data set named by config.model.name, else None."""
    from samplax.data import DATASETS, make_dataset

    spec = m.get("data")
    if spec:
        if ":" in spec:
            return user.call_factory(spec, m.get("data_args"), "config.model.data", "config.model.data_args",
                                     user.is_dataset, "a samplax.data.Dataset (name, shape, num_classes, batch)")
        if spec not in DATASETS:
            raise ConfigError("config.model.data", f"unknown data set {spec!r}; allowed: {sorted(DATASETS)} or "
                                                   f"{user.SPEC_FORM}")
        try:
            return make_dataset(spec, **dict(m.get("data_args") or {}))
        except ValueError as e:
            raise ConfigError("config.model.data_args", str(e)) from None
    if m["name"] in DATASETS and m["name"] not in ("gmm2d", "gmm64d"):
        return make_dataset(m["name"])
    return None


def _load_user(m: dict, dtype) -> LoadedModel:
    spec = m["factory"]
    schedule = _user_schedule(m)
    extra = {}
    fn = user.load_callable(spec, "config.model.factory")
    try:
        params_in = set(inspect.signature(fn).parameters)
    except (TypeError, ValueError):
        params_in = set()
    if m.get("checkpoint"):
        if "params" not in params_in:
            raise ConfigError("config.model.factory", f"{spec} must take a 'params' argument to receive the "
                                                      f"parameters of config.model.checkpoint")
        extra["params"] = restore_plain_params(m["checkpoint"], m.get("step"))
    if schedule is not None:
        if "schedule" not in params_in:
            raise ConfigError("config.model.schedule", f"{spec} takes no 'schedule' argument to receive it")
        extra["schedule"] = schedule
    model = user.call_factory(spec, m.get("args"), "config.model.factory", "config.model.args",
                              user.is_diffusion_model, "a samplax DiffusionModel", extra=extra)
    model = model.replace(params=_cast(model.params, dtype), schedule=_cast(model.schedule, dtype))
    info_user = dict(factory=spec, source_sha1=user.source_digest(spec))
    gmm, problem, info = None, m["name"], {}
    dataset = None
    if m["name"] in ("gmm2d", "gmm64d") and not m.get("data"):
        gmm, _, info = load_problem(m["name"], dtype=dtype)
        info = dict(info, exact_schedule=True)
    else:
        dataset = _reference_dataset(m)
    shape = m.get("shape")
    if shape:
        shape = tuple(int(v) for v in shape)
        known = (int(info["dim"]),) if gmm is not None else (tuple(dataset.shape) if dataset is not None else None)
        if known is not None and tuple(known) != shape:
            raise ConfigError("config.model.shape", f"{shape} differs from the shape {tuple(known)} of the "
                                                    f"reference data {m.get('data') or m['name']!r}")
    elif gmm is not None:
        shape = (int(info["dim"]),)
    elif dataset is not None:
        shape = tuple(int(v) for v in dataset.shape)
    else:
        raise ConfigError("config.model.shape", f"one sample's shape is needed for model {m['name']!r} (no "
                                                f"reference data gives it), e.g. (2,) or (8, 8, 1)")
    _check_output(model, shape, dtype, spec)
    dim = math.prod(shape)
    if gmm is None:
        info = dict(dim=dim)
    return LoadedModel(model, model.schedule, gmm, problem, dim, info, shape, None, None, dataset, info_user)


def _check_output(model, shape, dtype, spec):
    """One traced evaluation (no FLOPs): the model must map (B,)+shape to (B,)+shape."""
    x = jax.ShapeDtypeStruct((2,) + tuple(shape), dtype)
    t = jnp.asarray(0.5 * (float(model.schedule.t_min) + float(model.schedule.t_max)), dtype)
    try:
        out = jax.eval_shape(lambda xx: model.data(xx, t), x)
    except Exception as e:  # noqa: BLE001
        raise ConfigError("config.model.factory", f"the model of {spec} fails on a batch of shape "
                                                  f"{(2,) + tuple(shape)}: {type(e).__name__}: {e}") from None
    if tuple(out.shape) != (2,) + tuple(shape):
        raise ConfigError("config.model.shape", f"the model of {spec} maps a batch of shape {(2,) + tuple(shape)} "
                                                f"to {tuple(out.shape)}; set config.model.shape to one sample's shape")


@functools.lru_cache(maxsize=16)
def _load_user_cached(frozen: str, dtype_name: str) -> LoadedModel:
    return _load_user(json.loads(frozen), registry.DTYPES[dtype_name])


def load_model(model_cfg: dict, dtype) -> LoadedModel:
    """The LoadedModel of a (resolved) model section (a user factory is called once per
    section and dtype)."""
    if model_cfg.get("factory"):
        return _load_user_cached(_freeze(model_cfg), jnp.dtype(dtype).name)
    return _load(model_cfg, dtype)


def label_conditioner(loaded: LoadedModel):
    """``conditional(model, label)`` for samplers whose target needs the conditional score
    (classifier-free-guidance and product targets of samplax.smc): the analytic mixtures condition
    on their component labels (the model's apply is kept, so a probe on it counts both models'
    evaluations); None for models without that structure (trained networks, user models)."""
    if loaded.gmm is None or loaded.trained is not None or loaded.user is not None:
        return None

    def conditional(model, label):
        gmm, _, schedule = model.params
        return model.replace(params=(gmm, jnp.asarray(label, jnp.int32), schedule))

    return conditional


def _load(m: dict, dtype) -> LoadedModel:
    name = m["name"]
    if m.get("factory"):
        return _load_user(m, dtype)
    if not m.get("checkpoint"):
        loaded = registry.MODELS[name](dtype)
        schedule = _user_schedule(m)
        if schedule is None:
            return loaded
        schedule = _cast(schedule, dtype)
        return loaded._replace(model=loaded.gmm.model(schedule), schedule=schedule,
                               info=dict(loaded.info, exact_schedule=True),
                               user=dict(schedule=m["schedule"], source_sha1=user.source_digest(m["schedule"])))
    if m.get("schedule"):
        raise ConfigError("config.model.schedule", "a trained network keeps the schedule it was trained with")
    return _load_trained(m, dtype)


_TRAINED: "collections.OrderedDict" = collections.OrderedDict()  # (path, step, which) -> Trained
_TRAINED_KEEP = 8


def _trained(path: str, step: Optional[int], which: str):
    """The parameters of a training workdir's checkpoint ``step`` (None: the newest intact
    one), kept for the 8 most recent (path, step, which).  A ``None`` step is restored
    anew each time (a training run may have added a newer one) and kept under its step,
    so the plan's restore is the run's."""
    from samplax.experiment.trainer import load_trained

    key = (path, step, which)
    if step is not None and key in _TRAINED:
        _TRAINED.move_to_end(key)
        return _TRAINED[key]
    try:
        tr = load_trained(path, step, which)
    except (FileNotFoundError, ValueError) as e:
        raise ConfigError("config.model.checkpoint", str(e)) from None
    _TRAINED[(path, tr.step, which)] = tr
    while len(_TRAINED) > _TRAINED_KEEP:
        _TRAINED.popitem(last=False)
    return tr


def _load_trained(model_cfg: dict, dtype) -> LoadedModel:
    from samplax.experiment.trainer import num_classes, precond, prediction, trained_model
    from samplax.models.networks import conditional_apply
    from samplax.models.wrappers import classifier_free_guidance

    name = model_cfg["name"]
    tr = _trained(model_cfg["checkpoint"], int(model_cfg["step"]), model_cfg.get("params") or "ema")
    s = tr.setup
    if s.cfg["data"]["name"] != name:
        raise ConfigError("config.model.name", f"the checkpoint {tr.checkpoint} was trained on data "
                          f"{s.cfg['data']['name']!r}, not {name!r}")
    params = jax.tree.map(lambda a: jnp.asarray(a, dtype), tr.params)
    k = num_classes(s.cfg, s.dataset)
    w = model_cfg.get("guidance")
    relabel = None
    if k == 0:
        if w is not None:
            raise ConfigError("config.model.guidance", "the checkpoint's model is not class-conditional")
        model = trained_model(s, params)
    elif w is None:  # unconditional: the null label
        model = trained_model(s, params, labels=jnp.int32(k))
    else:  # classifier-free guidance with scale w, sample i of class i mod k
        cond = conditional_apply(s.net, s.schedule, s.cfg["model"]["time_input"], precond=precond(s.cfg),
                                 sigma_data=s.cfg["model"]["sigma_data"])
        model = classifier_free_guidance(cond, params, s.schedule, prediction(s.cfg), jnp.zeros((), jnp.int32),
                                         jnp.int32(k), jnp.asarray(w, dtype))

        def relabel(m, idx):
            inner, _, null, scale = m.params
            return m.replace(params=(inner, (idx % k).astype(jnp.int32), null, scale))
    trained = dict(checkpoint=tr.checkpoint, step=tr.step, params=model_cfg.get("params") or "ema",
                   guidance=w, data=name, train_config=s.cfg)
    shape = tuple(int(v) for v in s.dataset.shape)
    dim = math.prod(shape)
    if name in ("gmm2d", "gmm64d"):
        gmm, schedule, info = load_problem(name, dtype=dtype)
        info = dict(info, exact_schedule=s.cfg["schedule"]["name"] == "problem")
        return LoadedModel(model, s.schedule, gmm, name, dim, info, shape, relabel, trained)
    return LoadedModel(model, s.schedule, None, name, dim, dict(dim=dim), shape, relabel, trained, s.dataset)


__all__ = ["LoadedModel", "resolve_model", "load_model", "restore_plain_params", "is_training_workdir"]
