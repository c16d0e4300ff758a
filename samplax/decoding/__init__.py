"""Autoregressive language-model decoding (docs/decoding.md): exact tiny LMs, logit transforms,
ancestral, speculative, annealed and constrained decoding, SMC decoders, and evaluation by sampling."""
from samplax.decoding.base import (LOG_ZERO, DecodeInfo, Decoder, LanguageModel, Problem, Transform, chain,
                                   identity, make_transform, min_p, sample, sample_keys, temperature,
                                   temperature_schedule, top_k, top_p, typical)
from samplax.decoding.exact import (LMS, Reward, all_sequences, constrained_target, enumerate_log_probs,
                                    enumerate_rewards, exact_log_probs, hmm_lm, load_lm, power_target,
                                    sequence_index, table_lm, tilted_target)
from samplax.decoding.problem import CONSTRAINTS, DRAFTS, REWARDS, TASKS, make_problem
from samplax.decoding.registry import SAMPLERS, get_decoder
from samplax.decoding.metrics import chi_square_test, tv_floor, tv_to_exact, z_ratio
from samplax.decoding.constrained import Constraint, constrained_log_probs, masked_log_probs
from samplax.decoding.tasks import Task, sum_mod_task

__all__ = [
    "LOG_ZERO", "DecodeInfo", "Decoder", "LanguageModel", "Problem", "Transform", "chain", "identity",
    "make_transform", "min_p", "sample", "sample_keys", "temperature", "temperature_schedule", "top_k",
    "top_p", "typical", "LMS", "Reward", "all_sequences", "constrained_target", "enumerate_log_probs",
    "enumerate_rewards", "exact_log_probs", "hmm_lm", "load_lm", "power_target", "sequence_index",
    "table_lm", "tilted_target", "CONSTRAINTS", "DRAFTS", "REWARDS", "TASKS", "make_problem", "SAMPLERS",
    "get_decoder", "chi_square_test", "tv_floor", "tv_to_exact", "z_ratio",
    "Task", "sum_mod_task",
]
__all__ += ["Constraint", "constrained_log_probs", "masked_log_probs"]
