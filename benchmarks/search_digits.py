"""Searched solver schedules on the trained digits U-Net: FD at NFE 5 and 10.

A trained model has no exact ODE solution, so the search scores a schedule by its
distance to a many-step teacher (DPM-Solver++(3M), 100 steps) from the same x_T on a
training set of start points: evolutionary search over the full per-step decision
space (samplax.search: times, orders, prediction types, derivative estimates,
corrector flags), then gradient descent on the time points of the best schedule's
decisions (samplax.search.gradient.learn_times).  Of the two, the one with the lower
teacher distance on a disjoint validation set is the searched schedule.  It is then
judged by what the search never saw: the Frechet distance (classifier features,
test split; as configs/digits.py) of 1438 samples drawn with the runner's prior key
for seeds 0-4, next to the hand-designed solvers on the same seeds.

    python -m experiments.train --config=configs/train_digits.py --workdir=runs/train_digits
    python -m benchmarks.search_digits --checkpoint=runs/train_digits

Writes docs/benchmarks/search_digits.md (+ .json) and the schedules under
docs/benchmarks/schedules/digits_nfe{N}.json.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

from benchmarks import _common as C

MODULE = "benchmarks.search_digits"
NFES = (5, 10)
SEEDS = (0, 1, 2, 3, 4)
N_FD = 1438
TARGET = {5: 15.0, 10: 8.0}          # issue 17
BEST_BEFORE = {5: 44.1, 10: 10.9}    # docs/benchmarks/trained_models.md (ipndm o2 / dpm_solver_pp o2)
BASELINES = [("dpm_solver_pp", {"order": 2}), ("unipc", {"order": 2}), ("ipndm", {"order": 2}),
             ("ipndm", {"order": 3})]


def _log(*a):
    print(*a, file=sys.stderr, flush=True)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkpoint", default="runs/train_digits")
    ap.add_argument("--out", default=os.path.join("docs", "benchmarks", "search_digits.md"))
    ap.add_argument("--n-train", type=int, default=64)
    ap.add_argument("--generations", type=int, default=15)
    ap.add_argument("--population", type=int, default=16)
    ap.add_argument("--grad-steps", type=int, default=100)
    ap.add_argument("--keep-xla-flags", action="store_true",
                    help="keep XLA's YNNPACK CPU fusions on (off by default here: measured faster, "
                         "docs/benchmarks/search_throughput.md)")
    args = ap.parse_args(argv)
    if not args.keep_xla_flags:
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_cpu_experimental_ynn_fusion_type=").strip()
    C.enable_compilation_cache()
    import jax
    import jax.numpy as jnp

    import samplax as sx
    from samplax.experiment import cache as refcache
    from samplax.experiment import loading
    from samplax.models.classifier import digits_fd, digits_reference_statistics, load_or_train_digits_classifier
    from samplax.search import SearchSpace, evolution, make_scorer, teacher_reference
    from samplax.search.gradient import learn_times
    from samplax.search.strategies import run as run_strategy
    from samplax.solvers.schedule import save_schedule, schedule_table
    from samplax.solvers.unified import run_table

    t_start = time.perf_counter()
    info = C.machine_info()
    loaded = loading.load_model(loading.resolve_model({"name": "digits", "checkpoint": args.checkpoint}), jnp.float32)
    model, schedule, shape = loaded.model, loaded.schedule, tuple(loaded.shape)
    params, cinfo = load_or_train_digits_classifier(refcache.cache_dir())
    ref_stats = digits_reference_statistics(params, "test")

    def prior(seed, n):  # the runner's x_T: fold_in(fold_in(PRNGKey(seed), 0), i)
        k = jax.random.fold_in(jax.random.PRNGKey(seed), 0)
        keys = jax.vmap(lambda i: jax.random.fold_in(k, i))(jnp.arange(n))
        return jax.vmap(lambda kk: jax.random.normal(kk, shape, jnp.float32))(keys)

    fd_cache = {}

    def fd_of(run_fn, label):
        vals = []
        for seed in SEEDS:
            x0 = np.asarray(run_fn(prior(seed, N_FD)))
            vals.append(float(digits_fd(params, x0.reshape((-1,) + shape).astype(np.float32), reference=ref_stats)))
        fd_cache[label] = vals
        _log(f"  FD {label}: {np.mean(vals):.2f} +- {np.std(vals, ddof=1):.2f}")
        return vals

    # disjoint start points for the search (never the FD seeds' prior keys)
    x_train = jax.random.normal(jax.random.PRNGKey(1_000_001), (args.n_train,) + shape, jnp.float32)
    x_val = jax.random.normal(jax.random.PRNGKey(1_000_002), (args.n_train,) + shape, jnp.float32)
    t0 = time.perf_counter()
    ref_train = teacher_reference(model, schedule, x_train, n_steps=100)
    ref_val = teacher_reference(model, schedule, x_val, n_steps=100)
    _log(f"teacher references in {time.perf_counter() - t0:.1f} s")

    results = []
    for nfe in NFES:
        row = dict(nfe=nfe, baselines={})
        for name, opts in BASELINES:
            solver = sx.get_solver(name, **opts)
            grid = sx.time_grid(schedule, sx.steps_for_nfe(solver, nfe), "logsnr")
            f = jax.jit(lambda x, s=solver, g=grid: sx.sample(s, model, x, g)[0])
            lab = f"{name} o{opts['order']}"
            row["baselines"][lab] = dict(fd=fd_of(f, f"{lab} nfe{nfe}"),
                                         teacher_l2=float(jnp.mean(jnp.linalg.norm(
                                             (f(x_val) - ref_val).reshape(len(x_val), -1), axis=-1))))
        space = SearchSpace(schedule, nfe)
        score_train = make_scorer(model, schedule, space, x_train, ref_train)
        score_val = make_scorer(model, schedule, space, x_val, ref_val)
        t0 = time.perf_counter()
        from samplax.search.space import stack
        from samplax.solvers.schedule import constant_schedule
        t_log = sx.time_grid(schedule, space.n_steps, "logsnr").t[:-1]
        seeds = stack([space.from_schedule(c) for c in (
            constant_schedule(t_log, order=2), constant_schedule(t_log, order=3),
            constant_schedule(t_log, order=2, derivative="unipc_bh2", corrector=True))])
        strat = evolution(space, score_train, population=args.population, parents=args.population // 4,
                          seeds=seeds)
        state = run_strategy(strat, jax.random.PRNGKey(nfe), args.generations)
        g_best, s_best = strat.best(state)
        evo_s = time.perf_counter() - t0
        evo_sched = space.decode(g_best)
        evo_val = float(score_val(jax.tree.map(lambda a: a[None], g_best))["mean_l2"][0])
        _log(f"nfe {nfe}: evolution {int(strat.evaluations(state))} evaluations in {evo_s:.0f} s: train "
             f"{float(s_best):.4f} val {evo_val:.4f}")
        t0 = time.perf_counter()
        grad_sched, _, hist = learn_times(model, schedule, evo_sched, x_train, ref_train, steps=args.grad_steps,
                                          learning_rate=1e-2)
        grad_s = time.perf_counter() - t0
        run_g = jax.jit(lambda x, s=grad_sched: run_table(model, x, schedule_table(s, schedule))[0])
        grad_val = float(jnp.mean(jnp.linalg.norm((run_g(x_val) - ref_val).reshape(len(x_val), -1), axis=-1)))
        _log(f"nfe {nfe}: gradient refinement {args.grad_steps} steps in {grad_s:.0f} s: val {grad_val:.4f}")
        best, best_val, how = (grad_sched, grad_val, "evolution + gradient") if grad_val < evo_val else \
            (evo_sched, evo_val, "evolution")
        run_b = jax.jit(lambda x, s=best: run_table(model, x, schedule_table(s, schedule))[0])
        fd = fd_of(run_b, f"searched nfe{nfe}")
        path = os.path.join(os.path.dirname(args.out), "schedules", f"digits_nfe{nfe}.json")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        save_schedule(path, best, problem="digits", nfe=nfe, teacher_l2_val=best_val, fd_mean=float(np.mean(fd)),
                      method=how)
        row.update(searched=dict(fd=fd, teacher_l2=best_val, method=how, file=path,
                                 evolution=dict(evaluations=int(strat.evaluations(state)), seconds=evo_s,
                                                val=evo_val),
                                 gradient=dict(steps=args.grad_steps, seconds=grad_s, val=grad_val),
                                 orders=[int(v) for v in np.asarray(best.order)],
                                 prediction=[int(v) for v in np.asarray(best.prediction)],
                                 corrector=[bool(v) for v in np.asarray(best.corrector)]))
        results.append(row)

    # ---- report
    date = C.utc_now()
    lines = ["# Searched schedules on the trained digits U-Net", "",
             C.machine_md(info, C.command_line(MODULE) + f" --checkpoint={args.checkpoint}", date), "",
             f"* Model: the U-Net of configs/train_digits.py ({args.checkpoint}); classifier test accuracy "
             f"{cinfo['test_accuracy']:.3f}. FD of {N_FD} unconditional samples against the test split, as the "
             f"runner computes it; mean ± sd over sampling seeds {SEEDS} (the runner's prior keys).",
             f"* Search: teacher = DPM-Solver++(3M), 100 logSNR steps, from {args.n_train} training start points "
             f"(a key disjoint from the FD seeds); evolution ({args.generations} generations of "
             f"{args.population}, seeded with DPM-Solver++ 2M/3M and UniPC-2 on the logSNR grid) over times, orders, prediction types, derivative estimates and corrector flags, "
             f"then {args.grad_steps} Adam steps on the time points; the variant with the lower teacher distance on "
             f"{args.n_train} validation start points is kept.",
             f"* Total wall time {time.perf_counter() - t_start:.0f} s (2 shared CPU cores).", ""]
    header = ["NFE", "schedule", "FD (mean ± sd)", "teacher L2 (val)", "target", "met"]
    table = []
    for row in results:
        nfe = row["nfe"]
        for lab, b in row["baselines"].items():
            table.append([nfe, lab + " (logSNR)", f"{np.mean(b['fd']):.2f} ± {np.std(b['fd'], ddof=1):.2f}",
                          C.fmt(b["teacher_l2"]), "", ""])
        s = row["searched"]
        met = np.mean(s["fd"]) <= TARGET[nfe]
        table.append([nfe, f"**searched** ({s['method']})",
                      f"**{np.mean(s['fd']):.2f} ± {np.std(s['fd'], ddof=1):.2f}**", C.fmt(s["teacher_l2"]),
                      f"<= {TARGET[nfe]:g} (best before {BEST_BEFORE[nfe]:g})", "yes" if met else "**no**"])
    lines += [C.md_table(header, table, ["r", "l", "r", "r", "l", "c"]), ""]
    for row in results:
        s = row["searched"]
        lines.append(f"* NFE {row['nfe']}: orders {s['orders']}, prediction {s['prediction']} (0 data, 1 noise), "
                     f"corrector {['T' if c else 'F' for c in s['corrector']]}; evolution "
                     f"{s['evolution']['evaluations']} evaluations in {s['evolution']['seconds']:.0f} s (val "
                     f"{s['evolution']['val']:.4f}), gradient {s['gradient']['seconds']:.0f} s (val "
                     f"{s['gradient']['val']:.4f}); file `{s['file']}`.")
    md = "\n".join(lines) + "\n"
    print(md)
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out, "w") as f:
        f.write(md)
    C.atomic_write_json(os.path.splitext(args.out)[0] + ".json",
                        dict(date=date, machine=info, results=results, fd_by_label=fd_cache))


if __name__ == "__main__":
    main()
