"""A validated config -> the list of rows it asks for.

:func:`make_plan` runs the schema check, then resolves every name through the
registries, builds each solver and time grid once, and maps each NFE to a step
count.  Anything impossible raises a :class:`ConfigError` with the dotted path
of the field; nothing here touches the filesystem or runs a model.

In a sweep, a solver without an ``order`` option runs once at its own order
whatever ``sweep.orders`` says, and (solver, order, NFE) combinations the
solver cannot do are *skipped* and listed in ``Plan.skipped``; a solver or an
axis entry that yields no row at all is an error.
"""
from __future__ import annotations

import hashlib
import itertools
import math
from typing import NamedTuple, Optional

import numpy as np

from samplax.experiment import loading, registry
from samplax.experiment.config import ConfigError, config_kind, validate_fields
from samplax.experiment.identity import identity, settings_hash  # noqa: F401  (re-exported)
from samplax.solvers.registry import get_solver, solver_options, steps_for_nfe
from samplax.timesteps import time_grid

MAX_ORDER_PROBE = 6


class Plan(NamedTuple):
    kind: str                # "sample" | "sweep"
    config: dict             # the resolved config (plain dict)
    rows: list               # row specs (dicts), in run order
    skipped: list            # (solver, order, nfe, reason) combinations a sweep skips


def _has_order_option(name: str) -> bool:
    return "order" in solver_options(name)


def allowed_orders(name: str, afs: bool = False, options: Optional[dict] = None) -> list:
    """The orders ``name`` can be built with (its fixed order if it has no order option)."""
    options = options or {}
    if not _has_order_option(name):
        return [get_solver(name, afs=afs, **options).order]
    ok = []
    for o in range(1, MAX_ORDER_PROBE + 1):
        try:
            get_solver(name, order=o, afs=afs, **options)
            ok.append(o)
        except ValueError:
            pass
    return ok


def _check_options(name: str, options: dict, path: str) -> dict:
    options = dict(options or {})
    allowed = solver_options(name)
    for k in sorted(options):
        if k in ("order", "afs"):
            own = {"order": "config.solver.order (a sweep: config.sweep.orders)",
                   "afs": "config.solver.afs (a sweep: config.afs)"}[k]
            raise ConfigError(f"{path}.{k}", f"set {k!r} with its own field {own}, not in the options of {name!r}")
        if k not in allowed:
            extra = sorted(set(allowed) - {"order", "afs"})
            raise ConfigError(f"{path}.{k}", f"unknown option of solver {name!r}; allowed: {extra}")
    afs = False
    if name == "schedule":  # its file decides AFS: validate the options with the file's setting
        f = options.get("file")
        if not f:
            raise ConfigError(f"{path}.file", "solver 'schedule' needs the path of a schedule file (a search's "
                                              "best_schedule.json); got none")
        afs = schedule_file({"file": f}, f"{path}.file").afs
    try:
        get_solver(name, afs=afs, **options)
    except ValueError as e:
        raise ConfigError(path, f"solver {name!r} rejects options {options}: {e}") from None
    return options


def _solver(name: str, order: Optional[int], afs: bool, options: dict, order_path: str):
    """Build the solver; an order it does not have raises at ``order_path``."""
    if _has_order_option(name):
        kw = {} if order is None else {"order": order}
        try:
            return get_solver(name, afs=afs, **kw, **options)
        except ValueError:
            raise ConfigError(order_path, f"solver {name!r} has no order {order!r}; allowed orders: "
                                          f"{allowed_orders(name, afs, options)}") from None
    if name == "schedule":
        file_afs = schedule_file({"file": options["file"]}).afs
        if afs != file_afs:
            raise ConfigError("config.afs" if "sweep" in order_path else "config.solver.afs",
                              f"{afs} differs from the schedule file's afs={file_afs} ({options['file']}); "
                              f"allowed: {file_afs}")
    solver = get_solver(name, afs=afs, **options)
    if order is not None and order != solver.order:
        raise ConfigError(order_path, f"solver {name!r} has the fixed order {solver.order} and no order "
                                      f"option; got {order!r} (leave it unset)")
    return solver


