"""DualFast (samplax.solvers.dualfast) against its base solvers.

* Exact GMMs (gmm2d, gmm64d; the problem files' 4096 start points): mean L2 between the
  float32 sample at sigma = 0 and the exact PF-ODE solution from the same x_T (float64 RK4,
  cached under .bench_cache/ as in benchmarks/solver_accuracy.py), for DDIM, DPM-Solver++ 2M
  and 3M and UniPC-2 (bh2), plain and with DualFast, at NFE 4, 5, 6, 8, 10 on the logSNR and
  time-uniform grids (grids end at sigma = 0 from t_min = 1e-3).  DualFast runs at its
  defaults (c = 0.5, tau = t_0, linear decay, noise view) and at every c of C_VALUES for both
  references, one program per (base, NFE, reference) vmapped over grids and c; "best c" is an
  oracle (tuned on the test metric itself) and says only whether *some* c helps.
* The trained 2-D MLP of gmm2d (--trained, default /work/runs/train_gmm2d): the same rows,
  scored against the EXACT model (mean L2 to the exact PF-ODE solution from the same x_T,
  sliced W2 to 4096 exact samples with its noise floor).
* digits (--digits, default /work/runs/train_digits, if it has a checkpoint): FD of 1000
  samples at NFE 5 and 10 through the experiment runner: DPM-Solver++ 2M vs DualFast over it at
  the default c = 0.5 and at c = -0.5 (tau = t_0; the sign the GMM tables prefer).
* Wall time per sample at B = 4096 on gmm64d (NFE 10), base vs DualFast, median of 5 calls.

    python -m benchmarks.dualfast            # everything (about 15-25 min on 2 busy cores)
    python -m benchmarks.dualfast --quick    # gmm2d only, NFE 5 and 10, no digits

Writes docs/benchmarks/dualfast.md (+ .json).
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

from benchmarks import _common as C

MODULE = "benchmarks.dualfast"
OUT = os.path.join("docs", "benchmarks", "dualfast.md")
NFES = (4, 5, 6, 8, 10)
GRIDS = ("logsnr", "time_uniform")
C_VALUES = (0.0, -1.0, -0.75, -0.5, -0.3, -0.1, 0.1, 0.3, 0.5)  # index 0 = the base solver (c = 0 is it exactly)
DEFAULT_C, DEFAULT_REF = 0.5, "first"
EXTRAP_C = -0.5  # the sign the GMM tables prefer (chosen there, not on digits)
REFERENCES = ("first", "previous")
BASES = (("ddim", 1), ("dpm_solver_pp", 2), ("dpm_solver_pp", 3), ("unipc", 2))
REF_STEPS = 2000


def _base(name, order):
    from samplax.solvers.dualfast import _base_solver
    return _base_solver(name, order)


def _label(name, order):
    return "DDIM" if name == "ddim" else ("DPM-Solver++ %dM" % order if name == "dpm_solver_pp" else f"UniPC-{order}")


def _runner(base_solver, reference, model):
    """jit(x_T, grids, cs) -> (G, C, B, d) samples (grids and c vmapped)."""
    import jax

    import samplax as sx
    from samplax.solvers.base import jit_cpu_fast
    from samplax.solvers.dualfast import dualfast_over

    def run(x_T, grids, cs):
        def one(grid, c):
            return sx.sample(dualfast_over(base_solver, c, reference), model, x_T, grid)[0]
        return jax.vmap(lambda g: jax.vmap(lambda c: one(g, c))(cs))(grids)
    return jit_cpu_fast(run)


def sweep(model, x_T, schedule, nfes, log, score):
    """rows: one per (base, nfe, grid, reference, c) with score(samples) -> dict."""
    import jax.numpy as jnp

    cs = jnp.asarray(C_VALUES, jnp.float32)
    rows = []
    for name, order in BASES:
        b = _base(name, order)
        for nfe in nfes:
            grids = C.stacked_grids(schedule, nfe, "zero", "float32", spacings=GRIDS)
            for ref in REFERENCES:
                t0 = time.perf_counter()
                out = np.asarray(_runner(b, ref, model)(x_T, grids, cs), np.float64)
                for gi, g in enumerate(GRIDS):
                    for ci, c in enumerate(C_VALUES):
                        if ci == 0 and ref != REFERENCES[0]:
                            continue  # c = 0 is the base solver: once
                        rows.append(dict(base=_label(name, order), nfe=nfe, grid=g, reference=ref if ci else None,
                                         c=float(c), **score(out[gi, ci])))
                log(f"  {_label(name, order)} NFE {nfe} tau={ref}: {time.perf_counter() - t0:.1f} s")
    return rows


def summary(rows, metric):
    """(base, grid, nfe) -> base value, DualFast default, best c (value, c, reference)."""
    out = []
    keys = sorted({(r["base"], r["grid"], r["nfe"]) for r in rows},
                  key=lambda k: ([_label(*b) for b in BASES].index(k[0]), GRIDS.index(k[1]), k[2]))
    for k in keys:
        rs = [r for r in rows if (r["base"], r["grid"], r["nfe"]) == k]
        base = next(r for r in rs if r["c"] == 0.0)[metric]
        dflt = next(r for r in rs if r["c"] == DEFAULT_C and r["reference"] == DEFAULT_REF)[metric]
        best = min((r for r in rs if r["c"] != 0.0), key=lambda r: r[metric])
        out.append(dict(base=k[0], grid=k[1], nfe=k[2], base_value=base, default=dflt, best=best[metric],
                        best_c=best["c"], best_reference=best["reference"]))
    return out


def table(summ, metric_name):
    rows = []
    for s in summ:
        rows.append([s["base"], s["grid"], s["nfe"], C.fmt(s["base_value"]), C.fmt(s["default"]),
                     f"{s['default'] / s['base_value']:.2f}", C.fmt(s["best"]),
                     f"{s['best'] / s['base_value']:.2f}", f"{s['best_c']:+g} ({s['best_reference']})"])
    return C.md_table(["base", "grid", "NFE", f"base {metric_name}", "DualFast default", "ratio", "best c",
                       "ratio", "c (tau)"], rows, ["l", "l", "r", "r", "r", "r", "r", "r", "l"])


def exact_part(problems, nfes, log):
    import jax.numpy as jnp

    import samplax as sx

    res = {}
    for problem in problems:
        gmm, schedule, _ = sx.load_problem(problem)
        x_T, ref, _ = C.reference_solution(problem, REF_STEPS, log=log)
        model = gmm.model(schedule)
        log(f"{problem}: exact model")
        score = lambda x: dict(mean_l2=float(np.mean(np.linalg.norm(x - ref, axis=-1))))  # noqa: E731
        rows = sweep(model, jnp.asarray(x_T, jnp.float32), schedule, nfes, log, score)
        res[problem] = dict(rows=rows, summary=summary(rows, "mean_l2"))
    return res


def _trained_model(path):
    import jax.numpy as jnp

    from samplax.experiment import sample_config
    from samplax.experiment.loading import load_model, resolve_model

    cfg = sample_config()
    cfg.model.name = "gmm2d"
    cfg.model.checkpoint = path
    m = resolve_model(cfg.model.to_dict())
    return load_model(m, jnp.float32), m


def trained_part(path, nfes, log):
    import jax
    import jax.numpy as jnp

    import samplax as sx
    from samplax.metrics import projections, sliced_wasserstein2_host

    loaded, mcfg = _trained_model(path)
    gmm, _, _ = sx.load_problem("gmm2d")
    x_T, ref, _ = C.reference_solution("gmm2d", REF_STEPS, log=log)
    with jax.enable_x64(True):
        g64 = gmm.astype(jnp.float64)
        exact = np.asarray(g64.sample(jax.random.PRNGKey(123), len(x_T), dtype=jnp.float64))
        floor_s = np.asarray(g64.sample(jax.random.PRNGKey(456), len(x_T), dtype=jnp.float64))
    proj = np.asarray(projections(jax.random.PRNGKey(7), 2, 256))
    floor = sliced_wasserstein2_host(exact, floor_s, proj)

    def score(x):
        return dict(mean_l2=float(np.mean(np.linalg.norm(x - ref, axis=-1))),
                    sw2=sliced_wasserstein2_host(x, exact, proj) if np.all(np.isfinite(x)) else None)
    log(f"gmm2d: trained MLP {path} (step {mcfg.get('step')})")
    rows = sweep(loaded.model, jnp.asarray(x_T, jnp.float32), loaded.schedule, nfes, log, score)
    return dict(rows=rows, summary_l2=summary(rows, "mean_l2"), summary_sw2=summary(rows, "sw2"), sw2_floor=floor,
                checkpoint=f"{path} step {mcfg.get('step')}")


def timing_part(log, nfe=10, batch=4096, repeats=5):
    import jax.numpy as jnp

    import samplax as sx
    from samplax.solvers.base import jit_cpu_fast

    gmm, schedule, info = sx.load_problem("gmm64d")
    model = gmm.model(schedule)
    x_T = jnp.asarray(sx.problem_start_points(info, batch), jnp.float32)
    grid = sx.time_grid(schedule, nfe, "logsnr", end="zero", dtype=jnp.float32)
    out = []
    for name, order in (("ddim", 1), ("dpm_solver_pp", 2), ("unipc", 2)):
        opts = {} if name == "ddim" else {"order": order}
        for label, solver in ((_label(name, order), sx.get_solver(name, **opts)),
                              (_label(name, order) + " + DualFast", sx.get_solver("dualfast", base=name, order=order))):
            f = jit_cpu_fast(lambda x, s=solver: sx.sample(s, model, x, grid)[0])
            med = C.median_wall(f, x_T, repeats)
            out.append(dict(solver=label, nfe=nfe, batch=batch, wall_s=med, us_per_sample=1e6 * med / batch))
            log(f"  timing {label}: {1e6 * med / batch:.1f} us/sample")
    return out


def digits_part(path, log, n=1000, nfes=(5, 10)):
    from configs import digits as digits_cfg
    from samplax.experiment import run_sample

    rows = []
    for nfe in nfes:
        for solver, opts in (("dpm_solver_pp", {}), ("dualfast", {"base": "dpm_solver_pp"}),
                             ("dualfast", {"base": "dpm_solver_pp", "mixing": EXTRAP_C})):
            cfg = digits_cfg.get_config()
            cfg.model.checkpoint = path
            cfg.solver.name = solver
            for k, v in opts.items():
                cfg.solver.options[k] = v
            cfg.nfe = nfe
            cfg.n_samples = n
            cfg.metrics.max_sw_samples = n
            cfg.metrics.save_samples = 0
            tag = f"{solver}_c{opts.get('mixing', DEFAULT_C)}" if solver == "dualfast" else solver
            wd = os.path.join(C.CACHE_DIR, "dualfast_digits", f"{tag}_nfe{nfe}")
            log(f"digits: {solver} NFE {nfe}")
            r = run_sample(cfg, wd)[0]
            rows.append(dict(solver=tag, nfe=nfe, n=n, fd=r["metrics"].get("fd"),
                             fd_floor=(r.get("reference") or {}).get("fd_floor")))
    return rows


def _has_checkpoint(path):
    d = os.path.join(path, "checkpoints")
    return os.path.isdir(d) and any(s.isdigit() for s in os.listdir(d))


def verdict_lines(res):
    """Plain counts over the summary tables: where the default helps, and the oracle."""
    def stats(summ, name):
        d = np.array([x["default"] / x["base_value"] for x in summ])
        b = np.array([x["best"] / x["base_value"] for x in summ])
        neg = sum(x["best_c"] < 0 for x in summ)
        gain = [f"{x['base']} {x['grid']} NFE {x['nfe']} ({x['default'] / x['base_value']:.2f})" for x in summ
                if x["default"] / x["base_value"] < 0.98]
        return (f"* {name}: DualFast default better than its base (ratio < 0.98) in {len(gain)} of {len(d)} rows, "
                f"worse (> 1.02) in {int(np.sum(d > 1.02))}; geometric-mean ratio {np.exp(np.mean(np.log(d))):.2f} "
                f"(range {d.min():.2f}-{d.max():.2f}).  Oracle best c: geometric-mean ratio "
                f"{np.exp(np.mean(np.log(b))):.2f}, with c < 0 (extrapolation) in {neg} of {len(b)} rows."
                + (f"  Default gains: {'; '.join(gain)}." if gain else ""))
    def fixed(rows, metric, name):
        base = {(x["base"], x["grid"], x["nfe"]): x[metric] for x in rows if x["c"] == 0.0}
        parts = []
        for c, ref in ((EXTRAP_C, "first"), (EXTRAP_C, "previous"), (-0.3, "first")):
            r = np.array([x[metric] / base[(x["base"], x["grid"], x["nfe"])] for x in rows
                          if x["c"] == c and x["reference"] == ref and x[metric] is not None])
            if len(r):
                parts.append(f"c = {c:g}, tau = {'t_0' if ref == 'first' else 't_(j-1)'}: better in "
                             f"{int(np.sum(r < 0.98))}/{len(r)}, worse in {int(np.sum(r > 1.02))}, geometric mean "
                             f"{np.exp(np.mean(np.log(r))):.2f}, worst {r.max():.2f}")
        return f"* {name}, one fixed negative c for all rows: " + "; ".join(parts) + "."

    out = []
    for problem in ("gmm2d", "gmm64d"):
        if problem in res.get("exact", {}):
            out.append(stats(res["exact"][problem]["summary"], f"{problem} exact, mean L2"))
            out.append(fixed(res["exact"][problem]["rows"], "mean_l2", f"{problem} exact, mean L2"))
    if res.get("trained"):
        out.append(stats(res["trained"]["summary_l2"], "gmm2d trained MLP, mean L2 to the exact solution"))
        out.append(fixed(res["trained"]["rows"], "mean_l2", "gmm2d trained MLP, mean L2"))
        out.append(stats([x for x in res["trained"]["summary_sw2"] if x["base_value"]], "gmm2d trained MLP, SW2"))
        out.append(fixed(res["trained"]["rows"], "sw2", "gmm2d trained MLP, SW2"))
    return "\n".join(out)


def render(res, command, info, date):
    L = ["# DualFast vs its base solvers", "", C.machine_md(info, command, date), ""]
    L += ["What is measured: see the docstring of benchmarks/dualfast.py and docs/dualfast.md (method, "
          "provenance of the formula, options).  `ratio` = DualFast / base (< 1 is a gain).  "
          f"\"DualFast default\" = c = {DEFAULT_C}, tau = t_0 (`reference=\"{DEFAULT_REF}\"`), linear decay, "
          "noise view.  "
          f"\"best c\" = the best of c in {list(C_VALUES[1:])} x tau in {{t_0, t_(j-1)}} for that row: an oracle tuned "
          "on the test metric itself, not a usable setting.", ""]
    L += ["## Counts", "", verdict_lines(res), ""]
    if "verdict" in res:
        L += ["## Verdict", "", res["verdict"], ""]
    for problem in ("gmm2d", "gmm64d"):
        if problem in res.get("exact", {}):
            L += [f"## {problem}, exact model (no approximation error): mean L2 to the exact PF-ODE solution", "",
                  table(res["exact"][problem]["summary"], "L2"), ""]
    if res.get("trained"):
        t = res["trained"]
        L += [f"## gmm2d, trained MLP ({t['checkpoint']}): mean L2 to the EXACT model's PF-ODE solution "
              "from the same x_T", "", table(t["summary_l2"], "L2"), "",
              f"## gmm2d, trained MLP: sliced W2 to 4096 exact samples (noise floor {C.fmt(t['sw2_floor'])})", "",
              table(t["summary_sw2"], "SW2"), ""]
    if res.get("digits"):
        L += ["## digits U-Net: FD (classifier features, test split), 1000 samples, logSNR grid", "",
              f"Added by `{res.get('digits_command', res['command'])}`.", "",
              C.md_table(["solver", "NFE", "FD", "FD floor"],
                         [[r["solver"], r["nfe"], C.fmt(r["fd"]), C.fmt(r["fd_floor"])] for r in res["digits"]]), ""]
    else:
        L += ["## digits", "", res.get("digits_note", "not measured"), ""]
    if res.get("timing"):
        L += ["## Wall time per sample, gmm64d, B = 4096, NFE 10, logSNR grid (median of 5 calls)", "",
              C.md_table(["solver", "us / sample"], [[r["solver"], f"{r['us_per_sample']:.1f}"] for r in res["timing"]],
                         ["l", "r"]), ""]
    return "\n".join(L) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--trained", default="/work/runs/train_gmm2d")
    p.add_argument("--digits", default="/work/runs/train_digits")
    p.add_argument("--no-digits", action="store_true")
    p.add_argument("--digits-only", action="store_true",
                   help="add the digits rows to an existing report (its .json) and re-render it")
    p.add_argument("--render-only", action="store_true", help="re-render an existing report from its .json")
    p.add_argument("--verdict", default=None, help="a text file: the report's written verdict (with --render-only)")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    log = lambda *a: print(*a, flush=True)  # noqa: E731
    C.enable_compilation_cache()
    if args.digits_only or args.render_only:
        import json
        out = args.out or OUT
        with open(out.replace(".md", ".json")) as f:
            res = json.load(f)
        if args.digits_only:
            res["digits"] = digits_part(args.digits, log)
            res.pop("digits_note", None)
            res["digits_command"] = C.command_line(MODULE)
        if args.verdict:
            with open(args.verdict) as f:
                res["verdict"] = f.read().strip()
        md = render(res, res["command"], res["machine"], res["date"])
        C.atomic_write_json(out.replace(".md", ".json"), res)
        with open(out, "w") as f:
            f.write(md)
        print(md)
        return 0
    nfes = (5, 10) if args.quick else NFES
    problems = ("gmm2d",) if args.quick else ("gmm2d", "gmm64d")
    out = args.out or (OUT.replace(".md", "_quick.md") if args.quick else OUT)
    res = {"nfes": nfes, "c_values": C_VALUES, "default": dict(c=DEFAULT_C, reference=DEFAULT_REF)}
    res["exact"] = exact_part(problems, nfes, log)
    if args.trained and _has_checkpoint(args.trained):
        res["trained"] = trained_part(args.trained, nfes, log)
    if not args.quick:
        res["timing"] = timing_part(log)
    if args.quick or args.no_digits:
        res["digits_note"] = "Not measured in this run (--quick / --no-digits)."
    elif _has_checkpoint(args.digits):
        try:
            res["digits"] = digits_part(args.digits, log)
        except Exception as e:  # noqa: BLE001 -- a missing / unfinished checkpoint: say so in the report
            res["digits_note"] = f"Not measured: {type(e).__name__}: {e}"
    else:
        res["digits_note"] = f"Not measured: no checkpoint under {args.digits}."
    info, date, command = C.machine_info(), C.utc_now(), C.command_line(MODULE)
    res.update(machine=info, date=date, command=command)
    md = render(res, command, info, date)
    os.makedirs(os.path.dirname(out), exist_ok=True)
    C.atomic_write_json(out.replace(".md", ".json"), res)
    with open(out, "w") as f:
        f.write(md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
