"""samplax.metrics.epiplexity against exact answers: the code-length bookkeeping of prequential
coding (a model that does not learn codes every token at exactly log2 K bits; the observer's code
lengths satisfy Kraft's equality, so they are a valid code), the order of the estimates on sources
whose information is known (i.i.d. uniform noise: entropy n L log2 K, epiplexity ~ 0; a Markov
chain: entropy near its exact value, more epiplexity than noise), quantisation of the digits,
the optional discrete-run metric (and that it leaves row identities alone when off), bad input."""
import itertools
import math

import jax
import numpy as np
import pytest

from samplax.metrics import epiplexity as ep

# one compiled program for the tests below (the shapes and the observer's size are static; the
# learning rate is not): sequences of L = 8 tokens in 0..3, like the exact problem markov4x8
K, L = 4, 8
OPTS = dict(hidden=64, batch_size=16, steps=64, learning_rate=1e-2, eval_size=256, seeds=(0, 1, 2))
N = OPTS["steps"] * OPTS["batch_size"] + OPTS["eval_size"]


def _markov(n, rng, stay=0.95):
    """x_0 uniform; x_t = x_{t-1} + 1 mod K w.p. ``stay``, else uniform.  Exact entropy in bits."""
    x = np.zeros((n, L), np.int32)
    x[:, 0] = rng.integers(0, K, n)
    for t in range(1, L):
        keep = rng.random(n) < stay
        x[:, t] = np.where(keep, (x[:, t - 1] + 1) % K, rng.integers(0, K, n))
    p = stay + (1 - stay) / K
    q = (1 - stay) / K
    h_step = -(p * math.log2(p) + (K - 1) * q * math.log2(q))
    return x, math.log2(K) + (L - 1) * h_step


def test_a_model_that_does_not_learn_codes_exactly_log2_k_per_token():
    x = np.random.default_rng(0).integers(0, K, (N, L))
    r = ep.epiplexity(x, K, **dict(OPTS, learning_rate=0.0))
    exact = 64 * 16 * L * math.log2(K)
    # totals are float32 sums of 8192 per-token terms: rounding alone reaches ~1e-6 relative
    # (seen with XLA's unoptimised reduction order), far below any modelling effect
    np.testing.assert_allclose(r.code.prequential_bits, exact, rtol=1e-5)
    np.testing.assert_allclose(r.code.entropy_bits, exact, rtol=1e-5)
    np.testing.assert_allclose(r.code.curve, math.log2(K), rtol=1e-6)
    assert abs(r.epiplexity_bits) < 1e-6 * exact and r.n_samples == 1024


def test_observer_code_lengths_satisfy_kraft_equality():
    """Random (non-zero) weights: sum over all K^L sequences of 2^-codelength = 1, which holds only
    for an exactly autoregressive model (each output sees only earlier positions)."""
    k, length, hidden = 3, 3, 5
    keys = jax.random.split(jax.random.PRNGKey(1), 4)
    p = ep.made_init(keys[0], length, k, hidden)
    p["w2"] = jax.random.normal(keys[1], p["w2"].shape)
    p["wd"] = jax.random.normal(keys[2], p["wd"].shape)
    p["b2"] = jax.random.normal(keys[3], p["b2"].shape)
    allx = np.array(list(itertools.product(range(k), repeat=length)))
    bits = np.asarray(jax.jit(ep.code_length_bits, static_argnums=2)(p, allx, k), np.float64)
    assert np.ptp(bits) > 1.0  # a non-trivial model
    assert abs(np.sum(2.0 ** -bits) - 1.0) < 1e-5
    # and log p(x_t | x_<t) depends on x_0..x_t only
    masks = ep.made_masks(length, k, hidden)
    lp = np.asarray(jax.jit(lambda q, x: ep.made_log_probs(q, x, k, masks))(p, allx))
    for t in range(length):
        for prefix in itertools.product(range(k), repeat=t + 1):
            same = np.all(allx[:, : t + 1] == prefix, axis=1)
            assert np.ptp(lp[same, t]) < 1e-6


def test_noise_has_full_entropy_and_no_epiplexity_a_markov_chain_has_structure():
    rng = np.random.default_rng(0)
    noise = rng.integers(0, K, (N, L))
    chain, h_exact = _markov(N, rng)
    n_code = OPTS["steps"] * OPTS["batch_size"]
    uniform = n_code * L * math.log2(K)
    rn = ep.epiplexity(noise, K, **OPTS)
    rc = ep.epiplexity(chain, K, **OPTS)
    # noise: the time-bounded entropy is the Shannon entropy n L log2 K -- never below it by more
    # than the held-out sampling error (0.5%), above it only by the observer's overfitting (2%) --
    # and the epiplexity ~ 0
    assert 0.995 < rn.entropy_bits / uniform < 1.02, rn.as_dict()
    assert abs(rn.epiplexity_bits) < 0.01 * uniform, rn.as_dict()
    # the chain: entropy between its exact value (cross-entropy >= entropy; 3% sampling slack
    # for 256 held-out sequences) and half of the uniform bits; its epiplexity is larger than the
    # noise's by far more than the seeds' spread
    assert n_code * h_exact * 0.97 <= rc.entropy_bits < 0.5 * uniform, (rc.as_dict(), n_code * h_exact)
    assert rc.epiplexity_bits > 10 * abs(rn.epiplexity_bits) + 3 * (rc.epiplexity_std + rn.epiplexity_std)
    assert np.allclose(rc.code.prequential_bits, rc.code.epiplexity_bits + rc.code.entropy_bits)