def _order_option(name: str, solver, order: Optional[int]) -> int:
    """The order a row is labelled with: the factory's order option (its default when
    unset), or the fixed order of a solver without one."""
    if not _has_order_option(name):
        return int(solver.order)
    if order is None:  # the factory's default; a default of None (teleport: its base's) is the built order
        default = solver_options(name)["order"]
        return int(solver.order if default is None else default)
    return int(order)


def _label(name: str, order: int, options: dict, afs: bool) -> str:
    parts = [name + (f" o{order}" if _has_order_option(name) else "")]
    defaults = solver_options(name)
    parts += [f"{k}={v}" for k, v in sorted(options.items()) if defaults.get(k) != v]
    if afs:
        parts.append("afs")
    return " ".join(parts)


def schedule_file(g: dict, path: str = "config.grid.file"):
    """The schedule of ``grid.file`` (spacing "file"), validated, or a ConfigError at ``path``."""
    from samplax.solvers.schedule import ScheduleError, load_schedule

    f = g.get("file")
    if not f:
        raise ConfigError(path, "grid spacing 'file' needs a schedule file (a search's best_schedule.json or "
                                "samplax.solvers.schedule.save_schedule); got none")
    try:
        return load_schedule(f)
    except ScheduleError as e:
        raise ConfigError(path, str(e)) from None


def make_grid(schedule, n_steps: int, spacing: str, end: str, g: dict, dtype):
    """The time grid of a row: a named spacing, or (spacing "file") the time points of
    the schedule file ``g["file"]``, whose step count and end must match."""
    if spacing != "file":
        return time_grid(schedule, n_steps, spacing, end=end, t_max=g.get("t_max"), t_min=g.get("t_min"),
                         rho=g["rho"], dtype=dtype)
    sched = schedule_file(g)
    if sched.n_steps != n_steps or sched.end != end:
        raise ValueError(f"the schedule file {g['file']} has {sched.n_steps} steps ending {sched.end!r} (NFE "
                         f"{sched.nfe}); this row needs {n_steps} steps ending {end!r}; allowed: the file's NFE and "
                         f"grid.end")
    times = np.asarray(sched.times, np.float64)
    return time_grid(schedule, len(times) - (0 if end == "zero" else 1), times=times, end=end, dtype=dtype)


def _check_grid(loaded, spacing: str, end: str, g: dict, n_steps: int, dtype, path: str):
    try:
        return make_grid(loaded.schedule, n_steps, spacing, end, g, dtype)
    except ValueError as e:
        raise ConfigError(path if spacing != "file" else "config.grid.file", str(e)) from None


def _check_time_range(cfg: dict, loaded) -> None:
    lo, hi = float(loaded.schedule.t_min), float(loaded.schedule.t_max)
    g = cfg["grid"]
    for f in ("t_max", "t_min"):
        v = g.get(f)
        if v is not None and not (math.isfinite(v) and lo <= v <= hi):
            raise ConfigError(f"config.grid.{f}", f"{v!r} is outside the time range [{lo}, {hi}] of the schedule of "
                                                  f"model {cfg['model']['name']!r}")
    t_max = hi if g.get("t_max") is None else g["t_max"]
    t_min = lo if g.get("t_min") is None else g["t_min"]
    if not t_min < t_max:
        raise ConfigError("config.grid.t_min", f"must be below grid.t_max = {t_max}, got {t_min}")


MAX_CHUNK_ELEMENTS = 2**31 - 1  # one chunk of samples is one array: int32 element indices


def _check_sizes(cfg: dict, loaded) -> None:
    """A chunk of samples (min(chunk_size, n_samples) x the sample's size) must stay
    within int32 element indices."""
    size = int(math.prod(loaded.shape)) if loaded.shape else int(loaded.dim)
    chunk = min(cfg["chunk_size"], cfg["n_samples"])
    if chunk * size > MAX_CHUNK_ELEMENTS:
        most = MAX_CHUNK_ELEMENTS // size
        field = "config.chunk_size" if cfg["chunk_size"] <= cfg["n_samples"] else "config.n_samples"
        raise ConfigError(field, f"a chunk of {chunk} samples of size {size} (model {cfg['model']['name']!r}) has "
                                 f"{chunk * size} elements, more than int32 indices allow (2^31 - 1); allowed: "
                                 f"min(chunk_size, n_samples) <= {most}")


