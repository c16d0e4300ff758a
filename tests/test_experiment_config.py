"""Validation before any work, and workdirs that refuse a different config.

Requirement: a bad config (unknown solver/grid/model name, an order the solver
does not have, an impossible NFE, a negative sample count, a mistyped, missing
or unknown field ...) fails with one ``ConfigError`` whose ``.path`` is the
dotted field path and whose message names the bad value and what is allowed;
nothing is created or changed in the workdir.  The CLI exits non-zero with that
message.  Rerunning into a workdir whose saved config differs is refused
(``WorkdirConflict``) unless ``restart`` / ``--restart`` says to start over.

Wrong types: a ``ConfigDict`` refuses most of them on assignment (``cfg.nfe =
"5"`` raises TypeError before validation), so those cases set the field in the
plain dict (``cfg.to_dict()``) that ``make_plan`` / ``run_*`` also accept, as a
notebook or a JSON-loaded config would pass it.  On the command line,
ml_collections' ``config_flags`` rejects them at flag parsing.
"""
import json
import os
import subprocess
import sys
from typing import Callable, NamedTuple, Optional

import ml_collections
import pytest

from configs import gmm, sweep_quick, sweep_solvers
from samplax.experiment import (ConfigError, WorkdirConflict, make_plan, run_sample, run_sweep, sample_config,
                                sweep_config)
from samplax.experiment import results as store

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ALL_SOLVERS = "['autoguided', 'ddim', 'ddim_eta', 'deis', 'dpm_solver', 'dpm_solver_adaptive', 'dpm_solver_multistep'"


# ---------------------------------------------------------------------------------------
# Mutators
# ---------------------------------------------------------------------------------------
def _walk(c, dotted):
    *parents, leaf = dotted.split(".")
    for p in parents:
        c = c[p]
    return c, leaf


def setf(dotted: str, value):
    """Set a field by assignment (ConfigDict's own type rules apply)."""
    def mutate(c):
        holder, leaf = _walk(c, dotted)
        holder[leaf] = value
    return mutate


def set_raw(dotted: str, value):
    """Set a field in the plain-dict form of the config (for values ConfigDict refuses)."""
    def mutate(c):
        d = c.to_dict()
        holder, leaf = _walk(d, dotted)
        holder[leaf] = value
        return d
    return mutate


def delete(dotted: str):
    def mutate(c):
        holder, leaf = _walk(c, dotted)
        del holder[leaf]
    return mutate


def add_field(dotted: str, value):
    """Add a field that the schema does not have (the defaults are not locked)."""
    def mutate(c):
        assert not c.is_locked
        holder, leaf = _walk(c, dotted)
        holder[leaf] = value
    return mutate


def both(*mutators):
    def mutate(c):
        for m in mutators:
            out = m(c)
            c = c if out is None else out
        return c
    return mutate


def solver_options(**per_solver):
    return setf("sweep.solver_options", ml_collections.ConfigDict(per_solver))


# ---------------------------------------------------------------------------------------
# The table of bad configs
# ---------------------------------------------------------------------------------------
class Case(NamedTuple):
    base: Callable            # () -> a valid config
    mutate: Callable          # config -> None (in place) or a new config
    path: str                 # expected ConfigError.path
    contains: tuple           # substrings of the message: the bad value and what is allowed
    runner: Optional[Callable] = None  # default: run_sample / run_sweep by the base's kind
    plan_raises: bool = True  # make_plan raises too (False: only the entrypoint's kind check does)


def case(id_, *args, xfail=None, **kw):
    marks = [pytest.mark.xfail(strict=True, reason=xfail)] if xfail else []
    return pytest.param(Case(*args, **kw), id=id_, marks=marks)


