"""Optimisers the schedule search and coefficient learning use.

* a small exact GP (:mod:`samplax.optim.gp`) and PALM-Mean, the epsilon-global
  branch-and-bound of a GP posterior mean over a box (:mod:`samplax.optim.palm_mean`);
* the exact augmented Lagrangian with randomized iterative sketching for equality-constrained
  problems, and a quadratic-penalty baseline (:mod:`samplax.optim.eal`).
"""
from samplax.optim.eal import (ConstrainedResult, SketchResult, eal_sketch_solve, kkt_residual, penalty_method,
                               sketch_solve)
from samplax.optim.gp import GP, fit_gp, posterior_mean, posterior_var
from samplax.optim.palm_mean import branch_and_bound, lower_bound, multistart_lbfgs, posterior_mean_terms

__all__ = ["GP", "fit_gp", "posterior_mean", "posterior_var", "branch_and_bound", "lower_bound",
           "multistart_lbfgs", "posterior_mean_terms", "ConstrainedResult", "SketchResult", "eal_sketch_solve",
           "kkt_residual", "penalty_method", "sketch_solve"]