def _check_particles(cfg: dict, loaded, name: str, solver) -> None:
    """A particle sampler (solver.smc) couples groups of ``particles`` consecutive samples: the
    sample count and the chunk must be whole groups, its last step is its own (no 'denoise'
    end), and a guidance target needs a model with labels."""
    spec = getattr(solver, "smc", None)
    if spec is None:
        return
    P = spec.num_particles
    if cfg["n_samples"] % P:
        raise ConfigError("config.n_samples", f"{name} runs groups of particles = {P}: n_samples must be a "
                                              f"multiple of it, got {cfg['n_samples']}")
    if cfg["chunk_size"] < cfg["n_samples"] and cfg["chunk_size"] % P:
        raise ConfigError("config.chunk_size", f"{name} runs groups of particles = {P}: chunk_size must be a "
                                               f"multiple of it, got {cfg['chunk_size']}")
    if cfg["grid"]["end"] == "denoise":
        raise ConfigError("config.grid.end", f"{name} ends its own last step; allowed: 'zero' or 't_min'")
    if spec.needs_conditional and loading.label_conditioner(loaded) is None:
        raise ConfigError("config.model.name", f"{name} needs the conditional and unconditional scores of a "
                                               f"model with labels; allowed: the analytic problems "
                                               f"{sorted(registry.MODELS)}")


def _row(cfg: dict, loaded, name, solver, order, options, afs, spacing, nfe, n_steps, seed) -> dict:
    g = cfg["grid"]
    _check_particles(cfg, loaded, name, solver)
    order = _order_option(name, solver, order)
    m = {k: v for k, v in cfg["metrics"].items() if k != "save_samples"}
    spec = dict(model=cfg["model"]["name"], problem=loaded.problem, solver=name, order=order,
                convergence_order=int(solver.order), options=options, afs=afs,
                label=_label(name, order, options, afs), grid=spacing, end=g["end"],
                t_max=g.get("t_max"), t_min=g.get("t_min"), rho=float(g["rho"]), nfe=int(nfe),
                n_steps=int(n_steps), seed=int(seed), n_samples=int(cfg["n_samples"]), dtype=cfg["dtype"],
                prior=cfg["prior"], metrics_settings=m)
    if loaded.trained is not None:  # a trained network: its checkpoint is part of what the row is
        m = cfg["model"]
        spec["trained"] = dict(checkpoint=m["checkpoint"], step=m["step"], params=m.get("params") or "ema",
                               guidance=m.get("guidance"))
    files = {}
    if spacing == "file":
        files["grid"] = g["file"]
    if name == "schedule":
        files["solver"] = options.get("file")
    if files:  # a schedule file's content is part of what the row is
        spec["schedule_files"] = {k: dict(path=str(v), sha1=_file_sha1(v)) for k, v in files.items()}
    um = user_model_fields(cfg["model"])
    if um:  # a user factory / schedule: its spec and arguments are part of what the row is
        spec["user_model"] = um
    spec["hash"] = settings_hash(spec)
    return spec


def _file_sha1(path) -> str:
    from samplax.io import as_path

    return hashlib.sha1(as_path(path).read_bytes()).hexdigest()


