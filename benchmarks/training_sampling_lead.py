"""LEAD against uniform / random-subset sampling and full data on ``clusters_mix``.

The data set (samplax.data ``clusters_mix``) mixes clean clusters, noisy-label clusters and
redundant (near-duplicate) clusters, so the utility of each cluster is known by construction.
An MLP classifier (hidden 64-64, Adam, constant learning rate) is trained for a *fraction* of
the full-data budget (``FULL_EPOCHS`` epochs); every sampler draws the batches of the same
number of steps.  Reported: held-out accuracy (mean +- std over seeds), the share of the drawn
examples that came from noisy / redundant clusters (uniform: 2/8 each by construction), and
the distinct examples seen.  The training loop is a small self-contained ``lax.scan`` (the
same draw -> gather -> step -> stats order as samplax.experiment.trainer), so all methods
share one code path and the seeds run fast.

    python -m benchmarks.training_sampling_lead            # 2 data sets x 4 budgets x 3 seeds
    python -m benchmarks.training_sampling_lead --quick    # the mixture, 1 budget x 2 seeds
    python -m benchmarks.training_sampling_lead --write    # also docs/benchmarks/training_sampling_lead.md
"""
from __future__ import annotations

import argparse
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from benchmarks import _common as C
from samplax.data import make_dataset
from samplax.data_sampling import base
from samplax.data_sampling import lead as lead_mod  # noqa: F401 (registers "lead")

MODULE = "benchmarks.training_sampling_lead"
OUT = os.path.join(C.REPO_ROOT, "docs", "benchmarks", "training_sampling_lead.md")
#: the data sets measured: the mixture, and one without noisy labels (redundancy only)
SETTINGS = {"mix": dict(clean=4, noisy=2, redundant=2, cluster_size=256),
            "no_noise": dict(clean=4, noisy=0, redundant=4, cluster_size=256)}
DATA = SETTINGS["mix"]
BATCH = 32
LR = 3e-3
HIDDEN = (64, 64)
FULL_EPOCHS = 20
FRACTIONS = (0.05, 0.1, 0.25, 0.5)


def mlp_init(key, sizes):
    params = []
    for a, b in zip(sizes[:-1], sizes[1:]):
        key, sub = jax.random.split(key)
        params.append((jax.random.normal(sub, (a, b)) * jnp.sqrt(2.0 / a), jnp.zeros((b,))))
    return params


def mlp_apply(params, x):
    for w, b in params[:-1]:
        x = jax.nn.relu(x @ w + b)
    w, b = params[-1]
    return x @ w + b


def train(sampler, arrays, eval_arrays, num_classes, steps: int, seed: int):
    """Train for ``steps`` batches drawn by ``sampler``; returns (eval accuracy, indices (steps, B))."""
    x, y = (jnp.asarray(a) for a in arrays)
    xe, ye = (jnp.asarray(a) for a in eval_arrays)
    tx = optax.adam(LR)

    def loss_fn(params, xb, yb):
        per = optax.softmax_cross_entropy_with_integer_labels(mlp_apply(params, xb), yb)
        return per.mean(), per

    @jax.jit
    def run(seed):
        params = mlp_init(jax.random.PRNGKey(seed), (x.shape[1],) + HIDDEN + (num_classes,))
        carry = (params, tx.init(params), sampler.init(), base.initial_stats(sampler))

        def step(carry, k):
            params, opt, sst, stats = carry
            idx, sst = sampler.next_indices(base.sampler_key(seed, k), sst, stats)
            (_, per), g = jax.value_and_grad(loss_fn, has_aux=True)(params, x[idx], y[idx])
            upd, opt = tx.update(g, opt, params)
            params = optax.apply_updates(params, upd)
            stats = dict(indices=idx, loss=per, grad_norm=optax.global_norm(g), learning_rate=jnp.float32(LR),
                         step=k, valid=jnp.asarray(True))
            return (params, opt, sst, stats), idx

        (params, *_), idx = jax.lax.scan(step, carry, jnp.arange(steps, dtype=jnp.int32))
        acc = jnp.mean(jnp.argmax(mlp_apply(params, xe), -1) == ye)
        return acc, idx

    acc, idx = run(seed)
    return float(acc), np.asarray(idx)


def method_sampler(method: str, size: int, fraction: float, seed: int, data=DATA):
    if method == "uniform":
        return base.get_sampler("uniform", size, BATCH)
    if method == "fixed_subset":
        return base.get_sampler("fixed_subset", size, BATCH, dict(fraction=fraction, seed=seed))
    if method == "rs2":
        return base.get_sampler("rs2", size, BATCH, dict(fraction=fraction, seed=seed))
    if method == "lead":
        return base.get_sampler("lead", size, BATCH, dict(cluster_size=data["cluster_size"]))
    if method == "lead_no_bandit":  # gamma = 1: clusters uniformly at random, top-IDU inside
        return base.get_sampler("lead", size, BATCH, dict(cluster_size=data["cluster_size"], gamma=1.0))
    if method == "lead_cluster_reward":  # reward: the cluster's batch utility now vs at its last visit
        return base.get_sampler("lead", size, BATCH, dict(cluster_size=data["cluster_size"], reward="cluster"))
    if method == "lead_mixed":  # every example's cluster drawn from the bandit (arms_per_step = batch)
        return base.get_sampler("lead", size, BATCH, dict(cluster_size=data["cluster_size"], arms_per_step=BATCH))
    if method == "full":
        return base.get_sampler("epoch", size, BATCH, dict(seed=seed))
    raise ValueError(method)


