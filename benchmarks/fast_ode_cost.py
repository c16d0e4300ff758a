"""Cost and accuracy of the methods beyond the classic solvers, all in one run, beside their
base solvers and the floor.

Part 1 (exact GMMs): at B = 4096 (the problem's start points), NFE 10, logSNR grid ending at
sigma = 0, float32: wall time per sample of every method of docs/dpm_solver_v3.md,
docs/dualfast.md, docs/teleport.md and docs/adaptive_likelihood.md and of its base solver, with the
floor (a hand-written ``lax.scan`` DDIM calling the same model as often, as in
benchmarks/solver_overhead.py), timed round-robin in one process (ratio = median over repeats of
the time relative to the base, or to the floor, in the same repeat).  Beside each: the NFE
counted in the compiled program (samplax.experiment.nfe; for the adaptive solve the NFE it
reports spending), the mean L2 to the exact PF-ODE solution from the same x_T, and the one-off
``prepare`` time of the model-dependent solvers (not in the per-sample time).

Part 2 (trained digits U-Net, ``--digits``, default /work/runs/train_digits when it has a
checkpoint): Frechet distance (classifier features, test split) of DPM-Solver-v3 beside
DPM-Solver++ 2M/3M and UniPC-2/3 at NFE 5, 6, 8 and 10, through the experiment runner (the v3
statistics from 1024 training images, cached per model in the run's workdir).

    python -m benchmarks.fast_ode_cost                 # both parts, ~25 min on 2 shared cores
    python -m benchmarks.fast_ode_cost --no-digits     # part 1 only
    python -m benchmarks.fast_ode_cost --from-json docs/benchmarks/fast_ode_cost.json   # re-render

Writes docs/benchmarks/fast_ode_cost.md and .json.
"""
from __future__ import annotations

import argparse
import os
import time

import numpy as np

from benchmarks import _common as C
from benchmarks.solver_overhead import time_round_robin

MODULE = "benchmarks.fast_ode_cost"
OUT = os.path.join("docs", "benchmarks", "fast_ode_cost.md")
NFE = 10
SPACING = "logsnr"
PROBLEMS = ("gmm64d", "gmm2d")
FLOOR = "floor: lax.scan DDIM, model.data"
ADAPTIVE_TOL = 1e-2

# (label, registry name, options, base label): every method beside the solver it builds on.
METHODS = [
    ("DDIM", "ddim", {}, None),
    ("DPM-Solver++ 2M", "dpm_solver_pp", {"order": 2}, None),
    ("DPM-Solver++ 3M", "dpm_solver_pp", {"order": 3}, None),
    ("UniPC-2", "unipc", {"order": 2}, None),
    ("UniPC-3", "unipc", {"order": 3}, None),
    ("DualFast(DDIM)", "dualfast", {"base": "ddim", "order": 1, "mixing": -0.5}, "DDIM"),
    ("DualFast(DPM++ 2M)", "dualfast", {"base": "dpm_solver_pp", "order": 2, "mixing": -0.5}, "DPM-Solver++ 2M"),
    ("DualFast(UniPC-2)", "dualfast", {"base": "unipc", "order": 2, "mixing": -0.5}, "UniPC-2"),
    ("DPM-Solver-v3", "dpm_solver_v3", {}, "DPM-Solver++ 3M"),
    ("teleport + DPM++ 2M", "teleport", {"base": "dpm_solver_pp", "order": 2}, "DPM-Solver++ 2M"),
    ("teleport + UniPC-2", "teleport", {"base": "unipc", "order": 2}, "UniPC-2"),
    (f"adaptive DPM-Solver-23 (tol {ADAPTIVE_TOL:g})", "dpm_solver_adaptive",
     {"order": 3, "rtol": ADAPTIVE_TOL, "atol": ADAPTIVE_TOL}, "DPM-Solver++ 3M"),
]
DIGITS_NFES = (5, 6, 8, 10)
DIGITS_SOLVERS = [("DPM-Solver++ 2M", "dpm_solver_pp", 2), ("DPM-Solver++ 3M", "dpm_solver_pp", 3),
                  ("UniPC-2", "unipc", 2), ("UniPC-3", "unipc", 3), ("DPM-Solver-v3", "dpm_solver_v3", 3)]