def make_plan(config) -> Plan:
    """Validate ``config`` (ConfigDict or dict) and expand it into row specs."""
    kind = config_kind(config)
    cfg = validate_fields(config, kind)
    cfg["model"] = loading.resolve_model(cfg["model"])
    loaded = loading.load_model(cfg["model"], registry.DTYPES["float32"])
    if cfg["prior"] == "problem" and loaded.gmm is None:
        raise ConfigError("config.prior", f"'problem' start points exist for gmm2d and gmm64d only, not for "
                                          f"{cfg['model']['name']!r}; use 'key'")
    dtype = registry.DTYPES["float32"]  # grids are validated in float32; runs rebuild them in cfg dtype
    _check_sizes(cfg, loaded)
    _check_time_range(cfg, loaded)
    if cfg["grid"].get("file") is not None:  # set: it must be a valid schedule file, used or not
        schedule_file(cfg["grid"])
    rows, skipped = [], []
    if kind == "sample":
        s = cfg["solver"]
        options = _check_options(s["name"], s.get("options") or {}, "config.solver.options")
        solver = _solver(s["name"], s.get("order"), s["afs"], options, "config.solver.order")
        try:
            n_steps = steps_for_nfe(solver, cfg["nfe"], cfg["grid"]["end"])
        except ValueError as e:
            raise ConfigError("config.nfe", f"solver {s['name']!r}: {e}") from None
        _check_grid(loaded, cfg["grid"]["spacing"], cfg["grid"]["end"], cfg["grid"], n_steps, dtype, "config.grid")
        rows.append(_row(cfg, loaded, s["name"], solver, s.get("order"), options, s["afs"], cfg["grid"]["spacing"], cfg["nfe"],
                         n_steps, cfg["seed"]))
        return Plan(kind, cfg, rows, skipped)

    sw = cfg["sweep"]
    per_solver = dict(sw.get("solver_options") or {})
    for name in sorted(per_solver):
        if name not in sw["solvers"]:
            raise ConfigError(f"config.sweep.solver_options.{name}",
                              f"options for a solver not in sweep.solvers {tuple(sw['solvers'])}")
        if not isinstance(per_solver[name], dict):
            raise ConfigError(f"config.sweep.solver_options.{name}", f"must be a mapping of options, got "
                                                                     f"{per_solver[name]!r}")
    axes = _option_axes(sw, per_solver, cfg["afs"])
    entries = []  # (name, solver, order option or None, options, afs)
    used_orders = set()
    for i, name in enumerate(sw["solvers"]):
        base = _check_options(name, per_solver.get(name, {}), f"config.sweep.solver_options.{name}")
        for options, afs in _axis_settings(name, base, axes, cfg["afs"]):
            if not _has_order_option(name):
                solver = _solver(name, None, afs, options, f"config.sweep.solvers[{i}]")
                entries.append((name, solver, None, options, afs))
                continue
            allowed = allowed_orders(name, afs, options)
            mine = [o for o in sw["orders"] if o in allowed]
            if not mine:
                raise ConfigError("config.sweep.orders", f"solver {name!r} has none of the orders "
                                                         f"{tuple(sw['orders'])}; allowed orders for it: {allowed}")
            for o in sw["orders"]:
                if o in allowed:
                    used_orders.add(o)
                    entries.append((name, _solver(name, o, afs, options, "config.sweep.orders"), o, options, afs))
                else:
                    skipped.append(dict(solver=name, order=o, nfe=None, options=options,
                                        reason=f"{name} has no order {o}"))
    if any(_has_order_option(n) for n in sw["solvers"]):
        for j, o in enumerate(sw["orders"]):
            if o not in used_orders:
                have = sorted({x for n in sw["solvers"] if _has_order_option(n)
                               for x in allowed_orders(n, cfg["afs"], per_solver.get(n))})
                raise ConfigError(f"config.sweep.orders[{j}]", f"no solver in sweep.solvers has order {o}; "
                                                               f"their orders: {have}")
    steps = {}
    nfe_used = set()
    for name, solver, order, options, _ in entries:
        order = _order_option(name, solver, order)
        ok, last = False, ""
        for nfe in sw["nfes"]:
            try:
                steps[(id(solver), nfe)] = steps_for_nfe(solver, nfe, cfg["grid"]["end"])
                ok = True
                nfe_used.add(nfe)
            except ValueError as e:
                last = str(e)
                skipped.append(dict(solver=name, order=order, nfe=nfe, reason=last))
        if not ok:
            raise ConfigError("config.sweep.nfes", f"solver {name!r} (order {order}) can do none of the NFEs "
                                                   f"{tuple(sw['nfes'])} with grid.end={cfg['grid']['end']!r} "
                                                   f"({last})")
    for j, nfe in enumerate(sw["nfes"]):
        if nfe not in nfe_used:
            raise ConfigError(f"config.sweep.nfes[{j}]", f"NFE {nfe} is impossible for every solver of the sweep")
    checked = set()
    for (name, solver, order, options, afs), nfe, spacing, seed in itertools.product(entries, sw["nfes"],
                                                                                   sw["grids"], sw["seeds"]):
        n_steps = steps.get((id(solver), nfe))
        if n_steps is None:
            continue
        if (spacing, n_steps) not in checked:
            _check_grid(loaded, spacing, cfg["grid"]["end"], cfg["grid"], n_steps, dtype,
                        f"config.sweep.grids[{sw['grids'].index(spacing)}]")
            checked.add((spacing, n_steps))
        rows.append(_row(cfg, loaded, name, solver, order, options, afs, spacing, nfe, n_steps, seed))
    return Plan(kind, cfg, rows, skipped)


