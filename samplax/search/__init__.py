"""Solver-schedule search (issue 17): the search space, scoring, strategies.

* :class:`SearchSpace` -- genotypes of per-step decisions and their decoding to a
  :class:`samplax.solvers.schedule.SolverSchedule`;
* :func:`make_scorer` -- one vmapped program scoring a population against a reference;
* strategies (``init / step / best / evaluations``): :func:`random_search`,
  :func:`evolution`, :func:`s3` (predictor-based, Liu et al. 2023).

* gradient-based time points and coefficients: :func:`learn_times`, :func:`gradient_search`
  (``samplax.search.gradient``);
* DC-Solver's dynamic compensation: :func:`fit_ratios`, :func:`run_dc`, :func:`cpr_fit`,
  :func:`cpr_predict` (``samplax.search.dc_solver``).
"""
from samplax.search.dc_solver import cpr_fit, cpr_predict, fit_ratios, run_dc
from samplax.search.gradient import gradient_search, learn_times
from samplax.search.evaluate import gmm_mode_fn, gmm_reference, make_scorer, teacher_reference
from samplax.search.s3 import s3
from samplax.search.space import SearchSpace
from samplax.search.strategies import Strategy, evolution, random_search

__all__ = ["SearchSpace", "make_scorer", "teacher_reference", "gmm_reference", "gmm_mode_fn", "Strategy",
           "random_search", "evolution", "s3", "learn_times", "gradient_search", "fit_ratios", "run_dc", "cpr_fit",
           "cpr_predict"]
