"""Solver-schedule search (issue 17): the search space, scoring, strategies.

* :class:`SearchSpace` -- genotypes of per-step decisions and their decoding to a
  :class:`samplax.solvers.schedule.SolverSchedule`;
* :func:`make_scorer` -- one vmapped program scoring a population against a reference;
* strategies (``init / step / best / evaluations``): :func:`random_search`,
  :func:`evolution`, :func:`s3` (predictor-based, Liu et al. 2023).

The gradient-based search and DC-Solver live in ``samplax.search.gradient`` and
``samplax.search.dc_solver`` (imported from there, not re-exported here).
"""
from samplax.search.evaluate import gmm_mode_fn, gmm_reference, make_scorer, teacher_reference
from samplax.search.s3 import s3
from samplax.search.space import SearchSpace
from samplax.search.strategies import Strategy, evolution, random_search

__all__ = ["SearchSpace", "make_scorer", "teacher_reference", "gmm_reference", "gmm_mode_fn", "Strategy",
           "random_search", "evolution", "s3"]
