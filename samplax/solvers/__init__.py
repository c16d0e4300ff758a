"""Continuous-time diffusion ODE/SDE solvers: factories, the registry, and sample()."""
from samplax.solvers.adaptive import adaptive_sample, dpm_solver_adaptive, is_adaptive, sample_with_info
from samplax.solvers.base import (ModelData, SampleInfo, Solver, SolverOptionError, check_options, generate,
                                  model_data, prepare_solver, sample, sample_keys)
from samplax.solvers.diagnostics import StepOrders, effective_orders, stability_warning, step_orders
from samplax.solvers.multistep import ddim, deis, dpm_solver_multistep, dpm_solver_pp, ipndm, ipndm_v, unipc
from samplax.solvers.registry import MAX_NFE, SOLVERS, get_solver, solver_options, steps_for_nfe
from samplax.solvers.sde import ddim_eta, euler_maruyama, predictor_corrector, sde_dpm_solver_pp_2m
from samplax.solvers.singlestep import dpm_solver_pp_singlestep, dpm_solver_singlestep, euler, heun
from samplax.solvers.v3 import dpm_solver_v3, estimate_statistics
from samplax.solvers.teleport import gaussian_jump

__all__ = [
    "Solver", "SampleInfo", "ModelData", "model_data", "prepare_solver", "sample", "generate", "sample_keys", "SOLVERS", "get_solver", "solver_options",
    "steps_for_nfe", "MAX_NFE", "SolverOptionError", "check_options", "euler", "heun", "ddim", "ddim_eta",
    "dpm_solver_singlestep", "dpm_solver_multistep", "dpm_solver_pp", "dpm_solver_pp_singlestep",
    "sde_dpm_solver_pp_2m", "deis", "unipc", "ipndm", "ipndm_v", "euler_maruyama", "predictor_corrector",
    "StepOrders", "step_orders", "effective_orders", "stability_warning", "gaussian_jump",
    "dpm_solver_v3", "estimate_statistics", "adaptive_sample", "dpm_solver_adaptive", "is_adaptive", "sample_with_info",
]
