"""Trajectory weighting (Hong et al., ICLR 2023) on CartPole-v1 or Acrobot-v1: the learned policy's return
against the fraction of good trajectories in a mixed offline data set, return-weighted
sampling against uniform transition sampling, for behaviour cloning and discrete CQL.

    python -m benchmarks.training_sampling_offline_rl            # full (prints a markdown table)
    python -m benchmarks.training_sampling_offline_rl --quick    # a fast run
    python -m benchmarks.training_sampling_offline_rl --write    # docs/benchmarks/training_sampling_offline_rl.md
    python -m benchmarks.training_sampling_offline_rl --env=Acrobot-v1 --write   # ..._acrobot.md
    python -m benchmarks.training_sampling_offline_rl --env=Acrobot-v1 --alpha-sweep --write   # ..._acrobot_alpha.md

Each data set has N trajectories: round(f N) of the hand-written controller and the rest
of a uniformly random policy, generated with the library's
:func:`samplax.rl.envs.mixed_dataset` episode keys (seed s: data seed s, training seed s,
evaluation key 10_000 + s).  Every (fraction, seed) run of one learner and weighting is one
vmapped, jitted training function (the sampler is built from traced probabilities), then
the greedy policy is evaluated over ``episodes`` episodes.  "behaviour" is the exact
expected return of the trajectories the sampler draws, ``sum_i p_i G_i`` (the return of the
resampled data set's behaviour policy in a deterministic MDP, the paper's argument);
"good share" the probability that a draw comes from a good trajectory.
"""
from __future__ import annotations

import argparse
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from benchmarks import _common
from samplax.rl import envs
from samplax.rl import offline as off

OUT = os.path.join(_common.REPO_ROOT, "docs", "benchmarks", "training_sampling_offline_rl")


ENV_NOTES = {
    "CartPole-v1": "the controller holds the pole for all 500 steps (return 500, episodes of 500 steps); a random "
                   "policy drops it after about 22 steps (return about 22): good episodes are the LONG ones",
    "Acrobot-v1": "the controller swings the tip up in about 80 steps (return about -80); a random policy mostly "
                  "does not within the 500-step cap (return about -500): good episodes are the SHORT ones",
}


def settings(quick: bool, env: str = "CartPole-v1") -> dict:
    if quick:
        return dict(env=env, fractions=(0.01, 0.1), seeds=(0, 1, 2), num_trajectories=200, max_steps=500,
                    num_steps=1000, batch_size=256, episodes=10, alpha=0.1, learners=("bc", "cql"),
                    weightings=("uniform", "return"))
    return dict(env=env, fractions=(0.01, 0.05, 0.1, 0.25, 0.5), seeds=(0, 1, 2), num_trajectories=200, max_steps=500,
                num_steps=3000, batch_size=256, episodes=20, alpha=0.1, learners=("bc", "cql"),
                weightings=("uniform", "return"))


ALPHAS = (0.05, 0.1, 0.2, 0.3, 1.0)


def alpha_settings(env: str = "Acrobot-v1") -> dict:
    """The temperature sweep: RW at several alphas, 5 % good trajectories."""
    return dict(settings(False, env), fractions=(0.05,), weightings=tuple(f"return:{a:g}" for a in ALPHAS))


def out_path(env: str, alpha_sweep: bool = False) -> str:
    """docs/benchmarks/training_sampling_offline_rl[_<env>][_alpha] (CartPole-v1: no env suffix)."""
    base = OUT if env == "CartPole-v1" else f"{OUT}_{env.split('-')[0].lower()}"
    return base + ("_alpha" if alpha_sweep else "")


