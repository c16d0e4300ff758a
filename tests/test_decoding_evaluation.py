"""Distributional evaluation metrics (samplax.metrics) against exact answers on the toy reasoning
task's exact LM: the pass@k estimator's expectation equals the exact pass@k (and the plug-in
estimator's does not), the Clopper-Pearson interval's exact coverage, and the coverage of the DKW
band and of the DKW mean bounds by simulation (each must hold in >= 1 - delta of the repeats within
3 Monte-Carlo standard errors; a band of half the width must fail)."""
import numpy as np
import pytest
from scipy.stats import binom

from samplax import metrics as M
from samplax.decoding import tasks as T

DELTA = 0.1
REPEATS = 400
N = 200


@pytest.fixture(scope="module")
def task():
    return T.sum_mod_task()


def test_pass_at_k_is_unbiased_and_plug_in_is_not(task):
    p = T.correct_probs(task)[[0, 37, 121, 200]]
    for n, k in ((10, 1), (10, 3), (16, 8), (5, 5)):
        c = np.arange(n + 1)
        for pi in p:
            w = binom.pmf(c, n, pi)
            est = np.sum(w * M.pass_at_k(n, c, k))
            assert est == pytest.approx(float(M.pass_at_k_exact(pi, k)), abs=1e-12)
            if 1 < k < n and M.pass_at_k_exact(pi, k) < 0.99:   # mutation: 1 - (1 - c/n)^k is biased
                plug = np.sum(w * (1 - (1 - c / n) ** k))
                assert abs(plug - M.pass_at_k_exact(pi, k)) > 1e-3
    assert M.pass_at_k(10, 0, 3) == 0.0 and M.pass_at_k(10, 8, 3) == 1.0
    with pytest.raises(ValueError, match="k"):
        M.pass_at_k(3, 1, 4)


def test_entropies_match_exact_values(task):
    q = np.array([2, 3, 1, 2])
    lp = T.completion_log_probs(task, q)
    pa = T.answer_probs(task, q)
    counts = np.round(np.exp(lp) * 1e5).astype(int)           # a sample with (nearly) exact frequencies
    labels = np.repeat(np.arange(lp.size), counts)
    assert M.output_entropy(labels) == pytest.approx(M.exact_entropy(lp), abs=2e-3)
    assert M.answer_entropy(labels % 4) == pytest.approx(-np.sum(pa * np.log(pa)), abs=2e-3)
    assert M.output_entropy(np.zeros((5, 8), int)) == 0.0     # deterministic decoding: no variability


def test_clopper_pearson_exact_coverage(task):
    # coverage = sum_k Binomial(k; n, p) 1[p in CI(k)]: exact, no simulation
    k = np.arange(51)
    for p in (0.02, 0.2, T.correct_probs(task)[5], 0.7):
        lo, hi = M.clopper_pearson(k, 50, DELTA)
        cover = np.sum(binom.pmf(k, 50, p) * ((lo <= p) & (p <= hi)))
        assert cover >= 1 - DELTA
        _, up = M.clopper_pearson(k, 50, DELTA, side="upper")
        assert np.sum(binom.pmf(k, 50, p) * (p <= up)) >= 1 - DELTA
    # mutation: the Wald interval undercovers a rare event (p = 0.02, n = 50)
    ph = k / 50
    w = 1.645 * np.sqrt(ph * (1 - ph) / 50)
    assert np.sum(binom.pmf(k, 50, 0.02) * ((ph - w <= 0.02) & (0.02 <= ph + w))) < 1 - DELTA


def _metric_law(task, q):
    """The law of a scalar metric of one sampled output: the log-probability of the completion."""
    lp = T.completion_log_probs(task, q)
    return lp, np.exp(lp)


def test_dkw_band_and_mean_bounds_cover(task):
    rng = np.random.default_rng(0)
    se = np.sqrt(DELTA * (1 - DELTA) / REPEATS)
    for q in (np.array([1, 3, 2, 3]), np.array([0, 1, 0, 1])):
        vals, probs = _metric_law(task, q)
        mean = float(np.sum(vals * probs))
        lo_v, hi_v = float(vals.min()), float(vals.max())
        draws = rng.choice(vals.size, size=(REPEATS, N), p=probs)
        cover, narrow, mean_cover = 0, 0, 0
        for r in range(REPEATS):
            x = vals[draws[r]]
            band = M.dkw_band(x, DELTA)
            cover += M.band_covers(band, vals, probs)
            narrow += M.band_covers(M.dkw_band(x, DELTA, epsilon=band.epsilon / 2), vals, probs)
            lo, hi = M.dkw_mean_bounds(x, lo_v, hi_v, DELTA)
            mean_cover += lo <= mean <= hi
        assert cover / REPEATS >= 1 - DELTA - 3 * se
        assert mean_cover / REPEATS >= 1 - DELTA - 3 * se
        assert narrow / REPEATS < 1 - DELTA - 3 * se         # mutation: a band half as wide fails
    assert M.dkw_epsilon(200, 0.1) == pytest.approx(np.sqrt(np.log(20) / 400))
    with pytest.raises(ValueError, match="delta"):
        M.dkw_band([0.0, 1.0], delta=1.5)
