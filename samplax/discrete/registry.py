"""Every registered masked-diffusion sampler: name -> factory (plain typed keyword arguments)."""
from samplax.discrete import parallel
from samplax.discrete.infogain import info_gain
from samplax.discrete.lsd import lsd
from samplax.discrete.samplers import ancestral, first_hitting
from samplax.discrete.bitstream import bitstream
from samplax.discrete.dparallel import dparallel

SAMPLERS = {
    "ancestral": ancestral,
    "first_hitting": first_hitting,
    "bitstream": bitstream,
    "confidence_threshold": parallel.confidence_threshold,
    "topk": parallel.topk,
    "llada": parallel.llada,
    "fast_dllm": parallel.fast_dllm,
    "sched": parallel.sched,
    "saber": parallel.saber,
    "dparallel": dparallel,
    "info_gain": info_gain,
    "lsd": lsd,
}


def get_sampler(name: str, **options):
    """The sampler ``name`` built with ``options`` (ValueError naming what is wrong)."""
    if name not in SAMPLERS:
        raise ValueError(f"sampler: unknown discrete sampler {name!r}; allowed: {sorted(SAMPLERS)}")
    from samplax.solvers.base import check_options

    factory = SAMPLERS[name]
    import inspect

    allowed = list(inspect.signature(factory).parameters)
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise ValueError(f"options: {unknown} not accepted by sampler {name!r}; allowed: {allowed}")
    try:
        check_options(factory, options)
    except Exception as e:  # SolverOptionError: same message shape
        raise ValueError(str(e)) from None
    return factory(**options)
