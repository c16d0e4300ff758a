"""Masked and discrete diffusion: exact tiny sequence models, samplers, metrics (docs/discrete.md)."""
from samplax.discrete.base import (CONFIDENCES, LOG_ZERO, MASK_SCHEDULES, PRECISIONS, DecodeInfo, DiscreteModel,
                                   DiscreteSampler, MaskSchedule, all_masked, carry_over, categorical, confidence,
                                   decode, entropy, gumbel, mask_schedule, sample_keys)
from samplax.discrete.exact import (HMM, PROBLEMS, all_sequences, conditionals, enumerate_log_probs, exact_model, table_model,
                                    load_problem, log_prob, make_hmm, markov_chain, random_hmm, sequence_index,
                                    true_samples)
from samplax.discrete.infogain import info_gain
from samplax.discrete.lsd import lsd
from samplax.discrete.metrics import chi_square_test, marginal_tv, tv_floor, tv_to_exact
from samplax.discrete.registry import SAMPLERS, get_sampler
from samplax.discrete.samplers import ancestral, first_hitting
from samplax.discrete.bitstream import BitstreamModel, bitstream_model  # the factory: SAMPLERS["bitstream"]
from samplax.discrete.parallel import confidence_threshold, fast_dllm, llada, saber, sched, topk
from samplax.discrete.dparallel import certainty_forcing_distill, dparallel
