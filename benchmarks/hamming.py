"""Text-to-pattern Hamming distances (samplax.metrics.hamming, docs/hamming.md): a speed table of the
exact methods against the naive O(nm) loop as n, m and the alphabet grow (one text, one pattern;
median wall time of repeats after a compile call, compile time apart; every result checked equal to
the naive one), the batched all-pairs shape of the memorisation metric, and the memorisation metric
on real generated samples: the trained digits U-Net's samples (the newest checkpoint of
/work/runs/train_digits, quantised to the 17 digits tokens) against the digits training split, beside
the held-out split, the training split itself and uniform random tokens.

    python -m benchmarks.hamming --write          # docs/benchmarks/hamming.md + .json
    python -m benchmarks.hamming --quick          # a smaller grid, printed only
"""
from __future__ import annotations

import argparse
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks._common import (REPO_ROOT, atomic_write_json, atomic_write_text, command_line, fmt, machine_info,
                                machine_md, md_table, utc_now)
from samplax.metrics import hamming as H

OUT = os.path.join(REPO_ROOT, "docs", "benchmarks", "hamming")
TEACHER = "/work/runs/train_digits"
VARIANTS = (("naive", "naive", None), ("fft", "fft", "float32"), ("fft64", "fft", "float64"),
            ("abrahamson", "abrahamson", "float32"))


def timed(fn, repeats: int):
    t0 = time.perf_counter()
    out = jax.block_until_ready(fn())
    first = time.perf_counter() - t0
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn())
        ts.append(time.perf_counter() - t0)
    med = float(np.median(ts))
    return out, med, max(0.0, first - med), float(np.min(ts)), float(np.max(ts))


def run_variant(name, method, dtype, t, p, sigma):
    def call():
        return H._all_pairs(t, p, method, sigma, dtype or "float32", None)
    if dtype == "float64":
        with jax.enable_x64(True):
            return call()
    return call()


def speed_table(grid, repeats: int, log=print):
    rows = []
    warm = jnp.zeros((1, 4096), jnp.int32)
    for _ in range(2):  # the process's first calls are slow (thread pools, allocator): not measured
        timed(lambda: run_variant("naive", "naive", None, warm, warm[:, :16], 2), repeats)
    for sigma, n, m in grid:
        rng = np.random.default_rng(n + m + sigma)
        t = jnp.asarray(rng.integers(0, sigma, (1, n)), jnp.int32)
        p = jnp.asarray(rng.integers(0, sigma, (1, m)), jnp.int32)
        ref = None
        for name, method, dtype in VARIANTS:
            out, med, comp, lo, hi = timed(lambda: run_variant(name, method, dtype, t, p, sigma), repeats)
            out = np.asarray(out)
            if ref is None:
                ref = out
            equal = bool((out == ref).all())
            rows.append(dict(sigma=sigma, n=n, m=m, method=name, median_s=med, min_s=lo, max_s=hi, compile_s=comp,
                             equal_to_naive=equal, repeats=repeats))
            log(f"sigma={sigma} n={n} m={m} {name}: {med * 1e3:.2f} ms (compile {comp:.2f} s) equal={equal}")
    return rows


def batched_table(repeats: int, quick: bool, log=print):
    """The memorisation shape: windows (P patterns of length m) searched in T training rows of length 64."""
    rows = []
    rng = np.random.default_rng(5)
    for T, P, m in ([(256, 64, 16)] if quick else [(1437, 64, 16), (1437, 64, 32)]):
        t = jnp.asarray(rng.integers(0, 17, (T, 64)), jnp.int32)
        p = jnp.asarray(rng.integers(0, 17, (P, m)), jnp.int32)
        ref = None
        for name, method, dtype in VARIANTS:
            out, med, comp, lo, hi = timed(lambda: run_variant(name, method, dtype, t, p, 17), repeats)
            out = np.asarray(out)
            ref = out if ref is None else ref
            rows.append(dict(T=T, P=P, n=64, m=m, sigma=17, method=name, median_s=med, min_s=lo, max_s=hi,
                             compile_s=comp, equal_to_naive=bool((out == ref).all())))
            log(f"batched T={T} P={P} m={m} {name}: {med * 1e3:.1f} ms")
    return rows


