"""Searched solver schedules vs the best hand-designed solvers (issue 17, section 3).

For gmm2d and gmm64d at NFE 5, 6, 8, 10 (grids ending at sigma = 0, analytic
first step, as the best hand-designed rows): evolutionary search and S^3
(predictor-based, Liu et al. 2023) with an equal evaluation budget, both scored
in float32 by the mean L2 error to the exact PF-ODE solution on *search* start
points (``jax.random.normal(PRNGKey(2026), (n, d))``), both started from the
same initial population (random candidates plus four classic schedules on the
time-quadratic grid: DPM-Solver++ 2M / 3M, UniPC-bh1 / bh2 order 3).  The best
schedule of each search is then evaluated on the 4096 *benchmark* start points
(``problem_start_points``, never seen by the search): mean / max L2 and mode-flip
fraction, compared with the best hand-designed row of
docs/benchmarks/solver_accuracy.md and the target (half its mean L2).  The
evaluations and search seconds until the best-so-far schedule first meets the
target on the benchmark points are measured by re-evaluating the best-so-far
on them after every step (monitoring only: the search never sees those scores).

    python -m benchmarks.search_targets               # full: ~10-15 min on 2 cores
    python -m benchmarks.search_targets --quick       # gmm2d, NFE 5 and 10, fewer steps

XLA's YNNPACK fusions are switched off (``--xla_cpu_experimental_ynn_fusion_type=``)
unless ``--keep-xla-flags``: measured here, the population scorer is ~8x faster
without them (0.0065 s vs 0.055 s per 64 candidates x 512 samples, gmm2d NFE 5).

Writes docs/benchmarks/search_targets.md (or --out), a .json next to it, and the
best schedule of every (problem, NFE) to docs/benchmarks/schedules/<problem>_nfe<N>.json.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

MODULE = "benchmarks.search_targets"
DEFAULT_OUT = os.path.join("docs", "benchmarks", "search_targets.md")
QUICK_OUT = os.path.join("docs", "benchmarks", "search_targets_quick.md")
SCHEDULE_DIR = os.path.join("docs", "benchmarks", "schedules")
PROBLEMS = ("gmm2d", "gmm64d")
NFES = (5, 6, 8, 10)
REF_STEPS = 2000
SEARCH_KEY = 2026
# Best hand-designed rows (end = zero, any AFS), docs/benchmarks/solver_accuracy.md / .json:
# (mean_l2, max_l2, mode_flip, configuration).
BEST = {
    "gmm2d": {5: (0.05043, 0.616, 0.0649, "unipc bh1 o3 official, time_quadratic, afs"),
              6: (0.04365, 0.723, 0.0491, "unipc bh2 o3, time_quadratic, afs"),
              8: (0.02728, 0.692, 0.0227, "ipndm_v o3 diff-sampler, time_quadratic, afs"),
              10: (0.01345, 0.490, 0.0149, "ipndm_v o3 diff-sampler, time_quadratic, afs")},
    "gmm64d": {5: (0.3508, 4.75, 0.0327, "ipndm o2, time_quadratic, afs"),
               6: (0.1966, 4.33, 0.0188, "ipndm_v o4 diff-sampler, time_quadratic, afs"),
               8: (0.06231, 4.14, 0.00928, "ipndm o3, time_quadratic, afs"),
               10: (0.03820, 4.20, 0.00391, "ipndm o3, time_quadratic"), },
}
# The table of targets (half the best hand-designed mean L2, as written there).
TARGET = {"gmm2d": {5: 0.025, 6: 0.022, 8: 0.014, 10: 0.0067},
          "gmm64d": {5: 0.175, 6: 0.10, 8: 0.031, 10: 0.019}}


def _log(msg):
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def search_points(info, n):
    import jax
    import numpy as np

    return np.asarray(jax.random.normal(jax.random.PRNGKey(SEARCH_KEY), (n, info["dim"])), np.float64)


def cached_reference(problem, x_T, tag):
    """Exact PF-ODE solution (float64) of x_T, cached under .bench_cache/."""
    import numpy as np

    from benchmarks import _common as C
    from samplax.search import gmm_reference

    path = os.path.join(C.CACHE_DIR, f"search_ref_{problem}_{tag}_{C.digest(problem, REF_STEPS, x_T)}.npz")
    if os.path.exists(path):
        with np.load(path) as z:
            return z["x0"], z["mode"]
    t0 = time.perf_counter()
    x0, mode = gmm_reference(problem, x_T, n_steps=REF_STEPS)
    C.atomic_save_npz(path, x0=x0, mode=mode)
    _log(f"reference {problem} {tag} ({len(x_T)} points) in {time.perf_counter() - t0:.1f} s")
    return x0, mode


def classic_seeds(space, schedule):
    """Genotypes of four classic solvers on the time-quadratic grid."""
    import jax.numpy as jnp

    from samplax.search.space import stack
    from samplax.solvers.schedule import constant_schedule
    from samplax.timesteps import time_grid

    t = time_grid(schedule, space.n_steps, "time_quadratic", end=space.end, dtype=jnp.float32).t
    t = t[:-1] if space.end == "zero" else t
    kw = dict(end=space.end, afs=space.afs)
    scheds = [constant_schedule(t, order=2, **kw), constant_schedule(t, order=3, **kw),
              constant_schedule(t, order=3, derivative="unipc_bh1", corrector=True, **kw),
              constant_schedule(t, order=3, derivative="unipc_bh2", corrector=True, **kw)]
    return stack([space.from_schedule(s) for s in scheds])


def run_problem_nfe(problem, nfe, args):
    import jax
    import jax.numpy as jnp
    import numpy as np

    import samplax as sx
    from samplax.search import SearchSpace, evolution, gmm_mode_fn, make_scorer, s3
    from samplax.solvers.schedule import check_schedule, save_schedule

    gmm, sch, info = sx.load_problem(problem)
    model = gmm.model(sch)
    n_search = args.search_points[0] if problem == "gmm2d" else args.search_points[1]
    x_s = search_points(info, n_search)
    ref_s, _ = cached_reference(problem, x_s, "search")
    x_b = sx.problem_start_points(info)
    ref_b, mode_b = cached_reference(problem, x_b, "bench")
    space = SearchSpace(sch, nfe, end="zero", afs=True)
    t0 = time.perf_counter()
    score = make_scorer(model, sch, space, jnp.asarray(x_s, jnp.float32), ref_s)
    held = make_scorer(model, sch, space, jnp.asarray(x_b, jnp.float32), ref_b, reference_mode=mode_b,
                       mode_fn=gmm_mode_fn(gmm))
    seeds = classic_seeds(space, sch)
    seed_scores = {k: np.asarray(v).tolist() for k, v in held(seeds).items()}
    t_compile_scorers = time.perf_counter() - t0
    target = TARGET[problem][nfe]
    P = args.population
    strategies = {
        "evolution": evolution(space, score, population=P, parents=P // 4, mutation_rate=0.2, seeds=seeds),
        "s3": s3(space, score, population=P, candidates=args.candidates, top_k=P, parents=P // 4,
                 mutation_rate=0.2, train_steps=args.train_steps, seeds=seeds),
    }
    out = dict(problem=problem, nfe=nfe, n_steps=space.n_steps, target=target, best_hand=BEST[problem][nfe],
               search_points=n_search, seed_schedules_heldout=seed_scores, strategies={},
               scorer_setup_s=t_compile_scorers)
    for name, strat in strategies.items():
        key = jax.random.PRNGKey(args.seed)
        state = strat.init(jax.random.fold_in(key, 2**31 - 1))
        search_s, mon_s = 0.0, 0.0
        reached = None
        curve = []
        last_best = None
        first_step_s = None
        for i in range(args.steps):
            t1 = time.perf_counter()
            state, _ = strat.step(state, jax.random.fold_in(key, i))
            best_score = float(state["best_score"])  # blocks
            dt = time.perf_counter() - t1
            search_s += dt
            if first_step_s is None:
                first_step_s = dt
            t2 = time.perf_counter()
            if last_best is None or best_score < last_best:
                g, _ = strat.best(state)
                h = {k: float(v[0]) for k, v in held(jax.tree.map(lambda a: a[None], g)).items()}
                last_best = best_score
            if reached is None and h["mean_l2"] <= target:
                reached = dict(evaluations=int(state["n_eval"]), seconds=search_s, step=i + 1)
            curve.append(dict(evaluations=int(state["n_eval"]), search_score=best_score, heldout_mean_l2=h["mean_l2"]))
            mon_s += time.perf_counter() - t2
        g, sc = strat.best(state)
        g = jax.tree.map(np.asarray, g)
        h = {k: float(v[0]) for k, v in held(jax.tree.map(lambda a: a[None], g)).items()}
        sched = jax.tree.map(np.asarray, space.decode(g))
        check_schedule(sched, sch, nfe=nfe)
        out["strategies"][name] = dict(search_score=float(sc), heldout=h, evaluations=int(state["n_eval"]),
                                       search_s=search_s, first_step_s=first_step_s, monitor_s=mon_s,
                                       reached=reached, curve=curve, schedule=_sched_dict(sched), genotype=g)
        _log(f"{problem} NFE {nfe} {name}: search {float(sc):.4g}, held-out mean {h['mean_l2']:.4g} max "
             f"{h['max_l2']:.3g} flip {h['mode_flip']:.4f} (target {target}); {int(state['n_eval'])} evals, "
             f"{search_s:.1f} s (first step {first_step_s:.1f} s)"
             + (f"; target at {reached['evaluations']} evals / {reached['seconds']:.1f} s" if reached else ""))
    # the schedule kept: the better search score (chosen without the benchmark points)
    pick = min(out["strategies"], key=lambda k: out["strategies"][k]["search_score"])
    out["picked"] = pick
    best = out["strategies"][pick]
    path = os.path.join(SCHEDULE_DIR, f"{problem}_nfe{nfe}.json")
    if not args.no_save:
        from samplax.solvers.schedule import schedule_from_dict

        save_schedule(path, schedule_from_dict(best["schedule"]), problem=problem, nfe=nfe, strategy=pick,
                      search_mean_l2=best["search_score"], heldout=best["heldout"],
                      command=f"python -m {MODULE}")
    out["schedule_path"] = path
    return out


def _sched_dict(sched):
    from samplax.solvers.schedule import schedule_to_dict

    d = schedule_to_dict(sched)
    d.pop("meta")
    return d


def report(meta, results):
    from benchmarks import _common as C

    lines = ["# Searched solver schedules vs the best hand-designed solvers", "",
             C.machine_md(meta["machine"], meta["command"], meta["date"]),
             f"* Runtime: {meta['wall_s']:.0f} s wall.", "",
             "Setup: float32 sampling on the exact GMM problems, grids from t = 1 to t_min = 1e-3 then sigma = 0 "
             "(end `zero`) with the analytic first step (AFS, as the best hand-designed rows), so NFE 5 = 6 steps. "
             f"Search: mean L2 to the exact PF-ODE solution (float64, {REF_STEPS} RK4 steps) on search start points "
             f"`jax.random.normal(PRNGKey({SEARCH_KEY}), (n, d))` (n = {meta['search_points'][0]} for gmm2d, "
             f"{meta['search_points'][1]} for gmm64d); population {meta['population']}, {meta['steps']} steps = "
             f"{meta['population'] * meta['steps']} real evaluations per strategy (equal budget). Evolution: "
             f"(mu + lambda), mu = {meta['population'] // 4}, uniform crossover (p = 0.5) + mutation (logit noise "
             f"std 0.2, each discrete choice redrawn with p = 0.2). S^3: the same variation operators propose "
             f"{meta['candidates']} children of the elite per stage, an ensemble of 4 MLPs (64, 64) trained "
             f"({meta['train_steps']} Adam steps, MSE + pairwise ranking loss on the log error) on every evaluated "
             f"schedule ranks them, the top {meta['population']} are evaluated. Both start from the same population "
             "(random + DPM-Solver++ 2M / 3M and UniPC bh1 / bh2 o3 with corrector on the time-quadratic grid). "
             "Held-out evaluation: the 4096 benchmark start points (`problem_start_points`), never seen by the search. "
             "`best hand` = best hand-designed row with end = zero (docs/benchmarks/solver_accuracy.md); `target` "
             "= the issue's target (half its mean L2). `evals / s to target` = real evaluations and search seconds "
             "(compilation included, monitoring excluded) until the best-so-far schedule first meets the target "
             "on the held-out points (— = not reached); evolution runs first and its first step includes compiling "
             "the shared scorer (S^3's first step reuses it), so compare seconds after the first step, "
             "`search s` - `first step s`. `flip` = mode-flip fraction.", ""]
    header = ["problem", "NFE", "best hand mean / max / flip", "target", "strategy", "mean_l2", "max_l2", "flip",
              "target met", "no worse max & flip", "evals to target", "s to target", "search s", "first step s"]
    rows = []
    verdict = []
    for r in results:
        bm, bx, bf, _ = r["best_hand"]
        for name in ("evolution", "s3"):
            s = r["strategies"][name]
            h = s["heldout"]
            ok = h["mean_l2"] <= r["target"]
            nw = h["max_l2"] <= bx and h["mode_flip"] <= bf
            rows.append([r["problem"], r["nfe"], f"{C.fmt(bm)} / {C.fmt(bx)} / {C.fmt(bf)}", C.fmt(r["target"]),
                         name + (" (kept)" if r["picked"] == name else ""),
                         ("**%s**" % C.fmt(h["mean_l2"], 4)) if ok else C.fmt(h["mean_l2"], 4), C.fmt(h["max_l2"]),
                         C.fmt(h["mode_flip"]), "yes" if ok else "no", "yes" if nw else "no",
                         s["reached"]["evaluations"] if s["reached"] else "—",
                         f"{s['reached']['seconds']:.1f}" if s["reached"] else "—", f"{s['search_s']:.1f}",
                         f"{s['first_step_s']:.1f}"])
        e, q = r["strategies"]["evolution"], r["strategies"]["s3"]
        verdict.append((r["problem"], r["nfe"], e["heldout"]["mean_l2"], q["heldout"]["mean_l2"],
                        e["search_score"], q["search_score"]))
    lines.append(C.md_table(header, rows, ["l", "r", "l", "r", "l", "r", "r", "r", "c", "c", "r", "r", "r", "r"]))
    n_s3 = sum(1 for v in verdict if v[5] < v[4])
    n_s3h = sum(1 for v in verdict if v[3] < v[2])
    met = [(r["problem"], r["nfe"]) for r in results
           if r["strategies"][r["picked"]]["heldout"]["mean_l2"] <= r["target"]]
    lines += ["", "## S^3 vs evolution at equal budget", "",
              f"S^3 found the better schedule (search score) in {n_s3} of {len(verdict)} (problem, NFE) cases and the "
              f"better held-out mean L2 in {n_s3h} of {len(verdict)}; evolution in the others. "
              + ("So at this budget S^3 beat evolution overall." if n_s3h > len(verdict) / 2 else
                 "So at this budget S^3 did NOT beat plain evolutionary search (the paper's claim does not hold "
                 "here: an evaluation costs milliseconds, the predictor's ranking of near-elite mutants is "
                 "noisy, and evolution spends its evaluations on the same neighbourhood without it)." if n_s3h <
                 len(verdict) / 2 else "So at this budget neither strategy was better overall."), "",
              "| problem | NFE | evolution held-out | S^3 held-out | evolution search | S^3 search |",
              "| --- | ---: | ---: | ---: | ---: | ---: |"]
    lines += [f"| {p} | {n} | {C.fmt(a, 4)} | {C.fmt(b, 4)} | {C.fmt(c, 4)} | {C.fmt(d, 4)} |"
              for p, n, a, b, c, d in verdict]
    gap = [f"{r['problem']} NFE {r['nfe']} ({k}: {C.fmt(v['search_score'], 3)} on the search points, "
           f"{C.fmt(v['heldout']['mean_l2'], 3)} held out)" for r in results for k, v in r["strategies"].items()
           if v["search_score"] <= r["target"] < v["heldout"]["mean_l2"]]
    bad_max = [f"{r['problem']} NFE {r['nfe']}" for r in results
               if not (r["strategies"][r["picked"]]["heldout"]["max_l2"] <= r["best_hand"][1]
                       and r["strategies"][r["picked"]]["heldout"]["mode_flip"] <= r["best_hand"][2])]
    lines += ["", "Notes: a schedule can meet the target on the search points and miss it on the held-out points "
              "(the search fits its start points): " + ("; ".join(gap) if gap else "no such case") + ". "
              "The issue also asks for no higher max error and mode-flip fraction than the best hand-designed row; "
              "the kept schedule fails that in: " + (", ".join(bad_max) if bad_max else "no case") + " (the search "
              "minimises the mean only)."]
    lines += ["", "## Kept schedules", "",
              f"Targets met by the kept schedule (the better search score of the two): {len(met)} of {len(results)}"
              f" ({', '.join(f'{p} NFE {n}' for p, n in met) or 'none'}). Each kept schedule is in "
              f"`{SCHEDULE_DIR}/<problem>_nfe<N>.json` (load with `samplax.solvers.schedule.load_schedule`).", ""]
    for r in results:
        s = r["strategies"][r["picked"]]["schedule"]
        lines.append(f"* {r['problem']} NFE {r['nfe']} ({r['picked']}): times "
                     f"{', '.join(f'{t:.4g}' for t in s['times'])} (then sigma = 0); order {s['order']}; "
                     f"prediction {''.join(p[0] for p in s['prediction'])}; derivative "
                     f"{[['dpm', 'tay', 'bh1', 'bh2'][['dpmsolver', 'taylor', 'unipc_bh1', 'unipc_bh2'].index(d)] for d in s['derivative']]}; "
                     f"corrector {''.join('C' if c else '-' for c in s['corrector'])}")
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="gmm2d, NFE 5 and 10, 15 steps")
    ap.add_argument("--problems", nargs="+", choices=PROBLEMS, default=None)
    ap.add_argument("--nfes", nargs="+", type=int, default=None)
    ap.add_argument("--steps", type=int, default=None, help="search steps per strategy (default 40, quick 15)")
    ap.add_argument("--population", type=int, default=64)
    ap.add_argument("--candidates", type=int, default=2048)
    ap.add_argument("--train-steps", type=int, default=200)
    ap.add_argument("--search-points", type=int, nargs=2, default=(512, 256), metavar=("GMM2D", "GMM64D"))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None)
    ap.add_argument("--no-save", action="store_true", help="do not write the schedule files")
    ap.add_argument("--keep-xla-flags", action="store_true", help="leave XLA's YNNPACK fusions on")
    ap.add_argument("--from-json", metavar="JSON", help="no search: re-render the markdown from a run's JSON")
    args = ap.parse_args(argv)
    if args.from_json:
        import json

        from benchmarks import _common as C

        with open(args.from_json) as f:
            data = json.load(f)
        md = report(data["meta"], data["results"])
        out_md = args.out or os.path.splitext(args.from_json)[0] + ".md"
        C.atomic_write_text(out_md, md + "\n")
        print(md)
        return 0
    if not args.keep_xla_flags:
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_cpu_experimental_ynn_fusion_type=").strip()
    from benchmarks import _common as C

    C.enable_compilation_cache(1.0)
    problems = args.problems or (["gmm2d"] if args.quick else list(PROBLEMS))
    nfes = args.nfes or ([5, 10] if args.quick else list(NFES))
    args.steps = args.steps or (15 if args.quick else 40)
    t0 = time.perf_counter()
    meta = dict(command=C.command_line(MODULE), date=C.utc_now(), machine=C.machine_info(), problems=problems,
                nfes=nfes, steps=args.steps, population=args.population, candidates=args.candidates,
                train_steps=args.train_steps, search_points=list(args.search_points), seed=args.seed,
                xla_flags=os.environ.get("XLA_FLAGS", ""), dtype="float32", reference_steps=REF_STEPS)
    results = []
    for p in problems:
        for n in nfes:
            results.append(run_problem_nfe(p, n, args))
    meta["wall_s"] = time.perf_counter() - t0
    md = report(meta, results)
    out_md = args.out or (QUICK_OUT if args.quick else DEFAULT_OUT)
    for r in results:
        for s in r["strategies"].values():
            s["genotype"] = {k: v.tolist() for k, v in s["genotype"].items()}
    C.atomic_write_json(os.path.splitext(out_md)[0] + ".json", dict(meta=meta, results=results))
    C.atomic_write_text(out_md, md + "\n")
    print(md)
    _log(f"wrote {out_md} in {meta['wall_s']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
