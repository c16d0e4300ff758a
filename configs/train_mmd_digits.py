"""MMD finetuning (MMD-DDM, samplax.experiment.mmd_finetune) of the digits U-Net of
configs/train_digits.py (unconditional: null label) for DPM-Solver++ at NFE 4: an RBF
kernel on the raw 64 pixels (kernel.features = "classifier" uses the digits classifier's
features instead, the paper's perceptual-feature choice, but that is the network the FD is
measured in), bandwidths 0.5..2 x the batch's median distance.  Scaled for a shared 2-core
CPU, where one step (4 U-Net evaluations and their backward pass, 32 images) takes ~16 s:
24 steps.  On an accelerator raise train.num_steps (hundreds), the batches (128+) and
consider train.remat = True.

    python -m experiments.train --config=configs/train_digits.py --workdir=runs/train_digits
    python -m experiments.train --config=configs/train_mmd_digits.py --workdir=runs/mmd_digits \
        --config.base=runs/train_digits
"""
from samplax.experiment.mmd_finetune import mmd_finetune_config


def get_config():
    c = mmd_finetune_config()
    c.base = "/work/runs/train_digits"
    c.sampler.solver = "dpm_solver_pp"
    c.sampler.nfe = 4
    c.kernel.features = "raw"
    c.kernel.bandwidth = "median"
    c.kernel.scales = (0.5, 1.0, 2.0)
    c.optim.learning_rate = 5e-5
    c.train.num_steps = 24
    c.train.gen_batch = 32
    c.train.data_batch = 32
    c.train.remat = False
    c.train.log_every = 4
    c.train.checkpoint_every = 12
    c.eval.num_samples = 1438
    return c
