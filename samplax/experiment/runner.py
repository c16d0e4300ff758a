"""The runner: ``run_sample(config, workdir)`` and ``run_sweep(config, workdir)``.

Flow: validate and expand the config (nothing touches the workdir before the
plan is complete) -> check the workdir's saved config -> skip the rows already
in results.jsonl (by settings hash) -> group the remaining rows into programs
(one per solver setting; inside it one part per NFE, whose members differ in
grid spacing and seed and are vmapped) -> per program: compile once, run the
sample chunks sharded over the batch mesh, compute the metrics, append one row
per member -> write results.md, plots and TensorBoard scalars.

Metrics per row (analytic models):

* ``mean_l2``: mean Euclidean distance of the first
  min(n, chunk, metrics.max_l2_samples) samples to the exact PF-ODE solution
  from the same x_T (float64 RK4 + Richardson, ``metrics.reference_steps``
  steps, cached under ``workdir/cache``).  The reference ends at sigma = 0
  whatever ``grid.end`` is.  For stochastic solvers it is reported too, but
  measures the distance to the deterministic flow, not sample quality.
* ``sw2``: sliced Wasserstein-2 (``metrics.sw_projections`` fixed directions)
  between the first min(n, chunk, metrics.max_sw_samples) samples and as many
  exact samples of p_0 (a fixed key); ``reference.sw2_floor`` is the same
  distance between two independent exact sample sets (the noise floor).
* ``mean_log_density``: exact mean log p_0 over all n samples (streamed).
Non-finite samples make a metric None (null) and set ``first_nonfinite_step``.

Adaptive solvers (``dpm_solver_adaptive``): the row's ``nfe`` is the cap and the NFE really
spent is summed at run time into the row's ``adaptive`` record (docs/adaptive_likelihood.md).
"""
from __future__ import annotations

import contextlib
import functools
import math
import os
import platform
import time
from collections import OrderedDict
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from samplax import io as sio
from samplax.experiment import cache as refcache
from samplax.experiment import decoding, devices, discrete, loading, registry
from samplax.experiment import results as store
from samplax.experiment.config import ConfigError, config_kind, validate_fields
from samplax.experiment.nfe import count_in_jaxpr
from samplax.experiment.nfe import probe as nfe_probe
from samplax.experiment.plan import Plan, identity, make_plan, make_grid, model_section, rebuild_solver, settings_hash
from samplax.experiment.progress import Progress
from samplax.metrics import projections, sliced_wasserstein2_host
from samplax.solvers import StepOrders, stability_warning, step_orders
from samplax.solvers.adaptive import is_adaptive, sample_with_info
from samplax.solvers.base import cpu_compiler_options, sample
from samplax.solvers.unified import run_table, widen
from samplax.schedules import prior_std

EXACT_KEY = 20240101      # PRNG seed of the exact reference samples for sw2
FLOOR_KEY = 20240102      # a second, independent exact set: the sw2 noise floor
PROJ_KEY = 7              # the sw2 projection directions


# ---------------------------------------------------------------------------------------
# Public entry points
# ---------------------------------------------------------------------------------------
def run_sample(config, workdir: str, restart: bool = False) -> list:
    """One sampling run (a sample config); returns its rows.  See :func:`run`."""
    return run(config, workdir, restart=restart, expect="sample")


def run_sweep(config, workdir: str, restart: bool = False) -> list:
    """A sweep (a config with a ``sweep`` section); returns its rows.  See :func:`run`."""
    return run(config, workdir, restart=restart, expect="sweep")


def family(config):
    """The module that runs a config of another family than the diffusion solvers:
    :mod:`samplax.experiment.decoding` (a ``decoder`` section), :mod:`samplax.experiment.discrete`
    (a ``sampler`` section), or None (``solver``: this module)."""
    if decoding.is_decoding(config):
        return decoding
    if discrete.is_discrete(config):
        return discrete
    return None


def run(config, workdir: str, restart: bool = False, expect: Optional[str] = None, report: bool = True,
        summary: bool = True) -> list:
    """Run the rows of ``config`` that ``workdir`` does not hold yet, then write the report.

    Raises ConfigError (a bad config, or a workdir that cannot be one: field
    ``workdir``), WorkdirConflict (workdir of another config) or WorkdirLocked (another
    process runs in it) before creating or changing anything.  ``restart`` deletes the
    workdir's results first.  The workdir is locked for the whole run
    (:class:`samplax.experiment.results.WorkdirLock`).  Returns all rows of the config
    (done before or now)."""
    refcache.enable_compilation_cache()
    kind = config_kind(config)
    if expect is not None and kind != expect:
        want = "a 'sweep' section" if expect == "sweep" else "no 'sweep' section"
        raise ConfigError("config", f"this entrypoint runs {expect} configs, which have {want}; got a {kind} config")
    fam = family(config)  # masked diffusion / LM decoding: their own module; else the solvers
    cfg = fam.validate(config, kind) if fam else validate_fields(config, kind)
    devices.maybe_initialize_distributed(cfg["distributed"])
    plan = fam.make_plan(config) if fam else make_plan(config)
    writer = devices.is_writer()
    wd = bad_workdir = None
    try:  # process 0 checks the filesystem (it alone writes); the others the name only
        wd = store.check_workdir(workdir, filesystem=writer)
    except ConfigError as e:
        bad_workdir = e
    if devices.agree_flag(bad_workdir is not None):
        raise bad_workdir or ConfigError("workdir", f"{workdir} cannot be used (seen by process 0)")
    if wd is None:  # only this process was given a bad name
        raise bad_workdir
    ident = identity(plan.config, fam.NON_IDENTITY_FIELDS) if fam else identity(plan.config)

    def saved_config_conflict():
        # Process 0 decides (conflict, what is done); the others follow its decision, so a
        # multi-host job never runs different rows on different processes.
        if writer and not restart:
            try:
                store.check_saved_config(wd, ident, kind)
            except store.WorkdirConflict as e:
                return e
        return None

    conflict = saved_config_conflict()  # read-only: a refused run does not touch the workdir
    if devices.agree_flag(conflict is not None):
        raise conflict or store.WorkdirConflict(f"{wd} holds results of a different config (seen by process 0)")
    lock = store.WorkdirLock(wd)
    refused = None
    if writer:
        try:
            lock.acquire()
        except store.WorkdirLocked as e:
            refused = e
        except OSError as e:  # e.g. a directory that cannot be created
            refused = ConfigError("workdir", f"{wd} cannot be used: {e}; allowed: a writable directory")
    if devices.agree_flag(refused is not None):
        raise refused or store.WorkdirLocked(f"workdir: {wd} is locked (seen by process 0)")
    try:
        conflict = saved_config_conflict()  # again under the lock: another run may have just written one
        if devices.agree_flag(conflict is not None):
            raise conflict or store.WorkdirConflict(f"{wd} holds results of a different config (seen by process 0)")
        return _run_locked(plan, kind, wd, ident, writer, restart, report, summary)
    finally:
        lock.release()


