"""The resumable search run (samplax.experiment.search, experiments/search.py).

The strategies and the search space of samplax.search are stood in for by a tiny
protocol-conforming pair defined here (registered as strategy "tiny"), so these tests
check the runner itself: rows, checkpoints, kill -9 resume to the same best, the best
schedule file and its held-out evaluation, baselines equal to the dedicated solvers,
config errors naming the field.
"""
import json
import os
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from samplax.experiment import WorkdirConflict
from samplax.experiment import search
from samplax.experiment.config import ConfigError
from samplax.experiment.results import read_rows
from samplax.solvers.schedule import SolverSchedule, load_schedule

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


# ---------------------------------------------------------------------------------------
# A tiny search space and strategy that follow PROTOCOL.md
# ---------------------------------------------------------------------------------------
class TinySpace:
    """Genotype: logits of the logSNR increments and per-step orders; data prediction,
    "dpmsolver" differences, no corrector."""

    def __init__(self, noise_schedule, nfe, end="zero", afs=False, max_order=3, searchable=()):
        self.noise_schedule, self.nfe, self.end, self.afs, self.max_order = noise_schedule, nfe, end, afs, max_order
        self.n_steps = nfe - (end == "denoise") + bool(afs)
        self.n_nodes = self.n_steps if end == "zero" else self.n_steps + 1

    def _lams(self, dtype):
        ns = self.noise_schedule
        return ns.lambda_(jnp.asarray(ns.t_max, dtype)), ns.lambda_(jnp.asarray(ns.t_min, dtype))

    def init(self, key):
        k1, k2 = jax.random.split(key)
        return dict(logits=0.5 * jax.random.normal(k1, (self.n_nodes - 1,)),
                    order=jax.random.randint(k2, (self.n_steps,), 1, self.max_order + 1))

    def decode(self, g, dtype=None):
        logits = jnp.asarray(g["logits"])
        dtype = dtype or logits.dtype
        hi, lo = self._lams(dtype)
        frac = jnp.cumsum(jax.nn.softmax(logits.astype(dtype)))[:-1]
        ns = self.noise_schedule
        times = jnp.concatenate([jnp.asarray(ns.t_max, dtype)[None], ns.t_from_lambda(hi + (lo - hi) * frac).astype(dtype),
                                 jnp.asarray(ns.t_min, dtype)[None]])
        n = self.n_steps
        order = jnp.minimum(jnp.clip(g["order"], 1, self.max_order), jnp.arange(1, n + 1)).astype(jnp.int32)
        zeros = jnp.zeros((n,), jnp.int32)
        return SolverSchedule(times=times, order=order, prediction=zeros, derivative=zeros,
                              corrector=jnp.zeros((n,), bool), end=self.end, afs=self.afs)

    def from_schedule(self, sched):
        lam = self.noise_schedule.lambda_(jnp.asarray(sched.times, jnp.float32)[: self.n_nodes])
        logits = jnp.log(jnp.diff(lam))
        return dict(logits=logits - jnp.mean(logits), order=jnp.asarray(sched.order, jnp.int32))


def tiny_strategy(space, score_fn, population=8, seeds=None):
    """Each step: the best so far (re-evaluated), mutations of it and fresh random
    candidates; ``seeds`` (a batch) make the first best."""

    def init(key):
        best = space.init(key) if seeds is None else jax.tree.map(lambda a: a[0], seeds)
        return dict(best=best, best_score=jnp.asarray(jnp.inf, jnp.float32), n_eval=jnp.asarray(0, jnp.int32))

    def step(state, key):
        k1, k2 = jax.random.split(key)
        half = population // 2
        fresh = jax.vmap(space.init)(jax.random.split(k1, population - half))
        noise = 0.3 * jax.random.normal(k2, (half - 1, state["best"]["logits"].shape[0]))
        mutants = dict(logits=state["best"]["logits"][None] + noise,
                       order=jnp.broadcast_to(state["best"]["order"], (half - 1,) + state["best"]["order"].shape))
        cand = jax.tree.map(lambda b, m, f: jnp.concatenate([b[None], m, f]), state["best"], mutants, fresh)
        rec = dict(score_fn(cand))
        score = jnp.where(jnp.isfinite(rec["score"]), rec["score"], jnp.inf).astype(jnp.float32)
        i = jnp.argmin(score)
        better = score[i] < state["best_score"]
        best = jax.tree.map(lambda old, c: jnp.where(better, c[i], old), state["best"], cand)
        new = dict(best=best, best_score=jnp.minimum(score[i], state["best_score"]),
                   n_eval=state["n_eval"] + population)
        return new, dict(rec, genotypes=cand, score=score)

    return search_strategy(init, step, lambda s: (s["best"], s["best_score"]), lambda s: s["n_eval"])


def search_strategy(init, step, best, evaluations):
    try:
        from samplax.search.strategies import Strategy
    except ImportError:
        from typing import Callable, NamedTuple

        class Strategy(NamedTuple):
            init: Callable
            step: Callable
            best: Callable
            evaluations: Callable
    return Strategy(init, step, best, evaluations)


