"""Evaluation by sampling on the toy reasoning task (samplax.decoding.tasks, 256 questions, exact LM):

1. accuracy vs samples N for greedy, one sample, majority vote (exact and measured), perplexity
   consistency (PC), RPC (mean and Weibull pruning), the most probable path, best-of-N by noisy
   self-evaluation (exact and measured), best-of-N with mid-generation pruning and adaptive N; the exact
   N -> infinity limits;
2. Stochastic-CHAOS variability metrics by question class: where greedy evaluation misleads;
3. coverage of the distribution-free bounds (Clopper-Pearson, Hoeffding, DKW band, DKW mean bounds)
   on samples of the exact LM, and of a band half as wide (must fail).

Writes docs/benchmarks/decoding_evaluation.md and .json.  ``--quick`` runs a reduced grid.

    nice -n 10 python -m benchmarks.decoding_evaluation [--repeats 64] [--quick]
"""
from __future__ import annotations

import argparse
import os
import time

import jax
import numpy as np
from scipy.stats import binom

from benchmarks._common import (REPO_ROOT, atomic_write_json, atomic_write_text, command_line, fmt,
                                machine_info, machine_md, md_table, utc_now)
from samplax import metrics as M
from samplax.decoding import adaptive as A
from samplax.decoding import consistency as Cn
from samplax.decoding import tasks as T
from samplax.decoding.base import Problem, sample_keys

OUT = os.path.join(REPO_ROOT, "docs", "benchmarks", "decoding_evaluation")
NS = (1, 2, 4, 8, 16, 32)
NOISES = (0.5, 1.0)
THRESHOLDS = (0.5, 0.7, 0.8, 0.9, 0.95, 0.99)


def exact_tables(task):
    """Per question: correct answer, answer law, greedy answer, the completion law."""
    out = []
    ans = T.completion_answers(task)
    for q in task.questions:
        lp = T.completion_log_probs(task, q)
        out.append(dict(q=q, c=int(task.correct(q)), pa=T.answer_probs(task, q), lp=lp, ans=ans,
                        greedy=int(T.greedy_completion(task, q)[-1])))
    return out


