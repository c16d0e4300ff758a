"""Masked-diffusion runs and sweeps through the experiment layer.

A config with a ``sampler`` section (instead of ``solver``) is a discrete run; ``experiments.sample``
and ``experiments.sweep`` hand it here through :func:`samplax.experiment.runner.run`, which keeps
its workdir checks, lock, saved-config conflict check and resume (completed rows are skipped; a
row is appended atomically when it is done).

* Sample config (:func:`discrete_config`): ``model.name`` is an exact problem
  (``samplax.discrete.PROBLEMS``) or, with ``model.checkpoint``, the label of a trained discrete
  network; ``sampler.name`` + ``sampler.options`` (the factory's keyword arguments, typed by its
  annotations); ``seed``, ``n_samples``, ``chunk_size``.
* Sweep config (:func:`discrete_sweep_config`): ``sweep.samplers`` x ``sweep.option_axes`` (option ->
  tuple of values; each sampler runs the values of the options it has, e.g. ``steps`` and
  ``threshold``) x ``sweep.seeds``, with fixed per-sampler options in ``sweep.sampler_options``.

Sample i of a row uses ``fold_in(PRNGKey(seed), i)``: a row does not depend on ``chunk_size`` or the
device count (the chunk's keys are sharded over the batch mesh).

Row metrics: ``nfe`` (mean model calls per sample; ``nfe_max``), ``steps``; against the exact
distribution (exact problems, and trained models of their data): ``tv`` (empirical TV),
``tv_floor`` (TV of as many exact samples), ``chi2_p`` / ``chi2_stat`` / ``chi2_dof`` (Pearson,
cells with expected count < ``metrics.chi_square_min_expected`` pooled), ``marginal_tv``,
``mean_log_prob`` (exact mean log p of the samples; ``reference.neg_entropy`` is its exact-sample
value); on digits: ``fd`` with the digits feature classifier (``reference.fd_floor``).
Optional (off unless ``metrics.epiplexity = True``; a config without the field keeps its identity and
row hashes): ``epiplexity`` (``samplax.metrics.epiplexity``: epiplexity and time-bounded entropy of the
samples in bits by prequential coding, observer options ``metrics.epiplexity_options``).
``time_s`` is the decoding time without compilation (``compile_s``).  Samples whose model output
went non-finite are counted (``nonfinite``) with the first such step, and the row gets a warning.
"""
from __future__ import annotations

import contextlib
import inspect
import itertools
import math
import os
import time
from typing import Optional

import jax
import ml_collections
import numpy as np
from ml_collections import config_dict

from samplax import io as sio
from samplax.experiment import devices
from samplax.experiment import results as store
from samplax.experiment.config import (MAX_SAMPLES, MAX_SAVE_SAMPLES, Field, _as_dict, _at_most, _check_tree,
                                       _choice, _each, _epiplexity_options, _nonneg)
from samplax.experiment.errors import ConfigError
from samplax.experiment.identity import settings_hash
from samplax.experiment.progress import Progress

PARAMS = ("ema", "params")
DTYPES = ("float32", "float64")
PLOT = "tv_vs_nfe.png"


def is_discrete(config) -> bool:
    """A config with a ``sampler`` section, or a sweep with ``sweep.samplers``."""
    d = _as_dict(config)
    return "sampler" in d or ("sweep" in d and isinstance(d["sweep"], dict) and "samplers" in d["sweep"])


# ---------------------------------------------------------------------------------------
# Configs
# ---------------------------------------------------------------------------------------
def _common(c):
    c.model = ml_collections.ConfigDict(dict(
        name="markov4x8",                          # an exact problem, or the data label of a checkpoint
        checkpoint=config_dict.placeholder(str),   # a discrete training workdir: decode its network
        step=config_dict.placeholder(int),
        params="ema",
    ))
    c.n_samples = 100_000
    c.chunk_size = 65536
    c.dtype = "float32"     # the model's output precision (float64 runs the exact model in float64)
    c.metrics = ml_collections.ConfigDict(dict(
        chi_square_min_expected=5.0,
        save_samples=256,   # first sequences of each row kept under samples/<hash>.npy
        memorisation=False,            # Hamming distance of samples to the training sequences (docs/hamming.md)
        memorisation_samples=256,      # first samples of a row checked
        memorisation_window=0,         # > 0: also windows of this length searched at every alignment
        memorisation_k=0,              # counts of distance <= k (samples, windows)
        memorisation_reference=4096,   # exact problems / generated data: exact draws standing for the training set
    ))
    c.distributed = False
    return c


