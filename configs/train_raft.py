"""Rejection-sampling fine-tuning (RAFT) of a small causal LM on the sum-mod-4 reasoning task, with
the per-prompt sample budget allocated by GVM (Yao et al. 2025) or uniformly (docs/training_sampling_raft.md):

    python -m experiments.train --config=configs/train_raft.py --workdir=runs/raft_gvm
    python -m experiments.train --config=configs/train_raft.py --config.raft.allocation=uniform --workdir=runs/raft_uniform
"""
import ml_collections


def get_config():
    c = ml_collections.ConfigDict()
    c.kind = "raft"
    c.seed = 0
    # the task: sum_mod (samplax.decoding.tasks), its questions split into training / held-out prompts
    c.task = ml_collections.ConfigDict(dict(name="sum_mod", modulus=4, n_digits=4, train_prompts=128, split_seed=0))
    c.model = ml_collections.ConfigDict(dict(width=32, depth=2, heads=4, mlp_ratio=4))
    # iteration 0: imitate the task's exact noisy reasoner (an imperfect starting policy)
    c.warmup = ml_collections.ConfigDict(dict(steps=300, batch_size=256, learning_rate=3e-3))
    c.raft = ml_collections.ConfigDict(dict(
        allocation="gvm",            # "uniform" | "gvm"
        iterations=30,
        budget_per_iteration=512,    # N: responses drawn per iteration (sum of n_i)
        min_per_prompt=1,            # n_i >= this
        presample_per_prompt=0,      # > 0: the paper's stage-1 estimation draws (gvm only)
        alpha=1e-3, beta=2.0,        # the paper's regularisation of p_i (authors' defaults)
        rounding="largest_remainder",  # | "greedy" (exact integer minimiser)
        decay=0.5,                   # EMA of the per-prompt counts across iterations (0: last iteration only)
        prior_a=1.0, prior_b=1.0,    # Beta prior on p_i
        grad_prior_count=1.0,        # pseudo-count pulling G_i to the pooled mean
        sft_steps=4,                 # Adam steps on the accepted responses per iteration
        learning_rate=1e-3,
        loss_weighting="pooled",     # "pooled" (RAFT: mean over accepted) | "per_prompt"
    ))
    c.train = ml_collections.ConfigDict(dict(log_every=1, checkpoint_every=5, keep_checkpoints=3))
    return c
