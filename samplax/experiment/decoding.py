"""Language-model decoding runs and sweeps through the experiment layer.

A config with a ``decoder`` section (or a sweep with ``sweep.decoders``) is a decoding run;
``experiments.sample`` and ``experiments.sweep`` hand it here through
:func:`samplax.experiment.runner.run`, which keeps its workdir checks, lock, saved-config conflict
check and resume (completed rows are skipped; a row is appended atomically when it is done).

* Sample config (:func:`decoding_config`): ``problem`` names the target LM (``problem.lm``: one of
  ``samplax.decoding.LMS``) and the parts some decoders need (``draft``, ``reward``,
  ``constraint``, ``task``, each with its ``*_options``; ``prompt``: a fixed prefix);
  ``decoder.name`` + ``decoder.options`` (the factory's keyword arguments); ``seed``,
  ``n_samples``, ``chunk_size``, ``dtype``.
* Sweep config (:func:`decoding_sweep_config`): ``sweep.decoders`` x ``sweep.option_axes`` (option ->
  tuple of values: temperature, particles, alpha, beta, k, gamma, ...; each decoder runs the values of
  the options it has) x ``sweep.seeds``, with fixed per-decoder options in ``sweep.decoder_options``.

Sample i of a row uses ``fold_in(PRNGKey(seed), i)``: a row does not depend on ``chunk_size`` or
the device count.

Row metrics: ``nfe`` = target-model calls per sample (``draft_calls``, ``tokens_per_call`` = generated
tokens per target call); against the exact distribution the decoder claims to sample
(``Decoder.target``, enumerated): ``tv``, ``tv_floor``, ``chi2_p`` / ``chi2_stat`` / ``chi2_dof``,
``mean_log_p`` (exact log-probability of the samples under the untransformed target LM); for
decoders that estimate a normaliser: ``z_ratio`` (mean of Z_hat / Z over samples, 1 if unbiased) with
its standard error ``z_ratio_se``; with a task: ``accuracy`` (answers right).  ``time_s`` is the
decoding time without compilation (``compile_s``); ``time_per_token_us`` per generated token.
"""
from __future__ import annotations

import contextlib
import inspect
import os
import time

import jax
import ml_collections
import numpy as np
from ml_collections import config_dict

from samplax import io as sio
from samplax.experiment import devices
from samplax.experiment import discrete as _disc
from samplax.experiment import results as store
from samplax.experiment.config import (MAX_SAMPLES, MAX_SAVE_SAMPLES, Field, _as_dict, _at_most, _check_tree,
                                       _choice, _each, _nonneg)
from samplax.experiment.errors import ConfigError
from samplax.experiment.identity import settings_hash
from samplax.experiment.progress import Progress

DTYPES = ("float32", "float64")
PLOT = "tv_vs_target_calls.png"
PARTS = ("draft", "reward", "constraint", "task")


def is_decoding(config) -> bool:
    """A config with a ``decoder`` section, or a sweep with ``sweep.decoders``."""
    d = _as_dict(config)
    return "decoder" in d or ("sweep" in d and isinstance(d["sweep"], dict) and "decoders" in d["sweep"])


# ---------------------------------------------------------------------------------------
# Configs
# ---------------------------------------------------------------------------------------
def _common(c):
    p = dict(lm="hmm8x5", prompt=())
    for part in PARTS:
        p[part] = config_dict.placeholder(str)
        p[part + "_options"] = ml_collections.ConfigDict()
    c.problem = ml_collections.ConfigDict(p)
    c.n_samples = 50_000
    c.chunk_size = 65536
    c.dtype = "float32"     # float64 runs the exact models in float64
    c.metrics = ml_collections.ConfigDict(dict(chi_square_min_expected=5.0, save_samples=256))
    c.distributed = False
    return c