def discrete_config() -> ml_collections.ConfigDict:
    """Defaults of one masked-diffusion decoding run on an exact problem."""
    c = _common(ml_collections.ConfigDict())
    c.sampler = ml_collections.ConfigDict(dict(name="first_hitting", options=ml_collections.ConfigDict()))
    c.seed = 0
    return c


def discrete_sweep_config() -> ml_collections.ConfigDict:
    """Defaults of a discrete sweep: samplers x option axes x seeds."""
    c = _common(ml_collections.ConfigDict())
    c.sweep = ml_collections.ConfigDict(dict(
        samplers=("ancestral", "first_hitting"),
        sampler_options=ml_collections.ConfigDict(),   # per-sampler fixed options
        option_axes=ml_collections.ConfigDict(dict(steps=(4, 8, 16))),
        seeds=(0,),
    ))
    return c


def _sampler_names():
    from samplax.discrete.registry import SAMPLERS
    return tuple(sorted(SAMPLERS))


def _sampler_choice(path, v):
    _choice(_sampler_names())(path, v)


_SAMPLES = _at_most(MAX_SAMPLES, "sample indices are int32")


def _min_expected(path, v):
    if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
        raise ConfigError(path, f"must be a positive number, got {v!r}")


#: optional (dropped from the config when memorisation is off, so the identities of runs without it
#: are those of before the option existed)
MEMORISATION_FIELDS = {"memorisation": Field("bool", required=False),
                       "memorisation_samples": Field("int", required=False, check=_at_most(MAX_SAMPLES, "samples")),
                       "memorisation_window": Field("int", required=False, check=_nonneg),
                       "memorisation_k": Field("int", required=False, check=_nonneg),
                       "memorisation_reference": Field("int", required=False, check=_at_most(MAX_SAMPLES, "sequences"))}
_COMMON = {
    "model": {"name": Field("str"), "checkpoint": Field("str", required=False, nullable=True),
              "step": Field("int", required=False, nullable=True, check=_nonneg),
              "params": Field("str", required=False, check=_choice(PARAMS))},
    "n_samples": Field("int", check=_SAMPLES),
    "chunk_size": Field("int", check=_SAMPLES),
    "dtype": Field("str", check=_choice(DTYPES)),
    "metrics": {"chi_square_min_expected": Field("float", check=_min_expected),
                "save_samples": Field("int", check=_at_most(MAX_SAVE_SAMPLES, "kept as .npy per row")),
                **MEMORISATION_FIELDS,
                "epiplexity": Field("bool", required=False),
                "epiplexity_options": Field("dict", required=False, check=_epiplexity_options)},
    "distributed": Field("bool"),
}
SAMPLE_SCHEMA = dict(_COMMON, sampler={"name": Field("str", check=_sampler_choice), "options": Field("dict")},
                     seed=Field("int", check=_nonneg))
SWEEP_SCHEMA = dict(_COMMON, sweep={"samplers": Field("tuple[str]", check=_each(_sampler_choice)),
                                    "sampler_options": Field("dict", required=False),
                                    "option_axes": Field("dict", required=False),
                                    "seeds": Field("tuple[int]", check=_each(_nonneg))})
NON_IDENTITY_FIELDS = ("chunk_size", "distributed", "metrics.save_samples")


def _memorisation_settings(values: dict) -> None:
    """Memorisation off (the default): its fields leave the config (identity and row hashes as without
    them); on: every field takes its default where unset."""
    metrics = values["metrics"]
    if not metrics.get("memorisation"):
        for k in MEMORISATION_FIELDS:
            metrics.pop(k, None)
        return
    defaults = _common(ml_collections.ConfigDict()).metrics
    for k in MEMORISATION_FIELDS:
        if metrics.get(k) is None:
            metrics[k] = defaults[k]


