"""Rejection-sampling fine-tuning (RAFT) of a small causal LM with a per-prompt sample allocation:
uniform (vanilla RAFT) or GVM (Yao et al. 2025, arXiv:2505.02391; :mod:`samplax.data_sampling.gvm`).

``python -m experiments.train --config=configs/train_raft.py --workdir=DIR`` (config ``kind="raft"``)
calls :func:`run_raft`.  The run:

1. *task*: the sum-mod-m reasoning task of :mod:`samplax.decoding.tasks` (questions = Q digits,
   a chain of running sums, the answer = the last token; verifiable: ``answer == sum(q) mod m``).
   Its questions are split (``task.split_seed``) into ``task.train_prompts`` training prompts and
   the held-out rest.
2. *warm-up* (iteration 0): a :class:`samplax.models.causal_lm.CausalTransformer` is trained
   (``warmup.steps`` Adam steps of the causal LM loss) on sequences drawn from the task's exact
   noisy-reasoner LM, so it starts as an imperfect reasoner whose acceptance rate differs from
   question to question (a few % to ~90 %); the result is checkpoint 0.
3. *iterations* 1..T: allocate ``n_i`` samples to each training prompt (``raft.allocation``:
   ``"uniform"`` or ``"gvm"``; ``sum_i n_i = raft.budget_per_iteration``), draw them with the
   current model (the lax.scan sampler :func:`samplax.decoding.tasks.sample_with_prompts`), verify
   the answers, fine-tune on the accepted ones (``raft.sft_steps`` Adam steps of the masked
   sequence NLL) and update the estimates of ``p_i`` (acceptance) and ``G_i`` (the norm of
   ``grad log pi(y | x_i)`` over accepted responses, measured per sample before the update) for
   the next allocation.  ``raft.presample_per_prompt > 0`` is the paper's two-stage variant
   (Alg. 2): each iteration first draws that many responses per prompt to estimate ``p_i, G_i``
   (counted in the samples drawn, not trained on), then allocates the budget.

Everything that changes the result -- parameters, optimiser state, the allocation estimates, the
iteration counter, the RNG key, the sample counters -- is one pytree in Orbax checkpoints
(:class:`samplax.experiment.checkpoints.Checkpoints`), so a run killed with kill -9 and rerun with
the same command ends with bitwise the parameters of an uninterrupted run.  ``train_log.jsonl``:
one row per ``train.log_every`` iterations (samples drawn so far, accepted, the exact held-out and
training-prompt accuracy -- the probability that one sample answers right, by enumerating every
completion --, wall seconds); ``train_summary.json`` at the end (with ``params_sha256``).
"""
from __future__ import annotations

import json
import os
import time
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging

from samplax import io
from samplax.data_sampling import gvm
from samplax.experiment import results as store
from samplax.experiment.checkpoints import Checkpoints, resume_point, state_checksum
from samplax.experiment.config import ConfigError, Field, check_tree, float_range, int_range, one_of
from samplax.experiment.identity import identity
from samplax.experiment.trainer import rewrite_log   # keeps the rows whose "step" <= the checkpoint's

CHECKPOINT_DIR = "checkpoints"
LOG_FILE = "train_log.jsonl"
SUMMARY_FILE = "train_summary.json"
DERIVED = (store.CONFIG_FILE, CHECKPOINT_DIR, LOG_FILE, SUMMARY_FILE)
NON_IDENTITY_FIELDS = ("train.log_every", "train.checkpoint_every", "train.keep_checkpoints")
LOSS_WEIGHTINGS = ("pooled", "per_prompt")
#: test hook (tests/test_raft.py): after this iteration (logged and checkpointed) the run sleeps
PAUSE_ENV = "SAMPLAX_RAFT_TEST_PAUSE_AT"


