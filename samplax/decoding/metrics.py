"""Metrics of decoders against exact answers (the sequence-level ones are
:mod:`samplax.discrete.metrics`: ``tv_to_exact``, ``tv_floor``, ``chi_square_test``)."""
from __future__ import annotations

from typing import NamedTuple

import numpy as np
from scipy.special import logsumexp

from samplax.discrete.metrics import chi_square_test, marginal_tv, tv_floor, tv_to_exact

__all__ = ["tv_to_exact", "tv_floor", "chi_square_test", "marginal_tv", "ZRatio", "z_ratio"]


class ZRatio(NamedTuple):
    ratio: float        # mean of Z_hat / Z over runs (1 for an unbiased estimator)
    stderr: float       # its standard error
    z_score: float      # (ratio - 1) / stderr
    n: int


def z_ratio(log_Z_hat, log_Z: float) -> ZRatio:
    """The mean of ``Z_hat / Z`` over independent runs with its standard error: an unbiased
    estimator has ratio 1 (the relative error of E[Z_hat] is ``ratio - 1``)."""
    r = np.exp(np.asarray(log_Z_hat, np.float64) - float(log_Z))
    if r.ndim != 1 or r.size < 2:
        raise ValueError(f"log_Z_hat: expected a 1-D array of >= 2 runs, got shape {r.shape}")
    m = float(r.mean())
    se = float(r.std(ddof=1) / np.sqrt(r.size))
    return ZRatio(m, se, (m - 1.0) / se if se > 0 else (0.0 if m == 1.0 else np.inf), int(r.size))