def test_quantize_recovers_digit_grey_levels():
    from samplax.data import digits_tokens, load_digits_dataset

    images = load_digits_dataset("test").images
    np.testing.assert_array_equal(ep.quantize(images, 17), digits_tokens(images))
    np.testing.assert_array_equal(ep.quantize(np.array([[-3.0, -0.01, 0.01, 9.0]]), 2), [[0, 0, 1, 1]])


def test_bad_input_is_one_clear_error():
    x = np.zeros((300, 4), np.int32)
    small = dict(steps=2, batch_size=2, eval_size=4)
    with pytest.raises(ValueError, match="tokens must lie in 0..num_classes-1 = 0..2"):
        ep.epiplexity(x + 3, 3, **small)
    with pytest.raises(ValueError, match="integer tokens"):
        ep.epiplexity(x.astype(np.float32), 3, **small)
    with pytest.raises(ValueError, match=r"\(n, L\)"):
        ep.epiplexity(x[0], 3, **small)
    with pytest.raises(ValueError, match="need at least steps \\* batch_size \\+ eval_size"):
        ep.epiplexity(x, 3, steps=100, batch_size=4, eval_size=1)
    with pytest.raises(ValueError, match="epiplexity.width: unknown option"):
        ep.epiplexity(x, 3, width=3)
    with pytest.raises(ValueError, match="epiplexity.seeds"):
        ep.epiplexity(x, 3, seeds=())
    with pytest.raises(ValueError, match="epiplexity.learning_rate"):
        ep.epiplexity(x, 3, learning_rate=float("nan"))
    with pytest.raises(ValueError, match="num_classes"):
        ep.epiplexity(x, 1, **small)
    with pytest.raises(ValueError, match="quantize: needs finite low < high"):
        ep.quantize(np.zeros((2, 2)), 4, low=1.0, high=0.0)


def test_discrete_run_metric_optional_and_identity_unchanged_when_off():
    """The metric of a discrete row (samplax.experiment.discrete: validate -> _row -> _metrics) on
    exact samples of markov4x8, whose exact entropy bounds the entropy estimate from below."""
    from samplax.discrete import exact
    from samplax.experiment import ConfigError
    from samplax.experiment.discrete import _metrics, _row, discrete_config, load_model, validate

    c = discrete_config()
    c.model.name = "markov4x8"
    c.n_samples = N
    base = _row(validate(c, "sample"), "first_hitting", {}, 0)
    assert "epiplexity" not in base["metrics_settings"]
    c.metrics.epiplexity = False
    assert _row(validate(c, "sample"), "first_hitting", {}, 0)["hash"] == base["hash"]  # off: the same row
    c.metrics.epiplexity = True
    c.metrics.epiplexity_options = OPTS
    cfg = validate(c, "sample")
    spec = _row(cfg, "first_hitting", {}, 0)
    assert spec["hash"] != base["hash"]
    loaded = load_model(cfg)
    x = np.asarray(exact.true_samples(loaded.truth, jax.random.PRNGKey(0), N))
    metrics, ref, _ = _metrics(spec, loaded, x, -np.ones(N, np.int32), {})
    m = metrics["epiplexity"]
    assert m["n_samples"] == 1024 and m["length"] == L and m["num_classes"] == K
    exact_bits = -ref["neg_entropy"] / math.log(2)  # exact entropy per sequence
    assert 0.97 * exact_bits * 1024 <= m["entropy_bits"] < 0.9 * m["uniform_bits"], (m, exact_bits)
    assert m["epiplexity_bits"] > 3 * m["epiplexity_std"] > 0
    c.metrics.epiplexity_options = dict(hidden=0)
    with pytest.raises(ConfigError, match="config.metrics.epiplexity_options.hidden"):
        validate(c, "sample")
    c.metrics.epiplexity_options = dict(steps=100)  # 100 * 16 + 256 > N
    with pytest.raises(ConfigError, match="config.n_samples"):
        _row(validate(c, "sample"), "first_hitting", {}, 0)


def test_continuous_digits_metric_quantises_to_grey_levels():
    """The continuous digits runs' metric (runner._digits_epiplexity) is the token metric of the
    samples' 17 grey levels; too few samples give None; bad options are a ConfigError."""
    from samplax.data import digits_tokens, load_digits_dataset
    from samplax.experiment import ConfigError, sweep_config
    from samplax.experiment.config import validate_fields
    from samplax.experiment.runner import _digits_epiplexity

    images = load_digits_dataset("train").images[:48]
    o = dict(hidden=8, batch_size=8, steps=4, eval_size=16, seeds=(0, 1))
    got = _digits_epiplexity(o, images.reshape(48, -1))
    want = ep.epiplexity(digits_tokens(images), 17, **o).as_dict()
    assert got == want and got["n_samples"] == 32
    assert _digits_epiplexity(o, images[:47].reshape(47, -1)) is None
    c = sweep_config()
    c.metrics.epiplexity = True
    c.metrics.epiplexity_options = dict(seeds=(-1,))
    with pytest.raises(ConfigError, match="config.metrics.epiplexity_options.seeds"):
        validate_fields(c, "sweep")