def validate(config, kind: str) -> dict:
    values = _as_dict(config)
    _check_tree(SWEEP_SCHEMA if kind == "sweep" else SAMPLE_SCHEMA, values, "config")
    _memorisation_settings(values)
    m = values["model"]
    if not m.get("checkpoint"):
        from samplax.discrete.exact import PROBLEMS
        if m["name"] not in PROBLEMS:
            raise ConfigError("config.model.name", f"unknown discrete problem {m['name']!r}; allowed: "
                                                   f"{list(PROBLEMS)} (or set model.checkpoint to a trained network)")
    return values


# ---------------------------------------------------------------------------------------
# The plan: one row per (sampler, options, seed)
# ---------------------------------------------------------------------------------------
def _accepted(name: str) -> list:
    from samplax.discrete.registry import SAMPLERS
    return list(inspect.signature(SAMPLERS[name]).parameters)


def _build(name: str, options: dict, path: str, loaded=None):
    from samplax.discrete.registry import get_sampler
    try:
        sampler = get_sampler(name, **options)
        if loaded is not None and sampler.model_for is not None and loaded.truth is None:
            raise ValueError(f"runs on a model built from an exact problem; model {loaded.data!r} has none "
                             f"(allowed: model.name in the exact problems, without a checkpoint)")
        return sampler
    except ValueError as e:
        msg = str(e)
        option = msg.split(":", 1)[0].strip()
        where = f"{path}.{option}" if option in options else path
        raise ConfigError(where, f"sampler {name!r}: {msg}") from None


def label(name: str, options: dict) -> str:
    parts = [f"{k}={options[k]}" for k in sorted(options)]
    return name + (" " + " ".join(parts) if parts else "")


def _row(cfg: dict, name: str, options: dict, seed: int) -> dict:
    spec = dict(family="discrete", model=cfg["model"], sampler=name, options=options, seed=seed,
                n_samples=cfg["n_samples"], dtype=cfg["dtype"],
                metrics_settings=dict(chi_square_min_expected=cfg["metrics"]["chi_square_min_expected"]))
    if cfg["metrics"].get("memorisation"):
        spec["metrics_settings"]["memorisation"] = {k: cfg["metrics"][k] for k in MEMORISATION_FIELDS}
    if cfg["metrics"].get("epiplexity"):  # only then: rows of configs without it keep their hashes
        from samplax.metrics.epiplexity import check_options
        o = check_options(cfg["metrics"].get("epiplexity_options") or {})
        if cfg["n_samples"] < o["steps"] * o["batch_size"] + o["eval_size"]:
            raise ConfigError("config.n_samples", f"metrics.epiplexity codes steps * batch_size samples and holds out "
                                                  f"eval_size more: needs n_samples >= {o['steps']} * {o['batch_size']}"
                                                  f" + {o['eval_size']}, got {cfg['n_samples']}")
        spec["metrics_settings"]["epiplexity"] = o
    spec["hash"] = settings_hash(spec)
    spec["label"] = label(name, options)
    return spec


def expand_sweep(sw: dict, word: str, accepted, build, make_row) -> list:
    """Rows of a sweep section: ``sw[word + "s"]`` x ``sw["option_axes"]`` (each member runs the axes of
    the options it has, ``accepted(name)``) x ``sw["seeds"]``, with fixed per-member options in
    ``sw[word + "_options"]``; ``build(name, options, where)`` checks a setting (ConfigError naming
    ``where``), ``make_row(name, options, seed)`` makes its row.  Shared by the discrete and the
    decoding sweeps (``word``: "sampler" / "decoder")."""
    names = sw[word + "s"]
    per = dict(sw.get(word + "_options") or {})
    for name in sorted(per):
        if name not in names:
            raise ConfigError(f"config.sweep.{word}_options.{name}",
                              f"options for a {word} not in sweep.{word}s {tuple(names)}")
        if not isinstance(per[name], dict):
            raise ConfigError(f"config.sweep.{word}_options.{name}", f"must be a mapping of options, got {per[name]!r}")
    axes = dict(sw.get("option_axes") or {})
    for opt, values in axes.items():
        if not isinstance(values, (tuple, list)) or not values:
            raise ConfigError(f"config.sweep.option_axes.{opt}", f"must be a non-empty tuple of values, got {values!r}")
        if not any(opt in accepted(n) for n in names):
            raise ConfigError(f"config.sweep.option_axes.{opt}", f"no {word} of the sweep has option {opt!r}")
    rows = []
    for name in names:
        base = dict(per.get(name, {}))
        mine = [o for o in sorted(axes) if o in accepted(name) and o not in base]
        for values in itertools.product(*(axes[o] for o in mine)):
            options = dict(base, **dict(zip(mine, values)))
            where = "config.sweep.option_axes" if mine else f"config.sweep.{word}_options.{name}"
            build(name, options, where)
            for seed in sw["seeds"]:
                rows.append(make_row(name, options, seed))
    return rows