SAMPLE_CASES = [
    # names
    case("unknown-solver", sample_config, setf("solver.name", "dpm_solver_ppp"), "config.solver.name",
         ("'dpm_solver_ppp'", ALL_SOLVERS)),
    case("unknown-model", gmm.get_config, setf("model.name", "gmm3d"), "config.model.name",
         ("'gmm3d'", "'gmm2d', 'gmm64d'", "'digits'")),
    case("unknown-grid-spacing", sample_config, setf("grid.spacing", "linear"), "config.grid.spacing",
         ("'linear'", "'logsnr'", "'karras'", "'time_uniform'")),
    case("unknown-grid-end", sample_config, setf("grid.end", "sigma_min"), "config.grid.end",
         ("'sigma_min'", "['denoise', 't_min', 'zero']")),
    case("unknown-dtype-float16", sample_config, setf("dtype", "float16"), "config.dtype",
         ("'float16'", "['float32', 'float64']")),
    case("unknown-prior", sample_config, setf("prior", "uniform"), "config.prior",
         ("'uniform'", "['key', 'problem']")),
    # orders
    case("order-dpm_solver_pp-5", gmm.get_config, setf("solver.order", 5), "config.solver.order",
         ("'dpm_solver_pp'", "no order 5", "allowed orders: [1, 2, 3]")),
    case("order-unipc-4", sample_config, both(setf("solver.name", "unipc"), setf("solver.order", 4)),
         "config.solver.order", ("'unipc'", "no order 4", "allowed orders: [1, 2, 3]")),
    case("order-for-fixed-order-ddim", sample_config, both(setf("solver.name", "ddim"), setf("solver.order", 2)),
         "config.solver.order", ("'ddim'", "fixed order 1", "got 2", "leave it unset")),
    case("order-0", sample_config, setf("solver.order", 0), "config.solver.order",
         ("positive integer", "got 0")),
    # NFE
    case("nfe-0", gmm.get_config, setf("nfe", 0), "config.nfe", ("integer in [1, 100000]", "got 0")),
    case("nfe-heun-even", sample_config, both(setf("solver.name", "heun"), setf("nfe", 4)), "config.nfe",
         ("nfe=4", "heun", "possible NFEs include [1, 3, 5, 7, 9]")),
    # steps_for_nfe: singlestep order 3 can do 1, 4, 7, 10 ... (4 is possible, 2 is not)
    case("nfe-dpm_solver-o3-2", sample_config,
         both(setf("solver.name", "dpm_solver"), setf("solver.order", 3), setf("nfe", 2)), "config.nfe",
         ("nfe=2", "order 3", "[1, 4, 7, 10]")),
    case("nfe-1-with-denoise-end", sample_config, both(setf("grid.end", "denoise"), setf("nfe", 1)), "config.nfe",
         ("nfe=1", "end='denoise'", "[3, 4, 5]")),
    # counts, seeds
    case("n_samples-negative", gmm.get_config, setf("n_samples", -5), "config.n_samples",
         ("positive integer", "got -5")),
    case("n_samples-string", gmm.get_config, set_raw("n_samples", "64"), "config.n_samples",
         ("must be an integer", "'64' (str)")),
    case("n_samples-float", sample_config, set_raw("n_samples", 64.0), "config.n_samples",
         ("must be an integer", "64.0 (float)")),
    case("n_samples-bool", sample_config, setf("n_samples", True), "config.n_samples",
         ("must be an integer", "True (bool)")),
    case("seed-negative", sample_config, setf("seed", -1), "config.seed", ("[0, 2^31)", "got -1")),
    case("seed-too-large", sample_config, setf("seed", 2**31), "config.seed", ("[0, 2^31)", "got 2147483648")),
    case("chunk_size-0", sample_config, setf("chunk_size", 0), "config.chunk_size", ("positive integer", "got 0")),
    case("metrics-reference_steps-0", sample_config, setf("metrics.reference_steps", 0),
         "config.metrics.reference_steps", ("positive integer", "got 0")),
    case("metrics-save_samples-negative", sample_config, setf("metrics.save_samples", -1),
         "config.metrics.save_samples", ("[0, 65536]", "got -1")),
    # sizes: validated before anything is written (int32 sample indices, memory, time)
    case("n_samples-10**12", sample_config, setf("n_samples", 10**12), "config.n_samples",
         ("at most 1073741824", "int32", "got 1000000000000")),
    case("chunk_size-huge", sample_config, setf("chunk_size", 2**31), "config.chunk_size",
         ("at most 1073741824", "got 2147483648")),
    case("chunk-elements-over-int32", sample_config,
         both(setf("model.name", "gmm64d"), setf("n_samples", 2**30), setf("chunk_size", 2**30)),
         "config.chunk_size", ("68719476736 elements", "int32", "min(chunk_size, n_samples) <= 33554431")),
    case("reference_steps-huge", sample_config, setf("metrics.reference_steps", 10**9),
         "config.metrics.reference_steps", ("at most 100000", "got 1000000000")),
    case("sw_projections-huge", sample_config, setf("metrics.sw_projections", 10**6),
         "config.metrics.sw_projections", ("at most 4096", "got 1000000")),
    case("save_samples-huge", sample_config, setf("metrics.save_samples", 10**7),
         "config.metrics.save_samples", ("[0, 65536]", "got 10000000")),
    case("max_sw_samples-huge", sample_config, setf("metrics.max_sw_samples", 2**40),
         "config.metrics.max_sw_samples", ("at most 1073741824",)),
    # types, missing and unknown fields
    case("afs-string", sample_config, set_raw("solver.afs", "yes"), "config.solver.afs",
         ("true or false", "'yes' (str)")),
    case("distributed-int", sample_config, set_raw("distributed", 1), "config.distributed",
         ("true or false", "1 (int)")),
    case("nfe-None", sample_config, setf("nfe", None), "config.nfe", ("must be an integer", "got None")),
    case("grid-not-a-section", sample_config, set_raw("grid", 5), "config.grid",
         ("must be a section", "got 5")),
    case("unknown-top-level-field", sample_config, add_field("foo", 1), "config.foo",
         ("unknown field", "allowed fields of config:", "'nfe'", "'solver'")),
    case("unknown-grid-field", gmm.get_config, add_field("grid.foo", 1), "config.grid.foo",
         ("unknown field", "allowed fields of config.grid: ['end', 'file', 'rho', 'spacing', 't_max', 't_min']")),
    case("missing-nfe", sample_config, delete("nfe"), "config.nfe", ("missing required field", "an integer")),
    case("missing-model-section", sample_config, delete("model"), "config.model",
         ("missing required section", "'name'")),
    case("missing-solver-name", sample_config, delete("solver.name"), "config.solver.name",
         ("missing required field", "a string")),
    # solver options
    case("options-unknown-key", sample_config, add_field("solver.options.foo", 1), "config.solver.options.foo",
         ("unknown option of solver 'dpm_solver_pp'", "'solver_type'", "'third_order'")),
    case("options-order-key", sample_config, add_field("solver.options.order", 3), "config.solver.options.order",
         ("'order'", "its own field")),
    case("options-unipc-variant-bh3", sample_config,
         both(setf("solver.name", "unipc"), add_field("solver.options.variant", "bh3")),
         "config.solver.options.variant", ("'bh3'", "'bh1'", "'bh2'")),
    case("options-solver_type-bad", sample_config, add_field("solver.options.solver_type", "heun"),
         "config.solver.options.solver_type", ("'heun'", "'dpmsolver'", "'taylor'")),
    case("options-None", sample_config, set_raw("solver.options", None), "config.solver.options",
         ("mapping", "got None")),
    # solver options are typed like the factory's defaults (a string is not a number or a boolean)
    case("options-bool-as-string-no", sample_config,
         both(setf("solver.name", "unipc"), add_field("solver.options.corrector", "no")),
         "config.solver.options.corrector", ("True or False", "'no' (str)", "solver 'unipc'")),
    case("options-float-as-string", sample_config, add_field("solver.options.max_step_ratio", "2.0"),
         "config.solver.options.max_step_ratio", ("a real number (int or float) or None", "'2.0' (str)")),
    case("options-float-nan", sample_config,
         both(setf("solver.name", "ddim_eta"), add_field("solver.options.eta", float("nan"))),
         "config.solver.options.eta", ("finite number", "nan")),
    case("options-int-as-float", sample_config,
         both(setf("solver.name", "pc_langevin"), add_field("solver.options.n_corrector", 1.5)),
         "config.solver.options.n_corrector", ("an integer", "1.5 (float)")),
    case("options-str-as-int", sample_config, add_field("solver.options.solver_type", 3),
         "config.solver.options.solver_type", ("one of ['dpmsolver', 'taylor']", "3 (int)")),
    # not a config at all
    case("config-None", sample_config, lambda c: _Replace(None), "config",
         ("must be an ml_collections.ConfigDict", "got None")),
    case("config-list", sample_config, lambda c: _Replace([1, 2]), "config",
         ("must be an ml_collections.ConfigDict", "[1, 2] (list)")),
    # grid range
    case("rho-negative", sample_config, setf("grid.rho", -1.0), "config.grid.rho",
         ("finite positive number", "got -1.0")),
    case("rho-nan", sample_config, setf("grid.rho", float("nan")), "config.grid.rho",
         ("finite positive number", "got nan")),
    case("t_min-equals-t_max", sample_config, both(setf("grid.t_max", 0.5), setf("grid.t_min", 0.5)),
         "config.grid.t_min", ("must be below grid.t_max = 0.5", "got 0.5")),
    case("t_min-above-schedule-t_max", sample_config, setf("grid.t_min", 2.0), "config.grid.t_min",
         ("2.0", "outside the time range [0.001, 1.0]")),
    case("t_max-outside-schedule", sample_config, setf("grid.t_max", 1000.0), "config.grid.t_max",
         ("1000.0", "1.0")),
    case("t_min-outside-schedule", sample_config, setf("grid.t_min", 0.0), "config.grid.t_min",
         ("0.0", "0.001")),
    case("linspace-more-steps-than-training-indices", sample_config,
         both(setf("solver.name", "ddim"), setf("grid.spacing", "linspace"), setf("nfe", 2000)), "config.grid",
         ("'linspace'", "2000 nodes", "N = 1000", "use fewer steps")),
    # the wrong entrypoint
    case("sample-config-to-run_sweep", gmm.get_config, lambda c: None, "config",
         ("runs sweep configs", "'sweep' section", "got a sample config"), runner=run_sweep, plan_raises=False),
]

