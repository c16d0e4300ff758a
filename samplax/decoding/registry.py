"""Every decoder by name: ``SAMPLERS[name](**options) -> Decoder`` (the options are plain values, so a
config or a sweep axis can set them)."""
from __future__ import annotations

from typing import Callable, Dict

import jax.numpy as jnp

from samplax.decoding import constrained as _constrained
from samplax.decoding import speculative as _speculative
from samplax.decoding.adaptive import adaptive_best_of_n, best_of_n
from samplax.decoding.annealed import annealed
from samplax.decoding.base import Decoder, Problem, check_prompt, make_transform, sample
from samplax.decoding.cautious import cautious
from samplax.decoding.consistency import majority_vote, rpc
from samplax.decoding.exact import exact_log_probs
from samplax.decoding.smc import power_smc, smc_reward


def ancestral(temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0, min_p: float = 0.0,
              typical: float = 1.0, cached: bool = True) -> Decoder:
    """Ancestral decoding with the usual logit transforms (temperature, then top-k, top-p, min-p,
    typical; neutral values switch them off).  Exact target: the enumerated transformed proposal."""
    transform = make_transform(temperature, top_k, top_p, min_p, typical)
    if not isinstance(cached, bool):
        raise ValueError(f"cached: must be True or False, got {cached!r}")

    def run(problem: Problem, keys):
        return sample(problem.lm, keys, transform, cached=cached, prompt=problem.prompt)

    def target(problem: Problem):
        return exact_log_probs(problem.lm, transform, problem.prompt)

    return Decoder("ancestral", run, dict(temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p,
                                          typical=typical, cached=cached), target)


SAMPLERS: Dict[str, Callable[..., Decoder]] = {
    "ancestral": ancestral,
    "speculative": _speculative.speculative,
    "spectr": _speculative.spectr,
    "annealed": annealed,
    "cautious": cautious,
    "smc_reward": smc_reward,
    "power_smc": power_smc,
    "masked": _constrained.masked,
    "awrs_smc": _constrained.awrs_smc,
    "asap": _constrained.asap,
    "best_of_n": best_of_n,
    "adaptive_best_of_n": adaptive_best_of_n,
    "majority_vote": majority_vote,
    "rpc": rpc,
}


def get_decoder(name: str, **options) -> Decoder:
    """``SAMPLERS[name](**options)``; one ValueError naming the decoder or the option otherwise."""
    if name not in SAMPLERS:
        raise ValueError(f"sampler: unknown decoder {name!r}; allowed: {sorted(SAMPLERS)}")
    try:
        return SAMPLERS[name](**options)
    except TypeError as e:
        raise ValueError(f"sampler.options for {name!r}: {e}") from None