def decoding_config() -> ml_collections.ConfigDict:
    """Defaults of one decoding run on an exact LM."""
    c = _common(ml_collections.ConfigDict())
    c.decoder = ml_collections.ConfigDict(dict(name="ancestral", options=ml_collections.ConfigDict()))
    c.seed = 0
    return c


def decoding_sweep_config() -> ml_collections.ConfigDict:
    """Defaults of a decoding sweep: decoders x option axes x seeds."""
    c = _common(ml_collections.ConfigDict())
    c.sweep = ml_collections.ConfigDict(dict(
        decoders=("ancestral",),
        decoder_options=ml_collections.ConfigDict(),
        option_axes=ml_collections.ConfigDict(dict(temperature=(0.5, 1.0, 1.5))),
        seeds=(0,),
    ))
    return c


def _decoder_names():
    from samplax.decoding.registry import SAMPLERS
    return tuple(sorted(SAMPLERS))


def _decoder_choice(path, v):
    _choice(_decoder_names())(path, v)


def _prompt(path, v):
    if any(isinstance(t, bool) or not isinstance(t, int) or t < 0 for t in v):
        raise ConfigError(path, f"must be a tuple of token ids >= 0, got {v!r}")


_SAMPLES = _at_most(MAX_SAMPLES, "sample indices are int32")
_PROBLEM = {"lm": Field("str"), "prompt": Field("tuple[int]", check=_prompt)}
for _p in PARTS:
    _PROBLEM[_p] = Field("str", required=False, nullable=True)
    _PROBLEM[_p + "_options"] = Field("dict", required=False)
_COMMON = {
    "problem": _PROBLEM,
    "n_samples": Field("int", check=_SAMPLES),
    "chunk_size": Field("int", check=_SAMPLES),
    "dtype": Field("str", check=_choice(DTYPES)),
    "metrics": {"chi_square_min_expected": Field("float", check=_disc._min_expected),
                "save_samples": Field("int", check=_at_most(MAX_SAVE_SAMPLES, "kept as .npy per row"))},
    "distributed": Field("bool"),
}
SAMPLE_SCHEMA = dict(_COMMON, decoder={"name": Field("str", check=_decoder_choice), "options": Field("dict")},
                     seed=Field("int", check=_nonneg))
SWEEP_SCHEMA = dict(_COMMON, sweep={"decoders": Field("tuple[str]", check=_each(_decoder_choice)),
                                    "decoder_options": Field("dict", required=False),
                                    "option_axes": Field("dict", required=False),
                                    "seeds": Field("tuple[int]", check=_each(_nonneg))})
NON_IDENTITY_FIELDS = ("chunk_size", "distributed", "metrics.save_samples")


def validate(config, kind: str) -> dict:
    values = _as_dict(config)
    _check_tree(SWEEP_SCHEMA if kind == "sweep" else SAMPLE_SCHEMA, values, "config")
    return values


def build_problem(cfg: dict):
    """The :class:`samplax.decoding.Problem` of the config; ConfigError naming the field otherwise."""
    from samplax.decoding import problem as dp
    p = cfg["problem"]
    kw = {}
    for part in PARTS:
        if p.get(part):
            kw[part] = p[part]
            kw[part + "_options"] = dict(p.get(part + "_options") or {})
        elif p.get(part + "_options"):
            raise ConfigError(f"config.problem.{part}_options", f"set without config.problem.{part}")
    try:
        return dp.make_problem(p["lm"], prompt=tuple(p["prompt"]) or None, **kw)
    except ValueError as e:
        msg = str(e)
        field = msg.split(":", 1)[0].strip().split(" ")[0]     # "lm", "prompt", "draft", "reward_options", ...
        known = ("lm", "prompt") + PARTS + tuple(pt + "_options" for pt in PARTS)
        raise ConfigError(f"config.problem.{field}" if field in known else "config.problem", msg) from None


