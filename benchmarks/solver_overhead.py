"""Solver overhead: wall time per jitted sampling call relative to Euler at the same NFE.

Every solver runs the exact gmm64d model for NFE 10 on the time-quadratic grid
ending at sigma = 0 (AFS only where NFE 10 is otherwise impossible), at batch
size 1 (where the per-step scalar work and the scan dominate) and 4096 (where
the model evaluations dominate).  Programs are compiled first; then each
repeat times every solver once, round-robin (the starting solver rotates from
repeat to repeat), each call followed by block_until_ready.  Reported: the
median time per call and the median over repeats of time / Euler's time in
the same repeat (with its interquartile range).

    python -m benchmarks.solver_overhead

Writes docs/benchmarks/solver_overhead.md (or --out) and a .json next to it.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

from benchmarks import _common as C

MODULE = "benchmarks.solver_overhead"
PROBLEM = "gmm64d"
NFE = 10
SPACING = "time_quadratic"
END = "zero"
TARGET = 1.1  # every multistep solver: <= 1.1 x Euler

# (solver, options, kind); kind "multistep" rows carry the target.
SOLVERS = [
    ("euler", {}, "baseline"),
    ("ddim", {}, "multistep"),
    ("dpm_solver_multistep", {"order": 2}, "multistep"),
    ("dpm_solver_multistep", {"order": 3}, "multistep"),
    ("dpm_solver_pp", {"order": 2}, "multistep"),
    ("dpm_solver_pp", {"order": 3}, "multistep"),
    ("unipc", {"variant": "bh2", "order": 2}, "multistep"),
    ("unipc", {"variant": "bh2", "order": 3}, "multistep"),
    ("deis", {"order": 3}, "multistep"),
    ("ipndm", {"order": 3}, "multistep"),
    ("ipndm_v", {"order": 3}, "multistep"),
    ("heun", {}, "singlestep"),
    ("dpm_solver", {"order": 2}, "singlestep"),
    ("dpm_solver", {"order": 3}, "singlestep"),
    ("dpm_solver_pp_singlestep", {"order": 2}, "singlestep"),
    ("dpm_solver_pp_singlestep", {"order": 3}, "singlestep"),
    ("ddim_eta", {}, "sde"),
    ("sde_dpm_solver_pp_2m", {}, "sde"),
    ("euler_maruyama", {}, "sde"),
]


def label(name, opts):
    parts = [name] + [f"{k}={v}" for k, v in opts.items()]
    return " ".join(parts)


def _log(msg):
    print(msg, file=sys.stderr, flush=True)


def loadavg() -> str:
    try:
        with open("/proc/loadavg") as f:
            return " ".join(f.read().split()[:3])
    except OSError:
        return "n/a"


def build(schedule, gmm, x_T_full, batches):
    """Compiled programs: {(label, batch): (callable, args)} and the row metadata."""
    import jax
    import jax.numpy as jnp

    import samplax as sx

    progs, meta = {}, []
    key = jax.random.PRNGKey(0)
    for name, opts, kind in SOLVERS:
        solver, n_steps, afs = None, None, False
        for afs in (False, True):
            s = sx.get_solver(name, **opts, afs=afs)
            try:
                n_steps = sx.steps_for_nfe(s, NFE, END)
                solver = s
                break
            except ValueError:
                continue
        lab = label(name, opts)
        if solver is None:
            _log(f"skip {lab}: NFE {NFE} impossible with end={END!r}")
            continue
        grid = sx.time_grid(schedule, n_steps, SPACING, end=END)

        def run(x, g, k, grid=grid, solver=solver):
            x0, info = sx.sample(solver, g.model(schedule), x, grid, key=k if solver.stochastic else None)
            return x0

        fn = jax.jit(run)
        compile_s = {}
        for b in batches:
            x = jnp.asarray(x_T_full[:b], jnp.float32)
            t0 = time.perf_counter()
            compiled = fn.lower(x, gmm, key).compile()
            compile_s[b] = time.perf_counter() - t0
            for _ in range(2):  # warm-up
                out = jax.block_until_ready(compiled(x, gmm, key))
            if not np.all(np.isfinite(np.asarray(out))):
                _log(f"warning: {lab} at B={b} gives non-finite samples")
            progs[(lab, b)] = (compiled, (x, gmm, key))
        meta.append(dict(label=lab, solver=name, options=opts, kind=kind, afs=afs, nfe=NFE, n_steps=int(n_steps),
                         stochastic=bool(solver.stochastic), compile_s=compile_s))
        _log(f"compiled {lab} (n_steps={n_steps}, afs={afs})")
    return progs, meta


def time_batch(progs, labels, batch, repeats, target_s):
    """Round-robin timing.  Returns {label: array of per-call seconds, one per repeat}."""
    import jax

    # Calls per measurement so that one measurement lasts about target_s (>= 1).
    inner = {}
    for lab in labels:
        fn, args = progs[(lab, batch)]
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        dt = time.perf_counter() - t0
        inner[lab] = max(1, int(round(target_s / max(dt, 1e-7))))
    k = min(inner.values())  # the same count for every solver
    times = {lab: [] for lab in labels}
    for r in range(repeats):
        order = labels[r % len(labels):] + labels[:r % len(labels)]
        for lab in order:
            fn, args = progs[(lab, batch)]
            t0 = time.perf_counter()
            for _ in range(k):
                jax.block_until_ready(fn(*args))
            times[lab].append((time.perf_counter() - t0) / k)
    return {lab: np.asarray(v) for lab, v in times.items()}, k


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=os.path.join("docs", "benchmarks", "solver_overhead.md"),
                    help="markdown output path; the JSON goes next to it with the same stem")
    ap.add_argument("--repeats-small", type=int, default=20, help="repeats at B=1")
    ap.add_argument("--repeats-large", type=int, default=5, help="repeats at B=4096")
    ap.add_argument("--measure-ms", type=float, default=20.0,
                    help="target duration of one measurement (calls per measurement are chosen to reach it)")
    args = ap.parse_args(argv)

    t_start = time.perf_counter()
    import jax.numpy as jnp  # noqa: F401

    import samplax as sx

    load_start = loadavg()
    gmm, schedule, info = sx.load_problem(PROBLEM)
    x_T = sx.problem_start_points(info)
    batches = (1, x_T.shape[0])
    repeats = {1: args.repeats_small, x_T.shape[0]: args.repeats_large}
    progs, meta = build(schedule, gmm, x_T, batches)
    t_compiled = time.perf_counter()
    labels = [m["label"] for m in meta]
    base = label("euler", {})
    ddim = label("ddim", {})
    results = {}
    for b in batches:
        times, k = time_batch(progs, labels, b, repeats[b], args.measure_ms / 1e3)
        results[b] = (times, k)
        _log(f"B={b}: {repeats[b]} repeats x {k} call(s) per measurement, euler median "
              f"{np.median(times[base]) * 1e3:.3f} ms")
    wall = time.perf_counter() - t_start
    load_end = loadavg()

    rows = []
    for m in meta:
        row = dict(m)
        for b in batches:
            times, k = results[b]
            ratios = times[m["label"]] / times[base]  # paired: same repeat
            row[f"B{b}"] = dict(median_s=float(np.median(times[m["label"]])), min_s=float(np.min(times[m["label"]])),
                                ratio=float(np.median(ratios)), ratio_p25=float(np.percentile(ratios, 25)),
                                ratio_p75=float(np.percentile(ratios, 75)), repeats=int(len(ratios)),
                                calls_per_measurement=int(k),
                                ratio_to_ddim=float(np.median(times[m["label"]] / times[ddim])),
                                ratio_of_min=float(np.min(times[m["label"]]) / np.min(times[base])))
        if m["kind"] == "multistep":
            row["target"] = TARGET
            row["meets_target"] = all(row[f"B{b}"]["ratio"] <= TARGET for b in batches)
        rows.append(row)

    machine = C.machine_info()
    command = C.command_line(MODULE)
    date = C.utc_now()
    b_small, b_large = batches
    table = []
    for r in rows:
        cells = [f"`{r['label']}`", r["kind"], f"{r['n_steps']}{' (AFS)' if r['afs'] else ''}"]
        for b, unit, scale in ((b_small, "µs", 1e6), (b_large, "ms", 1e3)):
            d = r[f"B{b}"]
            miss = r["kind"] == "multistep" and d["ratio"] > TARGET
            ratio = f"{d['ratio']:.2f} ({d['ratio_p25']:.2f}–{d['ratio_p75']:.2f}; min {d['ratio_of_min']:.2f})"
            cells += [f"{d['median_s'] * scale:.4g}", f"**{ratio}**" if miss else ratio, f"{d['ratio_to_ddim']:.2f}"]
        if r["kind"] == "multistep":
            cells.append("yes" if r["meets_target"] else "**MISS**")
        else:
            cells.append("—")
        table.append(cells)
    misses = [r["label"] for r in rows if r.get("meets_target") is False]
    md = [
        "# Solver overhead vs Euler", "",
        C.machine_md(machine, command, date),
        f"* Runtime: {wall:.0f} s wall ({t_compiled - t_start:.0f} s building and compiling "
        f"{len(progs)} programs); load average (1/5/15 min) {load_start} at the start, {load_end} at the end "
        "(a shared machine: other jobs may run).",
        f"* Problem: exact `{PROBLEM}` model (K = {gmm.weights.shape[0]} components, d = {gmm.dim}), float32; "
        f"NFE {NFE}, grid `{SPACING}`, end `{END}`; x_T = the benchmark start points (first 1 / all "
        f"{b_large}). Stochastic solvers get a PRNG key.",
        f"* Method: all programs compiled and warmed up first; then {repeats[b_small]} repeats at B={b_small} "
        f"and {repeats[b_large]} at B={b_large}. Each repeat times every solver once, round-robin with the "
        f"starting solver rotated, a measurement being {results[b_small][1]} (B={b_small}) / "
        f"{results[b_large][1]} (B={b_large}) consecutive calls, each followed by `block_until_ready`. "
        "Time = median per call; ratio = median over repeats of time / Euler's time in the same repeat "
        "(in parentheses: its interquartile range, and `min` = fastest call / Euler's fastest call, the "
        "least disturbed by other jobs); `(vs DDIM)` = the same median ratio against DDIM, for context "
        "(Euler evaluates both the data and the noise prediction at every step, DDIM only the data prediction).",
        f"* Target: every multistep solver (kind `multistep`) <= {TARGET}x Euler at both batch sizes; "
        "**bold** = misses it. Singlestep and SDE rows are for information.",
        "",
        C.md_table(["solver", "kind", "steps", f"B={b_small} time (µs)", f"B={b_small} ratio", "(vs DDIM)",
                    f"B={b_large} time (ms)", f"B={b_large} ratio", "(vs DDIM)", f"<= {TARGET}x"], table,
                   ["l", "l", "r", "r", "r", "r", "r", "r", "r", "c"]),
        "",
        (f"Multistep solvers missing the {TARGET}x target: " + ", ".join(f"`{m}`" for m in misses) + ".")
        if misses else f"Every multistep solver is within {TARGET}x of Euler at both batch sizes.",
        "",
    ]
    md = "\n".join(md)
    out_md = args.out
    out_json = os.path.splitext(out_md)[0] + ".json"
    C.atomic_write_json(out_json, dict(meta=dict(command=command, date=date, machine=machine, problem=PROBLEM,
                                                 nfe=NFE, grid=SPACING, end=END, target=TARGET,
                                                 batches=list(batches), repeats={str(k): v for k, v in repeats.items()},
                                                 calls_per_measurement={str(b): results[b][1] for b in batches},
                                                 wall_s=wall, loadavg_start=load_start, loadavg_end=load_end),
                                       rows=rows,
                                       raw_times_s={str(b): {lab: results[b][0][lab].tolist() for lab in labels}
                                                    for b in batches}))
    C.atomic_write_text(out_md, md + "\n")
    print(md)
    _log(f"wrote {out_md} and {out_json} ({wall:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