def user_model_fields(model_cfg: dict) -> dict:
    """The bring-your-own fields of a (resolved) model section that are set (with the
    checkpoint and step of a user factory's plain parameters)."""
    out = {f: model_cfg.get(f) for f in loading.USER_FIELDS if model_cfg.get(f) not in (None, {}, (), [])}
    if out.get("shape") is not None:
        out["shape"] = [int(v) for v in out["shape"]]
    if model_cfg.get("factory") and model_cfg.get("checkpoint"):
        out.update(checkpoint=model_cfg["checkpoint"], step=model_cfg.get("step"))
    return out


def _option_axes(sw: dict, per_solver: dict, afs_default: bool) -> dict:
    """``sweep.option_axes``: option name -> tuple of values, checked against the sweep's
    solvers (``afs`` applies to every solver and replaces ``config.afs``)."""
    axes = dict(sw.get("option_axes") or {})
    for k, values in axes.items():
        path = f"config.sweep.option_axes.{k}"
        if not isinstance(values, (tuple, list)) or len(values) == 0:
            raise ConfigError(path, f"must be a non-empty tuple of option values, got {values!r}")
        if len(set(map(repr, values))) != len(values):
            raise ConfigError(path, f"has duplicate entries: {tuple(values)!r}")
        if k == "order":
            raise ConfigError(path, "orders are the axis config.sweep.orders")
        if k == "afs":
            if not all(isinstance(v, bool) for v in values):
                raise ConfigError(path, f"must be a tuple of true/false, got {tuple(values)!r}")
            continue
        have = [n for n in sw["solvers"] if k in solver_options(n)]
        if not have:
            every = sorted({o for n in sw["solvers"] for o in solver_options(n)} - {"order", "afs"})
            raise ConfigError(path, f"no solver in sweep.solvers {tuple(sw['solvers'])} has option {k!r}; "
                                    f"their options: {every}")
        for n in have:
            if k in (per_solver.get(n) or {}):
                raise ConfigError(f"config.sweep.solver_options.{n}.{k}", f"is also the sweep axis {path}: "
                                                                          f"set it in one place")
    return axes


def _axis_settings(name: str, base: dict, axes: dict, afs_default: bool) -> list:
    """The (options, afs) settings solver ``name`` runs: the cross product of the option
    axes it has (a solver without an axis' option runs once without it)."""
    keys = [k for k in axes if k != "afs" and k in solver_options(name)]
    out = []
    for combo in itertools.product(*(axes[k] for k in keys)):
        options = dict(base, **dict(zip(keys, combo)))
        checked = _check_options(name, options, "config.sweep.option_axes") if keys else base
        for afs in axes.get("afs", (afs_default,)):
            out.append((checked, afs))
    return out


def model_section(spec: dict) -> dict:
    """The (resolved) model section of a row spec."""
    return dict(name=spec["model"], **spec.get("trained", {}), **spec.get("user_model", {}))


def rebuild_solver(spec: dict):
    """The solver of a row spec."""
    kw = {"order": spec["order"]} if _has_order_option(spec["solver"]) else {}
    return get_solver(spec["solver"], afs=spec["afs"], **kw, **spec["options"])


__all__ = ["Plan", "make_plan", "settings_hash", "identity", "allowed_orders", "rebuild_solver", "model_section"]
