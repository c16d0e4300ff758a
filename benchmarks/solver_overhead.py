"""Solver overhead against the true floor: a hand-written DDIM on the exact model.

The floor is a plain ``lax.scan`` DDIM (data prediction) with precomputed
per-step coefficients calling the exact gmm64d model directly, in two forms:
``model.data(x, t)`` (the DiffusionModel view, schedule lookup at t inside) and
the raw mixture denoiser ``gmm.denoise_ve(x / alpha, sigma / alpha)`` with
1 / alpha and sigma / alpha precomputed (the cheapest direct call); each as a
scan and unrolled under jit.  The floor is the fastest of the four in the same
repeat.  Every multistep solver runs through ``samplax.sample`` (jitted, the grid
a constant) and through ``run_table(..., diagnostics=False)`` on its precomputed
table, at B = 1 and B = 4096, NFE 10 and 20, float32, end "zero",
time-quadratic grid.

Both XLA flag settings are measured in separate processes: the default and
``XLA_FLAGS=--xla_cpu_experimental_ynn_fusion_type=`` (YNNPACK fusions off).
Within one process, each repeat times every program once (round-robin, the
starting program rotated); ratio = median over repeats of time / floor's time
in the same repeat.

    python -m benchmarks.solver_overhead

Writes docs/benchmarks/solver_overhead.md (or --out) and a .json next to it.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

from benchmarks import _common as C

MODULE = "benchmarks.solver_overhead"
PROBLEM = "gmm64d"
NFES = (10, 20)
SPACING = "time_quadratic"
END = "zero"
TARGET = 1.1
SETTINGS = {"default": None, "ynn_off": "--xla_cpu_experimental_ynn_fusion_type="}
SOLVERS = [
    ("ddim", {}),
    ("dpm_solver_multistep", {"order": 2}),
    ("dpm_solver_multistep", {"order": 3}),
    ("dpm_solver_pp", {"order": 2}),
    ("dpm_solver_pp", {"order": 3}),
    ("unipc", {"variant": "bh2", "order": 2}),
    ("unipc", {"variant": "bh2", "order": 3}),
    ("deis", {"order": 3}),
    ("ipndm", {"order": 3}),
    ("ipndm_v", {"order": 3}),
]
NO_YNN = {"xla_cpu_experimental_ynn_fusion_type": ""}  # per-program compiler option (CPU)
FLOORS = ("floor: scan model.data", "floor: unrolled model.data", "floor: scan raw", "floor: unrolled raw")


def label(name, opts):
    return " ".join([name] + [f"{k}={v}" for k, v in opts.items()])


def _log(msg):
    print(msg, file=sys.stderr, flush=True)


def build(nfe, batches):
    """{batch: {name: (compiled, x)}} for the floors, sample and run_table programs."""
    import jax
    import jax.numpy as jnp

    import samplax as sx
    from samplax.solvers.unified import run_table

    gmm, schedule, info = sx.load_problem(PROBLEM, dtype=jnp.float32)
    x_all = jnp.asarray(sx.problem_start_points(info), jnp.float32)
    model = gmm.model(schedule)
    grid = sx.time_grid(schedule, nfe, SPACING, end=END, dtype=jnp.float32)
    t, al, si = (np.asarray(v, np.float64) for v in (grid.t, grid.alpha, grid.sigma))
    ratio = si[1:] / si[:-1]
    cx = al[1:] - ratio * al[:-1]
    f32 = lambda v: jnp.asarray(v, jnp.float32)  # noqa: E731
    ratio, cx, inv_a, st, tt = f32(ratio), f32(cx), f32(1.0 / al[:-1]), f32(si[:-1] / al[:-1]), f32(t[:-1])

    def step_data(x, i):
        return ratio[i] * x + cx[i] * model.data(x, tt[i])

    def step_raw(x, i):
        return ratio[i] * x + cx[i] * gmm.denoise_ve(x * inv_a[i], st[i])[0]

    def floor(step, unroll):
        def f(x):
            if unroll:
                for i in range(nfe):
                    x = step(x, i)
                return x
            return jax.lax.scan(lambda x, i: (step(x, i), None), x, jnp.arange(nfe))[0]
        return f

    fns = {FLOORS[0]: floor(step_data, False), FLOORS[1]: floor(step_data, True),
           FLOORS[2]: floor(step_raw, False), FLOORS[3]: floor(step_raw, True)}
    for name, opts in SOLVERS:
        solver = sx.get_solver(name, **opts)
        lab = label(name, opts)
        tab = solver.table(grid, schedule)
        fns["sample " + lab] = lambda x, s=solver: sx.sample(s, model, x, grid)[0]
        fns["run_table " + lab] = lambda x, tab=tab: run_table(model, x, tab, diagnostics=False)[0]
    progs = {}
    for b in batches:
        x = x_all[:b]
        progs[b] = {}
        for k, f in fns.items():
            c = jax.jit(f).lower(x).compile()
            jax.block_until_ready(c(x))
            progs[b][k] = (c, x)
            if k.startswith("sample"):  # the same program with YNNPACK fusions off for it alone
                c = jax.jit(f).lower(x).compile(compiler_options=NO_YNN)
                jax.block_until_ready(c(x))
                progs[b][k.replace("sample", "sample[no-ynn]", 1)] = (c, x)
    return progs


def time_round_robin(progs, repeats, target_s):
    import jax

    names = list(progs)
    inner = {}
    for k in names:
        c, x = progs[k]
        t0 = time.perf_counter()
        jax.block_until_ready(c(x))
        inner[k] = time.perf_counter() - t0
    calls = max(1, int(round(target_s / max(min(inner.values()), 1e-7))))
    times = {k: [] for k in names}
    for r in range(repeats):
        for k in names[r % len(names):] + names[:r % len(names)]:
            c, x = progs[k]
            t0 = time.perf_counter()
            for _ in range(calls):
                jax.block_until_ready(c(x))
            times[k].append((time.perf_counter() - t0) / calls)
    return times, calls


def worker(args):
    t0 = time.perf_counter()
    out = dict(xla_flags=os.environ.get("XLA_FLAGS", ""), results={})
    for nfe in NFES:
        progs = build(nfe, (1, 4096))
        for b, p in progs.items():
            times, calls = time_round_robin(p, args.repeats_small if b == 1 else args.repeats_large,
                                            args.measure_ms / 1e3)
            out["results"][f"{nfe}/{b}"] = dict(times=times, calls=calls)
            _log(f"  NFE {nfe} B={b}: {calls} call(s) per measurement")
    out["wall_s"] = time.perf_counter() - t0
    with open(args.worker, "w") as f:
        json.dump(out, f)


def summarise(res):
    """Per (nfe, batch): floor time and per-program median time and ratio to the floor."""
    rows = {}
    for key, r in res["results"].items():
        t = {k: np.asarray(v) for k, v in r["times"].items()}
        floor = np.min(np.stack([t[f] for f in FLOORS]), 0)  # fastest floor in each repeat
        rows[key] = {k: dict(median_s=float(np.median(v)), ratio=float(np.median(v / floor)),
                             ratio_p25=float(np.percentile(v / floor, 25)),
                             ratio_p75=float(np.percentile(v / floor, 75))) for k, v in t.items()}
        rows[key]["floor"] = dict(median_s=float(np.median(floor)), ratio=1.0)
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=os.path.join("docs", "benchmarks", "solver_overhead.md"))
    ap.add_argument("--repeats-small", type=int, default=9, help="repeats at B=1")
    ap.add_argument("--repeats-large", type=int, default=5, help="repeats at B=4096")
    ap.add_argument("--measure-ms", type=float, default=10.0, help="target duration of one measurement")
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        return worker(args)

    t_start = time.perf_counter()
    raw = C.run_flag_settings(MODULE, SETTINGS, ["--repeats-small", args.repeats_small, "--repeats-large",
                                                 args.repeats_large, "--measure-ms", args.measure_ms], log=_log)
    wall = time.perf_counter() - t_start
    summ = {name: summarise(r) for name, r in raw.items()}

    keys = [f"{nfe}/{b}" for nfe in NFES for b in (1, 4096)]
    progs = ["floor"] + list(FLOORS) + [p + " " + label(n, o) for n, o in SOLVERS
                                     for p in ("sample", "sample[no-ynn]", "run_table")]
    table = []
    for p in progs:
        cells = [f"`{p}`"]
        for name in SETTINGS:
            for key in keys:
                d = summ[name][key][p]
                miss = p.startswith("sample ") and d["ratio"] > TARGET
                cells.append(f"**{d['ratio']:.2f}**" if miss else f"{d['ratio']:.2f}")
        table.append(cells)
    floor_rows = [[name] + [f"{summ[name][k]['floor']['median_s'] * 1e6:.0f}" for k in keys] for name in SETTINGS]
    met = {name: all(summ[name][k][p]["ratio"] <= TARGET for k in keys for p in progs if p.startswith("sample "))
           for name in SETTINGS}
    machine = C.machine_info()
    command = C.command_line(MODULE)
    date = C.utc_now()
    hdr = ["program"] + [f"{s} NFE {k.split('/')[0]} B={k.split('/')[1]}" for s in SETTINGS for k in keys]
    md = "\n".join([
        "# Solver overhead vs the true floor", "",
        C.machine_md(machine, command, date),
        f"* Runtime: {wall:.0f} s wall, two processes (XLA flag settings `default` and `ynn_off` = "
        f"`XLA_FLAGS={SETTINGS['ynn_off']}`, YNNPACK fusions off). A shared 2-core machine: absolute times "
        "are noisy, ratios are paired within one repeat of one process.",
        f"* Problem: exact `{PROBLEM}` model (K = 8, d = 64), float32, grid `{SPACING}`, end `{END}`, "
        "x_T = the benchmark start points (first 1 / all 4096).",
        "* Floor = fastest, in each repeat, of four hand-written DDIMs with precomputed coefficients: "
        "`lax.scan` or unrolled under jit, calling `model.data(x, t)` or the raw mixture denoiser "
        "`gmm.denoise_ve(x / alpha, sigma / alpha)` (the cheapest direct call). `sample X` = "
        "`jax.jit(lambda x: samplax.sample(X, model, x, grid)[0])` (table computed inside, SampleInfo "
        "diagnostics on); `run_table X` = `run_table(model, x, X.table(grid, schedule), diagnostics=False)` "
        "on the precomputed table; `sample[no-ynn] X` = the `sample X` program compiled with "
        "`.lower(x).compile(compiler_options={'xla_cpu_experimental_ynn_fusion_type': ''})`, i.e. YNNPACK "
        "fusions off for that program alone (no environment variable).",
        f"* Method: {args.repeats_small} repeats at B=1 and {args.repeats_large} at B=4096, round-robin; "
        "cell = median over repeats of time / floor time in the same repeat. **bold** = a `sample` row "
        f"above the {TARGET}x target.",
        "",
        "Floor time per call (µs):", "",
        C.md_table(["setting"] + [f"NFE {k.split('/')[0]} B={k.split('/')[1]}" for k in keys], floor_rows,
                   ["l"] + ["r"] * len(keys)),
        "",
        "Ratio to the floor:", "",
        C.md_table(hdr, table, ["l"] + ["r"] * (len(hdr) - 1)),
        "",
        "Target (every `sample` row <= 1.1x the floor): " + ", ".join(
            f"{name}: {'met' if ok else 'not met'}" for name, ok in met.items()) + ".",
        "",
    ])
    out_json = os.path.splitext(args.out)[0] + ".json"
    C.atomic_write_json(out_json, dict(meta=dict(command=command, date=date, machine=machine, problem=PROBLEM,
                                                 nfes=list(NFES), grid=SPACING, end=END, target=TARGET,
                                                 settings=SETTINGS, wall_s=wall,
                                                 repeats={"1": args.repeats_small, "4096": args.repeats_large}),
                                       summary=summ, raw=raw))
    C.atomic_write_text(args.out, md + "\n")
    print(md)
    _log(f"wrote {args.out} and {out_json} ({wall:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
