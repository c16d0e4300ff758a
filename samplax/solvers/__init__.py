"""Continuous-time diffusion ODE/SDE solvers."""
from samplax.solvers.base import SampleInfo, Solver, generate, sample, sample_keys
from samplax.solvers.multistep import ddim, deis, dpm_solver_multistep, dpm_solver_pp, ipndm, ipndm_v, unipc