SWEEP_CASES = [
    case("sweep-empty-solvers", sweep_config, setf("sweep.solvers", ()), "config.sweep.solvers",
         ("must be a non-empty tuple",)),
    case("sweep-empty-nfes", sweep_quick.get_config, setf("sweep.nfes", ()), "config.sweep.nfes",
         ("must be a non-empty tuple",)),
    case("sweep-duplicate-grids", sweep_config, setf("sweep.grids", ("logsnr", "karras", "logsnr")),
         "config.sweep.grids", ("duplicate entries", "('logsnr', 'karras', 'logsnr')")),
    case("sweep-duplicate-nfes", sweep_solvers.get_config, setf("sweep.nfes", (5, 10, 5)), "config.sweep.nfes",
         ("duplicate entries", "(5, 10, 5)")),
    case("sweep-unknown-solver", sweep_config, setf("sweep.solvers", ("ddim", "foo", "unipc")),
         "config.sweep.solvers[1]", ("'foo'", ALL_SOLVERS)),
    case("sweep-unknown-grid", sweep_quick.get_config, setf("sweep.grids", ("logsnr", "linear")),
         "config.sweep.grids[1]", ("'linear'", "'time_quadratic'")),
    case("sweep-negative-seed", sweep_config, setf("sweep.seeds", (0, -1)), "config.sweep.seeds[1]",
         ("[0, 2^31)", "got -1")),
    case("sweep-nfe-0", sweep_config, setf("sweep.nfes", (0,)), "config.sweep.nfes[0]",
         ("integer in [1, 100000]", "got 0")),
    case("sweep-order-no-solver-has", sweep_config, setf("sweep.orders", (7,)), "config.sweep.orders",
         ("none of the orders (7,)", "allowed orders for it: [1, 2, 3]")),
    case("sweep-one-order-no-solver-has", sweep_config, setf("sweep.orders", (2, 5)), "config.sweep.orders[1]",
         ("no solver in sweep.solvers has order 5",)),
    case("sweep-nfes-impossible-for-a-solver", sweep_config,
         both(setf("sweep.solvers", ("heun",)), setf("sweep.nfes", (4, 6))), "config.sweep.nfes",
         ("'heun'", "none of the NFEs (4, 6)", "grid.end='zero'")),
    case("sweep-nfe-impossible-for-every-solver", sweep_config,
         both(setf("sweep.solvers", ("heun", "dpm_solver")), setf("sweep.nfes", (4, 5))), "config.sweep.nfes[0]",
         ("NFE 4", "impossible for every solver")),
    case("sweep-options-for-absent-solver", sweep_config, solver_options(deis={"order": 2}),
         "config.sweep.solver_options.deis", ("not in sweep.solvers", "('ddim', 'dpm_solver_pp', 'unipc')")),
    case("sweep-options-unipc-bh3", sweep_config, solver_options(unipc={"variant": "bh3"}),
         "config.sweep.solver_options.unipc.variant", ("'bh3'", "'bh1'", "'bh2'")),
    case("sweep-options-unknown-key", sweep_config, solver_options(unipc={"foo": 1}),
         "config.sweep.solver_options.unipc.foo", ("unknown option of solver 'unipc'", "'variant'")),
    case("sweep-options-order-key", sweep_config, solver_options(unipc={"order": 3}),
         "config.sweep.solver_options.unipc.order", ("'order'",)),
    case("sweep-options-not-a-mapping", sweep_config, solver_options(unipc=3),
         "config.sweep.solver_options.unipc", ("mapping of options", "got 3")),
    case("sweep-nfes-with-a-string", sweep_config, set_raw("sweep.nfes", (5, "10")), "config.sweep.nfes",
         ("a tuple of integers", "(5, '10')")),
    case("sweep-solvers-a-string", sweep_config, set_raw("sweep.solvers", "ddim"), "config.sweep.solvers",
         ("a tuple of strings", "'ddim' (str)", "write ('ddim',) for one value")),
    # in code an axis is a tuple (ConfigDict refuses `cfg.sweep.nfes = 5` itself; a plain dict gets our error)
    case("sweep-nfes-a-scalar", sweep_config, set_raw("sweep.nfes", 5), "config.sweep.nfes",
         ("a tuple of integers", "5 (int)", "write (5,) for one value")),
    case("sweep-options-bool-as-string", sweep_config, solver_options(unipc={"corrector": "false"}),
         "config.sweep.solver_options.unipc.corrector", ("True or False", "'false' (str)")),
    case("sweep-options-float-as-string", sweep_config, solver_options(dpm_solver_pp={"max_step": "2.0"}),
         "config.sweep.solver_options.dpm_solver_pp.max_step", ("a real number (int or float) or None", "'2.0' (str)")),
    case("sweep-missing-nfes", sweep_config, delete("sweep.nfes"), "config.sweep.nfes",
         ("missing required field", "a tuple of integers")),
    case("sweep-with-solver-section", sweep_config,
         add_field("solver", ml_collections.ConfigDict(dict(name="ddim"))), "config.solver",
         ("unknown field", "'sweep'", "'afs'")),
    case("sweep-with-grid-spacing", sweep_config, add_field("grid.spacing", "logsnr"), "config.grid.spacing",
         ("unknown field", "allowed fields of config.grid: ['end', 'file', 'rho', 't_max', 't_min']")),
    case("sweep-linspace-too-many-steps", sweep_config,
         both(setf("sweep.solvers", ("ddim",)), setf("sweep.grids", ("linspace",)), setf("sweep.nfes", (2000,))),
         "config.sweep.grids[0]", ("'linspace'", "2000 nodes", "use fewer steps")),
    case("sweep-config-to-run_sample", sweep_quick.get_config, lambda c: None, "config",
         ("runs sample configs", "no 'sweep' section", "got a sweep config"), runner=run_sample, plan_raises=False),
]