def build(problem, log=print):
    """{label: (compiled, x)} and per-label facts (nfe, mean_l2, compile_s, prepare_s)."""
    import jax
    import jax.numpy as jnp

    import samplax as sx
    from samplax.experiment.nfe import count_model_evaluations
    from samplax.solvers import model_data, prepare_solver, sample_with_info, is_adaptive
    from samplax.solvers.base import cpu_compiler_options

    x_T, ref, _ = C.reference_solution(problem, log=log)
    gmm, schedule, _ = sx.load_problem(problem, dtype=jnp.float32)
    model = gmm.model(schedule)
    x = jnp.asarray(x_T, jnp.float32)
    data = model_data(gmm=gmm)
    progs, facts = {}, {}

    # the floor: NFE DDIM steps (data prediction) with precomputed coefficients, one model call each
    g = sx.time_grid(schedule, NFE, SPACING, end="zero", dtype=jnp.float32)
    al, si, tt = (np.asarray(v, np.float64) for v in (g.alpha, g.sigma, g.t))
    ratio = jnp.asarray(si[1:] / si[:-1], jnp.float32)
    cx = jnp.asarray(al[1:] - si[1:] / si[:-1] * al[:-1], jnp.float32)
    t_in = jnp.asarray(tt[:-1], jnp.float32)

    def floor(x):
        return jax.lax.scan(lambda x, i: (ratio[i] * x + cx[i] * model.data(x, t_in[i]), None), x,
                            jnp.arange(NFE))[0]

    fns = {FLOOR: (floor, NFE, 0.0)}
    for label, name, opts, _ in METHODS:
        solver = sx.get_solver(name, **opts)
        prep = 0.0
        if solver.prepare is not None:
            t0 = time.perf_counter()
            solver = prepare_solver(solver, model, data)
            prep = time.perf_counter() - t0
            log(f"  {problem} {label}: prepare {prep:.1f} s")
        t_max = schedule.t_max if solver.t_start is None else float(solver.t_start)
        if is_adaptive(solver):
            grid = sx.time_grid(schedule, 500, SPACING, end="zero", dtype=jnp.float32)  # the cap: 500
            fn = (lambda x, s=solver, gr=grid: sample_with_info(s, model, x, gr)[0])
            info = jax.jit(lambda x, s=solver, gr=grid: sample_with_info(s, model, x, gr)[2])(x)
            nfe = int(info.nfe)
        else:
            grid = sx.time_grid(schedule, sx.steps_for_nfe(solver, NFE, "zero"), SPACING, end="zero", t_max=t_max,
                                dtype=jnp.float32)
            fn = (lambda x, s=solver, gr=grid: sx.sample(s, model, x, gr)[0])
            nfe = count_model_evaluations(solver, model, grid, x_shape=x.shape)
        fns[label] = (fn, nfe, prep)
    opts = cpu_compiler_options()
    for label, (fn, nfe, prep) in fns.items():
        t0 = time.perf_counter()
        c = jax.jit(fn).lower(x).compile(compiler_options=opts)
        out = np.asarray(jax.block_until_ready(c(x)), np.float64)
        comp = time.perf_counter() - t0
        err = float(np.mean(np.linalg.norm(out - ref, axis=-1)))
        progs[label] = (c, x)
        facts[label] = dict(nfe=int(nfe), mean_l2=err, compile_s=comp, prepare_s=prep)
        log(f"  {problem} {label}: NFE {nfe}, mean_l2 {err:.4g}, compile {comp:.1f} s")
    return progs, facts


def part_cost(problems, repeats, log=print):
    out = {}
    for problem in problems:
        progs, facts = build(problem, log)
        times, calls = time_round_robin(progs, repeats, 0.2)
        B = next(iter(progs.values()))[1].shape[0]
        rows = []
        for label, name, opts, base in [(FLOOR, None, {}, None)] + METHODS:
            t = np.asarray(times[label])
            tf = np.asarray(times[FLOOR])
            tb = np.asarray(times[base]) if base else None
            rows.append(dict(label=label, base=base, batch=B, us_per_sample=1e6 * float(np.median(t)) / B,
                             vs_floor=float(np.median(t / tf)),
                             vs_base=None if tb is None else float(np.median(t / tb)), **facts[label]))
        out[problem] = dict(rows=rows, calls=calls, repeats=repeats)
    return out


def part_digits(path, n, log=print):
    from configs import digits as digits_cfg
    from samplax.experiment import run_sample

    rows = []
    for nfe in DIGITS_NFES:
        for label, name, order in DIGITS_SOLVERS:
            cfg = digits_cfg.get_config()
            cfg.model.checkpoint = path
            cfg.solver.name = name
            cfg.solver.order = order
            cfg.nfe = nfe
            cfg.n_samples = n
            cfg.metrics.max_sw_samples = n
            cfg.metrics.save_samples = 0
            wd = os.path.join(C.CACHE_DIR, "fast_ode_digits")  # one workdir: v3's statistics computed once
            log(f"digits: {label} NFE {nfe}")
            r = run_sample(cfg, wd)[0]
            rows.append(dict(label=label, nfe=nfe, n=n, fd=r["metrics"].get("fd"),
                             fd_floor=(r.get("reference") or {}).get("fd_floor"), prepared=r.get("prepared"),
                             wall_s=r.get("wall_s")))
    return rows


