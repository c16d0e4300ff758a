"""FastLightGen (arXiv:2603.01685) distillation of the digits U-Net (configs/train_digits.py): a
student with ~30 % fewer parameters (narrower channels) that samples with DDIM in 4 steps, trained
first by output matching (size stage), then by trajectory distillation from the optimal teacher
T + beta (T - W), W = the size-stage model (docs/fastlightgen.md):

    python -m experiments.train --config=configs/train_distill_digits.py --workdir=runs/distill_digits

Steps only (the teacher's size, 4 steps) and size only (30 % fewer parameters, the teacher's
sampler at NFE 20), at the same budget:

    python -m experiments.train --config=configs/train_distill_digits.py --config.mode=step \\
        --config.student.prune_fraction=0.0 --workdir=runs/distill_digits_step
    python -m experiments.train --config=configs/train_distill_digits.py --config.mode=size \\
        --workdir=runs/distill_digits_size

Sample the student: ``samplax.experiment.distill.load_student(workdir)`` -> (trained, spec), then
``samplax.experiment.trainer.draw_samples(trained.setup, trained.params, n, spec.solver, spec.nfe)``.
"""
from samplax.experiment.distill import distill_config


def get_config():
    c = distill_config()
    c.teacher = "/work/runs/train_digits"
    c.teacher_step = -1          # the newest intact checkpoint (pin a step while the teacher still trains)
    c.mode = "both"
    c.student.prune_fraction = 0.3
    c.student.nfe = 4
    c.student.init = "inherit"   # the teacher's leading channels (structured pruning with weight inheritance)
    c.distill.teacher_solver = "dpm_solver_pp"
    c.distill.teacher_steps = 4  # x 3 intervals + 1 final denoising evaluation per target
    c.distill.teacher_nfe = 20
    c.distill.guide_beta = 0.5
    c.distill.size_fraction = 0.5
    c.train.num_steps = 2000
    c.train.batch_size = 64
    c.train.learning_rate = 5e-4
    c.train.log_every = 50
    c.train.checkpoint_every = 250
    return c
