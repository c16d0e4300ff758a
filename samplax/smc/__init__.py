"""Sequential Monte Carlo core: resampling schemes on log-weights, ESS, and an adaptive
SMC driver with the unbiased normalising-constant estimate (docs/smc.md)."""
from samplax.smc.diffusion import DiffusionSMCInfo, Kernel, diffusion_smc
from samplax.smc.targets import MixtureTarget, label_chi_square, target_metrics
from samplax.smc.posterior import LinearMeasurement, PosteriorMixture, dps_kernel, measurement, tds_kernel
from samplax.smc.core import SMC, SMCInfo, SMCState, num_particles, run, smc
from samplax.smc.resampling import (RESAMPLING, ess, get_resampling, log_ess, log_weights_valid, multinomial,
                                    normalise_log_weights, residual, stratified, systematic)

__all__ = [
    "SMC", "SMCInfo", "SMCState", "smc", "run", "num_particles",
    "RESAMPLING", "get_resampling", "multinomial", "stratified", "systematic", "residual",
    "ess", "log_ess", "log_weights_valid", "normalise_log_weights",
    "Kernel", "DiffusionSMCInfo", "diffusion_smc", "MixtureTarget", "label_chi_square", "target_metrics",
    "LinearMeasurement", "PosteriorMixture", "dps_kernel", "measurement", "tds_kernel",
]
from samplax.smc.fkc import fkc, fkc_kernel, fkc_nfe, geometric_kernel  # noqa: E402  (Feynman–Kac correctors)
__all__ += ["fkc", "fkc_kernel", "fkc_nfe", "geometric_kernel"]