def pools(env, seeds, n):
    """Per seed, n controller episodes and n random episodes with mixed_dataset's keys: the
    first k of a pool are exactly mixed_dataset's k episodes (episode i uses fold_in(key, i))."""
    good_pol = envs.epsilon_policy(envs.controller(env.name), 0.0, env.num_actions)
    bad_pol = envs.epsilon_policy(envs.controller(env.name), 1.0, env.num_actions)
    good_fn = jax.jit(lambda k: envs.rollout(env, good_pol, k, n))
    bad_fn = jax.jit(lambda k: envs.rollout(env, bad_pol, k, n))
    out = {}
    for s in seeds:
        key = jax.random.PRNGKey(s)
        out[s] = (jax.device_get(good_fn(jax.random.fold_in(key, 1))),
                  jax.device_get(bad_fn(jax.random.fold_in(key, 2))))
    return out


def dataset(pool, fraction, n):
    k = int(round(fraction * n))
    good, bad = pool
    trajs = envs.Trajectories(*[np.concatenate([g[:k], b[:n - k]]) for g, b in zip(good, bad)])
    return trajs, np.arange(n) < k


def run(cfg: dict, log=print) -> dict:
    env = envs.make_env(cfg.get("env", "CartPole-v1"), cfg["max_steps"])
    n, t_max = cfg["num_trajectories"], cfg["max_steps"]
    t0 = time.time()
    pool = pools(env, cfg["seeds"], n)
    log(f"data pools: {time.time() - t0:.1f}s")
    cells = [(f, s) for f in cfg["fractions"] for s in cfg["seeds"]]
    data, info = [], []
    for f, s in cells:
        trajs, good = dataset(pool[s], f, n)
        data.append((trajs, good))
    flat = jax.tree.map(lambda *xs: jnp.stack(xs), *[off.flat_transitions(tr) for tr, _ in data])
    lengths = np.stack([np.asarray(tr.length) for tr, _ in data])
    seeds = jnp.asarray([s for _, s in cells], jnp.int32)
    net = envs.MLP((64, 64), env.num_actions)
    results = []
    for learner_name in cfg["learners"]:
        learner = off.make_learner(learner_name, net, env.obs_dim, optax.adam(1e-3))

        def train_eval(probs, lens, batch, seed):
            sampler = off.trajectory_sampler(probs, lens, t_max, cfg["batch_size"])
            lkey = jax.random.fold_in(jax.random.PRNGKey(0), seed)
            state = off.OfflineState(jnp.zeros((), jnp.int32), learner.init(lkey), sampler.init())
            state, metrics = off.make_train_chunk(learner, sampler, cfg["num_steps"])(state, batch, seed)
            policy = envs.greedy_policy(net.apply, state.learner.params)
            ret = envs.rollout(env, policy, jax.random.PRNGKey(10_000 + seed), cfg["episodes"]).returns
            return ret, metrics["loss"][-100:].mean()

        fn = jax.jit(jax.vmap(train_eval))
        for weighting in cfg["weightings"]:  # "name" (alpha = cfg["alpha"]) or "name:alpha"
            name, _, alpha = weighting.partition(":")
            probs = np.stack([off.trajectory_probabilities(np.asarray(tr.returns), np.asarray(tr.length), name,
                                                           float(alpha or cfg["alpha"])) for tr, _ in data])
            t0 = time.time()
            rets, losses = jax.device_get(fn(jnp.asarray(probs, jnp.float32), jnp.asarray(lengths), flat, seeds))
            log(f"{learner_name} {weighting}: {time.time() - t0:.1f}s for {len(cells)} runs")
            for i, (f, s) in enumerate(cells):
                tr, good = data[i]
                g = np.asarray(tr.returns, np.float64)
                results.append(dict(learner=learner_name, weighting=weighting, fraction=f, seed=s,
                                    eval_return=float(np.mean(rets[i])), final_loss=float(losses[i]),
                                    behaviour_return=off.behaviour_return(probs[i], g),
                                    good_share=float(probs[i][good].sum()), data_mean_return=float(g.mean())))
    return dict(settings=cfg, results=results)