# ---------------------------------------------------------------------------------------
# Config: schema and validation (one ConfigError naming the field)
# ---------------------------------------------------------------------------------------
def _schema() -> dict:
    i, f, st = "int", "float", "str"
    pos, nonneg = int_range(1), int_range(0)
    return {
        "kind": Field(st, check=one_of(("raft",))),
        "seed": Field(i, check=nonneg),
        "task": {"name": Field(st, check=one_of(("sum_mod",))), "modulus": Field(i, check=int_range(2, 8)),
                 "n_digits": Field(i, check=int_range(2, 4)), "train_prompts": Field(i, check=pos),
                 "split_seed": Field(i, check=nonneg)},
        "model": {"width": Field(i, check=pos), "depth": Field(i, check=pos), "heads": Field(i, check=pos),
                  "mlp_ratio": Field(i, check=pos)},
        "warmup": {"steps": Field(i, check=nonneg), "batch_size": Field(i, check=pos),
                   "learning_rate": Field(f, check=float_range(0.0, lo_open=True))},
        "raft": {"allocation": Field(st, check=one_of(gvm.ALLOCATIONS)), "iterations": Field(i, check=pos),
                 "budget_per_iteration": Field(i, check=pos), "min_per_prompt": Field(i, check=nonneg),
                 "presample_per_prompt": Field(i, check=nonneg), "alpha": Field(f, check=float_range(0.0)),
                 "beta": Field(f, check=float_range(0.0)), "rounding": Field(st, check=one_of(gvm.ROUNDINGS)),
                 "decay": Field(f, check=float_range(0.0, 1.0)), "prior_a": Field(f, check=float_range(0.0)),
                 "prior_b": Field(f, check=float_range(0.0)), "grad_prior_count": Field(f, check=float_range(0.0)),
                 "sft_steps": Field(i, check=pos), "learning_rate": Field(f, check=float_range(0.0, lo_open=True)),
                 "loss_weighting": Field(st, check=one_of(LOSS_WEIGHTINGS))},
        "train": {"log_every": Field(i, check=pos), "checkpoint_every": Field(i, check=pos),
                  "keep_checkpoints": Field(i, check=pos)},
    }


def validate_raft(config) -> dict:
    """The config as a plain dict, every field checked (ConfigError naming ``config.<field>``),
    including the cross-field constraints; touches no file."""
    cfg = config.to_dict() if hasattr(config, "to_dict") else dict(config)
    check_tree(_schema(), cfg, "config")
    t, m, r = cfg["task"], cfg["model"], cfg["raft"]
    n_questions = t["modulus"] ** t["n_digits"]
    if t["modulus"] ** (2 * t["n_digits"]) > 2 ** 20:
        raise ConfigError("config.task.modulus", f"modulus**(2*n_digits) sequences must be <= 2**20 (the task "
                          f"is enumerated exactly), got {t['modulus']}**{2 * t['n_digits']}; lower task.modulus "
                          f"or task.n_digits")
    if not 1 <= t["train_prompts"] < n_questions:
        raise ConfigError("config.task.train_prompts", f"must leave held-out prompts: 1 <= train_prompts < "
                          f"{n_questions} (modulus**n_digits questions), got {t['train_prompts']}")
    if m["width"] % m["heads"]:
        raise ConfigError("config.model.heads", f"must divide config.model.width ({m['width']}), got {m['heads']}")
    if r["budget_per_iteration"] < t["train_prompts"] * r["min_per_prompt"]:
        raise ConfigError("config.raft.budget_per_iteration",
                          f"must be >= task.train_prompts * raft.min_per_prompt = "
                          f"{t['train_prompts'] * r['min_per_prompt']}, got {r['budget_per_iteration']}")
    if r["allocation"] == "uniform" and r["presample_per_prompt"]:
        raise ConfigError("config.raft.presample_per_prompt", "must be 0 with raft.allocation='uniform' (the "
                          "pre-sampling stage only feeds the gvm estimates)")
    if r["allocation"] == "gvm" and r["decay"] == 0 and r["presample_per_prompt"] == 0 and r["min_per_prompt"] == 0:
        raise ConfigError("config.raft.min_per_prompt", "must be >= 1 when gvm estimates come only from the last "
                          "iteration (raft.decay=0, raft.presample_per_prompt=0): a prompt given 0 samples "
                          "would never be estimated again")
    return cfg


# ---------------------------------------------------------------------------------------
# Setup: task split, network, exact evaluation
# ---------------------------------------------------------------------------------------
class Setup(NamedTuple):
    cfg: dict
    task: object
    net: object
    train_q: np.ndarray       # int32 (M, P) training prompts
    train_ans: np.ndarray     # int32 (M,) their right answers
    eval_q: np.ndarray        # int32 (H, P) held-out prompts
    sft_opt: object
    warm_opt: object