def make_plan(config):
    """Validate and expand a discrete config into row specs (a runner ``Plan``)."""
    from samplax.experiment.config import config_kind
    from samplax.experiment.plan import Plan

    kind = config_kind(config)
    cfg = validate(config, kind)
    loaded = load_model(cfg)  # a missing checkpoint or an unknown problem fails here, before any work
    window = cfg["metrics"].get("memorisation_window") or 0
    if window >= loaded.model.length:
        raise ConfigError("config.metrics.memorisation_window", f"must be < the sequence length {loaded.model.length} "
                                                                f"(0: whole sequences only), got {window}")
    if kind == "sample":
        s = cfg["sampler"]
        options = dict(s.get("options") or {})
        _build(s["name"], options, "config.sampler.options", loaded)
        return Plan(kind, cfg, [_row(cfg, s["name"], options, cfg["seed"])], [])
    rows = expand_sweep(cfg["sweep"], "sampler", _accepted,
                        lambda name, options, where: _build(name, options, where, loaded),
                        lambda name, options, seed: _row(cfg, name, options, seed))
    return Plan(kind, cfg, rows, [])


# ---------------------------------------------------------------------------------------
# Models and their ground truth
# ---------------------------------------------------------------------------------------
class Loaded:
    def __init__(self, model, truth, data: str, identity: dict):
        self.model, self.truth, self.data, self.identity = model, truth, data, identity


def load_model(cfg: dict) -> Loaded:
    """The DiscreteModel of the config and its ground truth: the exact HMM for an exact problem
    and for a network trained on an exact problem's sequences, else None (digits: FD)."""
    from samplax.discrete import exact
    m = cfg["model"]
    if not m.get("checkpoint"):
        hmm = exact.load_problem(m["name"])
        return Loaded(exact.exact_model(hmm), hmm, m["name"], dict(problem=m["name"]))
    from samplax.experiment.trainer import load_trained_discrete
    try:
        model, info = load_trained_discrete(m["checkpoint"], step=m.get("step"), which=m.get("params", "ema"))
    except (FileNotFoundError, ValueError) as e:
        raise ConfigError("config.model.checkpoint", str(e)) from None
    data = info.get("problem")
    truth = exact.load_problem(data) if data in exact.PROBLEMS else None
    return Loaded(model, truth, info.get("data", data), dict(checkpoint=str(m["checkpoint"]), step=info.get("step")))


# ---------------------------------------------------------------------------------------
# Execution
# ---------------------------------------------------------------------------------------
def execute(plan, todo: list, workdir: str, writer: bool = True) -> list:
    from samplax.experiment.runner import software_versions

    loaded = load_model(plan.config)
    mesh = devices.batch_mesh()
    dev = devices.device_summary()
    versions = software_versions()
    progress = Progress(len(todo), "rows", programs=len(todo), desc=plan.kind)
    memo = {}
    done = []
    for spec in todo:
        row = run_row(spec, plan.config, loaded, mesh, dev, versions, workdir, writer, memo)
        if writer:
            store.append_row(os.path.join(workdir, store.RESULTS_FILE), row)
        done.append(row)
        progress.update(1, f"{row['label']} nfe={row['nfe']:.2f}")
    progress.close()
    return done


def _model_in(loaded, dtype: str, sampler=None):
    if sampler is not None and sampler.model_for is not None:
        return sampler.model_for(loaded.model, loaded.truth)
    if dtype == "float64" and loaded.truth is not None:
        from samplax.discrete import exact
        return exact.exact_model(loaded.truth)  # built under x64: float64 output
    return loaded.model