def _register():
    search.STRATEGIES["tiny"] = search.StrategyEntry(tiny_strategy, space=TinySpace)


def _cli():
    """``python -c 'import test_search_run as t; t._cli()' --config=... --workdir=...``"""
    _register()
    from experiments import search as entry

    entry.cli()


QUICK = {"search.strategy": "tiny", "search.iterations": 8, "search.population": 4, "checkpoint_every": 2,
         "search.n_search_samples": 32, "search.n_eval_samples": 64, "reference.exact_steps": 100}


def _config(**changes):
    from configs import search_quick

    _register()
    c = search_quick.get_config()
    for k, v in dict(QUICK, **changes).items():
        node = c
        *parents, leaf = k.split(".")
        for p in parents:
            node = node[p]
        node[leaf] = v
    return c


def _cmd(workdir, **changes):
    return [sys.executable, "-c", "import test_search_run as t; t._cli()", "--config=configs/search_quick.py",
            f"--workdir={workdir}", *[f"--config.{k}={v}" for k, v in dict(QUICK, **changes).items()]]


def _env():
    return dict(os.environ, JAX_PLATFORMS="cpu",
                PYTHONPATH=os.pathsep.join([ROOT, os.path.join(ROOT, "tests"), os.environ.get("PYTHONPATH", "")]))


def _rows(wd):
    rows = read_rows(os.path.join(wd, "results.jsonl"))
    return sorted(rows, key=lambda r: (r["iteration"], r["index"]))


def _best(wd):
    with open(os.path.join(wd, search.BEST_FILE)) as f:
        d = json.load(f)
    return d["meta"]["score"], {k: d[k] for k in ("times", "order", "prediction", "derivative", "corrector")}


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory):
    wd = str(tmp_path_factory.mktemp("search") / "ref")
    summary = search.run_search(_config(), wd)
    return wd, summary


# ---------------------------------------------------------------------------------------
# Config errors: one ConfigError naming the field, nothing built
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("field,value,match", [
    ("search.strategy", "nope", r"config.search.strategy: unknown strategy 'nope'; allowed: \["),
    ("search.iterations", 0, r"config.search.iterations: must be a positive integer"),
    ("search.searchable", ("times", "speed"), r"config.search.searchable\[1\]: unknown field 'speed'"),
    ("search.metric", "fid", r"config.search.metric: unknown value 'fid'"),
    ("end", "t_min", r"config.end: unknown value 't_min'; allowed: \['denoise', 'zero'\]"),
    ("search.evolution.parents", 100, None),
    ("search.eval_prior", "problem", None),
    ("nfe", 0, r"config.nfe: must be an integer in \[1,"),
])
def test_bad_config_fields_are_refused_naming_the_field(field, value, match):
    c = _config(**{field: value})
    if field == "search.evolution.parents":
        c.search.strategy = "evolution"
        match = r"config.search.evolution.parents: must be <= config.search.population \(4\), got 100"
    if field == "search.eval_prior":
        c.model.name = "digits"
        match = r"config.search.eval_prior: 'problem' .* not model 'digits'; allowed: 'key'"
    with pytest.raises(ConfigError, match=match):
        search.validate_search(c)