def render(out: dict) -> str:
    cfg, res = out["settings"], out["results"]

    def cell(rows, key):
        v = np.array([r[key] for r in rows])
        return f"{v.mean():.1f} ± {v.std(ddof=1) if len(v) > 1 else 0.0:.1f}"

    header = ["good fraction", "data mean return"]
    for w in cfg["weightings"]:
        header += [f"behaviour ({w})", f"good share ({w})"]
    for ln in cfg["learners"]:
        for w in cfg["weightings"]:
            header.append(f"{ln.upper()} {w}")
    rows = []
    for f in cfg["fractions"]:
        sel = [r for r in res if r["fraction"] == f]
        row = [f"{100 * f:g}%", cell([r for r in sel if r["learner"] == cfg["learners"][0]
                                      and r["weighting"] == cfg["weightings"][0]], "data_mean_return")]
        for w in cfg["weightings"]:
            ws = [r for r in sel if r["weighting"] == w and r["learner"] == cfg["learners"][0]]
            row += [cell(ws, "behaviour_return"), f"{np.mean([r['good_share'] for r in ws]):.3f}"]
        for ln in cfg["learners"]:
            for w in cfg["weightings"]:
                row.append(cell([r for r in sel if r["learner"] == ln and r["weighting"] == w], "eval_return"))
        rows.append(row)
    env = cfg.get("env", "CartPole-v1")
    lines = [
        f"# Trajectory weighting on {env} (offline RL, mixed data sets)",
        "",
        "Hong et al., \"Harnessing Mixed Offline Reinforcement Learning Datasets via Trajectory Weighting\" "
        "(ICLR 2023). Page: [docs/training_sampling_offline_rl.md](../training_sampling_offline_rl.md).",
        "",
        _common.machine_md(out["machine"], out["command"], out["date"]),
        "* Machine load: 2-core CPU container, shared with other sessions, noisy (timings are not the point here).",
        "",
        f"{cfg['num_trajectories']} trajectories (cap {cfg['max_steps']} steps): a fraction from the hand-written "
        f"controller, the rest from a uniformly random policy; {ENV_NOTES.get(env, '')}. Learners: an MLP (64, 64), "
        f"Adam 1e-3, {cfg['num_steps']} steps of batch {cfg['batch_size']}; `uniform` = uniform over transitions "
        f"(the usual baseline), `return` = return weighting RW, alpha = {cfg['alpha']} (`return:a`: alpha = a), "
        f"transition level (the authors' code). Cells: mean ± std over seeds {list(cfg['seeds'])} (each seed: its "
        f"own data set, initialisation and draws) of the greedy policy's mean return over {cfg['episodes']} "
        f"evaluation episodes (cap {cfg['max_steps']} steps). \"behaviour\": the exact expected return of a "
        "drawn trajectory, sum_i p_i G_i; \"good share\": the probability that a draw comes from a controller "
        "trajectory.",
        "",
        _common.md_table(header, rows, ["l"] + ["r"] * (len(header) - 1)),
        "",
    ]
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="two fractions, 1000 steps")
    ap.add_argument("--env", default="CartPole-v1", choices=sorted(ENV_NOTES), help="the gymnax env")
    ap.add_argument("--write", action="store_true", help=f"write {OUT}[_<env>].md and .json")
    ap.add_argument("--alpha-sweep", action="store_true", help=f"RW at alpha in {ALPHAS}, 5 %% good trajectories")
    ap.add_argument("--from-json", action="store_true", help="re-render the written .json of --env (no measurement)")
    args = ap.parse_args()
    path = out_path(args.env, args.alpha_sweep)
    if args.from_json:
        print(_common.rerender_from_json(path + ".json", path + ".md", render))
        return
    _common.enable_compilation_cache()
    out = run(alpha_settings(args.env) if args.alpha_sweep else settings(args.quick, args.env))
    out.update(machine=_common.machine_info(), command=_common.command_line("benchmarks.training_sampling_offline_rl"),
               date=_common.utc_now())
    text = render(out)
    print(text)
    if args.write:
        _common.atomic_write_json(path + ".json", out)
        _common.atomic_write_text(path + ".md", text)


if __name__ == "__main__":
    main()
