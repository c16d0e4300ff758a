"""DPM-Solver-v3 against DPM-Solver++ (2M/3M) and UniPC (bh1/bh2, orders 2-3) on the exact
Gaussian-mixture problems.

For each problem (gmm2d, gmm64d), NFE in 5, 6, 8, 10, 15, 20 and grid spacing (logSNR-uniform,
time-uniform; every grid ends at sigma = 0), the mean L2 distance over the problem's 4096 start
points between the float32 sample and the exact float64 probability-flow ODE solution from the
same x_T (as benchmarks/solver_accuracy.py).  DPM-Solver-v3's statistics are estimated once per
problem by ``prepare`` (float32, the solver's default options); its rows are beside the best
baseline on the same grid and NFE.  Also the wall time per sample at B = 4096 on gmm64d.

    python -m benchmarks.dpm_solver_v3            # ~10 min on 2 shared CPU cores
    python -m benchmarks.dpm_solver_v3 --quick    # gmm2d, NFE 5 / 10

Writes docs/benchmarks/dpm_solver_v3.md and .json.
"""
from __future__ import annotations

import argparse
import os
import time

import numpy as np

from benchmarks import _common as C

MODULE = "benchmarks.dpm_solver_v3"
OUT = os.path.join("docs", "benchmarks", "dpm_solver_v3.md")
NFES = (5, 6, 8, 10, 15, 20)
SPACINGS = ("logsnr", "time_uniform")
NO_GUARD = {"max_step_ratio": None, "max_step": None}
BASELINES = [("dpm_solver_pp", {"order": o}) for o in (2, 3)]
BASELINES += [("dpm_solver_pp", {"order": o, "third_order": "official", "lower_order_final_below": 10, **NO_GUARD})
              for o in (2, 3)]
BASELINES += [("unipc", {"variant": v, "order": o}) for v in ("bh1", "bh2") for o in (2, 3)]
BASELINES += [("unipc", {"variant": v, "order": o, "official_rhos": True, **NO_GUARD})
              for v in ("bh1", "bh2") for o in (2, 3)]
V3 = [("v3", {}), ("v3 safeguard", {"max_step_ratio": 2.0, "max_step": 2.0}), ("v3 c_pseudo", {"corrector_pseudo": True})]


def _label(name, opts):
    return name + "(" + ", ".join(f"{k}={v}" for k, v in opts.items()) + ")"


def run(problems, nfes, log=print):
    import jax
    import jax.numpy as jnp

    import samplax as sx
    from samplax.solvers import get_solver, model_data, sample

    results = {"errors": {}, "prepare_s": {}, "timing": {}}
    for prob in problems:
        x_T, ref, _ = C.reference_solution(prob, log=log)
        gmm, sched, _ = sx.load_problem(prob)
        model = gmm.model(sched)
        xT = jnp.asarray(x_T, jnp.float32)
        t0 = time.perf_counter()
        base_v3 = get_solver("dpm_solver_v3")
        stats = base_v3.prepare(model, model_data(gmm=gmm))
        results["prepare_s"][prob] = time.perf_counter() - t0
        log(f"[{prob}] statistics in {results['prepare_s'][prob]:.1f} s")
        solvers = [(_label(n, o), get_solver(n, **o)) for n, o in BASELINES]
        solvers += [(lab, get_solver("dpm_solver_v3", **o).bind(stats)) for lab, o in V3]
        for nfe in nfes:
            grids = C.stacked_grids(sched, nfe, "zero", "float32", spacings=SPACINGS)
            for lab, solver in solvers:
                fn = jax.jit(jax.vmap(lambda g, s=solver: sample(s, model, xT, g)[0]))
                x = np.asarray(fn(grids), np.float64)
                err = np.linalg.norm(x - ref[None], axis=-1).mean(-1)
                for sp, e in zip(SPACINGS, err):
                    results["errors"][f"{prob}|{nfe}|{sp}|{lab}"] = float(e)
                    log(f"[row] {prob} NFE {nfe} {sp} {lab}: {e:.4g}")
        if prob == "gmm64d":
            results["timing"] = _timing(model, xT, stats, sched, log)
    return results


