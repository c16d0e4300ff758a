"""Language-model decoding on an exact tiny LM: ancestral sampling at temperature 0.8 from the HMM
language model hmm8x5 (8 tokens, length 5: all 32,768 sequences enumerated), 50,000 sequences.  The
row has the TV and a chi-square test against the exact distribution the decoder claims to sample,
the target-model calls per sequence and the time per token (docs/decoding.md).

    python -m experiments.sample --config=configs/sample_decoding.py --workdir=runs/decoding
    # nucleus sampling:         --config.decoder.options.top_p=0.9
    # speculative decoding:     --config.decoder.name=speculative --config.decoder.options.gamma=3 \\
    #                           --config.problem.draft=mix_uniform
    # Power-SMC (p^alpha):      --config.decoder.name=power_smc --config.decoder.options.alpha=4.0
"""
from samplax.experiment.decoding import decoding_config


def get_config():
    config = decoding_config()
    config.problem.lm = "hmm8x5"
    config.decoder.name = "ancestral"
    config.decoder.options.temperature = 0.8
    config.n_samples = 50_000
    return config