# ---------------------------------------------------------------------------------------
# The plan
# ---------------------------------------------------------------------------------------
def _accepted(name: str) -> list:
    from samplax.decoding.registry import SAMPLERS
    return list(inspect.signature(SAMPLERS[name]).parameters)


def _build(name: str, options: dict, path: str, problem=None):
    from samplax.decoding.registry import get_decoder
    try:
        dec = get_decoder(name, **options)
    except ValueError as e:
        msg = str(e)
        option = msg.split(":", 1)[0].strip()
        where = f"{path}.{option}" if option in options else path
        raise ConfigError(where, f"decoder {name!r}: {msg}") from None
    if problem is not None:
        missing = [f for f in dec.needs if getattr(problem, f) is None]
        if missing:
            raise ConfigError(f"config.problem.{missing[0]}", f"decoder {name!r} needs a {missing[0]} "
                                                              f"(set config.problem.{missing[0]})")
    return dec


def _row(cfg: dict, name: str, options: dict, seed: int) -> dict:
    spec = dict(family="decoding", problem_spec=cfg["problem"], decoder=name, options=options, seed=seed,
                n_samples=cfg["n_samples"], dtype=cfg["dtype"],
                metrics_settings=dict(chi_square_min_expected=cfg["metrics"]["chi_square_min_expected"]))
    spec["hash"] = settings_hash(spec)
    spec["label"] = _disc.label(name, options)
    return spec


def make_plan(config):
    """Validate and expand a decoding config into row specs (a runner ``Plan``)."""
    from samplax.experiment.config import config_kind
    from samplax.experiment.plan import Plan

    kind = config_kind(config)
    cfg = validate(config, kind)
    problem = build_problem(cfg)   # an unknown LM / part fails here, before any work
    if kind == "sample":
        d = cfg["decoder"]
        options = dict(d.get("options") or {})
        _build(d["name"], options, "config.decoder.options", problem)
        return Plan(kind, cfg, [_row(cfg, d["name"], options, cfg["seed"])], [])
    rows = _disc.expand_sweep(cfg["sweep"], "decoder", _accepted,
                              lambda name, options, where: _build(name, options, where, problem),
                              lambda name, options, seed: _row(cfg, name, options, seed))
    return Plan(kind, cfg, rows, [])


# ---------------------------------------------------------------------------------------
# Execution
# ---------------------------------------------------------------------------------------
def execute(plan, todo: list, workdir: str, writer: bool = True) -> list:
    from samplax.experiment.runner import software_versions

    mesh = devices.batch_mesh()
    dev = devices.device_summary()
    versions = software_versions()
    progress = Progress(len(todo), "rows", programs=len(todo), desc=plan.kind)
    memo = {}
    done = []
    for spec in todo:
        row = run_row(spec, plan.config, mesh, dev, versions, workdir, writer, memo)
        if writer:
            store.append_row(os.path.join(workdir, store.RESULTS_FILE), row)
        done.append(row)
        progress.update(1, f"{row['label']} calls={row['nfe']:.2f}")
    progress.close()
    return done


def _gather(parts):
    return np.concatenate(parts) if parts else np.zeros((0,))


