"""A decoding sweep on the exact HMM language model hmm8x5: decoders x option axes x seeds (each
decoder runs the values of the options it has).  The report (results.md, plots/tv_vs_target_calls.png)
puts the TV to each decoder's exact target against its target-model calls (docs/decoding.md).

    python -m experiments.sweep --config=configs/sweep_decoding.py --workdir=runs/decoding_sweep
    # SMC decoders over particle counts (smc_reward needs the problem's reward):
    #   --config.sweep.decoders='("smc_reward","power_smc")' --config.problem.reward=token_count \\
    #   --unset=config.sweep.option_axes.temperature --unset=config.sweep.option_axes.top_p \\
    #   --config.sweep.option_axes.particles='(2,8,32)'
"""
from samplax.experiment.decoding import decoding_sweep_config


def get_config():
    config = decoding_sweep_config()
    config.problem.lm = "hmm8x5"
    config.sweep.decoders = ("ancestral",)
    config.sweep.option_axes.temperature = (0.5, 0.8, 1.0, 1.5)
    config.sweep.option_axes.top_p = (0.8, 1.0)
    config.sweep.seeds = (0,)
    config.n_samples = 50_000
    return config