def run_row(spec: dict, cfg: dict, loaded, mesh, dev: dict, versions: dict, workdir: str, writer: bool,
            memo: dict) -> dict:
    from samplax.discrete.base import all_masked, sample_keys
    from samplax.discrete.registry import get_sampler

    n = spec["n_samples"]
    n_dev = dev["n_devices"]
    chunk = devices.padded_chunk(cfg["chunk_size"], n, n_dev)
    sampler = get_sampler(spec["sampler"], **spec["options"])
    key = jax.random.PRNGKey(spec["seed"])
    sh = devices.batch_sharding(mesh, 2)
    rep = devices.replicated(mesh)
    xs, nfe, steps, bad = [], [], [], []
    compile_s, run_s = 0.0, 0.0
    ctx = jax.enable_x64(True) if spec["dtype"] == "float64" else contextlib.nullcontext()
    with ctx:
        model = _model_in(loaded, spec["dtype"], sampler)

        def program(keys):
            x0 = all_masked(model, keys.shape[0])
            return sampler.run(model, x0, keys)

        jitted = jax.jit(program, in_shardings=(sh,), out_shardings=rep)
        compiled = None
        for start in range(0, n, chunk):
            keys = devices.put_global(np.asarray(sample_keys(key, chunk, start)), sh)
            if compiled is None:
                t0 = time.perf_counter()
                compiled = jitted.lower(keys).compile()
                compile_s = time.perf_counter() - t0
            t0 = time.perf_counter()
            x, info = compiled(keys)
            x = np.asarray(x)
            run_s += time.perf_counter() - t0
            m = min(chunk, n - start)
            xs.append(x[:m])
            nfe.append(np.asarray(info.nfe)[:m])
            steps.append(np.asarray(info.steps)[:m])
            bad.append(np.asarray(info.nonfinite_step)[:m])
    x = np.concatenate(xs)
    nfe, steps, bad = np.concatenate(nfe), np.concatenate(steps), np.concatenate(bad)
    metrics, reference, warnings = _metrics(spec, loaded, x, bad, memo)
    if spec["metrics_settings"].get("memorisation"):
        metrics["memorisation"] = memorisation_metrics(spec["metrics_settings"]["memorisation"], loaded, x, memo)
    row = {k: v for k, v in spec.items() if k != "metrics_settings"}
    row.update(kind="discrete", problem=loaded.data, label=spec["label"], grid=spec["sampler"],
               nfe=float(nfe.mean()), nfe_max=int(nfe.max()), steps=float(steps.mean()),
               metrics=metrics, reference=reference, warnings=warnings,
               nonfinite=int((bad >= 0).sum()),
               first_nonfinite_step=int(bad[bad >= 0].min()) if (bad >= 0).any() else None,
               extra_calls=bool(sampler.extra_calls), time_s=run_s, compile_s=compile_s,
               n_devices=n_dev, chunk=chunk, device_kind=dev["device_kind"], versions=versions)
    if writer and cfg["metrics"]["save_samples"]:
        path = sio.as_path(workdir) / "samples" / f"{spec['hash']}.npy"
        path.parent.mkdir(parents=True, exist_ok=True)
        sio.atomic_save_npy(path, x[: cfg["metrics"]["save_samples"]].astype(np.int16))
    return row


def _metrics(spec: dict, loaded, x: np.ndarray, bad: np.ndarray, memo: dict):
    from samplax.discrete import exact, metrics as dm

    warnings = []
    if (bad >= 0).any():
        warnings.append(f"{int((bad >= 0).sum())} of {len(bad)} samples met a non-finite model output "
                        f"(first at step {int(bad[bad >= 0].min())})")
    v = loaded.model.vocab_size
    still = np.any(x >= v, axis=1)
    if still.any():
        warnings.append(f"{int(still.sum())} samples still hold MASK tokens")
    if loaded.truth is None:
        return dict(_data_metrics(loaded, x, memo), **_epiplexity(spec, x, v, still)), {}, warnings
    hmm = loaded.truth
    lp = exact.enumerate_log_probs(hmm)
    n = len(x)
    key = ("floor", hmm.name, n)
    if key not in memo:
        p = np.exp(lp)
        memo[key] = dict(tv_floor=dm.tv_floor(lp, n), neg_entropy=float((p * lp).sum()), n_sequences=len(lp))
    ref = dict(memo[key])
    if still.any():
        return dict(tv=None, chi2_p=None, marginal_tv=None, mean_log_prob=None), ref, warnings
    chi = dm.chi_square_test(x, lp, v, spec["metrics_settings"]["chi_square_min_expected"])
    idx = exact.sequence_index(x, v)
    out = dict(tv=dm.tv_to_exact(x, lp, v), tv_floor=ref["tv_floor"], chi2_p=chi.p_value, chi2_stat=chi.stat,
               chi2_dof=chi.dof, marginal_tv=dm.marginal_tv(x, lp, v), mean_log_prob=float(lp[idx].mean()))
    return dict(out, **_epiplexity(spec, x, v, still)), ref, warnings