def run_row(spec: dict, cfg: dict, mesh, dev: dict, versions: dict, workdir: str, writer: bool, memo: dict) -> dict:
    from samplax.decoding.base import sample_keys
    from samplax.decoding.registry import get_decoder

    n = spec["n_samples"]
    n_dev = dev["n_devices"]
    chunk = devices.padded_chunk(cfg["chunk_size"], n, n_dev)
    dec = get_decoder(spec["decoder"], **spec["options"])
    key = jax.random.PRNGKey(spec["seed"])
    sh = devices.batch_sharding(mesh, 2)
    rep = devices.replicated(mesh)
    out = {k: [] for k in ("x", "target_calls", "draft_calls", "log_p", "log_Z", "bad")}
    compile_s, run_s = 0.0, 0.0
    ctx = jax.enable_x64(True) if spec["dtype"] == "float64" else contextlib.nullcontext()
    with ctx:
        problem = build_problem(cfg)
        jitted = jax.jit(lambda keys: dec.run(problem, keys), in_shardings=(sh,), out_shardings=rep)
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
            out["x"].append(x[:m])
            for k, v in (("target_calls", info.target_calls), ("draft_calls", info.draft_calls),
                         ("log_p", info.log_p), ("log_Z", info.log_Z), ("bad", info.nonfinite_step)):
                out[k].append(np.asarray(v)[:m])
        truth = _truth(dec, problem, spec, memo)
    x = np.concatenate(out["x"])
    r = {k: _gather(v) for k, v in out.items() if k != "x"}
    P = 0 if problem.prompt is None else len(problem.prompt)
    generated = (problem.lm.length - P) * len(x)
    metrics, reference, warnings = _metrics(spec, problem, dec, truth, x, r)
    row = {k: v for k, v in spec.items() if k != "metrics_settings"}
    row.update(kind="decoding", problem=problem.lm.name, label=spec["label"], sampler=spec["decoder"],
               grid=spec["decoder"], nfe=float(r["target_calls"].mean()), nfe_max=int(r["target_calls"].max()),
               draft_calls=float(r["draft_calls"].mean()),
               tokens_per_call=float(generated / max(float(r["target_calls"].sum()), 1.0)),
               metrics=metrics, reference=reference, warnings=warnings,
               nonfinite=int((r["bad"] >= 0).sum()),
               first_nonfinite_step=int(r["bad"][r["bad"] >= 0].min()) if (r["bad"] >= 0).any() else None,
               time_s=run_s, compile_s=compile_s, time_per_token_us=1e6 * run_s / max(generated, 1),
               n_devices=n_dev, chunk=chunk, device_kind=dev["device_kind"], versions=versions)
    if writer and cfg["metrics"]["save_samples"]:
        path = sio.as_path(workdir) / "samples" / f"{spec['hash']}.npy"
        path.parent.mkdir(parents=True, exist_ok=True)
        sio.atomic_save_npy(path, x[: cfg["metrics"]["save_samples"]].astype(np.int16))
    return row


def _truth(dec, problem, spec: dict, memo: dict):
    """(exact target log-probs, exact log Z or None, exact log-probs of the LM) of the row (memoised)."""
    from samplax.decoding.exact import exact_log_probs
    key = (spec["decoder"], settings_hash(dict(o=spec["options"], p=spec["problem_spec"])))
    if key not in memo:
        with jax.enable_x64(True):
            try:
                target = np.asarray(dec.target(problem), np.float64)
            except ValueError:   # a rule whose output law has no enumerable form (RPC, pruned best-of-N)
                target = None
            log_Z = None if dec.log_Z is None else float(dec.log_Z(problem))
            lk = ("lm", settings_hash(spec["problem_spec"]))
            if lk not in memo:
                memo[lk] = exact_log_probs(problem.lm)
        memo[key] = (target, log_Z, memo[lk])
    return memo[key]


