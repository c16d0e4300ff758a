"""Training of score models: losses, the optax train step and the EMA of parameters.
(Checkpoints and the training loop live in samplax.experiment.trainer.)"""
from samplax.training.losses import (TARGETS, WEIGHTINGS, denoising_loss, diffusion_target, drop_labels, edm_loss,
                                     edm_weight, loss_weight, sample_times)
from samplax.training.train import (DataState, TrainState, ema_decay_at, ema_update, init_data_state, init_train_state,
                                    learning_rate_schedule, make_optimizer, make_sampled_train_step, make_train_step,
                                    step_key)

__all__ = ["TARGETS", "WEIGHTINGS", "denoising_loss", "diffusion_target", "sample_times", "loss_weight",
           "edm_loss", "edm_weight", "drop_labels", "TrainState", "ema_decay_at", "ema_update", "init_train_state",
           "learning_rate_schedule", "make_optimizer", "make_train_step", "step_key", "DataState", "init_data_state",
           "make_sampled_train_step"]
