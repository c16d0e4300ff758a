"""MMD finetuning (MMD-DDM, samplax.experiment.mmd_finetune) of the gmm2d MLP of
configs/train_gmm2d.py for DPM-Solver++ at NFE 4: an RBF kernel on the raw 2-D samples,
bandwidths 0.25..4 x the batch's median distance, plus the energy distance (weight 1), which
keeps the few samples the RBF kernel lets go far out (docs/mmd_finetune.md).

    python -m experiments.train --config=configs/train_gmm2d.py --workdir=runs/train_gmm2d
    python -m experiments.train --config=configs/train_mmd_gmm2d.py --workdir=runs/mmd_gmm2d \
        --config.base=runs/train_gmm2d --config.sampler.nfe=4
"""
from samplax.experiment.mmd_finetune import mmd_finetune_config


def get_config():
    c = mmd_finetune_config()
    c.base = "/work/runs/train_gmm2d"
    c.sampler.solver = "dpm_solver_pp"
    c.sampler.nfe = 4
    c.kernel.features = "raw"
    c.kernel.bandwidth = "median"
    c.kernel.scales = (0.25, 0.5, 1.0, 2.0, 4.0)
    c.kernel.energy_weight = 1.0
    c.optim.learning_rate = 1e-4
    c.train.num_steps = 150
    c.train.gen_batch = 256
    c.train.data_batch = 256
    c.train.log_every = 25
    c.train.checkpoint_every = 50
    c.eval.num_samples = 4096
    return c