def digits_samples(n: int, log=print):
    """n samples of the trained digits U-Net (dpm_solver_pp, NFE 20) as 64 tokens, or None."""
    from samplax.data import digits_tokens
    from samplax.experiment.trainer import draw_samples, load_trained
    try:
        tr = load_trained(TEACHER)
    except (FileNotFoundError, ValueError) as e:
        log(f"no trained digits model ({e}); skipped")
        return None, None
    t0 = time.perf_counter()
    x = draw_samples(tr.setup, tr.params, n, "dpm_solver_pp", 20, seed=0)
    log(f"drew {n} digits samples from step {tr.step} in {time.perf_counter() - t0:.1f} s")
    return digits_tokens(x), tr.step


def memorisation_table(n: int, window: int, k: int, log=print):
    from samplax.data import make_dataset
    ds = make_dataset("digits_tokens", split="train")
    train, held = np.asarray(ds.arrays[0]), np.asarray(ds.eval_arrays[0])
    samples, step = digits_samples(n, log)
    rng = np.random.default_rng(0)
    sets = [("training split (itself)", train[:n]), ("held-out split (real, unseen)", held[:n]),
            ("uniform random tokens", rng.integers(0, 17, (n, 64)))]
    if samples is not None:
        sets.insert(1, (f"U-Net samples (step {step}, dpm_solver_pp NFE 20)", samples))
    rows = []
    for name, x in sets:
        t0 = time.perf_counter()
        mem = H.memorisation(np.asarray(x, np.int32), train.astype(np.int32), window=window, k=k)
        mem.update(set=name, time_s=time.perf_counter() - t0)
        rows.append(mem)
        log(f"{name}: nearest {mem['nearest_mean']:.2f}, copies {mem['copies']:.3f}, "
            f"window nearest {mem['window_nearest_mean']:.2f}, {mem['time_s']:.1f} s")
    return rows, step