def setup(config) -> Setup:
    from samplax.decoding.tasks import sum_mod_task
    from samplax.models.causal_lm import CausalTransformer

    cfg = validate_raft(config)
    t, m = cfg["task"], cfg["model"]
    m_ = t["modulus"]   # the noisy reasoner's per-digit accuracies: the task's defaults for m = 4, else spread alike
    acc = (0.97, 0.9, 0.75, 0.42) if m_ == 4 else tuple(float(a) for a in np.linspace(0.97, 0.42, m_))
    task = sum_mod_task(modulus=m_, n_digits=t["n_digits"], acc=acc)
    perm = np.random.default_rng(t["split_seed"]).permutation(len(task.questions))
    qs = task.questions[perm]
    train_q = qs[:t["train_prompts"]].astype(np.int32)
    eval_q = qs[t["train_prompts"]:].astype(np.int32)
    net = CausalTransformer(task.vocab_size, task.length, m["width"], m["depth"], m["heads"], m["mlp_ratio"])
    return Setup(cfg, task, net, train_q, np.asarray(task.correct(train_q), np.int32), eval_q,
                 optax.adam(cfg["raft"]["learning_rate"]), optax.adam(cfg["warmup"]["learning_rate"]))


def model_identity(cfg: dict) -> dict:
    return dict(task=cfg["task"], model=cfg["model"])


def _completion_nll(net, params, x, P: int):
    """-log pi(x[P:] | x[:P]) per sequence of ``x`` int32 (B, L)."""
    logp = jax.nn.log_softmax(net.apply(params, x), axis=-1)
    tok = jnp.take_along_axis(logp, x[..., None], axis=-1)[..., 0]
    return -jnp.sum(tok[:, P:], axis=-1)


def exact_accuracy_fn(s: Setup, questions: np.ndarray):
    """A jitted ``params -> mean_q P(answer right | q)`` over ``questions``, by enumerating every
    completion of every question (V**C each)."""
    task = s.task
    V, C, P = task.vocab_size, task.completion_length, task.prompt_length
    comps = np.array(np.unravel_index(np.arange(V ** C), (V,) * C)).T.astype(np.int32)    # (V**C, C)
    H = len(questions)
    seqs = np.concatenate([np.repeat(questions, V ** C, axis=0), np.tile(comps, (H, 1))], axis=1)
    right = (comps[None, :, -1] == np.asarray(task.correct(questions))[:, None]).astype(np.float32)
    seqs, right = jnp.asarray(seqs), jnp.asarray(right)

    @jax.jit
    def acc(params):
        p = jnp.exp(-_completion_nll(s.net, params, seqs, P)).reshape(H, V ** C)
        return jnp.mean(jnp.sum(p * right, axis=1))

    return acc


# ---------------------------------------------------------------------------------------
# State and the jitted steps
# ---------------------------------------------------------------------------------------
class RaftState(NamedTuple):
    params: dict
    opt_state: tuple
    alloc: gvm.AllocationState
    iteration: jax.Array     # int32 (): iterations done
    key: jax.Array           # uint32 (2,): the RNG key of the next iteration
    drawn: jax.Array         # int32 (): responses sampled so far (presamples included)
    accepted: jax.Array      # int32 (): accepted responses so far
    elapsed: jax.Array       # float32 (): wall seconds of the iterations so far (compile excluded)


def fresh_state(s: Setup, params=None) -> RaftState:
    if params is None:
        params = s.net.init(jax.random.PRNGKey(s.cfg["seed"]), jnp.zeros((1, s.task.length), jnp.int32))
    return RaftState(params, s.sft_opt.init(params), gvm.init_state(len(s.train_q)), jnp.zeros((), jnp.int32),
                     jax.random.fold_in(jax.random.PRNGKey(s.cfg["seed"]), 1), jnp.zeros((), jnp.int32),
                     jnp.zeros((), jnp.int32), jnp.zeros((), jnp.float32))


def warmup_params(s: Setup):
    """Iteration 0: ``warmup.steps`` Adam steps of the causal LM loss on sequences drawn (numpy,
    seeded) from the task's exact noisy-reasoner joint; returns the parameters."""
    from samplax.training.discrete_losses import causal_lm_loss

    w = s.cfg["warmup"]
    params = fresh_state(s).params
    if w["steps"] == 0:
        return params
    rng = np.random.default_rng(s.cfg["seed"] + 7919)
    prob = np.exp(s.task.log_probs - np.max(s.task.log_probs))
    idx = rng.choice(len(prob), size=(w["steps"], w["batch_size"]), p=prob / prob.sum())
    L, V = s.task.length, s.task.vocab_size
    data = np.stack(np.unravel_index(idx, (V,) * L), axis=-1).astype(np.int32)      # (steps, B, L)
    opt = s.warm_opt

    def loss(p, x):
        return causal_lm_loss(lambda y: jax.nn.log_softmax(s.net.apply(p, y), axis=-1), x)[0]

    @jax.jit
    def run(params, data):
        def body(carry, x):
            p, o = carry
            g = jax.grad(loss)(p, x)
            u, o = opt.update(g, o, p)
            return (optax.apply_updates(p, u), o), None
        (p, _), _ = jax.lax.scan(body, (params, opt.init(params)), data)
        return p

    return run(params, jnp.asarray(data))


