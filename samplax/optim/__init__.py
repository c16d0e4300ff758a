"""Optimisers the schedule search and coefficient learning use."""
from samplax.optim.eal import (ConstrainedResult, SketchResult, eal_sketch_solve, kkt_residual,  # noqa: F401
                               penalty_method, sketch_solve)
