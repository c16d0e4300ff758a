"""Snapshot RL (S3RL, Zhao et al. 2024) against standard resets: PPO's greedy return in the
original environment vs environment steps, mean +- std over seeds.

    python -m benchmarks.training_sampling_snapshot_rl [--quick] [--write] [--seeds N]

Every arm uses samplax.experiment.rl_snapshot.build_learner on the config of
configs/train_snapshot_rl.py (Acrobot-v1, a teacher PPO agent trained for
``rl.snapshot.teacher_updates`` updates with standard resets, K-means status classification,
truncation); arms differ only in ``rl.snapshot``: "standard" (disabled), "S3RL" (cluster
selection, half of the early starts) and, in the full run, "uniform snapshots" (no status
classification) and S3RL with every start during the snapshot phase a snapshot (prob 1).  The
teacher's own environment steps are prior computation (the paper's setting) and are not
counted on the x axis; they are stated under the table.  --write writes
docs/benchmarks/training_sampling_snapshot_rl.md (+ .json).
"""
from __future__ import annotations

import argparse
import json
import os
import time

import jax
import numpy as np

from benchmarks import _common
from configs.train_snapshot_rl import get_config
from samplax.experiment import rl_snapshot

OUT = os.path.join("docs", "benchmarks", "training_sampling_snapshot_rl")


def run_arm(cfg: dict, log=print) -> dict:
    learner, sampler = rl_snapshot.build_learner(cfg)
    state = learner.init(jax.random.PRNGKey(cfg["seed"]), sampler)
    total = rl_snapshot.num_updates(cfg)
    chunk = cfg["train"]["updates_per_chunk"]
    batch = cfg["rl"]["num_envs"] * cfg["rl"]["num_steps"]
    steps, returns, greedy, done, t0 = [], [], [], 0, time.perf_counter()
    while done < total:
        n = min(chunk, total - done)
        state, _ = learner.run(state, n)
        done += n
        ev, gr = rl_snapshot.evaluate(cfg, learner, state.params, done)
        steps.append(done * batch)
        returns.append(float(np.mean(ev)))
        greedy.append(float(np.mean(gr)))
    log(f"  seed {cfg['seed']}: {[round(r, 1) for r in returns]} ({time.perf_counter() - t0:.0f}s)")
    return dict(steps=steps, returns=returns, greedy=greedy)


ARMS = {
    "standard resets": dict(enabled=False),
    "S3RL (cluster snapshots + truncation)": dict(enabled=True, selection="cluster"),
    "uniform snapshots + truncation": dict(enabled=True, selection="uniform"),
    "S3RL, every early start a snapshot": dict(enabled=True, selection="cluster", prob=1.0),
}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="2 seeds, 30 updates, two arms")
    ap.add_argument("--write", action="store_true", help=f"write {OUT}.md and .json")
    ap.add_argument("--seeds", type=int, default=None)
    ap.add_argument("--updates", type=int, default=None)
    args = ap.parse_args()
    _common.enable_compilation_cache()
    base = rl_snapshot.validate(get_config())
    batch = base["rl"]["num_envs"] * base["rl"]["num_steps"]
    seeds = args.seeds or (2 if args.quick else 8)
    updates = args.updates or (30 if args.quick else 60)
    base["train"]["total_env_steps"] = updates * batch
    arms = list(ARMS)[:2] if args.quick else list(ARMS)
    results = {}
    for arm in arms:
        print(arm)
        runs = []
        for seed in range(seeds):
            cfg = json.loads(json.dumps(base))
            cfg["seed"] = seed
            cfg["rl"]["snapshot"].update(ARMS[arm])
            runs.append(run_arm(cfg))
        results[arm] = runs
    md = render(dict(results=results, config=base, seeds=seeds, updates=updates, quick=args.quick))
    print(md)
    if args.write:
        info = _common.machine_info()
        head = _common.machine_md(info, _common.command_line("benchmarks.training_sampling_snapshot_rl") +
                                  (" --quick" if args.quick else ""), _common.utc_now())
        os.makedirs(os.path.dirname(OUT), exist_ok=True)
        _common.atomic_write_json(OUT + ".json", dict(results=results, config=base, seeds=seeds, updates=updates))
        with open(OUT + ".md", "w") as f:
            f.write("# Snapshot RL (S3RL) vs standard resets\n\n" + head + "\n" + md)


def _table(results: dict, field: str) -> str:
    arms = list(results)
    steps = results[arms[0]][0]["steps"]
    rows = []
    for i, s in enumerate(steps):
        row = [f"{s:,}"]
        for arm in arms:
            r = np.array([run[field][i] for run in results[arm]])
            row.append(f"{r.mean():.1f} ± {r.std():.1f}")
        rows.append(row)
    auc = ["mean over the curve"]
    for arm in arms:
        a = np.array([np.mean(run[field]) for run in results[arm]])
        auc.append(f"**{a.mean():.1f} ± {a.std():.1f}**")
    rows.append(auc)
    from scipy import stats

    base = np.array([np.mean(run[field]) for run in results[arms[0]]])
    test = ["paired t-test vs " + arms[0] + " (p)", "--"]
    for arm in arms[1:]:
        a = np.array([np.mean(run[field]) for run in results[arm]])
        test.append(f"{stats.ttest_rel(a, base).pvalue:.2f}" if len(a) > 1 else "--")
    rows.append(test)
    return _common.md_table(["env steps"] + arms, rows)


def render(res: dict) -> str:
    results, cfg = res["results"], res["config"]
    sn = cfg["rl"]["snapshot"]
    teacher_steps = sn["teacher_updates"] * cfg["rl"]["num_envs"] * cfg["rl"]["num_steps"]
    return (f"{cfg['rl']['env']}, PPO ({cfg['rl']['num_envs']} envs x {cfg['rl']['num_steps']} steps per update, "
            f"hidden {tuple(cfg['rl']['hidden'])}): return of the current policy (sampled actions) over "
            f"{cfg['train']['eval_episodes']} episodes of the *original* environment (env.reset, 500-step limit; "
            f"-500 = never swung up), mean ± std over {res['seeds']} seeds (0..{res['seeds'] - 1}; the seed sets "
            f"the student, the teacher and the buffer).\n\n{_table(results, 'returns')}\n\n"
            f"The t-test pairs the arms by seed (same student initialisation and evaluation keys) on each "
            f"seed's mean over the curve.\n\n"
            f"The same policies acting greedily (argmax):\n\n{_table(results, 'greedy')}\n\n"
            f"Snapshot arms: teacher = PPO with standard resets for {sn['teacher_updates']} updates "
            f"({teacher_steps:,} env steps of prior computation, not counted above), "
            f"{sn['teacher_episodes']} teacher episodes, {sn['num_clusters']} K-means clusters, truncation "
            f"{sn['truncation']} steps, snapshot probability {sn['prob']} (1.0 in the last arm) during the first "
            f"{sn['until_fraction']:.0%} of updates, standard resets afterwards.\n")


if __name__ == "__main__":
    main()