def methods(setting: str):
    if setting != "mix":
        return ["uniform", "lead", "lead_no_bandit", "lead_mixed"]
    out = ["uniform", "fixed_subset"] + (["rs2"] if "rs2" in base.SAMPLERS else []) + ["lead", "lead_no_bandit",
                                                                              "lead_cluster_reward", "lead_mixed"]
    return out


def run_all(setting, fractions, seeds, log=print):
    data = SETTINGS[setting]
    ds = make_dataset("clusters_mix", **data)
    n, m = ds.size, data["cluster_size"]
    kind = np.repeat(np.array(["clean"] * data["clean"] + ["noisy"] * data["noisy"]
                              + ["redundant"] * data["redundant"]), m)
    full_steps = base.steps_for_epochs(n, BATCH, FULL_EPOCHS)
    rows = []
    plan = [(f, meth) for f in fractions for meth in methods(setting)] + [(1.0, "full")]
    for fraction, meth in plan:
        steps = max(1, int(round(fraction * full_steps)))
        accs, noisy, red, distinct, secs = [], [], [], [], []
        for seed in seeds:
            t0 = time.time()
            acc, idx = train(method_sampler(meth, n, fraction, seed, data), ds.arrays, ds.eval_arrays,
                             ds.num_classes, steps, seed)
            secs.append(time.time() - t0)
            k = kind[idx.ravel()]
            accs.append(acc)
            noisy.append(np.mean(k == "noisy"))
            red.append(np.mean(k == "redundant"))
            distinct.append(len(np.unique(idx)) / n)
        row = dict(setting=setting, method=meth, fraction=fraction, steps=steps, acc_mean=float(np.mean(accs)),
                   acc_std=float(np.std(accs, ddof=1)) if len(accs) > 1 else 0.0, accs=accs,
                   noisy_share=float(np.mean(noisy)), redundant_share=float(np.mean(red)),
                   distinct=float(np.mean(distinct)), seconds=float(np.mean(secs)))
        log(f"{setting:8s} {meth:19s} f={fraction:<5} steps={steps:5d} acc={row['acc_mean']:.4f}+-{row['acc_std']:.4f} "
            f"noisy={row['noisy_share']:.3f} redundant={row['redundant_share']:.3f} distinct={row['distinct']:.3f}")
        rows.append(row)
    return rows


def render(res: dict) -> str:
    lines = ["# LEAD vs random sampling on clusters_mix: accuracy vs fraction of the training budget", "",
             C.machine_md(res["machine"], res["command"], res["date"]), "",
             "Data: `clusters_mix` (clusters of 256; 16-d, 4 classes, linear teacher; eval: 2048 fresh points from "
             f"every cluster's blob with teacher labels).  MLP {HIDDEN}, Adam lr {LR} (constant), batch {BATCH}.  "
             f"Budget fraction f: f x {FULL_EPOCHS} epochs of steps (full = {FULL_EPOCHS} epochs, `epoch` sampler).  "
             f"Seeds {res['seeds']} (model init and sampler); mean +- sample std.  Shares: fraction of the drawn "
             "examples from noisy / redundant clusters (uniform: their fraction of the data, by construction).", ""]
    for setting in res["settings"]:
        d = SETTINGS[setting]
        lines += [f"## `{setting}`: {d['clean']} clean, {d['noisy']} noisy-label, {d['redundant']} redundant clusters",
                  "",
                  "| f | method | steps | eval accuracy | noisy share | redundant share | distinct examples | s/run |",
                  "|---|---|---|---|---|---|---|---|"]
        for r in (r for r in res["rows"] if r.get("setting", "mix") == setting):
            lines.append(f"| {r['fraction']:g} | {r['method']} | {r['steps']} | {r['acc_mean']:.4f} +- "
                         f"{r['acc_std']:.4f} | {r['noisy_share']:.3f} | {r['redundant_share']:.3f} | "
                         f"{r['distinct']:.3f} | {r['seconds']:.1f} |")
        lines.append("")
    lines += ["Methods: `uniform` i.i.d. indices; `fixed_subset` one random subset of f N examples, epochs over "
              "it; `rs2` a fresh random subset of f N examples per round, without replacement across rounds "
              "(h4's sampler; constant learning rate here, not RS2's adjusted schedule); `lead` EXP3 over the "
              "clusters + top-IDU inside (defaults of samplax.data_sampling.lead: one cluster per step); "
              "`lead_no_bandit` the same with gamma = 1 (clusters uniformly at random); `lead_cluster_reward` the "
              "bandit rewarded with the cluster-level utility change (option reward=\"cluster\"); `lead_mixed` "
              "arms_per_step = batch size (each example's cluster drawn from the bandit: mixed batches, our "
              "extension).  s/run includes compilation.", ""]
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--write", action="store_true")
    args = ap.parse_args()
    C.enable_compilation_cache()
    fractions = (0.1,) if args.quick else FRACTIONS
    seeds = (0, 1) if args.quick else (0, 1, 2)
    settings = ("mix",) if args.quick else tuple(SETTINGS)
    rows = [r for setting in settings for r in run_all(setting, fractions, seeds)]
    res = dict(machine=C.machine_info(), command=C.command_line(MODULE), date=C.utc_now(), seeds=list(seeds),
               settings=list(settings), rows=rows)
    md = render(res)
    print(md)
    if args.write:
        C.atomic_write_text(OUT, md)
        C.atomic_write_json(OUT[:-3] + ".json", res)
    return OUT


if __name__ == "__main__":
    main()