def accuracy_vs_samples(task, ex, repeats: int, weibull_repeats: int, key, log=print):
    C = task.completion_length
    nq = len(ex)
    n_max = max(NS)
    acc = {}   # name -> {N: [per-question accuracy]}

    def put(name, N, v):
        acc.setdefault(name, {}).setdefault(N, []).append(float(v))
    rows_used = {}
    t0 = time.time()
    for qi, e in enumerate(ex):
        prob = Problem(lm=task.lm, task=task, prompt=e["q"])
        keys = sample_keys(jax.random.fold_in(key, qi), repeats)
        x, lp, _ = Cn.sample_paths(prob, keys, n_max)
        z, z0 = A._draws(keys, n_max, C)
        a = task.answer(x)
        ids = np.asarray(x[..., task.prompt_length:] @ (task.vocab_size ** np.arange(C - 1, -1, -1)))
        tie = Cn.tie_draws(keys, task.n_answers)
        right = a == e["c"]
        p = e["pa"][e["c"]]
        for N in NS:
            sl = slice(0, N)
            put("majority (exact)", N, Cn.majority_vote_probs(e["pa"], N)[e["c"]])
            for name, meth, pr in (("majority", "majority", "none"), ("PC", "pc", "none"),
                                   ("RPC (mean)", "rpc", "mean"), ("max prob path", "max_prob", "none")):
                v = Cn.aggregate(a[:, sl], ids[:, sl], lp[:, sl], task.n_answers, meth, pr, 1.0, tie_u=tie)
                put(name, N, np.mean(v == e["c"]))
            if N in (8, 32) and qi % 4 == 0:   # the Weibull fit is slow: every 4th question (last digit 0)
                w = weibull_repeats
                v = Cn.aggregate(a[:w, sl], ids[:w, sl], lp[:w, sl], task.n_answers, "rpc", "weibull", 1.0, tie_u=tie[:w])
                put("RPC (Weibull) [subset]", N, np.mean(v == e["c"]))
                v = Cn.aggregate(a[:w, sl], ids[:w, sl], lp[:w, sl], task.n_answers, "rpc", "mean", 1.0, tie_u=tie[:w])
                put("RPC (mean) [subset]", N, np.mean(v == e["c"]))
                put("majority (exact) [subset]", N, Cn.majority_vote_probs(e["pa"], N)[e["c"]])
            for s in NOISES:
                ks = np.arange(N + 1)
                pk = np.array([A.pick_correct_prob(int(k), N, s) for k in ks])
                put(f"best-of-N s={s} (exact)", N, np.sum(binom.pmf(ks, N, p) * pk))
                pick = A.best_of_n_pick(task, e["q"], x[:, sl], z[:, sl], s)
                put(f"best-of-N s={s}", N, np.mean(right[np.arange(repeats), pick]))
            put("pass@N (exact)", N, 1 - (1 - p) ** N)
        for s in NOISES:
            for N in (8, 16, 32):
                for pa_ in (1, 2):
                    keep = N // 4
                    pick = A.best_of_n_pick(task, e["q"], x[:, :N], z[:, :N], s, pa_, keep)
                    put(f"pruned s={s} at={pa_} keep=N/4", N, np.mean(right[np.arange(repeats), pick]))
                    rows_used[f"pruned s={s} at={pa_} keep=N/4", N] = (N * pa_ + keep * (C - pa_)) / C
            for th in THRESHOLDS:
                pick, used = A.adaptive_pick(task, e["q"], x, z, z0, s, th, A.adaptive_schedule(n_max))
                put(f"adaptive s={s}", th, np.mean(right[np.arange(repeats), pick]))
                put(f"adaptive s={s} samples", th, np.mean(used))
        put("greedy", 1, e["greedy"] == e["c"])
        put("one sample (exact)", 1, p)
        for name, meth, pr in (("majority", "majority", "none"), ("PC", "pc", "none"),
                               ("RPC (mean)", "rpc", "mean"), ("max prob path", "max_prob", "none")):
            put(f"{name} limit", 0, Cn.limit_vote_probs(e["lp"], e["ans"], task.n_answers, meth, pr)[e["c"]])
        if qi % 64 == 63:
            log(f"  {qi + 1}/{nq} questions, {time.time() - t0:.0f}s")
    mean = {name: {N: float(np.mean(v)) for N, v in d.items()} for name, d in acc.items()}
    # the Monte-Carlo standard error of a measured average: sqrt(sum_q a_q (1 - a_q) / R) / #questions
    # (each per-question accuracy a_q is a mean of R Bernoulli outcomes); 0 for the exact rows
    se = {name: {N: (0.0 if "exact" in name or "limit" in name or name == "greedy" else
                     float(np.sqrt(np.mean(np.clip(v, 0, 1) * (1 - np.clip(v, 0, 1)))
                               / ((weibull_repeats if "subset" in name else repeats) * len(v)))))
                 for N, v in d.items()} for name, d in acc.items() if not name.endswith("samples")}
    return dict(mean=mean, se_upper=se, tokens={f"{k[0]}|{k[1]}": v for k, v in rows_used.items()})