def _timing(model, xT, stats, sched, log):
    import jax

    from samplax.solvers import get_solver, sample
    from samplax.solvers.base import jit_cpu_fast
    out = {}
    for nfe in (5, 10):
        import samplax as sx
        grid = sx.time_grid(sched, nfe, "logsnr", end="zero", dtype=xT.dtype)
        for lab, solver in (("dpm_solver_pp3", get_solver("dpm_solver_pp", order=3)),
                            ("dpm_solver_v3", get_solver("dpm_solver_v3").bind(stats))):
            fn = jit_cpu_fast(lambda x, s=solver: sample(s, model, x, grid)[0])
            jax.block_until_ready(fn(xT))
            ts = []
            for _ in range(5):
                t0 = time.perf_counter()
                jax.block_until_ready(fn(xT))
                ts.append(time.perf_counter() - t0)
            out[f"{lab}|{nfe}"] = float(np.median(ts)) / xT.shape[0]
            log(f"[timing] {lab} NFE {nfe}: {out[f'{lab}|{nfe}'] * 1e6:.2f} us/sample")
    return out


def render(results, problems, nfes, command, info, date):
    err = results["errors"]
    base_labels = [_label(n, o) for n, o in BASELINES]
    lines = ["# DPM-Solver-v3 on the exact Gaussian mixtures", "", C.machine_md(info, command, date), "",
             "Mean L2 distance to the exact PF-ODE solution (float64 RK4) from the problem's start points "
             "(float32 solves, grids ending at sigma = 0).  `best baseline`: the best of DPM-Solver++ 2M/3M and "
             "UniPC bh1/bh2 orders 2-3 (each with our defaults and with the official codes' options) on the same "
             "grid and NFE.  `gain` = 1 - v3 / best baseline (positive: v3 better).  v3 statistics: "
             "default options (1024 data samples, 257 logSNR nodes, Hutchinson l); "
             f"prepare took {', '.join(f'{p} {s:.0f} s' for p, s in results['prepare_s'].items())}.", ""]
    rows = []
    for prob in problems:
        for sp in SPACINGS:
            for nfe in nfes:
                key = f"{prob}|{nfe}|{sp}|"
                b = {lab: err[key + lab] for lab in base_labels if key + lab in err}
                blab = min(b, key=b.get)
                best = b[blab]
                v = {lab: err[key + lab] for lab, _ in V3}
                rows.append([prob, sp, nfe, C.fmt(v["v3"]), f"{1 - v['v3'] / best:+.0%}",
                             C.fmt(min(v.values())), f"{1 - min(v.values()) / best:+.0%}", C.fmt(best), blab,
                             C.fmt(err[key + _label('dpm_solver_pp', {'order': 3})]),
                             C.fmt(err[key + _label('unipc', {'variant': 'bh2', 'order': 3})])])
    lines.append(C.md_table(["problem", "grid", "NFE", "v3 (default)", "gain", "best v3 variant", "gain",
                             "best baseline", "which", "DPM++3M", "UniPC bh2-3"], rows,
                            ["l", "l", "r", "r", "r", "r", "r", "r", "l", "r", "r"]))
    lines += ["", "v3 variants: " + "; ".join(f"`{lab}` = dpm_solver_v3({o})" for lab, o in V3) + ".", ""]
    if results.get("timing"):
        t = results["timing"]
        lines += ["## Wall time per sample (gmm64d, B = 4096, logSNR grid, compiled, median of 5)", "",
                  C.md_table(["NFE", "DPM-Solver++ 3M (us/sample)", "DPM-Solver-v3 (us/sample)", "ratio"],
                             [[n, f"{t[f'dpm_solver_pp3|{n}'] * 1e6:.2f}", f"{t[f'dpm_solver_v3|{n}'] * 1e6:.2f}",
                               f"{t[f'dpm_solver_v3|{n}'] / t[f'dpm_solver_pp3|{n}']:.2f}"] for n in (5, 10)],
                             ["r", "r", "r", "r"]), ""]
    return "\n".join(lines) + "\n"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", default=OUT)
    ap.add_argument("--notes", default=None, help="a markdown file appended to the output (the analysis)")
    args = ap.parse_args()
    problems, nfes = (("gmm2d",), (5, 10)) if args.quick else (("gmm2d", "gmm64d"), NFES)
    info, date, command = C.machine_info(), C.utc_now(), C.command_line(MODULE)
    results = run(problems, nfes)
    md = render(results, problems, nfes, command, info, date)
    if args.notes and os.path.exists(args.notes):
        md += "\n" + open(args.notes).read()
    print(md)
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    C.atomic_write_text(args.out, md) if hasattr(C, "atomic_write_text") else open(args.out, "w").write(md)
    C.atomic_write_json(os.path.splitext(args.out)[0] + ".json",
                        {"date": date, "machine": info, "command": command, "problems": problems, "nfes": nfes,
                         **results})


if __name__ == "__main__":
    main()