def _metrics(spec: dict, problem, dec, truth, x: np.ndarray, r: dict):
    from samplax.decoding import metrics as dm
    from samplax.decoding.exact import sequence_index

    target, log_Z, lm_lp = truth
    warnings = []
    bad = r["bad"]
    if (bad >= 0).any():
        warnings.append(f"{int((bad >= 0).sum())} of {len(bad)} samples met a non-finite model output "
                        f"(first at position {int(bad[bad >= 0].min())})")
    V = problem.lm.vocab_size
    n = len(x)
    idx = sequence_index(x, V)
    out = dict(mean_log_p=float(lm_lp[idx].mean()))
    ref = dict(n_sequences=len(lm_lp))
    if target is None:
        warnings.append(f"decoder {spec['decoder']!r} has no exact output distribution here: TV and chi-square "
                        "not computed")
    else:
        chi = dm.chi_square_test(x, target, V, spec["metrics_settings"]["chi_square_min_expected"])
        p = np.exp(target)
        ref.update(tv_floor=dm.tv_floor(target, n), target_entropy=float(-(p[p > 0] * target[p > 0]).sum()))
        out.update(tv=dm.tv_to_exact(x, target, V), tv_floor=ref["tv_floor"], chi2_p=chi.p_value,
                   chi2_stat=chi.stat, chi2_dof=chi.dof, outside_support=int(np.sum(~np.isfinite(target[idx]))))
        if out["outside_support"]:
            warnings.append(f"{out['outside_support']} samples lie outside the target's support")
    if log_Z is not None and np.all(np.isfinite(r["log_Z"])):
        z = dm.z_ratio(r["log_Z"], log_Z)
        out.update(z_ratio=z.ratio, z_ratio_se=z.stderr)
        ref["log_Z"] = log_Z
    task = problem.task
    if task is not None and hasattr(task, "accuracy"):
        out["accuracy"] = float(task.accuracy(x))
    return out, ref, warnings


# ---------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------
def results_markdown(rows: list) -> str:
    rows = sorted(rows, key=lambda r: (r.get("problem", ""), r["decoder"], r["nfe"], r["label"], r["seed"]))
    has_z = any((r.get("metrics") or {}).get("z_ratio") is not None for r in rows)
    has_acc = any((r.get("metrics") or {}).get("accuracy") is not None for r in rows)
    head = ["problem", "decoder", "setting", "seed", "target calls", "draft calls", "tokens/call", "TV",
            "TV floor", "chi2 p", "mean log p"]
    if has_z:
        head += ["Z_hat/Z", "± se"]
    if has_acc:
        head += ["accuracy"]
    head += ["µs/token", "warnings"]
    lines = ["# Decoding results", "",
             "target calls: mean target-model calls per sequence (one call scores any number of positions). "
             "TV: empirical total variation to the exact distribution the decoder claims to sample; TV floor: "
             "the same for as many exact samples. chi2 p: Pearson goodness of fit (rare cells pooled). "
             "Z_hat/Z: mean ratio of the normaliser estimate to the exact one (1 = unbiased).", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    f = _disc._fmt
    for r in rows:
        m = r.get("metrics") or {}
        setting = r["label"][len(r["decoder"]):].strip() or "-"
        cells = [r.get("problem", ""), r["decoder"], setting, str(r["seed"]), f"{r['nfe']:.2f}",
                 f"{r.get('draft_calls', 0):.2f}", f"{r.get('tokens_per_call', 0):.3f}", f(m.get("tv")),
                 f(m.get("tv_floor")), f(m.get("chi2_p"), 3), f(m.get("mean_log_p"))]
        if has_z:
            cells += [f(m.get("z_ratio")), f(m.get("z_ratio_se"), 2)]
        if has_acc:
            cells += [f(m.get("accuracy"))]
        cells += [f"{r.get('time_per_token_us', 0):.3g}", "; ".join(r.get("warnings") or []) or "-"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_report(workdir, rows: list) -> dict:
    root = sio.as_path(workdir)
    rows = [r for r in rows if r.get("kind") == "decoding"]
    md = results_markdown(rows)
    plot = _disc.plot_frontier(rows, root / "plots" / PLOT, metric="tv") if rows else None
    if plot:
        md += f"\n![TV vs target calls](plots/{PLOT})\n"
    sio.atomic_write_bytes(root / "results.md", md.encode())
    return dict(results_md=os.fspath(root / "results.md"), plots=[plot] if plot else [])


def print_summary(rows: list, file=None) -> str:
    text = results_markdown(rows)
    print(text, file=file)
    return text


__all__ = ["decoding_config", "decoding_sweep_config", "is_decoding", "validate", "make_plan", "execute",
           "write_report", "print_summary", "build_problem", "NON_IDENTITY_FIELDS"]
