"""GVM-RAFT vs uniform RAFT on the sum-mod-4 reasoning task (docs/training_sampling_raft.md).

Two measurements, each over several seeds (seed = the warm-up data, the initial parameters and
every draw), all arms of a seed starting from the same warmed-up model:

1. *gradient variance* (the paper's mechanism): on the warmed-up model, the trace variance of the
   importance-weighted RAFT gradient estimator ``(1/M) sum_i (1/(n_i p_i)) sum_j 1[acc_ij] grad log pi``
   (the estimator whose variance bound GVM minimises; ``p_i`` exact by enumeration, ``G_i`` from 16
   draws per prompt) and of the pooled RAFT gradient (the mean over accepted responses, what the
   loop trains on), for the uniform and the GVM allocation of the same budget, over R replicates;
2. *training*: held-out accuracy (exact: the probability that one sample answers right, averaged
   over the held-out questions) against responses drawn and against wall seconds of the iterations
   (compile and evaluation excluded), for uniform, gvm (our defaults: EMA + Beta prior estimates
   from the previous draws) and gvm with the paper's stage-1 pre-sampling (fresh estimates from 2
   extra draws per prompt each iteration, counted in the responses drawn).

    python -m benchmarks.training_sampling_raft            # full run (prints the tables)
    python -m benchmarks.training_sampling_raft --write    # ... and writes docs/benchmarks/training_sampling_raft.md
    python -m benchmarks.training_sampling_raft --quick    # a smoke run (fewer iterations and replicates)
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import _common as C

OUT_MD = os.path.join(C.REPO_ROOT, "docs", "benchmarks", "training_sampling_raft.md")
ARMS = {
    "uniform": dict(allocation="uniform"),
    "gvm": dict(allocation="gvm"),
    "gvm_presample": dict(allocation="gvm", presample_per_prompt=2, decay=0.0, prior_a=0.0, prior_b=0.0,
                          grad_prior_count=0.0),
}
#: --per-prompt: both allocations with each prompt's accepted responses weighing 1 in the SFT loss (the
#: per-prompt estimator), which separates the variance effect from the reweighting of the pooled set
PER_PROMPT_ARMS = {
    "uniform_per_prompt": dict(allocation="uniform", loss_weighting="per_prompt"),
    "gvm_per_prompt": dict(allocation="gvm", loss_weighting="per_prompt"),
}


def base_config(iterations: int):
    sys.path.insert(0, C.REPO_ROOT)
    from configs.train_raft import get_config

    c = get_config()
    c.raft.iterations = iterations
    return c


def arm_config(c, seed: int, arm: str):
    c = c.copy_and_resolve_references()
    c.seed = seed
    for k, v in {**ARMS, **PER_PROMPT_ARMS}[arm].items():
        c.raft[k] = v
    return c


# ---------------------------------------------------------------------------------------
# 1. gradient variance on the warmed-up model
# ---------------------------------------------------------------------------------------
def exact_acceptance(s, params, questions):
    from samplax.experiment.raft import _completion_nll

    task = s.task
    V, Cl, P = task.vocab_size, task.completion_length, task.prompt_length
    comps = np.array(np.unravel_index(np.arange(V ** Cl), (V,) * Cl)).T.astype(np.int32)
    H = len(questions)
    seqs = np.concatenate([np.repeat(questions, V ** Cl, axis=0), np.tile(comps, (H, 1))], axis=1)
    right = comps[None, :, -1] == np.asarray(task.correct(questions))[:, None]
    p = np.exp(-np.asarray(jax.jit(lambda pr: _completion_nll(s.net, pr, jnp.asarray(seqs), P))(params)))
    return np.sum(p.reshape(H, -1) * right, axis=1)


def gradient_variance(s, params, n_rep: int, seed: int, log=print) -> dict:
    from jax.flatten_util import ravel_pytree

    from samplax.data_sampling import gvm
    from samplax.decoding.tasks import sample_with_prompts
    from samplax.experiment.raft import _completion_nll
    from samplax.models.causal_lm import causal_language_model

    r = s.cfg["raft"]
    M, N, P = len(s.train_q), r["budget_per_iteration"], s.task.prompt_length
    prompts, answers = jnp.asarray(s.train_q), jnp.asarray(s.train_ans)
    p_exact = exact_acceptance(s, params, s.train_q)
    sampler = sample_with_prompts.__wrapped__
    flat0, unravel = ravel_pytree(params)

    @jax.jit
    def draw_grads(key, n):
        idx = jnp.repeat(jnp.arange(M), n, total_repeat_length=N)
        keys = jax.vmap(lambda j: jax.random.fold_in(key, j))(jnp.arange(N))
        x, _ = sampler(causal_language_model(s.net, params), keys, prompts[idx])
        ok = (x[:, -1] == answers[idx]).astype(jnp.float32)
        g = jax.vmap(lambda xi: ravel_pytree(jax.grad(lambda pr: -_completion_nll(s.net, pr, xi[None], P)[0])(params))[0])(x)
        return idx, ok, g

    # G_i: the mean gradient norm over accepted responses of 16 draws per prompt
    gsum, gcnt = np.zeros(M), np.zeros(M)
    for k in range(16 * M // N):
        idx, ok, g = draw_grads(jax.random.PRNGKey(10_000 + seed * 100 + k), jnp.full((M,), N // M, jnp.int32))
        idx, ok, nrm = np.asarray(idx), np.asarray(ok), np.linalg.norm(np.asarray(g), axis=1)
        np.add.at(gsum, idx, ok * nrm)
        np.add.at(gcnt, idx, ok)
    G = np.where(gcnt > 0, gsum / np.maximum(gcnt, 1), np.sum(gsum) / max(np.sum(gcnt), 1))
    allocs = {"uniform": np.asarray(gvm.uniform_allocation(M, N)),
              "gvm": np.asarray(gvm.gvm_allocation(jnp.asarray(p_exact), jnp.asarray(G), N, r["min_per_prompt"],
                                                   r["alpha"], r["beta"], r["rounding"]))}
    out = {}
    for name, n in allocs.items():
        iw, pooled = [], []
        for rep in range(n_rep):
            idx, ok, g = draw_grads(jax.random.PRNGKey(20_000 + seed * 1000 + rep), jnp.asarray(n, jnp.int32))
            idx, ok, g = np.asarray(idx), np.asarray(ok), np.asarray(g, np.float64)
            wts = ok / (n[idx] * np.maximum(p_exact[idx], 1e-12) * M)
            iw.append(wts @ g)
            pooled.append(ok @ g / max(ok.sum(), 1.0))
        iw, pooled = np.array(iw), np.array(pooled)
        out[name] = dict(iw_var=float(np.sum(np.var(iw, axis=0, ddof=1))),
                         pooled_var=float(np.sum(np.var(pooled, axis=0, ddof=1))),
                         bound=float(np.sum(G ** 2 / np.maximum(p_exact, 1e-12) / n) / M ** 2))
    out["p_range"] = [float(p_exact.min()), float(np.median(p_exact)), float(p_exact.max())]
    log(f"  seed {seed}: grad variance iw uniform {out['uniform']['iw_var']:.4g} gvm {out['gvm']['iw_var']:.4g}; "
        f"pooled uniform {out['uniform']['pooled_var']:.4g} gvm {out['gvm']['pooled_var']:.4g}")
    return out


# ---------------------------------------------------------------------------------------
# 2. training curves
# ---------------------------------------------------------------------------------------
def train_arm(c, warm_params, eval_every: int, log=print) -> list:
    from samplax.experiment import raft

    s = raft.setup(c)
    acc = raft.exact_accuracy_fn(s, s.eval_q)
    state = raft.fresh_state(s, warm_params)
    step = raft.make_iteration(s).lower(state).compile()
    rows = [dict(iteration=0, drawn=0, elapsed=0.0, accuracy=float(acc(state.params)))]
    elapsed = 0.0
    for it in range(1, c.raft.iterations + 1):
        t0 = time.perf_counter()
        state, _ = step(state)
        jax.block_until_ready(state.params)
        elapsed += time.perf_counter() - t0
        if it % eval_every == 0 or it == c.raft.iterations:
            rows.append(dict(iteration=it, drawn=int(state.drawn), elapsed=elapsed, accuracy=float(acc(state.params))))
    log(f"    {c.raft.allocation}{'+presample' if c.raft.presample_per_prompt else ''}: final accuracy "
        f"{rows[-1]['accuracy']:.4f} after {rows[-1]['drawn']} draws, {elapsed:.1f}s")
    return rows


def measure_per_prompt(res: dict, log=print) -> dict:
    """Add the PER_PROMPT_ARMS curves to a written result (same seeds, iterations, warm-ups)."""
    from samplax.experiment import raft

    base = base_config(res["iterations"])
    for seed in res["seeds"]:
        log(f"seed {seed}: warm-up (per-prompt arms)")
        warm = raft.warmup_params(raft.setup(arm_config(base, seed, "gvm")))
        for arm in PER_PROMPT_ARMS:
            res["curves"].setdefault(arm, {})[str(seed)] = train_arm(arm_config(base, seed, arm), warm,
                                                                     1 if res["quick"] else 2, log)
    return res


def measure(quick: bool, log=print) -> dict:
    from samplax.experiment import raft

    seeds = [0, 1, 2]
    iterations = 8 if quick else 20
    n_rep = 8 if quick else 24
    base = base_config(iterations)
    res = dict(seeds=seeds, iterations=iterations, n_rep=n_rep, config=base.to_dict(), variance={}, curves={})
    for seed in seeds:
        log(f"seed {seed}: warm-up")
        s = raft.setup(arm_config(base, seed, "gvm"))
        warm = raft.warmup_params(s)
        res["variance"][seed] = gradient_variance(s, warm, n_rep, seed, log)
        for arm in ARMS:
            res["curves"].setdefault(arm, {})[seed] = train_arm(arm_config(base, seed, arm), warm,
                                                                1 if quick else 2, log)
    return res


# ---------------------------------------------------------------------------------------
# The report
# ---------------------------------------------------------------------------------------
def _ms(xs, digits=3):
    xs = np.asarray(xs, np.float64)
    return f"{C.fmt(xs.mean(), digits)} ± {C.fmt(xs.std(ddof=1) if len(xs) > 1 else 0.0, 2)}"


def _first_reach(rows, key, thr):
    for r in rows:
        if r["accuracy"] >= thr:
            return r[key]
    return None


def render(res: dict) -> str:
    seeds = [str(s) for s in res["seeds"]] if isinstance(next(iter(res["variance"])), str) else res["seeds"]
    var = res["variance"]
    vrows = []
    for est, key in (("importance-weighted (the paper's)", "iw_var"), ("pooled (what RAFT trains on)", "pooled_var")):
        for name in ("uniform", "gvm"):
            vals = [var[s][name][key] for s in seeds]
            vrows.append([est, name, _ms(vals), _ms([var[s][name]["bound"] for s in seeds]) if key == "iw_var" else "",
                          _ms([var[s]["gvm"][key] / var[s]["uniform"][key] for s in seeds]) if name == "gvm" else ""])
    curves = res["curves"]
    its = [r["iteration"] for r in curves["uniform"][seeds[0]]]
    crow = []
    arms = [a for a in list(ARMS) + list(PER_PROMPT_ARMS) if a in curves]
    for arm in arms:
        for j, it in enumerate(its):
            rows = [curves[arm][s][j] for s in seeds]
            crow.append([arm, it, _ms([r["drawn"] for r in rows], 4), _ms([r["elapsed"] for r in rows]),
                         _ms([r["accuracy"] for r in rows])])
    final_acc = {arm: [curves[arm][s][-1]["accuracy"] for s in seeds] for arm in arms}
    reach = []
    for thr in (0.7, 0.8, 0.85, 0.9):
        row = [f"{thr:.2f}"]
        for arm in arms:
            d = [_first_reach(curves[arm][s], "drawn", thr) for s in seeds]
            t = [_first_reach(curves[arm][s], "elapsed", thr) for s in seeds]
            ok = [x for x in d if x is not None]
            row.append(f"{_ms(ok, 4)} ({len(ok)}/{len(seeds)})" if ok else f"— (0/{len(seeds)})")
            okt = [x for x in t if x is not None]
            row.append(f"{_ms(okt)}" if okt else "—")
        reach.append(row)
    cfg = res["config"]
    lines = [
        "# GVM-RAFT vs uniform RAFT (sum-mod-4 reasoning, a 2-layer causal transformer)",
        "",
        C.machine_md(res["machine"], res["command"], res["date"]),
        *([f"* The per-prompt arms: `{res['per_prompt_command']}` (later, same machine, seeds and settings)."]
          if "per_prompt_command" in res else []),
        "* Machine load: a 2-core CPU container, shared with other sessions and noisy: wall seconds are "
        "indicative only (responses drawn are exact).",
        f"* Setup: `configs/train_raft.py` -- {cfg['task']['train_prompts']} training prompts, "
        f"{cfg['task']['modulus'] ** cfg['task']['n_digits'] - cfg['task']['train_prompts']} held-out; "
        f"budget N = {cfg['raft']['budget_per_iteration']} responses per iteration, "
        f"{res['iterations']} iterations, {cfg['raft']['sft_steps']} Adam steps (lr {cfg['raft']['learning_rate']}) "
        f"on the accepted responses per iteration; warm-up {cfg['warmup']['steps']} steps on the exact noisy "
        f"reasoner. Seeds {res['seeds']} (mean ± std over seeds); every arm of a seed starts from the same "
        f"warmed-up model.",
        "* Arms: `uniform` (vanilla RAFT: N/M per prompt); `gvm` (n_i ∝ G_i / sqrt(p_i + α/p_i^(β-1)), α=1e-3, "
        "β=2, n_i ≥ 1, estimates from the previous iterations' draws, EMA decay 0.5, Beta(1,1) prior on p, "
        "pseudo-count 1 on G); `gvm_presample` (the paper's Alg. 2: 2 extra draws per prompt each iteration "
        "for fresh plain estimates, counted in the responses drawn, not trained on)"
        + ("; `*_per_prompt`: the same allocations with `raft.loss_weighting = \"per_prompt\"` (each prompt's "
           "accepted responses weigh 1 in the SFT loss, instead of the pooled mean)." if "gvm_per_prompt" in res["curves"]
           else "."),
        "",
        "## 1. Gradient variance on the warmed-up model",
        "",
        f"Trace of the covariance of the gradient estimate over {res['n_rep']} replicates per seed (same budget "
        "N). The bound is Σ G_i²/(n_i p_i)/M² with the measured G_i and exact p_i (the objective GVM minimises).",
        "",
        C.md_table(["estimator", "allocation", "trace variance", "bound", "gvm / uniform"], vrows,
                   ["l", "l", "r", "r", "r"]),
        "",
        "Acceptance rates of the training prompts on the warmed-up model (min / median / max, seed 0): "
        + " / ".join(f"{x:.3f}" for x in var[seeds[0]]["p_range"]) + ".",
        "",
        "## 2. Held-out accuracy vs responses drawn and vs wall time",
        "",
        C.md_table(["arm", "iteration", "responses drawn", "wall s (iterations)", "held-out accuracy"], crow,
                   ["l", "r", "r", "r", "r"]),
        "",
        "Responses drawn (and wall seconds) to first reach a held-out accuracy (seeds that reached it):",
        "",
        C.md_table(["accuracy"] + [f"{a} {k}" for a in arms for k in ("draws", "s")], reach,
                   ["r"] + ["r"] * (2 * len(arms))),
        "",
        "Final held-out accuracy: " + "; ".join(f"{a} {_ms(v)}" for a, v in final_acc.items()) + ". Per seed "
        f"{res['seeds']}: " + "; ".join(f"{a} " + ", ".join(f"{x:.3f}" for x in v) for a, v in final_acc.items())
        + ". Paired by seed, gvm − uniform: "
        + _ms(np.array(final_acc["gvm"]) - np.array(final_acc["uniform"]))
        + f" ({int(np.sum(np.array(final_acc['gvm']) > np.array(final_acc['uniform'])))}/{len(seeds)} seeds "
        "better; with 3 seeds a sign test cannot reach p < 0.05)."
        + ("" if "gvm_per_prompt" not in final_acc else " Per-prompt loss weighting, gvm − uniform: "
           + _ms(np.array(final_acc["gvm_per_prompt"]) - np.array(final_acc["uniform_per_prompt"]))
           + f" ({int(np.sum(np.array(final_acc['gvm_per_prompt']) > np.array(final_acc['uniform_per_prompt'])))}"
           f"/{len(seeds)} seeds better)."),
        "",
    ]
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="fewer iterations and replicates (a smoke run)")
    ap.add_argument("--write", action="store_true", help=f"write {os.path.relpath(OUT_MD, C.REPO_ROOT)} and its .json")
    ap.add_argument("--from-json", action="store_true", help="re-render the written .json (no measurement)")
    ap.add_argument("--per-prompt", action="store_true", help="add the per-prompt loss-weighting arms to the "
                    "written .json (same seeds and settings) and re-render")
    args = ap.parse_args()
    if args.per_prompt:
        import json

        C.enable_compilation_cache()
        with open(OUT_MD[:-3] + ".json") as fh:
            res = measure_per_prompt(json.load(fh))
        res["per_prompt_command"] = C.command_line("benchmarks.training_sampling_raft")
        C.atomic_write_json(OUT_MD[:-3] + ".json", C.json_clean(res))
        print(C.rerender_from_json(OUT_MD[:-3] + ".json", OUT_MD, render))
        return
    if args.from_json:
        print(C.rerender_from_json(OUT_MD[:-3] + ".json", OUT_MD, render))
        return
    C.enable_compilation_cache()
    t0 = time.time()
    res = measure(args.quick)
    res.update(machine=C.machine_info(), command=C.command_line("benchmarks.training_sampling_raft"),
               date=C.utc_now(), total_s=time.time() - t0, quick=args.quick)
    res = C.json_clean(res)
    text = render(res)
    print(text)
    if args.write:
        C.atomic_write_json(OUT_MD[:-3] + ".json", res)
        C.atomic_write_text(OUT_MD, text)


if __name__ == "__main__":
    main()