def chaos_metrics(task, ex, repeats: int, key):
    """Per-question exact variability metrics, classes, and the unbiased pass@k from n = 32 samples."""
    classes = {}
    n = 32
    est_err = []
    for qi, e in enumerate(ex):
        p = e["pa"][e["c"]]
        g = e["greedy"] == e["c"]
        pass4 = 1 - (1 - p) ** 4
        cls = ("greedy right, robust (p >= 0.5)" if g and p >= 0.5 else
               "greedy right, fragile (p < 0.5)" if g else
               "greedy wrong, solvable (pass@4 >= 0.5)" if pass4 >= 0.5 else "greedy wrong, hard")
        maj = Cn.limit_vote_probs(e["lp"], e["ans"], task.n_answers, "majority", "none")[e["c"]]
        pa = e["pa"]
        row = dict(greedy=float(g), p=p, pass4=pass4, pass16=1 - (1 - p) ** 16, maj=maj,
                   ans_H=float(-np.sum(pa[pa > 0] * np.log(pa[pa > 0]))), out_H=M.exact_entropy(e["lp"]))
        classes.setdefault(cls, []).append(row)
        if qi % 8 == 0:     # the unbiased estimator from n samples against the exact pass@k
            prob = Problem(lm=task.lm, task=task, prompt=e["q"])
            x, _, _ = Cn.sample_paths(prob, sample_keys(jax.random.fold_in(key, 10_000 + qi), repeats), n)
            c = np.sum(task.answer(x) == e["c"], axis=1)
            cc = np.arange(n + 1)
            for k in (1, 4, 16):
                est = M.pass_at_k(n, cc, k)          # the estimator's exact standard deviation
                w = binom.pmf(cc, n, p)
                sd = float(np.sqrt(np.sum(w * (est - np.sum(w * est)) ** 2)))
                est_err.append((k, float(np.mean(M.pass_at_k(n, c, k)) - (1 - (1 - p) ** k)), sd / np.sqrt(repeats)))
    summary = {cls: {k: float(np.mean([r[k] for r in rows])) for k in rows[0]} | {"count": len(rows)}
               for cls, rows in classes.items()}
    allrows = [r for rows in classes.values() for r in rows]
    summary["all questions"] = {k: float(np.mean([r[k] for r in allrows])) for k in allrows[0]} | {"count": len(allrows)}
    z = [abs(d) / s for _, d, s in est_err if s > 0]
    return dict(classes=summary, pass_at_k_bias=dict(max_abs_z=float(max(z)), n_checks=len(z),
                                                     mean_abs_err=float(np.mean([abs(d) for _, d, _ in est_err]))))


def coverage(task, repeats: int, n: int, key):
    out = []
    for qname, q in (("hard [1,3,2,3]", np.array([1, 3, 2, 3])), ("mixed [1,2,2,3]", np.array([1, 2, 2, 3])),
                     ("easy [0,1,0,1]", np.array([0, 1, 0, 1]))):
        prob = Problem(lm=task.lm, task=task, prompt=q.astype(np.int32))
        x, lp, _ = Cn.sample_paths(prob, sample_keys(jax.random.fold_in(key, int(q @ [64, 16, 4, 1])), repeats), n)
        right = task.answer(x) == task.correct(q)
        p = float(T.answer_probs(task, q)[task.correct(q)])
        vals = T.completion_log_probs(task, q)
        probs = np.exp(vals)
        ids = np.asarray(x[..., task.prompt_length:] @ (task.vocab_size ** np.arange(task.completion_length - 1, -1, -1)))
        lp = vals[ids]                      # the metric in float64 (the sampler accumulates in float32)
        mean = float(np.sum(vals * probs))
        for delta in (0.05, 0.1):
            k = right.sum(1)
            lo, hi = M.clopper_pearson(k, n, delta)
            cp = np.mean((lo <= p) & (p <= hi))
            hf = np.mean([M.hoeffding_interval(kk / n, n, delta)[0] <= p <= M.hoeffding_interval(kk / n, n, delta)[1]
                          for kk in k])
            band, narrow, mcov, widths = 0, 0, 0, []
            for r in range(repeats):
                b = M.dkw_band(lp[r], delta)
                band += M.band_covers(b, vals, probs)
                narrow += M.band_covers(M.dkw_band(lp[r], delta, epsilon=b.epsilon / 2), vals, probs)
                mlo, mhi = M.dkw_mean_bounds(lp[r], float(vals.min()), float(vals.max()), delta)
                mcov += mlo <= mean <= mhi
                widths.append(mhi - mlo)
            out.append(dict(question=qname, delta=delta, p=p, clopper_pearson=float(cp),
                            cp_width=float(np.mean(hi - lo)), hoeffding=float(hf), dkw_band=band / repeats,
                            dkw_band_half_width=narrow / repeats, dkw_mean=mcov / repeats,
                            dkw_mean_width=float(np.mean(widths)), se=float(np.sqrt(delta * (1 - delta) / repeats)),
                            greedy_correct=bool(T.greedy_completion(task, q)[-1] == task.correct(q)),
                            p_wrong_upper=float(np.mean(1 - M.clopper_pearson(k, n, delta, side="lower")[0]))))
    return out