class _Replace(NamedTuple):
    """A mutator's result that replaces the config whatever it is (None, a list ...)."""
    value: object


def _build(c: Case):
    cfg = c.base()
    out = c.mutate(cfg)
    if isinstance(out, _Replace):
        return out.value
    return cfg if out is None else out


def _kind(cfg) -> str:
    return "sweep" if isinstance(cfg, (dict, ml_collections.ConfigDict)) and "sweep" in cfg else "sample"


@pytest.mark.parametrize("base", [sample_config, sweep_config, gmm.get_config, sweep_quick.get_config,
                                  sweep_solvers.get_config], ids=lambda f: f"{f.__module__}.{f.__name__}")
def test_unmodified_bases_are_valid(base):
    """Every case below fails because of its mutation, not because of its base."""
    plan = make_plan(base())
    assert plan.rows and all(r["hash"] for r in plan.rows)
    assert plan.kind == _kind(base())


@pytest.mark.parametrize("c", SAMPLE_CASES + SWEEP_CASES)
def test_bad_config_is_refused_before_any_work(c: Case, tmp_path):
    cfg = _build(c)
    if c.plan_raises:
        with pytest.raises(ConfigError) as plan_err:
            make_plan(cfg)
        assert plan_err.value.path == c.path
    runner = c.runner or (run_sweep if _kind(cfg) == "sweep" else run_sample)
    workdir = tmp_path / "w"
    with pytest.raises(ConfigError) as err:
        runner(cfg, str(workdir))
    e = err.value
    msg = str(e)
    assert isinstance(e, ValueError)
    assert e.path == c.path
    assert msg.startswith(c.path + ": "), msg
    assert "\n" not in msg, "one message, one line"
    for s in c.contains:
        assert s in msg, f"{s!r} not in {msg!r}"
    if c.plan_raises:
        assert str(plan_err.value) == msg, "make_plan and the entrypoint report the same error"
    assert not workdir.exists()
    assert list(tmp_path.iterdir()) == []


