"""Text-to-pattern Hamming distances (samplax.metrics.hamming): every method equals the naive
O(nm) count exactly on random and adversarial inputs, the FFT rounding is provably and measurably
exact up to its size limit, the memorisation metric gives 0 for training sequences and the known
distance of a constructed perturbation, and the discrete-run hook (metrics.memorisation) works
without changing the identity of runs that leave it off."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from samplax.metrics import hamming as H

METHODS = ("naive", "fft", "abrahamson")


def reference(texts, patterns):
    """numpy: (T, P, n - m + 1) mismatch counts, straight from the definition."""
    t, p = np.atleast_2d(texts), np.atleast_2d(patterns)
    n, m = t.shape[1], p.shape[1]
    win = t[:, np.arange(n - m + 1)[:, None] + np.arange(m)]            # (T, A, m)
    return (win[:, None] != p[None, :, None, :]).sum(-1)


def check_all(t, p, **kw):
    want = reference(t, p)
    for method in METHODS:
        got = np.asarray(H.hamming_distances(t, p, method=method, **kw))
        assert got.dtype == np.int32
        np.testing.assert_array_equal(got.reshape(want.shape), want, err_msg=f"method {method}")


@pytest.mark.parametrize("T,P,n,m,sigma", [(3, 4, 61, 9, 2), (2, 3, 130, 40, 20), (1, 2, 50, 50, 3),
                                           (2, 2, 33, 1, 4)])
def test_random_inputs_equal_naive(T, P, n, m, sigma):
    rng = np.random.default_rng(n * 100 + m)
    check_all(rng.integers(0, sigma, (T, n)), rng.integers(0, sigma, (P, m)))


def test_adversarial_inputs_equal_naive():
    rng = np.random.default_rng(7)
    n, m = 130, 40   # the shapes of a parametrised case above: compiled once
    periodic = np.tile([0, 1, 2, 0, 1], 30)
    cases = [
        (np.zeros((2, n), int), np.zeros((3, m), int)),                         # all equal (alphabet 1): d = 0
        (np.zeros((2, n), int), np.ones((3, m), int)),                          # never equal: d = m
        (periodic[None, :n].repeat(2, 0), np.stack([periodic[i:i + m] for i in range(3)])),   # periodic
        (rng.integers(2**31 - 4, 2**31, (2, n)), rng.integers(2**31 - 4, 2**31, (3, m))),  # int32 max ids
        (rng.integers(0, 10**6, (2, n)), rng.integers(0, 10**6, (3, m))),       # large alphabet, no matches
    ]
    for t, p in cases:
        check_all(t, p)
    d = np.asarray(H.hamming_distances(periodic[:n], periodic[:m]))            # 1-D in, 1-D out
    assert d.shape == (n - m + 1,) and d[0] == 0 and d[5] == 0 and d[1] == m
    # Abrahamson with every letter light (tau = m) and every letter heavy (tau = 1): still exact
    t, p = rng.integers(0, 3, (2, n)), rng.integers(0, 3, (3, m))
    for tau in (1, m):
        np.testing.assert_array_equal(np.asarray(H.hamming_distances(t, p, method="abrahamson", tau=tau)),
                                      reference(t, p))


def test_fft_rounding_exact_at_the_precision_limit():
    """The longest exact float32 piece (fft_error_bound < 1/4): worst case (one letter, so every
    count is m) and random inputs; the measured error is far below the bound, pieces add up exactly,
    and split=False refuses a longer pattern."""
    m = H.max_exact_piece("float32")
    assert H.fft_error_bound(m, 2 * m, m) < H.ERROR_MARGIN <= H.fft_error_bound(m + 1, 4 * (m + 1), m + 1)
    n = 4 * m
    rng = np.random.default_rng(3)
    matches = jax.jit(functools.partial(H._fft_matches, dtype="float32"))
    for t, p in [(np.zeros(n, np.int32), np.zeros(m, np.int32)),
                 (rng.integers(0, 2, n).astype(np.int32), rng.integers(0, 2, m).astype(np.int32))]:
        c = np.asarray(matches(jnp.asarray(t), jnp.asarray(p), jnp.arange(2, dtype=jnp.int32)))
        want = m - reference(t, p)[0, 0]
        err = np.abs(c - want).max()
        assert err < 1e-2 < H.ERROR_MARGIN, err
    # a pattern longer than one piece, cut in pieces of 16: exact
    t, p = rng.integers(0, 3, 200).astype(np.int32), rng.integers(0, 3, 45).astype(np.int32)
    pieces = jax.jit(functools.partial(H.fft_distances, piece=16))
    np.testing.assert_array_equal(np.asarray(pieces(jnp.asarray(t), jnp.asarray(p))),
                                  reference(t, p)[0, 0])
    with pytest.raises(ValueError, match="not guaranteed exact"):
        H.fft_distances(jnp.zeros(2 * m + 2, jnp.int32), jnp.zeros(m + 1, jnp.int32), split=False)


def test_counts_nearest_and_memorisation():
    rng = np.random.default_rng(11)
    train = rng.integers(0, 50, (40, 24)).astype(np.int32)    # large alphabet: training rows ~24 apart
    sample = train[5].copy()
    flip = np.array([1, 4, 10])                                         # windows 0 and 1; window 2 intact
    sample[flip] = (sample[flip] + 1 + rng.integers(0, 48, 3)) % 50    # exactly 3 changed symbols
    samples = np.stack([train[0], train[17], sample])
    d, j = (np.asarray(a) for a in H.nearest_sequence(samples, train))
    np.testing.assert_array_equal(d, [0, 0, 3])
    np.testing.assert_array_equal(j, [0, 17, 5])
    d_big, _ = H.nearest_sequence(samples + 10**6, train + 10**6)    # wide alphabet: the naive path
    np.testing.assert_array_equal(np.asarray(d_big), [0, 0, 3])
    mem = H.memorisation(samples, train, window=8, k=3, held_out=train[:4])
    assert mem["copies"] == pytest.approx(2 / 3) and mem["within_k"] == 1.0 and mem["nearest_min"] == 0
    assert mem["nearest_mean"] == pytest.approx(1.0) and mem["held_copies"] == 1.0
    assert mem["window_copies"] == 1.0 and mem["window_nearest_mean"] == 0.0   # some window of #2 is unchanged
    # counts within k and the nearest alignment against the definition
    pats = np.stack([x[s:s + 8] for x in samples for s in (0, 8, 16)])   # the windows memorisation searched
    full = reference(train, pats)                                      # (40, 9, 17)
    for k in (0, 3):
        np.testing.assert_array_equal(np.asarray(H.count_within(train, pats, k)), (full <= k).sum(axis=(0, 2)))
    best, wt, ws = (np.asarray(a) for a in H.nearest(train, pats))
    np.testing.assert_array_equal(best, full.min(axis=(0, 2)))
    np.testing.assert_array_equal(full[wt, np.arange(9), ws], best)


def test_bad_inputs():
    t, p = np.zeros(10, np.int32), np.zeros(3, np.int32)
    bad = [((t.astype(np.float32), p), "texts: must be an integer"),
           ((t, p.astype(bool)), "patterns: must be an integer"),
           ((np.zeros((2, 2, 10), np.int32), p), "texts: must have shape"),
           ((t[:2], p), "length m=3 must be <= the text length n=2"),
           ((t, p - 1), "patterns: symbols must be >= 0"),
           ((t + 5, p), "texts: symbols must be < alphabet_size 4")]
    for (a, b), msg in bad:
        with pytest.raises(ValueError, match=msg):
            H.hamming_distances(a, b, alphabet_size=4 if "alphabet" in msg else None)
    with pytest.raises(ValueError, match="method: must be one of"):
        H.hamming_distances(t, p, method="fastest")
    with pytest.raises(ValueError, match="k: must be a non-negative int"):
        H.count_within(t, p, -1)
    with pytest.raises(ValueError, match="window: must be an int in 0..9"):
        H.memorisation(t[None], t[None], window=10)
    with pytest.raises(ValueError, match="samples: length 3"):
        H.nearest_sequence(p[None], t[None])


def test_discrete_run_hook():
    """metrics.memorisation: off by default and then absent from the config (identity and row hash
    as before it existed); on, it enters the row hash, a bad window names its field, and the row
    metric of exact draws matches a direct computation against the same reference draws."""
    from samplax.experiment.discrete import (discrete_config, load_model, make_plan, memorisation_metrics,
                                             memorisation_reference)
    from samplax.experiment.errors import ConfigError

    off = make_plan(discrete_config())
    assert "memorisation" not in off.config["metrics"] and "memorisation" not in off.rows[0]["metrics_settings"]
    c = discrete_config()
    c.metrics.memorisation, c.metrics.memorisation_samples, c.metrics.memorisation_reference = True, 64, 256
    c.metrics.memorisation_samples = 0
    with pytest.raises(ConfigError, match="memorisation_samples"):
        make_plan(c)
    c.metrics.memorisation_samples, c.metrics.memorisation_window = 64, 8
    with pytest.raises(ConfigError, match="memorisation_window"):
        make_plan(c)
    c.metrics.memorisation_window = 4
    on = make_plan(c)
    assert on.rows[0]["hash"] != off.rows[0]["hash"]
    settings = on.rows[0]["metrics_settings"]["memorisation"]
    loaded, memo = load_model(on.config), {}
    train, held = memorisation_reference(settings, loaded, memo)       # 256 exact draws, seeds 0 and 1
    assert train.shape == held.shape == (256, 8) and not (train == held).all()
    mem = memorisation_metrics(settings, loaded, train, memo)          # samples = the reference: all copies
    assert mem["n_samples"] == 64 and mem["n_train"] == 256 and mem["window"] == 4
    assert mem["copies"] == 1.0 and mem["nearest_mean"] == 0.0 and mem["window_copies"] == 1.0
    assert mem["held_nearest_mean"] == pytest.approx(H.memorisation(held, train)["nearest_mean"])
