"""Search throughput: solver schedules evaluated per second (gmm2d, 1024 samples, NFE 5).

A schedule evaluation = sample 1024 start points with one DPM-Solver++(2M) table
on random monotone time points (end at sigma = 0, so 5 steps = 5 model
evaluations, float32) and reduce to a score (mean L2 to a fixed reference).
Rates after compilation:

* (a) ``run_table`` vmapped over P random tables per call (P = 256, 1024); the
  tables are built inside the call under ``vmap`` from the times, either with
  ``dpm_solver_pp(order=2).table(grid, schedule)`` (one view, history 2) or with
  ``schedule_table(constant_schedule(times, order=2))`` (both views, history 3:
  the search-space table);
* (b) a Python loop over one jitted call taking the times as an argument
  (calls dispatched back to back, one block at the end);
* (c) a re-jit per grid (the times a constant): a few only.

Both XLA flag settings, each in its own process: the default and
``XLA_FLAGS=--xla_cpu_experimental_ynn_fusion_type=`` (YNNPACK fusions off).
Medians over repeats, the rates of one process interleaved.

    python -m benchmarks.search_throughput

Writes docs/benchmarks/search_throughput.md (or --out) and a .json next to it.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

from benchmarks import _common as C

MODULE = "benchmarks.search_throughput"
PROBLEM = "gmm2d"
N_SAMPLES = 1024
NFE = 5
TARGET = 5000.0
NO_YNN = {"xla_cpu_experimental_ynn_fusion_type": ""}  # per-program compiler option (CPU)
SETTINGS = {"default": None, "ynn_off": "--xla_cpu_experimental_ynn_fusion_type="}


def _log(msg):
    print(msg, file=sys.stderr, flush=True)


def worker(args):
    import jax
    import jax.numpy as jnp

    import samplax as sx
    from samplax.solvers.schedule import constant_schedule, schedule_table
    from samplax.solvers.unified import run_table

    gmm, schedule, info = sx.load_problem(PROBLEM, dtype=jnp.float32)
    model = gmm.model(schedule)
    x = jnp.asarray(sx.problem_start_points(info, N_SAMPLES), jnp.float32)
    solver = sx.get_solver("dpm_solver_pp", order=2, max_step_ratio=None, max_step=None)
    t_max, t_min = float(schedule.t_max), float(schedule.t_min)
    g0 = sx.time_grid(schedule, NFE, "logsnr", end="zero", dtype=jnp.float32)
    ref = run_table(model, x, solver.table(g0, schedule))[0]

    def random_times(key, p):
        u = jnp.sort(jax.random.uniform(key, (p, NFE - 1), jnp.float32, 0.02, 0.98), axis=1)[:, ::-1]
        return jnp.concatenate([jnp.full((p, 1), t_max, jnp.float32), t_min + u * (t_max - t_min)], 1)

    def table_solver(times):
        return solver.table(constant_schedule(times, order=2).grid(schedule, jnp.float32), schedule)

    def table_schedule(times):
        return schedule_table(constant_schedule(times, order=2), schedule, jnp.float32)

    def score(tab):
        x0 = run_table(model, x, tab, diagnostics=False)[0]
        return jnp.mean(jnp.linalg.norm(x0 - ref, axis=-1))

    def batched(make):
        return jax.jit(jax.vmap(lambda t: score(make(t))))

    key = jax.random.PRNGKey(0)
    rates = {}
    progs = {}
    for name, make, p in (("(a) vmap solver table, P=256", table_solver, 256),
                          ("(a) vmap solver table, P=1024", table_solver, 1024),
                          ("(a) vmap schedule_table, P=256", table_schedule, 256),
                          ("(a) vmap schedule_table, P=1024", table_schedule, 1024)):
        times = random_times(key, p)
        f = batched(make).lower(times).compile()
        jax.block_until_ready(f(times))
        progs[name] = (f, times, p)
        if make is table_solver:  # YNNPACK fusions off for this program alone
            f = batched(make).lower(times).compile(compiler_options=NO_YNN)
            jax.block_until_ready(f(times))
            progs[name + " [no-ynn option]"] = (f, times, p)
    single = jax.jit(lambda t: score(table_solver(t)))
    loop_times = random_times(jax.random.PRNGKey(1), args.loop_calls)
    jax.block_until_ready(single(loop_times[0]))

    def run_loop():
        out = [single(t) for t in loop_times]
        jax.block_until_ready(out)
        return len(out)

    progs["(b) Python loop over one jitted call"] = (None, None, args.loop_calls)
    for name in progs:
        rates[name] = []
    for r in range(args.repeats):
        for name, (f, times, p) in progs.items():
            t0 = time.perf_counter()
            if f is None:
                run_loop()
            else:
                jax.block_until_ready(f(times))
            rates[name].append(p / (time.perf_counter() - t0))
    # (c): a new jit per grid (the times a constant), a few only.
    rejit = []
    for j in range(args.rejit):
        t = np.asarray(random_times(jax.random.PRNGKey(100 + j), 1)[0])
        t0 = time.perf_counter()
        jax.block_until_ready(jax.jit(lambda: score(table_solver(jnp.asarray(t))))())
        rejit.append(1.0 / (time.perf_counter() - t0))
    rates["(c) re-jit per grid"] = rejit
    with open(args.worker, "w") as fh:
        json.dump(dict(xla_flags=os.environ.get("XLA_FLAGS", ""), rates=rates), fh)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=os.path.join("docs", "benchmarks", "search_throughput.md"))
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--loop-calls", type=int, default=200, help="calls per measurement of (b)")
    ap.add_argument("--rejit", type=int, default=3, help="grids measured with a re-jit each (c)")
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        return worker(args)

    t_start = time.perf_counter()
    raw = C.run_flag_settings(MODULE, SETTINGS, ["--repeats", args.repeats, "--loop-calls", args.loop_calls,
                                                 "--rejit", args.rejit], log=_log)
    wall = time.perf_counter() - t_start
    names = list(raw["default"]["rates"])
    summary = {s: {n: float(np.median(raw[s]["rates"][n])) for n in names} for s in SETTINGS}
    rows = []
    for n in names:
        cells = [n]
        for s in SETTINGS:
            v = summary[s][n]
            cells.append(f"**{v:,.0f}**" if v >= TARGET else (f"{v:,.0f}" if v >= 10 else f"{v:.2f}"))
        rows.append(cells)
    machine = C.machine_info()
    command = C.command_line(MODULE)
    date = C.utc_now()
    md = "\n".join([
        "# Search throughput: schedules evaluated per second", "",
        C.machine_md(machine, command, date),
        f"* Runtime: {wall:.0f} s wall; each XLA flag setting in its own process (`ynn_off` = "
        f"`XLA_FLAGS={SETTINGS['ynn_off']}`). A shared 2-core machine: rates are medians over "
        f"{args.repeats} interleaved repeats, noisy in absolute terms.",
        f"* Problem: exact `{PROBLEM}` model, {N_SAMPLES} samples, NFE {NFE} (5 steps, sigma = 0 end), float32. "
        "One evaluation = a DPM-Solver++(2M) table on random monotone times (t_0 = t_max), `run_table` "
        "(diagnostics off), mean L2 to a fixed reference. Tables built inside the call, under vmap.",
        f"* (b) = {args.loop_calls} calls dispatched back to back, one block at the end; (c) = "
        f"{args.rejit} grids, each a fresh `jax.jit` (trace + compile + run). `[no-ynn option]` = the same "
        "program compiled with `compiler_options={'xla_cpu_experimental_ynn_fusion_type': ''}` (YNNPACK "
        "fusions off for that program alone, no environment variable).",
        f"* Target: >= {TARGET:,.0f} schedules/s (**bold** = met); compute limit about 5e4/s.",
        "",
        C.md_table(["method"] + [f"{s} (schedules/s)" for s in SETTINGS], rows, ["l"] + ["r"] * len(SETTINGS)),
        "",
    ])
    out_json = os.path.splitext(args.out)[0] + ".json"
    C.atomic_write_json(out_json, dict(meta=dict(command=command, date=date, machine=machine, problem=PROBLEM,
                                                 n_samples=N_SAMPLES, nfe=NFE, target=TARGET, settings=SETTINGS,
                                                 wall_s=wall, repeats=args.repeats),
                                       summary=summary, raw=raw))
    C.atomic_write_text(args.out, md + "\n")
    print(md)
    _log(f"wrote {args.out} and {out_json} ({wall:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