def test_the_command_line_refuses_a_bad_value_in_one_line(tmp_path):
    """Validation runs before the model is built: exit status 2, one line, nothing written."""
    bad = subprocess.run(_cmd(str(tmp_path / "bad"), **{"search.strategy": "nope"}), cwd=ROOT, env=_env(),
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines()[-1].startswith("error: config.search.strategy: unknown strategy 'nope'")
    assert not os.path.exists(str(tmp_path / "bad"))


def test_the_gradient_strategy_takes_only_mean_l2():
    c = _config(**{"search.strategy": "gradient", "search.metric": "max_l2"})
    with pytest.raises(ConfigError, match="config.search.metric: the 'gradient' strategy differentiates 'mean_l2'"):
        search.validate_search(c)


# ---------------------------------------------------------------------------------------
# One run: rows, best schedule, held-out evaluation, baselines
# ---------------------------------------------------------------------------------------
def test_rows_best_schedule_and_baselines(reference_run):
    wd, sm = reference_run
    rows = _rows(wd)
    it, pop = QUICK["search.iterations"], QUICK["search.population"]
    assert [(r["iteration"], r["index"]) for r in rows] == [(i, j) for i in range(it) for j in range(pop)]
    assert sorted(r["evaluation"] for r in rows) == list(range(it * pop))
    scores = np.asarray([r["score"] for r in rows], np.float64)
    assert sm["score"] == pytest.approx(scores.min(), rel=1e-6)       # the best is the best row
    assert sm["evaluations"] == it * pop
    # the search was seeded with DPM-Solver++(2M): its row is the baseline's search-set error
    dpm = sm["baselines_search"]["dpm_solver_pp o2"]["mean_l2"]
    assert rows[0]["score"] == pytest.approx(dpm, rel=2e-5)
    assert sm["score"] <= rows[0]["score"]

    # the file loads, and evaluating it again on the held-out points gives its recorded metrics
    st = search.setup(_config())
    sched = load_schedule(os.path.join(wd, search.BEST_FILE), st.loaded.schedule, nfe=5)
    again = search.evaluate_schedule(st.loaded.model, st.loaded.schedule, sched, st.x_eval, st.ref_eval, st.loaded.gmm)
    assert again["mean_l2"] == pytest.approx(sm["eval"]["mean_l2"], rel=1e-6)
    assert again["max_l2"] == pytest.approx(sm["eval"]["max_l2"], rel=1e-6)

    # the baselines are the dedicated solvers: DPM-Solver++(2M) and UniPC-bh2(2) on the logSNR grid
    from samplax.solvers import dpm_solver_pp, sample, unipc
    from samplax.timesteps import time_grid

    grid = time_grid(st.loaded.schedule, 5, "logsnr", end="zero", dtype=jnp.float32)
    plain = dict(max_step_ratio=None, max_step=None)  # the baselines are the solvers without the safeguard
    for name, solver in (("dpm_solver_pp o2", dpm_solver_pp(order=2, **plain)),
                         ("unipc o2", unipc(order=2, variant="bh2", **plain))):
        x0, _ = jax.jit(lambda x: sample(solver, st.loaded.model, x, grid))(jnp.asarray(st.x_eval))
        err = np.linalg.norm(np.asarray(x0, np.float64) - st.ref_eval, axis=-1).mean()
        assert sm["baselines"][name]["mean_l2"] == pytest.approx(err, rel=1e-4), name
    # held-out points are not the search points
    assert not np.any(np.isclose(st.x_eval[:, None, :], st.x_search[None], atol=1e-6).all(-1))
    for f in (search.BEST_PNG, search.PROGRESS_PNG, search.SUMMARY_MD, search.SUMMARY_JSON):
        assert os.path.getsize(os.path.join(wd, f)) > 0


def test_a_rerun_resumes_and_a_changed_config_is_refused(reference_run, tmp_path):
    wd, sm = reference_run
    again = search.run_search(_config(checkpoint_every=3), wd)   # how often to save is not identity
    assert again["resumed_from"] == QUICK["search.iterations"] and again["score"] == sm["score"]
    with pytest.raises(WorkdirConflict, match=r"config.nfe: saved 5, now 6"):
        search.run_search(_config(nfe=6), wd)


# ---------------------------------------------------------------------------------------
# kill -9 at any moment, rerun: the rows and the best of an uninterrupted run
# ---------------------------------------------------------------------------------------
def test_kill_9_and_rerun_gives_the_uninterrupted_best(reference_run, tmp_path):
    ref_wd, ref = reference_run
    wd = str(tmp_path / "killed")
    path = os.path.join(wd, "results.jsonl")
    p = subprocess.Popen(_cmd(wd), cwd=ROOT, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    at = 4 * QUICK["search.population"]  # rows of 4 iterations written: checkpoint 2 exists
    try:
        t0 = time.monotonic()
        while time.monotonic() - t0 < 120:
            assert p.poll() is None, p.stderr.read().decode()[-2000:]
            if os.path.exists(path) and open(path, "rb").read().count(b"\n") >= at:
                break
            time.sleep(0.01)
        os.kill(p.pid, signal.SIGKILL)
        p.wait()
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert p.returncode == -signal.SIGKILL
    assert len(_rows(wd)) < QUICK["search.iterations"] * QUICK["search.population"]
    out = subprocess.run(_cmd(wd), cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "search tiny on gmm2d at NFE 5" in out.stdout          # the closing paragraph
    with open(os.path.join(wd, search.SUMMARY_JSON)) as f:
        assert json.load(f)["resumed_from"] >= 2
    assert _best(wd) == _best(ref_wd)                              # same best score and schedule, bitwise
    strip = lambda rows: [{k: v for k, v in r.items()} for r in rows]  # noqa: E731
    assert strip(_rows(wd)) == strip(_rows(ref_wd))                # every row once, the same numbers


# ---------------------------------------------------------------------------------------
# The real strategies (samplax.search), when installed
# ---------------------------------------------------------------------------------------
def test_the_registered_random_search_runs_and_keeps_its_seeded_baseline(tmp_path):
    pytest.importorskip("samplax.search.strategies")
    c = _config(**{"search.strategy": "random", "search.iterations": 2, "search.population": 4})
    sm = search.run_search(c, str(tmp_path / "random"))
    rows = _rows(str(tmp_path / "random"))
    assert len(rows) == 8 and sm["score"] == pytest.approx(min(r["score"] for r in rows), rel=1e-6)
    # seeded with both baselines: the best is at most the better one on the search points
    assert sm["score"] <= min(v["mean_l2"] for v in sm["baselines_search"].values()) * (1 + 2e-5)