def _num(k):
    """A table key back from JSON (where every key became a string)."""
    try:
        f = float(k)
    except (TypeError, ValueError):
        return k
    return int(f) if f == int(f) else f


def render(res) -> str:
    acc = {name: {_num(k): v for k, v in d.items()} for name, d in res["accuracy"]["mean"].items()}
    res = dict(res, accuracy=dict(res["accuracy"], se_upper={n: {_num(k): v for k, v in d.items()}
                                                             for n, d in res["accuracy"]["se_upper"].items()}))
    lines = ["# Evaluation by sampling on the toy reasoning task", "",
             "Task `sum_mod` (samplax.decoding.tasks): 4 digits mod 4 as the prompt, 3 running-sum chain "
             "tokens, 1 answer token; the exact noisy-reasoner LM (256 questions, 256 completions each). "
             "Accuracies are averages over all 256 questions; \"exact\" rows are computed from the enumerated "
             "answer laws, the others from sampled paths "
             f"({res['repeats']} repeats per question and N, nested: the first N of 32 paths; Weibull-RPC "
             f"on {res['weibull_repeats']} repeats of every 4th question at N = 8, 32).  Self-evaluation = exact P(correct | prefix) + N(0, s^2).", "",
             machine_md(res["machine"], res["command"], res["date"]), "",
             "## Accuracy vs samples N", ""]
    names = [n for n in acc if n not in ("greedy", "one sample (exact)") and not n.startswith("adaptive")
             and not n.startswith("pruned") and not n.endswith("limit")]
    rows = [[n] + [fmt(acc[n].get(N, float("nan")), 3) if N in acc[n] else "" for N in NS] for n in names]
    lines.append(md_table(["method"] + [f"N={N}" for N in NS], rows))
    se_max = max(v for d in res["accuracy"]["se_upper"].values() for v in d.values())
    lines += ["", f"Monte-Carlo standard error of every measured (non-exact) entry <= {fmt(se_max, 2)} "
              "(the [subset] rows: every 4th question -- those whose last digit is 0, easier than average -- with "
              f"{res['weibull_repeats']} repeats, for the slow Weibull fit; compare them with each other only).",
              "", f"Greedy: {fmt(acc['greedy'][1], 3)}; one sample: {fmt(acc['one sample (exact)'][1], 3)}.  "
              "Limits N -> infinity (exact): " + ", ".join(
                  f"{n[:-6]} {fmt(acc[n][0], 3)}" for n in acc if n.endswith("limit")) + ".", "",
              "### Mid-generation pruning (keep N/4 after `at` completion tokens)", ""]
    rows = []
    for n in acc:
        if n.startswith("pruned"):
            for N in (8, 16, 32):
                rows.append([n, N, fmt(res["accuracy"]["tokens"][f"{n}|{N}"], 3), fmt(acc[n][N], 3),
                             fmt(acc[n.split(' at=')[0].replace('pruned', 'best-of-N')][N], 3)])
    lines.append(md_table(["setting", "N", "cost (samples' tokens)", "accuracy", "best-of-N unpruned"], rows))
    lines += ["", "### Adaptive N (n_max = 32, exponential batches 1, 2, 4, ...)", ""]
    rows = []
    for s in NOISES:
        for th in THRESHOLDS:
            rows.append([s, th, fmt(acc[f"adaptive s={s} samples"][th], 3), fmt(acc[f"adaptive s={s}"][th], 3)])
    lines.append(md_table(["noise s", "threshold", "mean samples", "accuracy"], rows))
    lines += ["", "## Stochastic CHAOS: where greedy evaluation misleads", ""]
    rows = [[cls, v["count"], fmt(v["greedy"], 3), fmt(v["p"], 3), fmt(v["pass4"], 3), fmt(v["pass16"], 3),
             fmt(v["maj"], 3), fmt(v["ans_H"], 3), fmt(v["out_H"], 3)] for cls, v in res["chaos"]["classes"].items()]
    lines.append(md_table(["question class", "#", "greedy acc", "mean acc (1 sample)", "pass@4", "pass@16",
                           "majority limit", "answer entropy", "output entropy"], rows))
    pb = res["chaos"]["pass_at_k_bias"]
    lines += ["", f"Unbiased pass@k from n = 32 samples vs the exact pass@k (k = 1, 4, 16; {pb['n_checks']} "
              f"question/k checks, {res['repeats']} repeats each): mean |error| {fmt(pb['mean_abs_err'], 3)}, max |z| "
              f"{fmt(pb['max_abs_z'], 3)} (z with the estimator's exact standard deviation).", "",
              "## Coverage of distribution-free bounds (samples of the exact LM)", "",
              f"{res['cov_repeats']} repeats of n = {res['cov_n']} sampled outputs; binary metric = correct answer "
              "(Clopper-Pearson, Hoeffding), scalar metric = log p(completion) (DKW band over the whole CDF, DKW "
              "mean bounds).  Nominal coverage 1 - delta; MC standard error in the last column.", ""]
    rows = [[c["question"], c["delta"], fmt(c["p"], 3), fmt(c["clopper_pearson"], 3), fmt(c["cp_width"], 3),
             fmt(c["hoeffding"], 3), fmt(c["dkw_band"], 3), fmt(c["dkw_band_half_width"], 3), fmt(c["dkw_mean"], 3),
             fmt(c["dkw_mean_width"], 3), "yes" if c["greedy_correct"] else "no", fmt(c["p_wrong_upper"], 3),
             fmt(c["se"], 3)] for c in res["coverage"]]
    lines.append(md_table(["question", "delta", "P(correct)", "CP cover", "CP width", "Hoeffding cover",
                           "DKW band cover", "half-width band cover", "DKW mean cover", "mean-bound width",
                           "greedy right", "P(wrong) upper bound", "MC se"], rows))
    lines += ["", "## Reading", "", res.get("reading", ""), ""]
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=64)
    ap.add_argument("--weibull-repeats", type=int, default=8)
    ap.add_argument("--cov-repeats", type=int, default=1000)
    ap.add_argument("--cov-n", type=int, default=200)
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    if args.quick:
        args.repeats, args.weibull_repeats, args.cov_repeats, args.cov_n = 8, 2, 100, 50
    task = T.sum_mod_task()
    ex = exact_tables(task)
    if args.quick:
        ex = ex[::16]
    key = jax.random.PRNGKey(20261206)
    t0 = time.time()
    res = dict(date=utc_now(), machine=machine_info(), command=command_line("benchmarks.decoding_evaluation"),
               repeats=args.repeats, weibull_repeats=args.weibull_repeats, cov_repeats=args.cov_repeats,
               cov_n=args.cov_n, questions=len(ex))
    print("accuracy vs samples ...", flush=True)
    res["accuracy"] = accuracy_vs_samples(task, ex, args.repeats, args.weibull_repeats, key)
    print(f"chaos metrics ... ({time.time() - t0:.0f}s)", flush=True)
    res["chaos"] = chaos_metrics(task, ex, args.repeats, key)
    print(f"coverage ... ({time.time() - t0:.0f}s)", flush=True)
    res["coverage"] = coverage(task, args.cov_repeats, args.cov_n, key)
    res["wall_s"] = time.time() - t0
    if args.quick:
        print(render(res))
        return
    atomic_write_json(OUT + ".json", res)
    text = render(res)
    atomic_write_text(OUT + ".md", text)
    print(text)


if __name__ == "__main__":
    main()