def _run_locked(plan: Plan, kind: str, workdir, ident: dict, writer: bool, restart: bool, report: bool,
                summary: bool) -> list:
    path = workdir / store.RESULTS_FILE
    done_mask = np.zeros(len(plan.rows), np.int32)
    if writer:
        if restart:
            store.clear_workdir(workdir)
        workdir.mkdir(parents=True, exist_ok=True)
        store.save_config(workdir, kind, plan.config, ident)
        sio.atomic_write_json(workdir / "skipped.json", plan.skipped)
        store.compact(path)  # exactly one complete row per hash before appending
        done = {r["hash"] for r in store.read_results(path)}
        done_mask = np.asarray([s["hash"] in done for s in plan.rows], np.int32)
    done_mask = devices.from_process_zero(done_mask)
    todo = [s for s, d in zip(plan.rows, done_mask) if not d]
    logging.info("%s: %d rows planned, %d already in %s, %d to run; %d combinations skipped",
                 kind, len(plan.rows), len(plan.rows) - len(todo), path, len(todo), len(plan.skipped))
    workdir = os.fspath(workdir)
    fam = family(plan.config)
    new_rows = (fam.execute if fam else execute)(plan, todo, workdir, writer)
    if not writer:  # processes other than 0 write nothing and return what they computed
        return new_rows
    wanted = {s["hash"] for s in plan.rows}
    every = store.read_results(path)
    rows = [r for r in every if r["hash"] in wanted]
    if writer and report:
        from samplax.experiment.report import write_report

        # a sample workdir accumulates runs: its report shows all of them
        (fam.write_report if fam else write_report)(workdir, every if kind == "sample" else rows)
    if writer and summary:
        from samplax.experiment.report import print_summary

        (fam.print_summary if fam else print_summary)(rows)
    return rows


# ---------------------------------------------------------------------------------------
# Execution
# ---------------------------------------------------------------------------------------
# Rows that share these settings share one compiled program: within it, one vmapped
# part per step count (NFE), each part vmapped over its grid spacings and seeds.
GROUP_KEYS = ("model", "trained", "user_model", "problem", "solver", "order", "options", "afs", "end", "t_max", "t_min", "rho",
              "n_samples", "dtype", "prior", "metrics_settings")


# Deterministic linear multistep solvers are step tables (samplax.solvers.unified): rows of
# different such solvers and options share one program too, vmapped over their tables.
TABLE_ENGINE = "table"


@functools.lru_cache(maxsize=None)
def _table_capable(solver: str, order, options_json: str, afs: bool) -> bool:
    import json

    spec = dict(solver=solver, order=order, options=json.loads(options_json), afs=afs)
    s = rebuild_solver(spec)
    return s.table is not None and not s.stochastic and s.prepare is None  # prepared solvers run bound


def uses_tables(spec: dict) -> bool:
    """Whether a row runs as a step table (and so may share a program with other solvers)."""
    import json

    return _table_capable(spec["solver"], spec.get("order"), json.dumps(spec["options"], sort_keys=True), spec["afs"])


def group_key(spec: dict) -> dict:
    key = {k: spec.get(k) for k in GROUP_KEYS}
    if uses_tables(spec):
        key.update(solver=TABLE_ENGINE, order=None, options=None)
    return key


def group_rows(specs: list) -> list:
    """Rows that can share one compiled program: they differ only in NFE, grid spacing and
    seed, or (step-table solvers) also in the solver and its options."""
    groups = OrderedDict()
    for s in specs:
        groups.setdefault(settings_hash(group_key(s)), []).append(s)
    return list(groups.values())


def execute(plan: Plan, todo: list, workdir: str, writer: bool = True) -> list:
    """Run the row specs ``todo``; each finished row is appended at once (by the writer).

    Programs are formed from *all* rows of the plan, and a program with any row to do
    runs whole: a program of fewer members is a different XLA program whose float32
    results can differ in the last bits, so computing only the missing members would
    make a resumed run differ from an uninterrupted one.  Only the missing rows are
    written."""
    wanted = {s["hash"] for s in todo}
    groups = [g for g in group_rows(plan.rows) if any(s["hash"] in wanted for s in g)]
    progress = Progress(len(todo), "rows", programs=len(groups), desc=plan.kind)
    context = _Context(plan.config, workdir, writer)
    done = []
    for g in groups:
        for row in run_group(context, g, progress):
            if row["hash"] not in wanted:
                continue
            if writer:
                store.append_row(os.path.join(workdir, store.RESULTS_FILE), row)
            done.append(row)
            progress.update(1, row["label"] + f" {row['grid']} nfe={row['nfe']}")
    progress.close()
    return done