def _epiplexity(spec: dict, x: np.ndarray, vocab: int, still: np.ndarray) -> dict:
    """``epiplexity``: samplax.metrics.epiplexity's summary of the decoded samples, when the row asks."""
    options = spec["metrics_settings"].get("epiplexity")
    if options is None:
        return {}
    if still.any():
        return dict(epiplexity=None)
    from samplax.metrics.epiplexity import epiplexity
    return dict(epiplexity=epiplexity(x, vocab, **options).as_dict())


def memorisation_reference(settings: dict, loaded, memo: dict):
    """(training sequences, held-out sequences or None) for the memorisation metric: a trained
    network's finite training set (and its held-out split), else ``memorisation_reference`` exact
    draws of the exact problem (seed 0; held-out: seed 1) standing for the training stream."""
    n_ref = settings["memorisation_reference"]
    key = ("memorisation_reference", loaded.data, n_ref, str(loaded.identity.get("checkpoint")))
    if key in memo:
        return memo[key]
    ref = None
    if loaded.identity.get("checkpoint"):
        from samplax.data import make_dataset
        from samplax.experiment.trainer import _saved_train_config
        data = _saved_train_config(loaded.identity["checkpoint"])["config"]["data"]
        ds = make_dataset(data["name"], **dict(data.get("options") or {}))
        if ds.arrays is not None:
            held = ds.eval_arrays[0] if ds.eval_arrays is not None else None
            ref = (np.asarray(ds.arrays[0]), None if held is None else np.asarray(held))
    if ref is None:
        if loaded.truth is None:
            raise ConfigError("config.metrics.memorisation", f"data {loaded.data!r} has neither a finite training "
                                                             f"set nor an exact distribution to compare with")
        from samplax.discrete.exact import true_samples
        draw = jax.jit(lambda key: true_samples(loaded.truth, key, n_ref))
        ref = tuple(np.asarray(draw(jax.random.PRNGKey(s))) for s in (0, 1))
    memo[key] = ref
    return ref


def memorisation_metrics(settings: dict, loaded, x: np.ndarray, memo: dict) -> dict:
    """:func:`samplax.metrics.hamming.memorisation` of the row's first ``memorisation_samples``
    sequences (rows still holding MASK tokens: those sequences are left out)."""
    from samplax.metrics.hamming import memorisation
    train, held = memorisation_reference(settings, loaded, memo)
    xs = x[: settings["memorisation_samples"]]
    xs = xs[np.all(xs < loaded.model.vocab_size, axis=1)]
    if len(xs) == 0:
        return {}
    t0 = time.perf_counter()
    out = memorisation(xs.astype(np.int32), train.astype(np.int32), window=settings["memorisation_window"],
                       k=settings["memorisation_k"], held_out=None if held is None else held.astype(np.int32))
    out["time_s"] = time.perf_counter() - t0
    return out


def _data_metrics(loaded, x: np.ndarray, memo: dict) -> dict:
    """Trained networks on data without an exact distribution: digits get the FD of the digits
    feature classifier (images = token / 8 - 1, the scale the continuous digits models use)."""
    if loaded.data not in ("digits", "digits_tokens") or x.shape[1] != 64:
        return {}
    from samplax.experiment import cache as refcache
    from samplax.metrics import frechet_distance
    from samplax.models.classifier import digits_fd, digits_reference_statistics, load_or_train_digits_classifier

    if "clf" not in memo:
        params, info = load_or_train_digits_classifier(refcache.cache_dir())
        ref = digits_reference_statistics(params, "test")
        floor = digits_reference_statistics(params, "train")
        memo["clf"] = (params, ref, float(frechet_distance(*floor, *ref)))
    params, ref, floor = memo["clf"]
    images = (np.clip(x, 0, 16).astype(np.float32) / 8.0 - 1.0).reshape(-1, 8, 8, 1)
    return dict(fd=float(digits_fd(params, images, reference=ref)), fd_floor=floor)