def _snapshot(root) -> dict:
    """relative path -> (bytes, mtime_ns) of every file; directories with their mtimes."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        rel = os.path.relpath(dirpath, root)
        out[rel + "/"] = os.stat(dirpath).st_mtime_ns
        for name in filenames:
            p = os.path.join(dirpath, name)
            with open(p, "rb") as f:
                out[os.path.join(rel, name)] = (f.read(), os.stat(p).st_mtime_ns)
    return out


@pytest.mark.parametrize("runner,mutate,path", [
    (run_sample, both(setf("solver.name", "unipc"), setf("solver.order", 4)), "config.solver.order"),
    (run_sample, setf("n_samples", -5), "config.n_samples"),
    (run_sweep, setf("sweep.nfes", (0,)), "config.sweep.nfes[0]"),
], ids=["sample-order", "sample-n_samples", "sweep-nfes"])
def test_bad_config_leaves_an_existing_workdir_untouched(runner, mutate, path, tmp_path):
    workdir = tmp_path / "w"
    (workdir / "cache").mkdir(parents=True)
    (workdir / "notes.txt").write_text("my notes\n")
    (workdir / "cache" / "ref.npy").write_bytes(b"\x93NUMPY fake")
    for p in (workdir / "notes.txt", workdir / "cache" / "ref.npy", workdir / "cache", workdir):
        os.utime(p, ns=(1_000_000_000_000_000_000, 1_000_000_000_000_000_000))  # a fixed time in 2001
    before = _snapshot(workdir)
    cfg = (sweep_quick.get_config if runner is run_sweep else gmm.get_config)()
    mutate(cfg)
    with pytest.raises(ConfigError) as err:
        runner(cfg, str(workdir))
    assert err.value.path == path
    assert _snapshot(workdir) == before
    assert sorted(os.listdir(workdir)) == ["cache", "notes.txt"]


# ---------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------
def cli(module: str, *args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    env = dict(os.environ, JAX_PLATFORMS="cpu",
               PYTHONPATH=os.pathsep.join(p for p in (REPO, os.environ.get("PYTHONPATH")) if p))
    return subprocess.run([sys.executable, "-m", f"experiments.{module}", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)


def _error_lines(stderr: str) -> list:
    return [line for line in stderr.splitlines() if line.startswith("error: ")]


# (module, overrides, expected exit code or None for "any non-zero", substrings of stderr)
CLI_CASES = [
    pytest.param("sample", ["--config.solver.name=foo"], 2, ["error: config.solver.name: ", "'foo'", "'unipc'"],
                 id="unknown-solver"),
    pytest.param("sample", ["--config.solver.order=5"], 2,
                 ["error: config.solver.order: ", "no order 5", "[1, 2, 3]"], id="bad-order"),
    pytest.param("sample", ["--config.nfe=0"], 2, ["error: config.nfe: ", "got 0"], id="nfe-0"),
    pytest.param("sample", ["--config.n_samples=-5"], 2, ["error: config.n_samples: ", "got -5"],
                 id="n_samples-negative"),
    pytest.param("sweep", ["--config.sweep.nfes=(0,)"], 2, ["error: config.sweep.nfes[0]: ", "got 0"],
                 id="sweep-nfes-0"),
    # overrides that do not parse as the field's type: our line, before absl's parser sees them
    pytest.param("sample", ["--config.nfe=abc"], 2,
                 ["error: config.nfe: cannot parse 'abc'", "as an integer; allowed: an integer"], id="nfe-wrong-type"),
    pytest.param("sample", ["--config.n_samples=1.5"], 2,
                 ["error: config.n_samples: cannot parse '1.5'", "an integer"], id="n_samples-float"),
    pytest.param("sample", ["--config.solver.afs=maybe"], 2,
                 ["error: config.solver.afs: cannot parse 'maybe'", "true or false"], id="afs-maybe"),
    pytest.param("sample", ["--config.grid=5"], 2, ["error: config.grid: is a section"], id="section-as-value"),
    pytest.param("sample", ["--config.n_samples=10000000000000"], 2,
                 ["error: config.n_samples: ", "at most 1073741824"], id="n_samples-10**13"),
    # on the command line a scalar is a 1-tuple (config_flags): nfes=4 is (4,), impossible for heun
    pytest.param("sweep", ["--config.sweep.nfes=4", "--config.sweep.solvers=heun"], 2,
                 ["error: config.sweep.nfes: ", "none of the NFEs (4,)"], id="sweep-scalar-is-a-1-tuple"),
    pytest.param("sample", ["--nosuchflag=1"], 2, ["error: command line: ", "nosuchflag"], id="unknown-flag"),
    # the training entrypoint shares the override checks (experiments/_main.py)
    pytest.param("train", ["--config.train.num_steps=abc"], 2,
                 ["error: config.train.num_steps: cannot parse 'abc'", "an integer"], id="train-num_steps-abc"),
    pytest.param("train", ["--config.optim.learning_rate=fast"], 2,
                 ["error: config.optim.learning_rate: cannot parse 'fast'", "a number"], id="train-lr-fast"),
    pytest.param("sample", ["--config.foo=1"], 2, ["error: config.foo: unknown field", "'nfe'"],
                 id="unknown-override"),
    pytest.param("sample", ["--config.grid.foo=1"], 2, ["error: config.grid.foo: unknown field", "'spacing'"],
                 id="unknown-nested-override"),
]


@pytest.mark.parametrize("module,overrides,code,expected", CLI_CASES)
def test_cli_refuses_bad_config(module, overrides, code, expected, tmp_path):
    workdir = tmp_path / "w"
    config = {"sample": "configs/gmm.py", "sweep": "configs/sweep_quick.py", "train": "configs/train_gmm2d.py"}[module]
    r = cli(module, f"--config={config}", f"--workdir={workdir}", *overrides)
    assert r.returncode != 0
    if code is not None:
        assert r.returncode == code, r.stderr[-2000:]
        assert len(_error_lines(r.stderr)) == 1, r.stderr[-2000:]
    for s in expected:
        assert s in r.stderr, f"{s!r} not in stderr:\n{r.stderr[-2000:]}"
    assert not workdir.exists()
    assert list(tmp_path.iterdir()) == []


def test_cli_requires_workdir():
    r = cli("sample", "--config=configs/gmm.py", "--config.nfe=5")
    assert r.returncode == 2
    assert _error_lines(r.stderr) == ["error: workdir: missing: --workdir must have a value; allowed: --workdir=DIR "
                                      "(a local directory or gs://bucket/dir)"], r.stderr[-2000:]


def _workdir_case(kind: str, tmp_path):
    """(the --workdir value, the path that must stay as it is or absent, expected message parts)."""
    f = tmp_path / "a_file"
    f.write_text("not a directory\n")
    if kind == "empty":
        return "", None, ["is empty", "current directory"]
    if kind == "file":
        return str(f), f, ["is a file, not a directory"]
    if kind == "under-file":
        return str(f / "run"), f, [f"is under {f}, which is a file"]
    if kind == "not-writable":  # /proc/self refuses new entries, also to root
        return "/proc/self/samplax_run", None, ["/proc/self", "not writable"]
    if kind == "scheme":
        return "hf://user/repo/run", None, ["'hf://' is not supported", "gs://"]
    raise AssertionError(kind)


# every kind through the sample entrypoint; two through the sweep entrypoint (the same check)
@pytest.mark.parametrize("module,kind", [("sample", k) for k in ("empty", "file", "under-file", "not-writable",
                                                                 "scheme")] + [("sweep", "empty"),
                                                                               ("sweep", "under-file")])
def test_cli_refuses_a_bad_workdir(module, kind, tmp_path):
    value, keep, parts = _workdir_case(kind, tmp_path)
    before = keep.read_bytes() if keep else None
    config = "configs/gmm.py" if module == "sample" else "configs/sweep_quick.py"
    r = cli(module, f"--config={config}", f"--workdir={value}")
    assert r.returncode == 2, r.stderr[-2000:]
    (line,) = _error_lines(r.stderr)
    assert line.startswith("error: workdir: "), line
    for s in parts:
        assert s in line, (s, line)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file"]
    if keep:
        assert keep.read_bytes() == before
    assert not os.path.exists(os.path.join(REPO, "results.jsonl")), "an empty workdir must not mean the cwd"


@pytest.mark.parametrize("kind", ["empty", "file", "under-file", "not-writable", "scheme"])
def test_library_refuses_a_bad_workdir(kind, tmp_path):
    value, keep, parts = _workdir_case(kind, tmp_path)
    with pytest.raises(ConfigError) as err:
        run_sample(tiny_config(5), value)
    assert err.value.path == "workdir" and str(err.value).startswith("workdir: ")
    for s in parts:
        assert s in str(err.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file"]
    with pytest.raises(ConfigError, match="^workdir: must be a path"):
        run_sample(tiny_config(5), None)
    # a process that writes nothing (not process 0) checks only the name
    if kind in ("file", "under-file", "not-writable"):
        assert store.check_workdir(value, filesystem=False) is not None


CONFIG_FILES = {
    "returns-dict": ("def get_config():\n    return {'nfe': 5}\n", "get_config() returned dict"),
    "returns-None": ("def get_config():\n    return None\n", "get_config() returned NoneType"),
    "raises": ("def get_config():\n    raise RuntimeError('boom')\n", "get_config() raised RuntimeError: boom"),
    "does-not-parse": ("def get_config(:\n", "does not parse (line 1"),
    "no-get_config": ("x = 1\n", "has no get_config() function"),
    "raises-at-import": ("import no_such_module_samplax\n", "raised ModuleNotFoundError when loaded"),
    "missing": (None, "no such file"),
}


# one shared loader (experiments/_main.py): every case through sample, two through sweep and train
@pytest.mark.parametrize("module,name", [("sample", n) for n in sorted(CONFIG_FILES)]
                         + [(m, n) for m in ("sweep", "train") for n in ("returns-dict", "raises")])
def test_cli_refuses_a_bad_config_file(module, name, tmp_path):
    text, part = CONFIG_FILES[name]
    path = tmp_path / "my_config.py"
    if text is not None:
        path.write_text(text)
    workdir = tmp_path / "w"
    r = cli(module, f"--config={path}", f"--workdir={workdir}")
    assert r.returncode == 2, r.stderr[-2000:]
    (line,) = _error_lines(r.stderr)
    assert line.startswith(f"error: --config: {path}"), line
    assert part in line, line
    assert "Traceback" not in r.stderr
    assert not workdir.exists()


# ---------------------------------------------------------------------------------------
# Workdir conflicts
# ---------------------------------------------------------------------------------------
TINY = dict(n_samples=64, reference_steps=50, max_samples=64, sw_projections=16, save_samples=16)


def tiny_config(nfe: int, **fields):
    c = gmm.get_config()
    c.n_samples = TINY["n_samples"]
    c.nfe = nfe
    c.metrics.reference_steps = TINY["reference_steps"]
    c.metrics.max_l2_samples = TINY["max_samples"]
    c.metrics.max_sw_samples = TINY["max_samples"]
    c.metrics.sw_projections = TINY["sw_projections"]
    c.metrics.save_samples = TINY["save_samples"]
    for k, v in fields.items():
        c[k] = v
    return c


def tiny_cli_overrides(nfe: int) -> list:
    return [f"--config.n_samples={TINY['n_samples']}", f"--config.nfe={nfe}",
            f"--config.metrics.reference_steps={TINY['reference_steps']}",
            f"--config.metrics.max_l2_samples={TINY['max_samples']}",
            f"--config.metrics.max_sw_samples={TINY['max_samples']}",
            f"--config.metrics.sw_projections={TINY['sw_projections']}",
            f"--config.metrics.save_samples={TINY['save_samples']}"]


def _rows(workdir) -> list:
    return store.read_rows(os.path.join(workdir, store.RESULTS_FILE))


def _results_bytes(workdir) -> bytes:
    with open(os.path.join(workdir, store.RESULTS_FILE), "rb") as f:
        return f.read()


def test_rerun_conflict_same_config_and_restart(tmp_path):
    w = str(tmp_path / "w")

    # 1. a tiny real run
    rows = run_sample(tiny_config(5), w)
    assert len(rows) == 1 and rows[0]["nfe"] == 5 and rows[0]["n_samples"] == 64
    assert len(_rows(w)) == 1
    first = _results_bytes(w)

    # 2. a different NFE: a sample workdir accumulates runs (each row's hash names all its
    #    settings); config.json is the latest config, config_history.jsonl has both
    other = run_sample(tiny_config(6), w)
    assert len(other) == 1 and other[0]["nfe"] == 6 and other[0]["hash"] != rows[0]["hash"]
    assert sorted(x["nfe"] for x in _rows(w)) == [5, 6]
    with open(os.path.join(w, store.CONFIG_HISTORY_FILE)) as f:
        assert [json.loads(line)["identity"]["nfe"] for line in f] == [5, 6]
    with open(os.path.join(w, "results.md")) as f:
        report = f.read()
    assert "| 5 |" in report.replace("NFE 5", "| 5 |") and ("NFE 6" in report or "| 6 |" in report)
    first = _results_bytes(w)

    # 3. a sweep in a sample workdir: refused, nothing changes
    before = _snapshot(w)
    sw = sweep_config()
    sw.sweep.solvers, sw.sweep.grids, sw.sweep.nfes, sw.n_samples = ("ddim",), ("logsnr",), (5,), 64
    with pytest.raises(WorkdirConflict) as err:
        run_sweep(sw, w)
    assert "--restart" in str(err.value) and w in str(err.value)
    assert _snapshot(w) == before

    # 4. the same config again: no conflict, the row is skipped by its hash (not recomputed)
    again = run_sample(tiny_config(5), w)
    assert len(again) == 1 and again[0]["hash"] == rows[0]["hash"] and again[0]["time"] == rows[0]["time"]
    assert len(_rows(w)) == 2
    assert _results_bytes(w) == first

    # 5. a field that does not change results (chunk_size): no conflict, no new row
    other_chunk = run_sample(tiny_config(5, chunk_size=32), w)
    assert [x["hash"] for x in other_chunk] == [rows[0]["hash"]]
    assert _results_bytes(w) == first

    # 6. restart=True starts over: only the new row remains, the config is the new one
    new = run_sample(tiny_config(6), w, restart=True)
    assert len(new) == 1 and new[0]["nfe"] == 6
    saved_rows = _rows(w)
    assert [x["nfe"] for x in saved_rows] == [6] and saved_rows[0]["hash"] != rows[0]["hash"]
    with open(os.path.join(w, store.CONFIG_FILE)) as f:
        assert json.load(f)["identity"]["nfe"] == 6
    # the references live in the shared cache (samplax.experiment.cache), not in the workdir
    from samplax.experiment import cache as refcache

    assert not os.path.exists(os.path.join(w, "cache"))
    assert any(n.startswith("ode_ref_") for n in os.listdir(os.path.join(refcache.cache_dir(), "references")))


def test_sweep_workdir_refuses_a_changed_sweep(tmp_path):
    """A sweep's workdir is that sweep: a changed axis is refused, in process and through
    the command line (one line naming the field and both values, exit 2), nothing changes."""
    w = str(tmp_path / "w")

    def tiny_sweep(nfes):
        c = sweep_config()
        c.sweep.solvers, c.sweep.grids, c.sweep.nfes = ("ddim",), ("logsnr",), nfes
        c.n_samples, c.metrics.reference_steps = 64, TINY["reference_steps"]
        c.metrics.max_l2_samples = c.metrics.max_sw_samples = TINY["max_samples"]
        c.metrics.sw_projections, c.metrics.save_samples = TINY["sw_projections"], TINY["save_samples"]
        return c

    run_sweep(tiny_sweep((5,)), w)
    before = _snapshot(w)
    with pytest.raises(WorkdirConflict) as err:
        run_sweep(tiny_sweep((6,)), w)
    assert "config.sweep.nfes: saved [5], now [6]" in str(err.value) and "--restart" in str(err.value)
    assert _snapshot(w) == before
    saved = json.load(open(os.path.join(w, store.CONFIG_FILE)))["config"]
    r = cli("sweep", "--config=configs/sweep_quick.py", f"--workdir={w}", "--config.sweep.solvers=('ddim',)",
            "--config.sweep.grids=('logsnr',)", "--config.sweep.nfes=(6,)", "--config.n_samples=64",
            f"--config.metrics.reference_steps={saved['metrics']['reference_steps']}",
            f"--config.metrics.max_l2_samples={TINY['max_samples']}",
            f"--config.metrics.max_sw_samples={TINY['max_samples']}",
            f"--config.metrics.sw_projections={TINY['sw_projections']}",
            f"--config.metrics.save_samples={TINY['save_samples']}")
    assert r.returncode == 2, r.stderr[-2000:]
    lines = _error_lines(r.stderr)
    assert len(lines) == 1 and "config.sweep.nfes: saved [5], now [6]" in lines[0], r.stderr
    assert _snapshot(w) == before


def test_results_without_saved_config_is_refused(tmp_path):
    w = tmp_path / "w"
    w.mkdir()
    (w / store.RESULTS_FILE).write_text('{"hash": "abc", "nfe": 5}\n')
    before = _snapshot(w)
    with pytest.raises(WorkdirConflict) as err:
        run_sample(tiny_config(5), str(w))
    assert f"has {store.RESULTS_FILE} but no {store.CONFIG_FILE}" in str(err.value)
    assert "--restart" in str(err.value)
    assert _snapshot(w) == before


def test_validation_error_wins_over_conflict(tmp_path):
    """A bad config in a conflicting workdir reports the config error (validation comes first)."""
    w = tmp_path / "w"
    w.mkdir()
    (w / store.RESULTS_FILE).write_text('{"hash": "abc", "nfe": 5}\n')
    before = _snapshot(w)
    with pytest.raises(ConfigError) as err:
        run_sample(tiny_config(0), str(w))
    assert err.value.path == "config.nfe"
    assert _snapshot(w) == before
