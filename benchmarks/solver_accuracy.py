"""Solver accuracy on the exact Gaussian-mixture problems.

For every deterministic solver configuration x grid spacing x grid end x AFS x
NFE, the mean / max L2 distance (over the 4096 benchmark start points) between
the float32 sample at sigma = 0 and the exact probability-flow ODE solution
from the same x_T (float64 RK4, computed once per problem and cached under
.bench_cache/), and the fraction of samples that land in a different mixture
component than their exact solution.

One compiled program per (problem, solver configuration, NFE) holding its (up
to) four (end, AFS) combinations, each vmapped over the five grid spacings
(``--split-programs``: one program per (problem, configuration, end, AFS,
NFE), about twice the compile time); programs are compiled and run in
``--jobs`` worker processes, with JAX's persistent compilation cache under
.jax_cache/ (so a second run mostly loads programs instead of compiling them).

    python -m benchmarks.solver_accuracy --quick      # gmm2d, NFE 5/10/20, a subset of solvers: minutes
    python -m benchmarks.solver_accuracy              # gmm2d + gmm64d, NFE 5..50, every configuration
    python -m benchmarks.solver_accuracy --from-json docs/benchmarks/solver_accuracy.json   # re-render only

Writes docs/benchmarks/solver_accuracy.md (or --out) and a .json next to it.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
import traceback
from collections import defaultdict
from concurrent.futures import ProcessPoolExecutor, as_completed

import numpy as np

from benchmarks import _common as C

MODULE = "benchmarks.solver_accuracy"
DEFAULT_OUT = os.path.join("docs", "benchmarks", "solver_accuracy.md")
QUICK_OUT = os.path.join("docs", "benchmarks", "solver_accuracy_quick.md")  # so --quick never overwrites the full table
PROBLEMS = ("gmm2d", "gmm64d")
NFES = (5, 6, 8, 10, 15, 20, 50)
QUICK_NFES = (5, 10, 20)
ENDS = ("zero", "denoise")
AFS = (False, True)
REF_STEPS = 2000
T_MIN = 1e-3  # the grids' last node before sigma = 0 (samplax's default for the discrete VP schedule)

# Best published numbers of any public implementation (grid ending at sigma = 0).
TARGETS = {
    "gmm2d": {5: 0.0504, 6: 0.0437, 8: 0.0278, 10: 0.0156, 15: 0.00472, 20: 0.00237},
    "gmm64d": {5: 0.377, 6: 0.209, 8: 0.0753, 10: 0.0401, 15: 0.0158, 20: 0.00865},
}

# The multistep exponential integrators compared against DDIM in section (b).
EI_MULTISTEP = ("dpm_solver_multistep", "dpm_solver_pp", "deis", "unipc")


# Options that reproduce the official codes (no safeguard, their coefficient conventions).
OFFICIAL_DPM = {"third_order": "official", "lower_order_final_below": 10, "max_step_ratio": None, "max_step": None}
OFFICIAL_UNIPC = {"official_rhos": True, "max_step_ratio": None, "max_step": None}


def _configs():
    """(solver name, options) of every deterministic configuration benchmarked."""
    cfg = [("euler", {}), ("heun", {}), ("ddim", {})]
    cfg += [("dpm_solver", {"order": o}) for o in (1, 2, 3)]
    cfg += [("dpm_solver_multistep", {"order": o}) for o in (2, 3)]
    cfg += [("dpm_solver_multistep", {"order": o, **OFFICIAL_DPM}) for o in (2, 3)]
    cfg += [("dpm_solver_pp", {"order": o}) for o in (2, 3)]
    cfg += [("dpm_solver_pp", {"order": o, **OFFICIAL_DPM}) for o in (2, 3)]
    cfg += [("dpm_solver_pp_singlestep", {"order": o}) for o in (2, 3)]
    cfg += [("deis", {"order": o}) for o in (1, 2, 3, 4)]
    cfg += [("unipc", {"variant": v, "order": o, "corrector": True}) for v in ("bh1", "bh2") for o in (1, 2, 3)]
    cfg += [("unipc", {"variant": "bh2", "order": 2, "corrector": False})]
    cfg += [("unipc", {"variant": "bh2", "order": o, "official_rhos": False}) for o in (2, 3)]
    cfg += [("unipc", {"variant": v, "order": o, **OFFICIAL_UNIPC}) for v in ("bh1", "bh2") for o in (2, 3)]
    cfg += [("ipndm", {"order": o}) for o in (2, 3, 4)]
    cfg += [("ipndm_v", {"order": o}) for o in (2, 3, 4)]
    cfg += [("ipndm_v", {"order": o, "coefficients": "diff_sampler"}) for o in (3, 4)]
    return cfg


CONFIGS = _configs()

# --quick: a subset that keeps every multistep family (and Euler as the cheapest baseline).
QUICK_CONFIGS = ("euler", "ddim", "dpm_solver_multistep o2", "dpm_solver_multistep o3", "dpm_solver_pp o2",
                 "dpm_solver_pp o3", "deis o3", "unipc bh1 o2", "unipc bh2 o2", "unipc bh2 o3",
                 "unipc bh1 o2 official", "unipc bh1 o3 official", "dpm_solver_multistep o3 official", "ipndm o3",
                 "ipndm_v o3",
                 "ipndm_v o3 diff-sampler")
RATIO_TOL = 1e-3  # section (b): a row counts as worse than DDIM when the ratio exceeds 1 + RATIO_TOL


def config_label(solver: str, options: dict) -> str:
    parts = [solver]
    if "variant" in options:
        parts.append(options["variant"])
    if "order" in options:
        parts.append(f"o{options['order']}")
    if options.get("corrector") is False:
        parts.append("nocorr")
    if options.get("max_step_ratio", 0) is None:
        parts.append("official")  # the official code's conventions, no safeguard
    elif options.get("official_rhos") is False:
        parts.append("solved")
    if options.get("coefficients") == "diff_sampler":
        parts.append("diff-sampler")
    return " ".join(parts)


def row_label(r: dict) -> str:
    return f"{r['config']}, {r['grid']}, end={r['end']}, afs={'T' if r['afs'] else 'F'}"


# ---------------------------------------------------------------------------------------
# Worker side: compile and run the programs of one (problem, configuration).
# ---------------------------------------------------------------------------------------
_STATE: dict = {}


def _worker_init(use_cache: bool):
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if use_cache:
        C.enable_compilation_cache()


def _problem_state(problem: str):
    if problem not in _STATE:
        import jax.numpy as jnp

        import samplax as sx

        gmm, schedule, _ = sx.load_problem(problem)  # float32 (default dtype)
        x_T, ref, ref_mode = C.reference_solution(problem, REF_STEPS)
        _STATE[problem] = dict(gmm=gmm, schedule=schedule, x_T=jnp.asarray(x_T, jnp.float32), ref=ref,
                               ref_mode=ref_mode)
    return _STATE[problem]


def _program(solvers, schedule):
    """One jitted program running ``solvers`` (one per grid stack), each vmapped over its grids."""
    import jax
    import jax.numpy as jnp

    import samplax as sx

    def run(grid_stacks, x_T, gmm):
        model = gmm.model(schedule)
        outs = []
        for solver, grids in zip(solvers, grid_stacks):
            def one(grid, solver=solver):
                x0, info = sx.sample(solver, model, x_T, grid)
                mode = jnp.argmax(gmm.component_log_posterior(x0, 0.0), axis=-1)
                return x0, mode, info.first_nonfinite_step, info.n_nonfinite[-1]

            outs.append(jax.vmap(one)(grids))
        return outs

    return jax.jit(run)


def _compile_and_run(items, st, tm):
    """Compile one program for ``items`` (dicts with solver, grids), run it, return its outputs."""
    import jax

    t1 = time.perf_counter()
    args = ([it["grids"] for it in items], st["x_T"], st["gmm"])
    lowered = _program([it["solver"] for it in items], st["schedule"]).lower(*args)
    t2 = time.perf_counter()
    compiled = lowered.compile()
    t3 = time.perf_counter()
    out = jax.block_until_ready(compiled(*args))
    t4 = time.perf_counter()
    tm["trace"] += t2 - t1
    tm["compile"] += t3 - t2
    tm["run"] += t4 - t3
    return [tuple(np.asarray(o) for o in res) for res in out]


def run_config(problem: str, cfg_index: int, nfes, ends=ENDS, afs_values=AFS, split: bool = False):
    """All (end, afs, nfe) combinations of one solver configuration on one problem.

    By default one program per NFE holds the (up to) four (end, AFS) combinations:
    XLA's per-program overhead then is paid once instead of four times (about 2x
    less compile time on CPU).  ``split``: one program per (end, AFS, NFE)."""
    import samplax as sx

    st = _problem_state(problem)
    name, opts = CONFIGS[cfg_index]
    label = config_label(name, opts)
    rows, skipped, failures = [], [], []
    tm = defaultdict(float)
    n_programs = 0
    for nfe in nfes:
        items = []
        for end in ends:
            for afs in afs_values:
                try:
                    solver = sx.get_solver(name, **opts, afs=afs)
                except ValueError as e:
                    failures.append(dict(problem=problem, config=label, end=end, afs=afs, nfe=nfe, error=str(e)))
                    continue
                try:
                    n_steps = sx.steps_for_nfe(solver, nfe, end)
                except ValueError:
                    skipped.append(dict(problem=problem, config=label, end=end, afs=afs, nfe=nfe))
                    continue
                t0 = time.perf_counter()
                grids = C.stacked_grids(st["schedule"], n_steps, end)
                tm["grids"] += time.perf_counter() - t0
                items.append(dict(end=end, afs=afs, solver=solver, n_steps=n_steps, grids=grids))
        if not items:
            continue
        groups = [[it] for it in items] if split else [items]
        results = []  # (item, outputs)
        for group in groups:
            try:
                outs = _compile_and_run(group, st, tm)
                n_programs += 1
                results += list(zip(group, outs))
            except Exception:  # isolate the broken combination(s): retry one by one
                for it in group:
                    try:
                        outs = _compile_and_run([it], st, tm)
                        n_programs += 1
                        results.append((it, outs[0]))
                    except Exception as e:  # a broken configuration must not stop the benchmark
                        failures.append(dict(problem=problem, config=label, end=it["end"], afs=it["afs"], nfe=nfe,
                                             error=f"{type(e).__name__}: {e}".splitlines()[0][:300],
                                             traceback=traceback.format_exc(limit=3)))
        for it, (x0, mode, first_bad, n_bad) in results:
            err = np.linalg.norm(x0.astype(np.float64) - st["ref"][None], axis=-1)  # (n_grids, B)
            for g, spacing in enumerate(C.SPACINGS):
                finite = bool(np.all(np.isfinite(err[g])))
                row = dict(problem=problem, solver=name, order=int(opts.get("order", it["solver"].order)),
                           grid=spacing, end=it["end"], afs=it["afs"], nfe=nfe,
                           mean_l2=float(err[g].mean()) if finite else float("nan"),
                           max_l2=float(err[g].max()) if finite else float("nan"),
                           mode_flip_frac=float(np.mean(mode[g] != st["ref_mode"])),
                           n_nonfinite=int(n_bad[g]))
                for key, value in opts.items():  # the options that define the configuration
                    row.setdefault(key, value)
                if name == "unipc":
                    row.setdefault("corrector", True)  # the factory's default
                row.update(config=label, n_steps=int(it["n_steps"]), first_nonfinite_step=int(first_bad[g]))
                if not finite:
                    ok = np.isfinite(err[g])
                    row["mean_l2_finite_samples"] = float(err[g][ok].mean()) if ok.any() else float("nan")
                rows.append(row)
    return dict(problem=problem, config=label, rows=rows, skipped=skipped, failures=failures,
                timing=dict(tm), n_programs=n_programs)


# ---------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------
def _finite(r):
    return r["mean_l2"] is not None and math.isfinite(r["mean_l2"])


def _best(rows):
    good = [r for r in rows if _finite(r)]
    return min(good, key=lambda r: r["mean_l2"]) if good else None


def report(meta: dict, rows: list, skipped: list, failures: list) -> str:
    problems = [p for p in meta["problems"]]
    nfes = meta["nfes"]
    out = [f"# Solver accuracy on the exact GMM problems{' (quick run)' if meta['quick'] else ''}", ""]
    out.append(C.machine_md(meta["machine"], meta["command"], meta["date"]))
    t = meta["timing"]
    out += [
        f"* Runtime: {t['wall_s']:.0f} s wall ({meta['jobs']} worker process(es)); summed over programs: "
        f"trace/lower {t['trace_s']:.0f} s, XLA compile {t['compile_s']:.0f} s (persistent cache "
        f"{'on: loads count as compile' if meta['compilation_cache'] else 'off'}), run {t['run_s']:.0f} s, "
        f"grid construction {t['grids_s']:.0f} s; exact references {t['reference_s']:.0f} s."
        + (f" {meta['resumed_tasks']} of the (problem, configuration) tasks were read from the checkpoint of an "
           "interrupted earlier run (`--resume`): their compile/run times are in the sums, the wall time is this "
           "invocation's." if meta.get("resumed_tasks") else ""),
        f"* {len(rows)} rows from {meta['n_programs']} compiled programs (one per problem x configuration x "
        f"{'end x AFS x NFE' if meta['split_programs'] else 'NFE holding the end x AFS combinations'}, each "
        f"vmapped over the {len(C.SPACINGS)} grids); {len(skipped)} (configuration, end, AFS, NFE) "
        f"combinations skipped because no step count gives that NFE; {len(failures)} failures.",
        f"* Problems: {', '.join(problems)}; NFE: {', '.join(map(str, nfes))}; {len(meta['configs_run'])} solver "
        f"configurations{' (the --quick subset)' if len(meta['configs_run']) < len(CONFIGS) else ''}: "
        + ", ".join(f"`{c}`" for c in meta["configs_run"]) + ".",
        "",
        "Setup: float32 samples from the 4096 benchmark start points x_T "
        "(`numpy.random.default_rng(dim).standard_normal((4096, dim))`) at t = 1 to sigma = 0; error = "
        "Euclidean distance to the exact probability-flow ODE solution from the same x_T (float64 RK4, "
        f"{REF_STEPS} steps, Richardson-extrapolated), mean and max over samples. `mode_flip` = fraction of "
        "samples whose most likely mixture component (at noise level 0) differs from that of their exact "
        "solution. Grids from t_max = 1 to t_min = 1e-3; end `zero` appends sigma = 0, `denoise` ends with a "
        "denoising evaluation at t_min (counted in the NFE); AFS = analytic first step (saves one evaluation). "
        "Solver options are the defaults (safeguard on) apart from those named.",
        "",
    ]
    by_problem = defaultdict(list)
    for r in rows:
        by_problem[r["problem"]].append(r)

    for p in problems:
        prow = by_problem[p]
        out += [f"## {p}", "", "### (a) Best configuration at each NFE vs the best public result", ""]
        fl = meta.get("denoise_floor", {}).get(p)
        if fl:
            out += [f"Floor: every grid here reaches sigma = 0 by a denoising jump from t_min = {T_MIN:g}; even "
                    f"an exact ODE solve to t_min followed by the exact x0_hat has mean_l2 = {C.fmt(fl['mean_l2'], 4)} "
                    f"(max {C.fmt(fl['max_l2'])}) on {p}.", ""]
        out += ["`reached` compares the best row (either end), rounded to the target's 3 significant digits, with the target; the last column is the best row "
                "whose grid ends at sigma = 0 itself (end=zero).", ""]
        table = []
        for nfe in nfes:
            rs = [r for r in prow if r["nfe"] == nfe]
            b = _best(rs)
            bz = _best([r for r in rs if r["end"] == "zero"])
            tgt = TARGETS.get(p, {}).get(nfe)
            if b is None:
                table.append([nfe, C.fmt(tgt), "—", "—", "", "", "", "", "", "", ""])
                continue
            # The targets are quoted to 3 significant digits: compare at that precision.
            reach = "—" if tgt is None else ("yes" if float(f"{b['mean_l2']:.3g}") <= tgt else "no")
            table.append([nfe, C.fmt(tgt), f"**{C.fmt(b['mean_l2'], 4)}**", reach, b["config"], b["grid"], b["end"],
                          "T" if b["afs"] else "F", C.fmt(b["max_l2"]), C.fmt(b["mode_flip_frac"]),
                          f"{C.fmt(bz['mean_l2'], 4)} ({bz['config']}, {bz['grid']}{', afs' if bz['afs'] else ''})"
                          if bz else "—"])
        out.append(C.md_table(["NFE", "target", "best mean_l2", "reached", "solver config", "grid", "end", "afs",
                               "max_l2", "mode_flip", "best with end=zero"], table,
                              ["r", "r", "r", "c", "l", "l", "l", "c", "r", "r", "l"]))
        out.append("")

        # (b) worst multistep exponential integrator vs DDIM
        ddim = {(r["grid"], r["end"], r["afs"], r["nfe"]): r for r in prow if r["solver"] == "ddim"}
        out += ["### (b) Worst multistep exponential integrator relative to DDIM", "",
                "For each grid and NFE: the largest mean_l2(row) / mean_l2(DDIM, same grid, end, AFS, NFE) over "
                "all rows of " + ", ".join(f"`{s}`" for s in EI_MULTISTEP) + " with samplax's defaults (every "
                "order / variant benchmarked; the `official` configurations, which have no safeguard, are "
                "excluded); **bold** where that row is worse than DDIM (ratio > 1 + "
                f"{RATIO_TOL:g}; `deis o1` equals DDIM up to float32 rounding). `n > 1` = how many of those rows "
                "are worse than DDIM, out of how many compared.", ""]
        table = []
        n_worse_total = n_cmp_total = 0
        worse_by_end = defaultdict(int)
        for spacing in C.SPACINGS:
            for nfe in nfes:
                worst, worst_ratio, n_worse, n_cmp = None, -1.0, 0, 0
                for r in prow:
                    if (r["solver"] not in EI_MULTISTEP or r["grid"] != spacing or r["nfe"] != nfe
                            or r["config"].endswith("official")):
                        continue
                    d = ddim.get((r["grid"], r["end"], r["afs"], r["nfe"]))
                    if d is None or not _finite(d):
                        continue
                    ratio = r["mean_l2"] / d["mean_l2"] if _finite(r) else math.inf
                    n_cmp += 1
                    n_worse += ratio > 1.0 + RATIO_TOL
                    worse_by_end[r["end"]] += ratio > 1.0 + RATIO_TOL
                    if ratio > worst_ratio:
                        worst, worst_ratio = r, ratio
                n_worse_total += n_worse
                n_cmp_total += n_cmp
                if worst is None:
                    continue
                d = ddim[(worst["grid"], worst["end"], worst["afs"], worst["nfe"])]
                rs = f"{worst_ratio:.3f}" if math.isfinite(worst_ratio) else "inf (non-finite)"
                table.append([spacing, nfe, f"**{rs}**" if worst_ratio > 1.0 + RATIO_TOL else rs,
                              f"{worst['config']}, end={worst['end']}, afs={'T' if worst['afs'] else 'F'}",
                              C.fmt(worst["mean_l2"]), C.fmt(d["mean_l2"]), f"{n_worse}/{n_cmp}"])
        out.append(C.md_table(["grid", "NFE", "worst ratio", "row", "row mean_l2", "DDIM mean_l2", "n > 1"],
                              table, ["l", "r", "r", "l", "r", "r", "r"]))
        out += ["", f"{n_worse_total} of {n_cmp_total} multistep exponential-integrator rows on {p} are worse "
                "than DDIM on the same grid, end, AFS and NFE ("
                + ", ".join(f"{worse_by_end[e]} with end={e}" for e in ENDS) + ").", ""]

        # (c) best mean_l2 per configuration and NFE
        out += ["### (c) Best mean_l2 per solver configuration (over grids, ends, AFS)", "",
                "— = no step count gives that NFE; nan = every row non-finite.", ""]
        by_cfg = defaultdict(list)
        for r in prow:
            by_cfg[r["config"]].append(r)
        table = []
        for name, opts in CONFIGS:
            lab = config_label(name, opts)
            if lab not in by_cfg:
                continue
            cells = []
            for nfe in nfes:
                rs = [r for r in by_cfg[lab] if r["nfe"] == nfe]
                b = _best(rs)
                cells.append(C.fmt(b["mean_l2"]) if b else ("nan" if rs else "—"))
            table.append([lab] + cells)
        tgt_row = ["*target*"] + [C.fmt(TARGETS.get(p, {}).get(n)) for n in nfes]
        out.append(C.md_table(["config"] + [f"NFE {n}" for n in nfes], table + [tgt_row],
                              ["l"] + ["r"] * len(nfes)))
        out.append("")

    bad = [r for r in rows if r["n_nonfinite"] > 0 or not _finite(r)]
    out += ["## Non-finite rows", ""]
    if bad:
        out.append(C.md_table(["problem", "row", "NFE", "n_nonfinite", "first non-finite step"],
                              [[r["problem"], row_label(r), r["nfe"], r["n_nonfinite"], r["first_nonfinite_step"]]
                               for r in bad]))
    else:
        out.append("None: every sample of every row is finite.")
    out.append("")
    if failures:
        out += ["## Failures", "", C.md_table(["problem", "config", "end", "afs", "NFE", "error"],
                                              [[f["problem"], f["config"], f["end"], f["afs"], f["nfe"],
                                                f["error"].replace("|", "\\|")] for f in failures]), ""]
    return "\n".join(out)


# ---------------------------------------------------------------------------------------
# Driver
# ---------------------------------------------------------------------------------------
def _log(msg):
    print(msg, file=sys.stderr, flush=True)


def _restore_nan(res: dict) -> dict:
    for r in res["rows"]:
        for key in ("mean_l2", "max_l2"):
            if r.get(key) is None:
                r[key] = float("nan")
    return res


def rerender(json_path: str, out_md: str | None = None) -> int:
    """Rewrite the markdown of an earlier run from its JSON (the measurements are not repeated;
    the command, date and machine lines are those of the run)."""
    with open(json_path) as f:
        data = json.load(f)
    meta = data["meta"]
    meta.setdefault("configs_run", sorted({r["config"] for r in data["rows"]},
                                          key=lambda c: [config_label(n, o) for n, o in CONFIGS].index(c)))
    meta.setdefault("split_programs", False)
    if "denoise_floor" not in meta:
        meta["denoise_floor"] = {p: C.denoise_floor(p, T_MIN, REF_STEPS, log=_log) for p in meta["problems"]}
        C.atomic_write_json(json_path, data)
    rows = _restore_nan(dict(rows=data["rows"]))["rows"]
    md = report(meta, rows, data["skipped"], data["failures"])
    out_md = out_md or os.path.splitext(json_path)[0] + ".md"
    C.atomic_write_text(out_md, md + "\n")
    print(md)
    _log(f"re-rendered {out_md} from {json_path}")
    return 0


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true",
                    help="gmm2d only, NFE 5, 10, 20, a subset of the configurations (QUICK_CONFIGS)")
    ap.add_argument("--out", default=None,
                    help=f"markdown output path (default {DEFAULT_OUT}, with --quick {QUICK_OUT}); the JSON goes "
                         "next to it with the same stem")
    ap.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1),
                    help="worker processes compiling/running programs (default: min(2, cores))")
    ap.add_argument("--problems", nargs="+", choices=PROBLEMS, default=None, help="override the problem list")
    ap.add_argument("--nfes", nargs="+", type=int, default=None, help="override the NFE list")
    ap.add_argument("--no-compile-cache", action="store_true", help="disable JAX's persistent compilation cache")
    ap.add_argument("--all-configs", action="store_true", help="with --quick: every configuration, not the subset")
    ap.add_argument("--split-programs", action="store_true",
                    help="one program per (problem, config, end, AFS, NFE) instead of per (problem, config, NFE)")
    ap.add_argument("--resume", action="store_true",
                    help="reuse the finished tasks of an interrupted run with the same parameters and samplax sources")
    ap.add_argument("--from-json", metavar="JSON",
                    help="no benchmark: re-render the markdown from a previous run's JSON (to --out, or next to it)")
    args = ap.parse_args(argv)
    if args.from_json:
        return rerender(args.from_json, args.out)

    t_start = time.perf_counter()
    problems = args.problems or (["gmm2d"] if args.quick else list(PROBLEMS))
    nfes = sorted(args.nfes or (QUICK_NFES if args.quick else NFES))
    use_cache = not args.no_compile_cache
    _worker_init(use_cache)
    import jax  # noqa: F401  (after the cache configuration)

    meta = dict(command=C.command_line(MODULE), date=C.utc_now(), machine=C.machine_info(), quick=args.quick,
                problems=problems, nfes=nfes, ends=list(ENDS), afs=list(AFS), grids=list(C.SPACINGS),
                jobs=args.jobs, compilation_cache=use_cache, split_programs=args.split_programs, dtype="float32", reference_steps=REF_STEPS,
                configs=[dict(solver=n, options=o, label=config_label(n, o)) for n, o in CONFIGS])

    t0 = time.perf_counter()
    floors = {}
    for p in problems:  # computed (or loaded) once here, then read from the cache by the workers
        C.reference_solution(p, REF_STEPS, log=_log)
        floors[p] = C.denoise_floor(p, T_MIN, REF_STEPS, log=_log)
    meta["denoise_floor"] = floors
    t_ref = time.perf_counter() - t0

    # Heaviest tasks first (gmm64d, then higher orders) for better load balance.
    cfg_idx = [i for i, (n, o) in enumerate(CONFIGS) if args.all_configs or not args.quick
               or config_label(n, o) in QUICK_CONFIGS]
    meta["configs_run"] = [config_label(*CONFIGS[i]) for i in cfg_idx]
    tasks = [(p, i) for p in sorted(problems, key=lambda q: q != "gmm64d") for i in cfg_idx]
    n_tasks = len(tasks)
    rows, skipped, failures, timing, n_programs = [], [], [], defaultdict(float), 0

    # Checkpoint: every finished (problem, configuration) is appended to a JSON-lines file keyed by
    # the run's parameters and by the samplax sources; --resume reuses it after an interrupted run.
    run_key = C.digest(problems, nfes, args.split_programs, REF_STEPS, CONFIGS, C.samplax_source_digest())
    ckpt = os.path.join(C.CACHE_DIR, "partial", f"solver_accuracy_{run_key}.jsonl")
    done = {}
    if args.resume and os.path.exists(ckpt):
        with open(ckpt) as f:
            for line in f:
                try:
                    res = json.loads(line)
                except json.JSONDecodeError:  # a line cut short by the interruption
                    continue
                done[(res["problem"], res["config"])] = res
        _log(f"resuming: {len(done)} finished (problem, configuration) tasks read from "
             f"{os.path.relpath(ckpt, C.REPO_ROOT)}")
    elif os.path.exists(ckpt):
        os.unlink(ckpt)
    meta["resumed_tasks"] = 0

    def collect(res, k, from_ckpt=False):
        nonlocal n_programs
        if from_ckpt:
            meta["resumed_tasks"] += 1
        else:
            os.makedirs(os.path.dirname(ckpt), exist_ok=True)
            with open(ckpt, "a") as f:
                f.write(json.dumps(C._json_clean(res)) + "\n")
        rows.extend(res["rows"])
        skipped.extend(res["skipped"])
        failures.extend(res["failures"])
        n_programs += res["n_programs"]
        for key, v in res["timing"].items():
            timing[key] += v
        tm = res["timing"]
        _log(f"[{k}/{n_tasks}] {'(checkpoint) ' if from_ckpt else ''}{res['problem']} {res['config']}: "
             f"{res['n_programs']} programs, "
             f"trace {tm.get('trace', 0):.1f} s, compile {tm.get('compile', 0):.1f} s, run {tm.get('run', 0):.1f} s"
             f"{', %d FAILURES' % len(res['failures']) if res['failures'] else ''} "
             f"(elapsed {time.perf_counter() - t_start:.0f} s)")

    k = 0
    for p, i in tasks:
        res = done.get((p, config_label(*CONFIGS[i])))
        if res is not None:
            k += 1
            collect(_restore_nan(res), k, from_ckpt=True)
    tasks = [(p, i) for p, i in tasks if (p, config_label(*CONFIGS[i])) not in done]
    if args.jobs <= 1:
        for p, i in tasks:
            k += 1
            collect(run_config(p, i, nfes, split=args.split_programs), k)
    elif tasks:
        import multiprocessing as mp

        with ProcessPoolExecutor(args.jobs, mp_context=mp.get_context("spawn"), initializer=_worker_init,
                                 initargs=(use_cache,)) as ex:
            futs = [ex.submit(run_config, p, i, nfes, split=args.split_programs) for p, i in tasks]
            for f in as_completed(futs):
                k += 1
                collect(f.result(), k)

    cfg_pos = {config_label(n, o): i for i, (n, o) in enumerate(CONFIGS)}
    rows.sort(key=lambda r: (problems.index(r["problem"]), cfg_pos[r["config"]], ENDS.index(r["end"]), r["afs"],
                             r["nfe"], C.SPACINGS.index(r["grid"])))
    wall = time.perf_counter() - t_start
    meta["timing"] = dict(wall_s=wall, reference_s=t_ref, trace_s=timing["trace"], compile_s=timing["compile"],
                          run_s=timing["run"], grids_s=timing["grids"])
    meta["n_programs"] = n_programs
    meta["n_rows"] = len(rows)

    md = report(meta, rows, skipped, failures)
    out_md = args.out or (QUICK_OUT if args.quick else DEFAULT_OUT)
    out_json = os.path.splitext(out_md)[0] + ".json"
    C.atomic_write_json(out_json, dict(meta=meta, rows=rows, skipped=skipped, failures=failures))
    C.atomic_write_text(out_md, md + "\n")
    if os.path.exists(ckpt):
        os.unlink(ckpt)
    print(md)
    _log(f"wrote {out_md} and {out_json}: {len(rows)} rows, {n_programs} programs, {len(failures)} failures, "
         f"{wall:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