def render(res) -> str:
    L = ["# Beyond the classic solvers: cost and accuracy in one run", "",
         C.machine_md(res["machine"], res["command"], res["date"]), "",
         f"Part 1: B = {res['batch']} problem start points, NFE {NFE} (counted in the compiled program; the adaptive "
         f"solve's is what it reports spending), {SPACING} grid to sigma = 0, float32.  Time per sample: median over "
         f"{res['repeats']} round-robin repeats; `vs base` / `vs floor` = median over repeats of the time relative "
         f"to the base solver / the floor in the same repeat.  The floor is a hand-written `lax.scan` DDIM calling "
         f"the same model {NFE} times.  `prepare` (v3: statistics; teleport: the Gaussian fit) is a one-off cost "
         f"per model, cached by the runner, not in the per-sample time.  mean L2: to the exact PF-ODE solution "
         f"from the same x_T.", ""]
    for problem, p in res["cost"].items():
        L += [f"## {problem}", "",
              C.md_table(["method", "base", "NFE", "us/sample", "us/sample/NFE", "vs base", "vs floor", "mean L2", "mean L2 of base",
                          "prepare s", "compile s"],
                         [[r["label"], r["base"] or "—", r["nfe"], C.fmt(r["us_per_sample"]),
                           C.fmt(r["us_per_sample"] / r["nfe"]),
                           "—" if r["vs_base"] is None else f"{r['vs_base']:.2f}", f"{r['vs_floor']:.2f}",
                           C.fmt(r["mean_l2"]),
                           C.fmt(next(b["mean_l2"] for b in p["rows"] if b["label"] == r["base"])) if r["base"]
                           else "—", f"{r['prepare_s']:.1f}" if r["prepare_s"] else "—", f"{r['compile_s']:.1f}"]
                          for r in p["rows"]],
                         ["l", "l", "r", "r", "r", "r", "r", "r", "r", "r", "r"]), ""]
    L += ["## Findings", ""]
    for problem, p in res["cost"].items():
        by = {r["label"]: r for r in p["rows"]}
        parts = []
        for r in p["rows"]:
            if r["base"]:
                b = by[r["base"]]
                parts.append(f"{r['label']}: error x{r['mean_l2'] / b['mean_l2']:.2f} of its base at "
                             f"{r['nfe']} vs {b['nfe']} NFE, time x{r['vs_base']:.2f}")
        L.append(f"* {problem}: " + "; ".join(parts) + ".")
    L += ["* DPM-Solver++ 3M equals 2M and UniPC-3 equals UniPC-2 on these grids: the step-length safeguard "
          "(docs/solvers.md) lowers every third-order step of a 10-step logSNR grid (lambda steps > 1) to "
          "second order; v3 runs without it (the official default).",
          "* The adaptive row is not at equal NFE: at tolerance 1e-2 it spends about 62 evaluations (its "
          "per-NFE cost is the `us/sample/NFE` column); docs/benchmarks/adaptive.md compares it at equal NFE.",
          "* Timings share 2 CPU cores with other work (helpers, a CI run may have run beside): ratios are "
          "within-repeat medians, but expect +-20%.", ""]
    if res.get("digits"):
        d = res["digits"]
        nfes = sorted({r["nfe"] for r in d})
        labels = list(dict.fromkeys(r["label"] for r in d))
        fd = {(r["label"], r["nfe"]): r["fd"] for r in d}
        L += [f"## digits U-Net: FD (classifier features, test split), {d[0]['n']} samples, logSNR grid", "",
              f"FD floor (training split against test split): {C.fmt(d[0]['fd_floor'])}.  DPM-Solver-v3's statistics: "
              f"1024 training images x 257 logSNR nodes, estimated once "
              f"({C.fmt(next((r['prepared'] or {}).get('seconds') for r in d if r['prepared']))} s) and cached.", "",
              C.md_table(["solver"] + [f"NFE {n}" for n in nfes],
                         [[lab] + [C.fmt(fd.get((lab, n))) for n in nfes] for lab in labels]), ""]
        L += ["DPM-Solver-v3 fails on digits (a bias: its FD hardly falls with NFE); the diagnosis so far is in "
              "docs/dpm_solver_v3.md (\"Digits\").  DPM-Solver++ 3M and UniPC-3 equal their order-2 rows here "
              "for the same safeguard reason as above.", ""]
    else:
        L += ["## digits", "", res.get("digits_note", "not measured"), ""]
    return "\n".join(L)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=OUT)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--problems", nargs="+", default=list(PROBLEMS))
    p.add_argument("--digits", default="/work/runs/train_digits")
    p.add_argument("--digits-n", type=int, default=1000)
    p.add_argument("--no-digits", action="store_true")
    p.add_argument("--from-json")
    args = p.parse_args(argv)
    if args.from_json:
        print(C.rerender_from_json(args.from_json, args.out, lambda r: render(r) + "\n"), end="")
        return
    C.enable_compilation_cache()
    res = dict(machine=C.machine_info(), command=C.command_line(MODULE), date=C.utc_now(), repeats=args.repeats,
               batch=4096)
    res["cost"] = part_cost(args.problems, args.repeats)
    ckpt = os.path.join(args.digits, "checkpoints")
    if args.no_digits or not (os.path.isdir(ckpt) and os.listdir(ckpt)):
        res["digits_note"] = "not measured in this run (no --digits checkpoint, or --no-digits)"
    else:
        res["digits"] = part_digits(args.digits, args.digits_n)
    C.atomic_write_json(os.path.splitext(args.out)[0] + ".json", res)
    text = render(res)
    C.atomic_write_text(args.out, text + "\n")
    print(text)


if __name__ == "__main__":
    main()