# ---------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------
def _fmt(v, digits: int = 4) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.{digits}g}"
    return str(v)


def results_markdown(rows: list) -> str:
    rows = sorted(rows, key=lambda r: (r.get("problem", ""), r["sampler"], r["nfe"], r["label"], r["seed"]))
    has_tv = any((r.get("metrics") or {}).get("tv") is not None for r in rows)
    has_fd = any((r.get("metrics") or {}).get("fd") is not None for r in rows)
    head = ["problem", "sampler", "setting", "seed", "NFE/sample", "steps"]
    if has_tv:
        head += ["TV", "TV floor", "chi2 p", "marginal TV", "mean log p"]
    if has_fd:
        head += ["FD", "FD floor"]
    has_mem = any((r.get("metrics") or {}).get("memorisation") for r in rows)
    if has_mem:
        head += ["nearest train (Hamming)", "copies", "held-out nearest"]
    head += ["time (s)", "warnings"]
    lines = ["# Masked-diffusion results", "",
             "NFE/sample: mean model calls per sequence. TV: empirical total variation to the exact "
             "distribution; TV floor: the same for as many exact samples (the estimator's bias). "
             "chi2 p: Pearson goodness of fit (rare cells pooled).", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        m = r.get("metrics") or {}
        setting = r["label"][len(r["sampler"]):].strip() or "-"
        cells = [r.get("problem", ""), r["sampler"], setting, str(r["seed"]), f"{r['nfe']:.2f}", f"{r['steps']:.2f}"]
        if has_tv:
            cells += [_fmt(m.get("tv")), _fmt(m.get("tv_floor")), _fmt(m.get("chi2_p"), 3), _fmt(m.get("marginal_tv")),
                      _fmt(m.get("mean_log_prob"))]
        if has_fd:
            cells += [_fmt(m.get("fd")), _fmt(m.get("fd_floor"))]
        if has_mem:
            mem = m.get("memorisation") or {}
            cells += [_fmt(mem.get("nearest_mean")), _fmt(mem.get("copies")), _fmt(mem.get("held_nearest_mean"))]
        cells += [f"{r.get('time_s', 0):.3g}", "; ".join(r.get("warnings") or []) or "-"]
        lines.append("| " + " | ".join(cells) + " |")
    if any(r.get("warnings") for r in rows):
        lines += ["", "**Warnings**: see the last column."]
    return "\n".join(lines) + "\n"


def plot_frontier(rows: list, path, metric: Optional[str] = None) -> Optional[str]:
    """TV (or FD) against NFE per sampler: the accuracy-calls frontier."""
    metric = metric or ("tv" if any((r.get("metrics") or {}).get("tv") is not None for r in rows) else "fd")
    pts = [(r["sampler"], r["nfe"], (r.get("metrics") or {}).get(metric)) for r in rows]
    pts = [p for p in pts if p[2] is not None]
    if not pts:
        return None
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for name in sorted({p[0] for p in pts}):
        mine = sorted((p[1], p[2]) for p in pts if p[0] == name)
        ax.plot([a for a, _ in mine], [b for _, b in mine], "o-", label=name)
    floor = [(r.get("metrics") or {}).get(metric + "_floor") for r in rows]
    floor = [f for f in floor if f is not None]
    if floor:
        ax.axhline(float(np.mean(floor)), color="gray", ls="--", lw=1, label=f"{metric} floor")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("model calls per sample (NFE)")
    ax.set_ylabel(metric.upper())
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    import io as _io
    buf = _io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    p = sio.as_path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    sio.atomic_write_bytes(p, buf.getvalue())
    return os.fspath(p)


def write_report(workdir, rows: list) -> dict:
    root = sio.as_path(workdir)
    rows = [r for r in rows if r.get("kind") == "discrete"]
    md = results_markdown(rows)
    plot = plot_frontier(rows, root / "plots" / PLOT) if rows else None
    if plot:
        md += f"\n![TV vs NFE](plots/{PLOT})\n"
    sio.atomic_write_bytes(root / "results.md", md.encode())
    return dict(results_md=os.fspath(root / "results.md"), plots=[plot] if plot else [])


def print_summary(rows: list, file=None) -> str:
    text = results_markdown(rows)
    print(text, file=file)
    return text