def _tree_norm(tree):
    return jnp.sqrt(sum(jnp.sum(jnp.square(x)) for x in jax.tree.leaves(tree)))


def make_iteration(s: Setup):
    """The jitted ``state -> (state, metrics)`` of one RAFT iteration (module docstring, step 3)."""
    from samplax.decoding.tasks import sample_with_prompts
    from samplax.models.causal_lm import causal_language_model

    r, task, net = s.cfg["raft"], s.task, s.net
    sampler = sample_with_prompts.__wrapped__       # the un-jitted scan sampler, traced inside our jit
    P, M, N = task.prompt_length, len(s.train_q), r["budget_per_iteration"]
    prompts, answers = jnp.asarray(s.train_q), jnp.asarray(s.train_ans)
    use_gvm = r["allocation"] == "gvm"
    n_pre = r["presample_per_prompt"]

    def draw(params, key, idx):
        keys = jax.vmap(lambda j: jax.random.fold_in(key, j))(jnp.arange(idx.shape[0]))
        x, _ = sampler(causal_language_model(net, params), keys, prompts[idx])
        return x, x[:, -1] == answers[idx]

    def per_sample_grad_norms(params, x):
        one = lambda p, xi: _completion_nll(net, p, xi[None], P)[0]
        return jax.vmap(lambda xi: _tree_norm(jax.grad(one)(params, xi)))(x)

    def stats(params, x, ok, idx):
        drawn = jax.ops.segment_sum(jnp.ones_like(idx, jnp.float32), idx, M)
        acc = jax.ops.segment_sum(ok.astype(jnp.float32), idx, M)
        if not use_gvm:
            return drawn, acc, None, None
        gn = jnp.where(ok, per_sample_grad_norms(params, x), 0.0)
        return drawn, acc, jax.ops.segment_sum(gn, idx, M), acc

    def allocation(alloc):
        if not use_gvm:
            return gvm.uniform_allocation(M, N)
        p = gvm.acceptance_estimate(alloc, r["prior_a"], r["prior_b"])
        G = gvm.grad_norm_estimate(alloc, r["grad_prior_count"])
        return gvm.gvm_allocation(p, G, N, r["min_per_prompt"], r["alpha"], r["beta"], r["rounding"])

    def sft_loss(params, x, weight):
        return jnp.sum(weight * _completion_nll(net, params, x, P)) / task.completion_length

    def iteration(state: RaftState):
        key, k_pre, k_draw = jax.random.split(state.key, 3)
        alloc, drawn = state.alloc, state.drawn
        if n_pre:   # the paper's stage 1: n' per prompt, for the estimates only
            idx_pre = jnp.repeat(jnp.arange(M), n_pre)
            x_pre, ok_pre = draw(state.params, k_pre, idx_pre)
            alloc = gvm.update_state(alloc, *stats(state.params, x_pre, ok_pre, idx_pre), decay=r["decay"])
            drawn = drawn + M * n_pre
        n = allocation(alloc)
        idx = jnp.repeat(jnp.arange(M), n, total_repeat_length=N)
        x, ok = draw(state.params, k_draw, idx)
        if not n_pre:
            alloc = gvm.update_state(alloc, *stats(state.params, x, ok, idx), decay=r["decay"])
        okf = ok.astype(jnp.float32)
        if r["loss_weighting"] == "pooled":        # RAFT: the mean over every accepted response
            weight = okf / jnp.maximum(jnp.sum(okf), 1.0)
        else:                                      # each prompt's accepted responses weigh 1 in all
            per = jax.ops.segment_sum(okf, idx, M)
            weight = okf / jnp.maximum(per[idx], 1.0) / jnp.maximum(jnp.sum(per > 0), 1)

        def sft_step(carry, _):
            p, o = carry
            loss, g = jax.value_and_grad(sft_loss)(p, x, weight)
            u, o = s.sft_opt.update(g, o, p)
            return (optax.apply_updates(p, u), o), loss

        (params, opt_state), losses = jax.lax.scan(sft_step, (state.params, state.opt_state), None,
                                                   length=r["sft_steps"])
        n_acc = jnp.sum(ok.astype(jnp.int32))
        new = RaftState(params, opt_state, alloc, state.iteration + 1, key, drawn + N, state.accepted + n_acc,
                        state.elapsed)
        metrics = dict(accepted_iter=n_acc, sft_loss=losses[0], alloc_min=jnp.min(n), alloc_max=jnp.max(n),
                       prompts_with_accept=jnp.sum(jax.ops.segment_sum(ok.astype(jnp.int32), idx, M) > 0))
        return new, metrics

    return jax.jit(iteration)