def render(res: dict) -> str:
    lines = ["# Text-to-pattern Hamming distances: speed and memorisation", "",
             machine_md(res["machine"], res["command"], res["date"]),
             "* Machine load: 2-core CPU container, shared by 7 sessions (and a training run): noisy; "
             f"times are medians of {res['repeats']} repeats after one compile call (min-max in the JSON).",
             "* Exact: every method's output was compared with the naive loop's (column `= naive`).", "",
             "## One text, one pattern", "",
             "Median wall time (ms); compile time (s) apart. `fft`: float32, pattern cut in pieces of "
             f"<= {res['max_piece_float32']} (the longest provably exact float32 piece); `fft64`: float64 "
             f"(one piece up to {res['max_piece_float64']}); `abrahamson`: heavy letters (> tau = sqrt(m log2 m) "
             "occurrences) by float32 FFT, light ones by scatter-add.", ""]
    by = {}
    for r in res["speed"]:
        by.setdefault((r["sigma"], r["n"], r["m"]), {})[r["method"]] = r
    names = [v[0] for v in VARIANTS]
    head = ["sigma", "n", "m"] + [f"{x} (ms)" for x in names] + ["naive min-max (ms)", "best / naive",
                                                                  "compile (s) " + "/".join(names),
                                                                  "= naive"]
    rows = []
    for (s, n, m), d in sorted(by.items()):
        best = min(names, key=lambda x: d[x]["median_s"])
        rows.append([s, n, m] + [fmt(d[x]["median_s"] * 1e3) for x in names]
                    + [f"{fmt(d['naive']['min_s'] * 1e3)}-{fmt(d['naive']['max_s'] * 1e3)}",
                       f"{best} {d['naive']['median_s'] / d[best]['median_s']:.2g}x",
                       "/".join(f"{d[x]['compile_s']:.1f}" for x in names),
                       "yes" if all(d[x]["equal_to_naive"] for x in names) else "**NO**"])
    lines += [md_table(head, rows, ["r"] * 3 + ["r"] * len(names) + ["r", "l", "l", "l"]), ""]
    if res.get("batched"):
        lines += ["## Batched all pairs (the memorisation window search)", "",
                  "T texts of length 64 x P patterns of length m, sigma = 17 (digits tokens): every distance.", ""]
        rows = [[r["T"], r["P"], r["m"], r["method"], fmt(r["median_s"] * 1e3), f"{r['compile_s']:.1f}",
                 "yes" if r["equal_to_naive"] else "**NO**"] for r in res["batched"]]
        lines += [md_table(["T", "P", "m", "method", "median (ms)", "compile (s)", "= naive"], rows,
                           ["r", "r", "r", "l", "r", "r", "l"]), ""]
    if res.get("memorisation"):
        mm = res["memorisation"]
        lines += ["## Memorisation on digits tokens", "",
                  f"{mm['n']} sequences of each set against the {mm['rows'][0]['n_train']} sequences of the digits "
                  f"training split (64 tokens, sigma = 17). Nearest: Hamming distance to the nearest training "
                  f"sequence (full alignment); copies: fraction at distance 0; within k = {mm['k']}. Windows: the "
                  f"{64 // mm['window']} non-overlapping windows of length {mm['window']} of each sequence searched "
                  f"in every training sequence at every alignment (49 shifts): smallest distance (mean over "
                  f"sequences of their best window), fraction with a verbatim window, mean number of occurrences "
                  f"within k = {mm['k']} per window.", ""]
        rows = [[r["set"], fmt(r["nearest_mean"]), fmt(r["nearest_median"]), r["nearest_min"], fmt(r["copies"]),
                 fmt(r["within_k"]), fmt(r["window_nearest_mean"]), fmt(r["window_copies"]),
                 fmt(r["window_count_mean"]), f"{r['time_s']:.1f}"] for r in mm["rows"]]
        lines += [md_table(["set", "nearest mean", "median", "min", "copies", f"within {mm['k']}",
                            "window nearest", "window copies", f"window count <= {mm['k']}", "time (s)"], rows,
                           ["l"] + ["r"] * 9), ""]
    return "\n".join(lines) + "\n"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--write", action="store_true")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--no-memorisation", action="store_true")
    args = ap.parse_args(argv)
    # no persistent compilation cache: the compile column is a real compilation, not a cache read
    if args.quick:
        grid = [(s, n, m) for s in (4, 64) for n, m in ((4096, 16), (4096, 512))]
        repeats = min(args.repeats, 3)
    else:
        grid = [(s, n, m) for s in (2, 17, 256) for n, m in
                ((4096, 16), (4096, 128), (4096, 1024), (65536, 16), (65536, 128), (65536, 1024), (65536, 4096))]
        repeats = args.repeats
    res = dict(machine=machine_info(), command=command_line("benchmarks.hamming"), date=utc_now(), repeats=repeats,
               max_piece_float32=H.max_exact_piece("float32"), max_piece_float64=H.max_exact_piece("float64"))
    res["speed"] = speed_table(grid, repeats)
    res["batched"] = batched_table(repeats, args.quick)
    if not args.no_memorisation:
        n, window, k = (128 if args.quick else 512), 16, 4
        rows, step = memorisation_table(n, window, k)
        res["memorisation"] = dict(n=n, window=window, k=k, teacher=TEACHER, step=step, rows=rows)
    text = render(res)
    print(text)
    if args.write and not args.quick:
        os.makedirs(os.path.dirname(OUT), exist_ok=True)
        atomic_write_json(OUT + ".json", res)
        atomic_write_text(OUT + ".md", text)
        print(f"wrote {OUT}.md and .json")


if __name__ == "__main__":
    main()