class _Context:
    """What all groups of a run share: the mesh, the versions, the reference caches."""

    def __init__(self, cfg: dict, workdir: str, writer: bool):
        self.cfg = cfg
        self.workdir = workdir
        self.writer = writer
        self.mesh = devices.batch_mesh()
        self.devices = devices.device_summary()
        self.versions = software_versions()
        self._memo = {}

    def memo(self, key, fn):
        if key not in self._memo:
            self._memo[key] = fn()
        return self._memo[key]


def software_versions() -> dict:
    import flax
    import jaxlib
    import optax

    import samplax

    return dict(python=platform.python_version(), jax=jax.__version__, jaxlib=jaxlib.__version__,
                numpy=np.__version__, flax=flax.__version__, optax=optax.__version__,
                samplax=samplax.__version__, samplax_commit=_git_commit())


def _git_commit() -> Optional[str]:
    import subprocess

    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    try:
        out = subprocess.run(["git", "-C", root, "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                             timeout=10)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


@contextlib.contextmanager
def _precision(dtype_name: str):
    if dtype_name == "float64":
        with jax.enable_x64(True):
            yield
    else:
        yield


def _prior_chunk(seeds, idx, shape, dtype):
    """x_T of samples ``idx`` for each seed: N(0, I) of one sample's ``shape`` from
    fold_in(fold_in(PRNGKey(seed), 0), i), exactly what samplax.generate draws."""
    def one(seed):
        k_prior = jax.random.fold_in(jax.random.PRNGKey(seed), 0)
        keys = jax.vmap(lambda i: jax.random.fold_in(k_prior, i))(idx)
        return jax.vmap(lambda k: jax.random.normal(k, tuple(shape), dtype))(keys)
    return jax.vmap(one)(seeds)


def _problem_stream(info, start: int = 0) -> np.random.Generator:
    """The problem file's numpy stream of start points, positioned at row ``start``."""
    rng = np.random.default_rng(info["dim"])
    if start:
        rng.standard_normal((start, info["dim"]))  # advance the stream
    return rng


def _probe_name(j: int) -> str:
    return f"_samplax_model_evaluation_part{j}"


def _build_program(solver, loaded, n_parts: int, n_heads: int, chunk: int, mesh, prior: str, dtype,
                   scale: float = 1.0):
    """jit(program)(parts, offset, n_valid, x_T or None) for one group; ``parts`` is a
    list of (stacked grids, seeds), one per step count (stacked step tables when
    ``solver`` is None: the members may be different multistep solvers)."""
    gmm, shape = loaded.gmm, loaded.shape
    batch = devices.batch_sharding(mesh, 1)
    # a probe per part makes each part's model evaluations countable in the program's jaxpr
    models = [loaded.model.replace(apply=nfe_probe(loaded.model.apply, _probe_name(j))) for j in range(n_parts)]
    adaptive = solver is not None and is_adaptive(solver)
    smc_spec = getattr(solver, "smc", None)
    conditional = loading.label_conditioner(loaded) if smc_spec is not None else None

    def member(model, grid, seed, x_T, idx, offset, valid):
        k_solver = jax.random.fold_in(jax.random.PRNGKey(seed), 1)
        if loaded.relabel is not None:  # guided class-conditional model: labels of these samples
            model = loaded.relabel(model, idx)
        extra = {}
        if solver is None:  # ``grid`` is a step table (samplax.solvers.unified)
            x0, info = run_table(model, x_T, grid)
        elif adaptive:  # the NFE is data-dependent: report what was spent, per sample
            x0, info, ainfo = sample_with_info(solver, model, x_T, grid, k_solver)
            per = lambda a: jnp.broadcast_to(a, valid.shape)  # noqa: E731  (per-batch control: a scalar)
            nfe = per(ainfo.nfe).astype(jnp.int32)
            extra = dict(nfe_sum=jnp.sum(jnp.where(valid, nfe, 0)),
                         nfe_max=jnp.max(jnp.where(valid, nfe, 0)),
                         nfe_min=jnp.min(jnp.where(valid, nfe, jnp.iinfo(jnp.int32).max)),
                         accept_sum=jnp.sum(jnp.where(valid, per(ainfo.n_accept), 0)),
                         reject_sum=jnp.sum(jnp.where(valid, per(ainfo.n_reject), 0)),
                         cap_hit=jnp.any(valid & per(ainfo.cap_hit)))
        elif smc_spec is not None:  # a particle sampler: groups of P consecutive samples
            x0, info, sinfo = smc_spec.run(model, x_T, grid, k_solver, offset, conditional)
            P = smc_spec.num_particles
            gvalid = valid[::P]  # chunks and n_samples are whole groups: a group is valid or padding
            n_steps_ = sinfo.ess.shape[0]
            extra = dict(smc_log_Z_sum=jnp.sum(jnp.where(gvalid, sinfo.log_Z, 0.0)),
                         smc_ess_min_sum=jnp.sum(jnp.where(gvalid, jnp.min(sinfo.ess, axis=0) / P, 0.0)),
                         smc_resampled_sum=jnp.sum(jnp.where(gvalid, jnp.sum(sinfo.resampled, axis=0), 0)),
                         smc_invalid_groups=jnp.sum(gvalid & (sinfo.first_invalid_step > 0)),
                         smc_first_invalid=jnp.min(jnp.where(gvalid & (sinfo.first_invalid_step > 0),
                                                             sinfo.first_invalid_step, n_steps_ + 1)))
        else:
            x0, info = sample(solver, model, x_T, grid, k_solver, index_offset=offset)
        flat = x0.reshape(x0.shape[0], -1)
        finite = jnp.all(jnp.isfinite(flat), axis=-1)
        if gmm is None:
            logp = jnp.zeros(finite.shape, x0.dtype)
        else:
            logp = gmm.log_prob_ve(jnp.where(finite[:, None], flat, 0.0), 0.0)
        ok = finite & valid
        return dict(head=x0[:n_heads], head_x_T=x_T[:n_heads],
                    logp_sum=jnp.sum(jnp.where(ok, logp, 0.0)),
                    n_finite=jnp.sum(ok), first_bad=info.first_nonfinite_step, **extra)

    def program(parts, offset, n_valid, x_T_in):
        idx = jax.lax.with_sharding_constraint(offset + jnp.arange(chunk, dtype=jnp.int32), batch)
        valid = idx < n_valid
        outs = []
        for model, (grids, seeds) in zip(models, parts):
            if prior == "key":
                x_T = _prior_chunk(seeds, idx, shape, dtype)
                if scale != 1.0:  # VE / EDM / flow schedules: x_T ~ N(0, prior_std^2 I)
                    x_T = x_T * jnp.asarray(scale, dtype)
            else:
                x_T = jnp.broadcast_to(x_T_in[None], (seeds.shape[0],) + x_T_in.shape)
            one = functools.partial(member, model)
            outs.append(jax.vmap(one, in_axes=(0, 0, 0, None, None, None))(grids, seeds, x_T, idx, offset, valid))
        return outs

    return jax.jit(program, out_shardings=devices.replicated(mesh))


# ---------------------------------------------------------------------------------------
# Model-dependent solvers (Solver.prepare / bind): their statistics, cached per model
# ---------------------------------------------------------------------------------------
STATS_DIR = "cache/solver_stats"


def model_identity(spec: dict) -> dict:
    """What identifies the model of a row (the key of model-dependent caches): the built-in
    problem, the trained checkpoint (path, resolved step, parameters, guidance), the user
    factory and its arguments (with its source digest), the run dtype."""
    return {k: spec.get(k) for k in ("model", "problem", "trained", "user_model", "dtype")}


def _model_data(ctx, loaded):
    """The :class:`~samplax.solvers.base.ModelData` of a loaded model: the exact mixture's
    samples and moments (analytic problems, and networks trained on them), a data set's
    training samples, or None (a user's model without reference data)."""
    from samplax.solvers.base import ModelData, model_data
    if loaded.gmm is not None:
        return model_data(gmm=loaded.gmm)
    data = loaded.dataset
    if data is None:
        return None

    def samples(n, seed):
        return np.asarray(data.batch(seed, 0, n)[0], np.float64).reshape((n,) + tuple(loaded.shape))
    return ModelData(samples=samples, shape=tuple(loaded.shape))


def _prepared_solver(ctx, solver, loaded, spec: dict):
    """``solver.bind(stats)`` with ``stats = solver.prepare(model, data)`` computed once per
    model identity and solver setting and kept in ``workdir/cache/solver_stats/<key>.npz``
    (written atomically by process 0, with the key beside it in JSON); a rerun, a resumed run
    or another sweep row of the same model and setting loads it.  Returns (bound solver,
    the row's ``prepared`` record: the cache key, whether it was loaded, the seconds spent)."""
    # options a factory declares bind-only (``factory.bind_options``: e.g. a guidance strength or the
    # base solver) do not change the statistics: rows that differ only in them share one computation
    from samplax.solvers.registry import SOLVERS
    bind_only = set(getattr(SOLVERS.get(spec["solver"]), "bind_options", ()))
    key = dict(model=model_identity(spec), solver=spec["solver"],
               order=None if "order" in bind_only else spec.get("order"),
               options={k: v for k, v in spec["options"].items() if k not in bind_only},
               afs=None if "afs" in bind_only else spec["afs"], t_max=spec.get("t_max"), t_min=spec.get("t_min"))
    name = settings_hash(key)
    base = sio.as_path(ctx.workdir) / STATS_DIR
    path = base / f"{name}.npz"

    def compute():
        data = _model_data(ctx, loaded)
        logging.info("%s: computing the model statistics of %s (once per model and setting; cached in %s)",
                     spec["label"], spec["solver"], path)
        t0 = time.perf_counter()
        stats = solver.prepare(loaded.model, data)
        return {k: np.asarray(v) for k, v in stats.items()}, time.perf_counter() - t0

    def load():
        if not path.exists():
            return None
        try:
            with path.open("rb") as f:
                z = np.load(f)
                return {k: z[k] for k in z.files}
        except (OSError, ValueError) as e:  # a damaged file is recomputed
            logging.warning("solver statistics %s unreadable (%s); recomputing", path, e)
            return None

    def get():
        stats = load()
        if stats is not None:
            return stats, dict(key=name, cached=True, seconds=0.0)
        stats, secs = compute()
        if ctx.writer:
            import io as _io
            buf = _io.BytesIO()
            np.savez(buf, **stats)
            sio.atomic_write_bytes(path, buf.getvalue())
            sio.atomic_write_json(base / f"{name}.json", key)
        logging.info("%s: model statistics computed in %.1f s (%s)", spec["label"], secs, path)
        return stats, dict(key=name, cached=False, seconds=secs)

    stats, record = ctx.memo(("solver_stats", name), get)
    return solver.bind(stats), record


def _solver_key(spec: dict) -> str:
    return settings_hash({k: spec.get(k) for k in ("solver", "order", "options", "afs", "schedule_files")})


def _build_tables(solvers: list, keys: list, grids: list, schedule):
    """The step tables of one part's members (member j: ``solvers[j]`` on ``grids[j]``),
    widened to a common layout and stacked in member order.  One jitted, vmapped call
    per part: the members of each distinct solver setting are batched through its
    ``table`` function (building them one by one, op by op, dominated a sweep's wall time)."""
    uniq = OrderedDict()
    for j, key in enumerate(keys):
        uniq.setdefault(key, (solvers[j], []))[1].append(j)
    shapes = [jax.eval_shape(lambda g, s=s: s.table(g, schedule), grids[pos[0]]) for s, pos in uniq.values()]
    k = max(t.k for t in shapes)
    views = tuple(v for v in ("data", "noise") if any(v in t.views for t in shapes))
    corr = any(t.has_corrector for t in shapes)
    batches = [jax.tree.map(lambda *a: jnp.stack(a), *[grids[j] for j in pos]) for _, pos in uniq.values()]

    def build(batches):
        outs = [jax.vmap(lambda g, s=s: widen(s.table(g, schedule), k, views, corr))(b)
                for (s, _), b in zip(uniq.values(), batches)]
        return jax.tree.map(lambda *a: jnp.concatenate(a), *outs)

    tab = jax.jit(build)(batches)
    where = np.concatenate([pos for _, pos in uniq.values()])
    inv = np.argsort(where)  # concatenated position -> member order
    return jax.tree.map(lambda a: a[inv], tab)


def run_group(ctx: _Context, specs: list, progress: Optional[Progress] = None) -> list:
    """Compile and run one group of rows (one program); returns the finished rows (not yet
    written, in the order of ``specs``)."""
    s0 = specs[0]
    by_steps = OrderedDict()
    for k, s in enumerate(specs):
        by_steps.setdefault(s["n_steps"], []).append(k)
    order = [k for ks in by_steps.values() for k in ks]  # spec index of each flattened member
    with _precision(s0["dtype"]):
        dtype = registry.DTYPES[s0["dtype"]]
        loaded = loading.load_model(model_section(s0), dtype)
        tables = uses_tables(s0)
        solvers = {k: rebuild_solver(s) for k, s in enumerate(specs)}
        prepared = None
        if not tables and solvers[0].prepare is not None:  # a model-dependent solver: bind its statistics
            bound, prepared = _prepared_solver(ctx, solvers[0], loaded, s0)
            solvers = {k: bound for k in solvers}  # a group shares solver, options and model
        solver = None if tables else solvers[0]
        t_start = getattr(solver, "t_start", None)  # teleportation: the grid starts at the switch time
        n, ms = s0["n_samples"], s0["metrics_settings"]
        n_dev = ctx.devices["n_devices"]
        smc_spec = getattr(solver, "smc", None)
        # particle samplers: a chunk is whole groups, and so is every chunk's offset
        chunk = devices.padded_chunk(ctx.cfg["chunk_size"], n, math.lcm(n_dev, smc_spec.num_particles)
                                     if smc_spec is not None else n_dev)
        # metric sample counts from the unpadded chunk: independent of the device count
        first = min(n, ctx.cfg["chunk_size"])
        n_l2 = min(first, ms["max_l2_samples"])
        n_sw = min(first, ms["max_sw_samples"])
        n_save = min(first, ctx.cfg["metrics"]["save_samples"])
        n_heads = max(n_l2, n_sw, n_save)
        parts = []
        ran = {}  # spec index -> (StepOrders, a-priori stability warning): what each row really runs
        for ks in by_steps.values():
            grids = [make_grid(loaded.schedule, specs[k]["n_steps"], specs[k]["grid"], s0["end"],
                               dict(t_max=s0["t_max"] if t_start is None else float(t_start), t_min=s0["t_min"],
                                    rho=s0["rho"],
                                    file=specs[k].get("schedule_files", {}).get("grid", {}).get("path")), dtype)
                     for k in ks]
            for k, grid in zip(ks, grids):
                if solver is not None and is_adaptive(solver):  # its steps are chosen at run time, not by the grid
                    none = np.zeros(0, np.int32)
                    ran[k] = (StepOrders(orders=none, nominal=none, safeguarded=none.astype(bool), reasons=()), None)
                else:
                    ran[k] = (step_orders(solvers[k], grid), stability_warning(solvers[k], grid))
            if tables:
                stacked = _build_tables([solvers[k] for k in ks], [_solver_key(specs[k]) for k in ks], grids,
                                        loaded.schedule)
            else:
                stacked = jax.tree.map(lambda *a: jnp.stack(a), *grids)
            parts.append((stacked, jnp.asarray([specs[k]["seed"] for k in ks], jnp.uint32)))
        program = _build_program(solver, loaded, len(parts), n_heads, chunk, ctx.mesh, s0["prior"], dtype,
                                 prior_std(loaded.schedule, s0["t_max"]))
        rep = devices.replicated(ctx.mesh)
        x_sharding = devices.batch_sharding(ctx.mesh, 2)
        parts = jax.device_put(parts, rep)

        stream = {"rng": None, "at": 0}  # the problem's numpy stream, drawn chunk after chunk

        def x_T_in(start):
            if s0["prior"] != "problem":
                return devices.put_global(np.zeros((chunk,) + loaded.shape, np.dtype(s0["dtype"])),
                                          devices.batch_sharding(ctx.mesh, 1 + len(loaded.shape)))
            stop = min(start + chunk, n)
            if stream["rng"] is None or stream["at"] != start:
                stream["rng"], stream["at"] = _problem_stream(loaded.info, start), start
            block = np.zeros((chunk, loaded.dim))
            block[: stop - start] = stream["rng"].standard_normal((stop - start, loaded.dim))
            stream["at"] = stop
            return devices.put_global(block.astype(s0["dtype"]), x_sharding)

        def args(start):
            return parts, jnp.int32(start), jnp.int32(n), x_T_in(start)

        if progress is not None:
            labels = list(OrderedDict.fromkeys(s["label"] for s in specs))
            progress.compiling(labels[0] if len(labels) == 1 else f"{len(labels)} multistep solvers as step tables")
        t0 = time.perf_counter()
        traced = program.trace(*args(0))
        # model evaluations per member, counted in the program that runs
        adaptive = solver is not None and is_adaptive(solver)
        # (an adaptive solve's count is data-dependent: it is summed at run time below)
        nfe_parts = [None if adaptive else count_in_jaxpr(traced.jaxpr, _probe_name(j)) for j in range(len(parts))]
        compiled = traced.lower().compile(compiler_options=cpu_compiler_options())  # YNNPACK fusions off on CPU
        compile_s = time.perf_counter() - t0
        if progress is not None:
            progress.compiled()
        t0 = time.perf_counter()
        m = len(specs)
        logp_sum, n_finite, first_bad = np.zeros(m), np.zeros(m, np.int64), np.full(m, -1)
        head = head_x_T = None
        spent = dict(nfe_sum=np.zeros(m), nfe_max=np.zeros(m, np.int64), nfe_min=np.full(m, np.iinfo(np.int64).max),
                     accept_sum=np.zeros(m), reject_sum=np.zeros(m), cap_hit=np.zeros(m, bool))
        smc_acc = dict(smc_log_Z_sum=np.zeros(m), smc_ess_min_sum=np.zeros(m), smc_resampled_sum=np.zeros(m),
                       smc_invalid_groups=np.zeros(m, np.int64), smc_first_invalid=np.full(m, np.iinfo(np.int64).max))
        for start in range(0, n, chunk):
            out = jax.device_get(compiled(*args(start)))
            cat = {k: np.concatenate([o[k] for o in out]) for k in out[0]}  # members in `order`
            if start == 0:
                head, head_x_T = cat["head"], cat["head_x_T"]
            logp_sum += cat["logp_sum"].astype(np.float64)
            n_finite += cat["n_finite"].astype(np.int64)
            first_bad = np.where((first_bad < 0) & (cat["first_bad"] >= 0), cat["first_bad"], first_bad)
            if adaptive:
                for key in ("nfe_sum", "accept_sum", "reject_sum"):
                    spent[key] += cat[key].astype(np.float64)
                spent["nfe_max"] = np.maximum(spent["nfe_max"], cat["nfe_max"])
                spent["nfe_min"] = np.minimum(spent["nfe_min"], cat["nfe_min"])
                spent["cap_hit"] |= cat["cap_hit"].astype(bool)
            if smc_spec is not None:
                for key in ("smc_log_Z_sum", "smc_ess_min_sum", "smc_resampled_sum", "smc_invalid_groups"):
                    smc_acc[key] += cat[key]
                smc_acc["smc_first_invalid"] = np.minimum(smc_acc["smc_first_invalid"], cat["smc_first_invalid"])
        wall_s = time.perf_counter() - t0
    nfe_of = {}
    for j, ks in enumerate(by_steps.values()):
        for k in ks:
            nfe_of[k] = nfe_parts[j]

    program_id = settings_hash(group_key(s0))
    rows = [None] * m
    for g, k in enumerate(order):
        s = specs[k]
        all_finite = int(n_finite[g]) == n
        x_head = np.asarray(head[g], np.float64)
        if loaded.gmm is not None:  # the exact model (or a network trained on its samples)
            exact_ode = loaded.info.get("exact_schedule", True)  # same schedule: the exact PF-ODE solution
            # particle samplers sample another target: no ODE solution to compare with (no mean_l2)
            metrics = {} if smc_spec is not None else dict(
                mean_l2=_mean_l2(ctx, loaded, s, x_head[:n_l2], np.asarray(head_x_T[g][:n_l2], np.float64))
                if exact_ode else None)
            metrics.update(sw2=_sw2(ctx, loaded, s, x_head[:n_sw]),
                           mean_log_density=float(logp_sum[g] / n) if all_finite else None)
            reference = _reference_metrics(ctx, loaded, s, n_sw)
        else:  # a trained network on data without an analytic model
            metrics, reference = _data_metrics(ctx, loaded, s, x_head[:n_sw])
        orders, apriori = ran[k]
        warnings = ([apriori] if apriori else []) + _warnings(ctx, loaded, s, x_head[:n_sw], n - int(n_finite[g]),
                                                            n, first_bad[g])
        adaptive_row = None
        if adaptive:
            adaptive_row = dict(nfe_mean=float(spent["nfe_sum"][g] / n), nfe_max=int(spent["nfe_max"][g]),
                                nfe_min=int(spent["nfe_min"][g]), n_accept_mean=float(spent["accept_sum"][g] / n),
                                n_reject_mean=float(spent["reject_sum"][g] / n), cap_hit=bool(spent["cap_hit"][g]),
                                cap=int(s["nfe"]), per_sample=bool(s["options"].get("per_sample", False)))
            if adaptive_row["cap_hit"]:
                warnings.append(f"adaptive solve hit its NFE cap ({s['nfe']}): the last step was forced, its error "
                                f"not controlled; raise nfe or loosen rtol/atol")
        smc_row = target_row = None
        if smc_spec is not None:
            P = smc_spec.num_particles
            groups = n // P
            first_inv = int(smc_acc["smc_first_invalid"][g])
            smc_row = dict(particles=P, groups=groups, resampling=smc_spec.resampling,
                           ess_threshold=smc_spec.ess_threshold,
                           log_Z_mean=float(smc_acc["smc_log_Z_sum"][g] / groups),
                           ess_min_mean=float(smc_acc["smc_ess_min_sum"][g] / groups),
                           resample_rate=float(smc_acc["smc_resampled_sum"][g] / (groups * s["n_steps"])),
                           invalid_groups=int(smc_acc["smc_invalid_groups"][g]),
                           first_invalid_step=first_inv if first_inv <= s["n_steps"] else None)
            if smc_row["invalid_groups"]:
                warnings.append(f"{smc_row['invalid_groups']} of {groups} SMC groups had invalid weights (NaN/+inf "
                                f"or all zero), first at step {smc_row['first_invalid_step']}")
            if smc_spec.exact_target is not None and loaded.gmm is not None and loaded.trained is None:
                target_row = _target_metrics(ctx, loaded, smc_spec, s, x_head[:n_sw])
                if target_row is not None:  # the headline numbers as metrics (report columns)
                    metrics.update(target_sw2=target_row["sw2"], target_tv=target_row["label_tv"],
                                   target_chi2_p=target_row["chi2_p"])
        samples_file = None
        if ctx.writer and n_save > 0:
            samples_file = f"samples/{s['hash']}.npy"
            sio.atomic_save_npy(sio.as_path(ctx.workdir) / samples_file, np.asarray(head[g][:n_save], np.float32))
        rows[k] = dict(
            s, run="sweep" if "sweep" in ctx.cfg else "sample", metrics=metrics, reference=reference,
            nfe_actual=int(nfe_of[k]) if not adaptive else adaptive_row["nfe_max"], adaptive=adaptive_row,
            first_nonfinite_step=None if all_finite else (int(first_bad[g]) if first_bad[g] >= 0 else None),
            n_nonfinite=int(n - n_finite[g]), wall_s=wall_s, compile_s=compile_s, program=program_id,
            rows_in_program=m, chunk=chunk, n_chunks=-(-n // chunk), samples_file=samples_file,
            versions=ctx.versions, time=time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
            warning="; ".join(warnings) or None, model_source=loaded.user,
            step_orders=[int(o) for o in orders.orders], order_reasons=list(orders.reasons),
            safeguard_lowered=bool(orders.any_safeguarded), prepared=prepared, smc=smc_row, target=target_row,
            model_kind="trained" if loaded.trained is not None else ("user" if s.get("user_model", {}).get("factory")
                                                                     else "analytic"),
            **ctx.devices)
        if not all_finite:
            logging.warning("%s %s nfe=%d seed=%d: %d of %d samples non-finite, first at step %s", s["label"],
                            s["grid"], s["nfe"], s["seed"], n - n_finite[g], n, rows[k]["first_nonfinite_step"])
    return rows


# ---------------------------------------------------------------------------------------
# Metrics and their cached references
# ---------------------------------------------------------------------------------------
def _cached(ctx, name: str, key: dict, compute):
    """``compute()`` once per key: in memory, then in the shared reference cache
    (:func:`samplax.experiment.cache.cached_array`, content-addressed and checksummed;
    process 0 writes)."""
    return ctx.memo((name, settings_hash(key)), lambda: refcache.cached_array(name, key, compute, write=ctx.writer))


def _target_metrics(ctx, loaded, smc_spec, s, x0) -> Optional[dict]:
    """The samples of a particle sampler against its exact target (samplax.smc.targets):
    label chi-square, label TV, mean / covariance errors, sliced W2 to exact target samples."""
    from samplax.smc.targets import target_metrics
    with _on_cpu(), jax.enable_x64(True):
        target = smc_spec.exact_target(loaded.gmm.astype(jnp.float64), _schedule64(loaded, s))
        if target is None or len(x0) < 2:
            return None
        # one sample per group for the chi-square test: a group's resampled particles are not independent
        out = target_metrics(target, x0, jax.random.PRNGKey(EXACT_KEY), independent_every=smc_spec.num_particles)
    return {k: (None if isinstance(v, float) and not np.isfinite(v) else v) for k, v in out.items()}


# a-posteriori stability check: samples whose RMS is this far from the data's are garbage
SCALE_RATIO_LIMIT = 3.0


def _reference_rms(ctx, loaded, s, n: int) -> Optional[float]:
    if loaded.gmm is not None:
        ref = _exact_samples(ctx, loaded, n, EXACT_KEY)
    elif loaded.dataset is not None:
        ref = _data_samples(ctx, loaded.dataset, n, EXACT_KEY)
    else:
        return None
    return float(np.sqrt(np.mean(np.sum(np.reshape(ref, (len(ref), -1)) ** 2, axis=-1))))


def _warnings(ctx, loaded, s, x0, n_bad: int, n: int, first_bad) -> list:
    """What a reader must know about a row: non-finite samples, and samples far outside
    the data's scale (finite garbage: e.g. Heun at NFE 11 on gmm2d gave sliced W2 199
    against a floor of 0.03)."""
    out = []
    if n_bad:
        at = f" from solver step {int(first_bad)}" if first_bad >= 0 else ""
        out.append(f"{n_bad} of {n} samples non-finite{at}")
    finite = x0[np.all(np.isfinite(x0.reshape(len(x0), -1)), axis=-1)] if len(x0) else x0
    if len(finite):
        ref = _reference_rms(ctx, loaded, s, len(x0))
        if ref:
            ratio = float(np.sqrt(np.mean(np.sum(finite.reshape(len(finite), -1) ** 2, axis=-1)))) / ref
            if not (1.0 / SCALE_RATIO_LIMIT <= ratio <= SCALE_RATIO_LIMIT):
                out.append(f"sample RMS is {ratio:.3g}x the data's (allowed {1 / SCALE_RATIO_LIMIT:.2g}-"
                           f"{SCALE_RATIO_LIMIT:g}x): the solver is outside its stable regime at this setting")
    return out


def _t_max(loaded, s) -> float:
    return float(loaded.schedule.t_max if s["t_max"] is None else s["t_max"])


def _mean_l2(ctx, loaded, s, x0, x_T) -> Optional[float]:
    if not np.all(np.isfinite(x0)):
        return None
    t_max = _t_max(loaded, s)
    steps = s["metrics_settings"]["reference_steps"]
    key = dict(problem=loaded.problem, prior=s["prior"], seed=s["seed"] if s["prior"] == "key" else None,
               n=len(x0), dtype=s["dtype"], t_max=t_max, steps=steps)
    if loaded.user is not None:  # a user's model or schedule: the reference follows its schedule
        key["user_model"] = dict(s.get("user_model", {}), source_sha1=loaded.user.get("source_sha1"))

    def compute():
        with jax.enable_x64(True), _on_cpu():
            gmm, schedule = loaded.gmm.astype(jnp.float64), _schedule64(loaded, s)
            return np.asarray(gmm.ode_solution(jnp.asarray(x_T, jnp.float64), t_max, None, schedule, n_steps=steps))
    ref = _cached(ctx, "ode_ref", key, compute)
    return float(np.mean(np.linalg.norm(x0 - ref, axis=-1)))


def _on_cpu():
    """Float64 references run on this host's CPU (accelerators may emulate float64)."""
    if jax.default_backend() == "cpu":
        return contextlib.nullcontext()
    try:
        return jax.default_device(jax.local_devices(backend="cpu")[0])
    except RuntimeError:  # pragma: no cover (no CPU backend)
        return contextlib.nullcontext()


def _schedule64(loaded, spec):
    """The run's schedule in float64: the problem file's, or a user's rebuilt under x64."""
    if loaded.user is None:
        return registry.MODELS[loaded.problem](jnp.float64).schedule
    return loading.load_model(model_section(spec), jnp.float64).schedule


def _exact_samples(ctx, loaded, n: int, seed: int) -> np.ndarray:
    key = dict(problem=loaded.problem, n=n, seed=seed)

    def compute():
        with jax.enable_x64(True), _on_cpu():
            gmm = loaded.gmm.astype(jnp.float64)
            return np.asarray(gmm.sample(jax.random.PRNGKey(seed), n, dtype=jnp.float64))
    return _cached(ctx, "exact", key, compute)


def _proj(ctx, dim: int, n_proj: int) -> np.ndarray:
    return ctx.memo(("proj", dim, n_proj), lambda: np.asarray(
        projections(jax.random.PRNGKey(PROJ_KEY), dim, n_proj, jnp.float32), np.float64))


def _sw2(ctx, loaded, s, x0) -> Optional[float]:
    if not np.all(np.isfinite(x0)):
        return None
    exact = _exact_samples(ctx, loaded, len(x0), EXACT_KEY)
    return sliced_wasserstein2_host(x0, exact, _proj(ctx, loaded.dim, s["metrics_settings"]["sw_projections"]))


def _reference_metrics(ctx, loaded, s, n_sw: int) -> dict:
    n_proj = s["metrics_settings"]["sw_projections"]

    def compute():
        a = _exact_samples(ctx, loaded, n_sw, EXACT_KEY)
        b = _exact_samples(ctx, loaded, n_sw, FLOOR_KEY)
        with jax.enable_x64(True):
            lp = float(jnp.mean(loaded.gmm.astype(jnp.float64).log_prob_ve(jnp.asarray(b), 0.0)))
        return dict(sw2_floor=sliced_wasserstein2_host(a, b, _proj(ctx, loaded.dim, n_proj)), mean_log_density_exact=lp,
                    n_exact=n_sw)
    return ctx.memo(("refmetrics", loaded.problem, n_sw, n_proj), compute)


def _data_samples(ctx, data, n: int, seed: int) -> np.ndarray:
    """``n`` flattened float64 samples of the reference data set (batch 0 of ``seed``), once per run."""
    return ctx.memo(("data_samples", data.name, n, seed), lambda: np.asarray(
        data.batch(seed, 0, n)[0], np.float64).reshape(n, -1))


def _data_metrics(ctx, loaded, s, x0):
    """Metrics of samples of a trained model whose data have no analytic density.

    digits: the Frechet distance ``fd`` between the features of a small classifier
    trained here (cached under workdir/cache) of the samples and of the held-out test
    split, with ``fd_floor`` = the FD of the training split against the test split.
    Toy 2-D data: sliced W2 against as many fresh data samples, with its noise floor."""
    if not np.all(np.isfinite(x0)):
        return dict(fd=None, sw2=None), {}
    data = loaded.dataset
    if data is None:  # a user's model with no reference data: only finiteness and timings
        return {}, {}
    name = data.name
    if name == "digits":
        from samplax.metrics import frechet_distance
        from samplax.models.classifier import digits_fd, digits_reference_statistics, load_or_train_digits_classifier

        def classifier():
            with _on_cpu():
                return load_or_train_digits_classifier(refcache.cache_dir())
        params, info = ctx.memo(("digits_classifier",), classifier)
        ref = ctx.memo(("digits_stats", "test"), lambda: digits_reference_statistics(params, "test"))
        floor = ctx.memo(("digits_stats", "train"), lambda: digits_reference_statistics(params, "train"))
        fd = digits_fd(params, x0.reshape((-1,) + loaded.shape).astype(np.float32), reference=ref)
        out = (dict(fd=float(fd)), dict(fd_floor=float(frechet_distance(*floor, *ref)),
                                       classifier_test_accuracy=float(info["test_accuracy"]), n_fd=len(x0)))
        if s["metrics_settings"].get("epiplexity"):  # optional: the same samples, 17 grey levels
            out[0]["epiplexity"] = _digits_epiplexity(s["metrics_settings"].get("epiplexity_options") or {}, x0)
        return out
    a = _data_samples(ctx, data, len(x0), EXACT_KEY)
    b = _data_samples(ctx, data, len(x0), FLOOR_KEY)
    proj = _proj(ctx, loaded.dim, s["metrics_settings"]["sw_projections"])
    return (dict(sw2=sliced_wasserstein2_host(x0.reshape(len(x0), -1), a, proj)),
            dict(sw2_floor=sliced_wasserstein2_host(a, b, proj), n_exact=len(x0)))


def _digits_epiplexity(options: dict, x0) -> Optional[dict]:
    """samplax.metrics.epiplexity of digits samples quantised to their 17 grey levels (None when
    fewer than steps * batch_size + eval_size samples are measured: raise metrics.max_sw_samples)."""
    from samplax.metrics.epiplexity import check_options, epiplexity, quantize

    o = check_options(options)
    if len(x0) < o["steps"] * o["batch_size"] + o["eval_size"]:
        return None
    return epiplexity(quantize(x0, 17), 17, **o).as_dict()


__all__ = ["run", "run_sample", "run_sweep", "execute", "group_rows", "run_group", "software_versions"]