# ---------------------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------------------
def run_raft(config, workdir, restart: bool = False) -> dict:
    """Run (or resume) the RAFT loop of ``config`` in ``workdir`` (module docstring); returns the
    summary.  Validates the config and the workdir before writing anything; holds the workdir's
    lock while writing."""
    from samplax.experiment import cache as refcache

    refcache.enable_compilation_cache()
    return store.run_releasing_lock(_run_raft, config, workdir, restart)


def _run_raft(config, workdir, restart: bool, holder: dict) -> dict:
    s = setup(config)
    cfg, r, tr = s.cfg, s.cfg["raft"], s.cfg["train"]
    wd = store.check_workdir(workdir)
    ident = identity(cfg, NON_IDENTITY_FIELDS)
    mident = model_identity(cfg)
    ckpt_dir = wd / CHECKPOINT_DIR
    target = fresh_state(s)

    restored = None
    if not restart:
        store.check_saved_config(str(wd), ident)
        state0, meta0, _ = resume_point(ckpt_dir, mident, ident, target)
        if state0 is not None:
            restored = (state0, meta0)

    holder["lock"] = store.WorkdirLock(wd)
    holder["lock"].acquire()
    store.open_run(wd, "raft", cfg, ident, restart, DERIVED)

    log_path = wd / LOG_FILE
    eval_acc = exact_accuracy_fn(s, s.eval_q)
    train_acc = exact_accuracy_fn(s, s.train_q)
    T = r["iterations"]

    def log_row(state: RaftState, metrics=None):
        row = dict(step=int(state.iteration), iteration=int(state.iteration), samples_drawn=int(state.drawn),
                   accepted=int(state.accepted),
                   eval_accuracy=float(eval_acc(state.params)), train_accuracy=float(train_acc(state.params)),
                   elapsed_s=float(state.elapsed), allocation=r["allocation"])
        if metrics is not None:
            row.update({k: (float(v) if np.asarray(v).dtype.kind == "f" else int(v))
                        for k, v in jax.device_get(metrics).items()})
        io.append_line(log_path, (json.dumps(io.json_clean(row), sort_keys=True, allow_nan=False) + "\n").encode())
        return row

    with Checkpoints(ckpt_dir, mident, ident, keep=tr["keep_checkpoints"], every=tr["checkpoint_every"],
                     final_step=T) as ckpt:
        if restored is None:
            t0 = time.perf_counter()
            state = fresh_state(s, warmup_params(s))
            logging.info("raft: warm-up done in %.1fs", time.perf_counter() - t0)
            io.remove(log_path)
            ckpt.save(0, state)
            last = log_row(state)
            start = 0
        else:
            state, meta = restored
            start = int(meta["step"])
            logging.info("raft: resuming from iteration %d in %s", start, ckpt.directory)
            rewrite_log(log_path, start)      # rows after the checkpoint are recomputed
            last = None
        t0 = time.perf_counter()
        step = make_iteration(s).lower(state).compile()
        compile_s = time.perf_counter() - t0
        for it in range(start, T):
            t0 = time.perf_counter()
            state, metrics = step(state)
            jax.block_until_ready(state.params)
            state = state._replace(elapsed=state.elapsed + jnp.float32(time.perf_counter() - t0))
            done = it + 1
            if done % tr["log_every"] == 0 or done == T:
                last = log_row(state, metrics)
                logging.info("raft: iteration %d drawn %d eval accuracy %.4f", done, last["samples_drawn"],
                             last["eval_accuracy"])
            if ckpt.should_save(done):
                ckpt.save(done, state)
            if os.environ.get(PAUSE_ENV) == str(done):   # the kill -9 test's hook: wait here to be killed
                time.sleep(3600)
    summary = dict(workdir=str(wd), iterations=T, resumed_from=start, compile_s=compile_s, final=last,
                   allocation=r["allocation"], params_sha256=state_checksum(state.params),
                   checkpoint=str(ckpt_dir / str(T)))
    io.atomic_write_json(wd / SUMMARY_FILE, summary)
    return summary


__all__ = ["run_raft", "validate_raft", "setup", "fresh_state", "warmup_params", "make_iteration",
           "exact_accuracy_fn", "RaftState"]
