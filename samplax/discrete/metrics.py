"""Distances between sampled sequences and an enumerated exact distribution.

* :func:`tv_to_exact`: the empirical total variation ``0.5 sum_s |n_s / n - p_s|``.  It is biased
  upwards by sampling noise even for exact samples, roughly ``0.5 sqrt(2 / (pi n)) sum_s sqrt(p_s)``
  when every cell is well populated; :func:`tv_floor` measures that floor (the TV of ``n`` exact
  samples, averaged over a few repeats), so a sampler's TV is read against it.
* :func:`chi_square_test`: Pearson's goodness-of-fit statistic, cells with expected count below
  ``min_expected`` pooled into one cell (the usual validity condition), and its p-value from the
  chi-square distribution with (cells - 1) degrees of freedom.
* :func:`marginal_tv`: the largest TV of a single position's (or adjacent pair's) marginal, an
  interpretable summary that needs few samples.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from samplax.discrete.exact import sequence_index


def _probs(log_probs) -> np.ndarray:
    p = np.exp(np.asarray(log_probs, np.float64))
    return p / p.sum()


def counts(samples, vocab_size: int) -> np.ndarray:
    s = np.asarray(samples)
    n_cells = vocab_size ** s.shape[-1]
    return np.bincount(sequence_index(s, vocab_size), minlength=n_cells).astype(np.float64)


def _check(samples, log_probs, vocab_size: int):
    s = np.asarray(samples)
    if s.ndim != 2:
        raise ValueError(f"samples: expected int tokens of shape (n, L), got shape {s.shape}")
    if np.any(s < 0) or np.any(s >= vocab_size):
        bad = int(np.sum(np.any((s < 0) | (s >= vocab_size), axis=1)))
        raise ValueError(f"samples: {bad} sequences hold tokens outside 0..{vocab_size - 1} (still masked?)")
    if vocab_size ** s.shape[1] != np.shape(log_probs)[0]:
        raise ValueError(f"log_probs: {np.shape(log_probs)[0]} cells, but vocab {vocab_size} and length "
                         f"{s.shape[1]} make {vocab_size ** s.shape[1]}")
    return s


def tv_to_exact(samples, log_probs, vocab_size: int) -> float:
    """Empirical total variation between the samples' histogram and the exact distribution."""
    s = _check(samples, log_probs, vocab_size)
    c = counts(s, vocab_size)
    return float(0.5 * np.abs(c / c.sum() - _probs(log_probs)).sum())


def tv_floor(log_probs, n: int, seed: int = 0, repeats: int = 3) -> float:
    """Mean TV of ``n`` exact samples (multinomial counts) to the truth: the estimator's floor."""
    p = _probs(log_probs)
    rng = np.random.default_rng(seed)
    return float(np.mean([0.5 * np.abs(rng.multinomial(n, p) / n - p).sum() for _ in range(repeats)]))


class ChiSquare(NamedTuple):
    stat: float
    dof: int
    p_value: float
    cells: int


def chi_square_test(samples, log_probs, vocab_size: int, min_expected: float = 5.0) -> ChiSquare:
    """Pearson chi-square goodness of fit against the exact distribution, with the cells whose
    expected count is below ``min_expected`` pooled (so the chi-square approximation holds)."""
    from scipy import stats

    s = _check(samples, log_probs, vocab_size)
    c = counts(s, vocab_size)
    n = c.sum()
    e = _probs(log_probs) * n
    big = e >= min_expected
    obs = np.append(c[big], c[~big].sum())
    exp = np.append(e[big], e[~big].sum())
    keep = exp > 0
    obs, exp = obs[keep], exp[keep]
    if len(exp) < 2:
        raise ValueError("chi_square_test: fewer than two cells with enough expected counts; draw more samples")
    stat = float(((obs - exp) ** 2 / exp).sum())
    dof = len(exp) - 1
    return ChiSquare(stat, dof, float(stats.chi2.sf(stat, dof)), len(exp))


def marginals(log_probs, vocab_size: int, length: int) -> np.ndarray:
    """Exact per-position marginals, float[L, V]."""
    p = _probs(log_probs).reshape((vocab_size,) * length)
    return np.stack([p.sum(axis=tuple(j for j in range(length) if j != i)) for i in range(length)])


def marginal_tv(samples, log_probs, vocab_size: int) -> float:
    """Largest TV over positions between the samples' and the exact single-token marginals."""
    s = _check(samples, log_probs, vocab_size)
    m = marginals(log_probs, vocab_size, s.shape[1])
    emp = np.stack([np.bincount(s[:, i], minlength=vocab_size) / len(s) for i in range(s.shape[1])])
    return float(0.5 * np.abs(emp - m).sum(-1).max())
