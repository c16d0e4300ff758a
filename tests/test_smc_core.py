"""SMC core (samplax.smc): resampling unbiasedness and variances, ESS identities, the
unbiased normalising-constant estimate (with a mutation test), non-finite reporting,
vmap over runs, bad input.  All statistical tests state their significance; float64."""
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

import samplax.smc as smc

SCHEMES = sorted(smc.RESAMPLING)

# Asymmetric weights with a zero (-inf log-weight); n = 7 ancestors so n*w_i is never an integer.
W = np.array([0.04, 0.31, 0.0, 0.17, 0.43, 0.05])
N_ANC = 7
R_RESAMPLE = 20000
FAMILY_ALPHA = 1e-3


@pytest.fixture
def x64():
    with jax.enable_x64(True):
        yield


def _counts(scheme, log_w, n, reps, seed=0):
    fn = smc.RESAMPLING[scheme]
    keys = jax.random.split(jax.random.key(seed), reps)
    idx = jax.jit(jax.vmap(lambda k: fn(k, log_w, n)))(keys)
    return np.asarray(jax.vmap(lambda i: jnp.zeros(log_w.shape[0], jnp.int32).at[i].add(1))(idx))


@pytest.fixture(scope="module")
def counts():
    with jax.enable_x64(True):
        log_w = jnp.log(jnp.asarray(W))
        return {s: _counts(s, log_w, N_ANC, R_RESAMPLE, seed=i) for i, s in enumerate(SCHEMES)}


def _exact_count_variances(w, n):
    """Per-index offspring-count variances in closed form (Douc, Cappé & Moulines 2005, Sec. 3)."""
    nw = n * w
    fl = np.floor(nw)
    r = nw - fl
    m = n - fl.sum()
    cum = np.concatenate([[0.0], np.cumsum(w)])
    strat = np.zeros_like(w)
    for k in range(n):  # stratum [k/n, (k+1)/n): Bernoulli hit of particle i with prob n * overlap
        lo, hi = k / n, (k + 1) / n
        p = n * np.clip(np.minimum(hi, cum[1:]) - np.maximum(lo, cum[:-1]), 0.0, None)
        strat += p * (1 - p)
    return {
        "multinomial": n * w * (1 - w),
        "residual": m * (r / m) * (1 - r / m),
        "stratified": strat,
        "systematic": r * (1 - r),  # counts in {floor, ceil}: the least variance any integer count can have
    }


def test_resampling_unbiased(counts):
    """E[c_i] = n w_i for each scheme and index: z-test on the replicate mean, two-sided,
    Bonferroni over schemes x positive-weight indices, family-wise alpha = 1e-3."""
    pos = W > 0
    z_crit = stats.norm.isf(FAMILY_ALPHA / (2 * len(SCHEMES) * pos.sum()))
    for s, c in counts.items():
        assert c.shape == (R_RESAMPLE, W.size) and (c.sum(1) == N_ANC).all(), s
        assert (c[:, ~pos] == 0).all(), f"{s} picked a zero-weight particle"
        mean, se = c.mean(0)[pos], c.std(0, ddof=1)[pos] / math.sqrt(R_RESAMPLE)
        z = (mean - N_ANC * W[pos]) / se
        assert np.all(np.abs(z) < z_crit), (s, z, z_crit)


def test_resampling_exact_count_ranges(counts):
    """Exact: systematic counts are floor or ceil of n w_i; residual counts are >= floor(n w_i)."""
    nw = N_ANC * W
    c = counts["systematic"]
    assert ((c == np.floor(nw)) | (c == np.ceil(nw))).all()
    assert (counts["residual"] >= np.floor(nw)).all()


def test_resampling_variance_ordering(counts):
    """Per-index offspring-count variance.  Guaranteed orderings only: Var_res <= Var_mult and
    Var_strat <= Var_mult (Douc, Cappé & Moulines 2005, Sec. 3, for any test function, so
    for indicators), and Var_sys = r(1-r) <= any unbiased integer count (a count with mean n w_i
    has variance >= r(1-r)).  Systematic is *not* dominated for general functionals
    (Douc et al. 2005, Sec. 3; Hol, Schön & Gustafsson 2006 only report it typically best), so
    we test nothing beyond indicators.  (a) the closed forms obey the ordering; (b) each scheme's
    sample variances equal its closed form (z-test with the delta-method SE of a sample variance,
    Bonferroni, family-wise alpha = 1e-3), so the implementation has those variances."""
    exact = _exact_count_variances(W, N_ANC)
    pos = W > 0
    tol = 1e-12
    assert np.all(exact["residual"] <= exact["multinomial"] + tol)
    assert np.all(exact["stratified"] <= exact["multinomial"] + tol)
    for s in ("multinomial", "residual", "stratified"):
        assert np.all(exact["systematic"] <= exact[s] + tol)
    # On these weights the ordering is strict somewhere, so the test below can see a swap.
    assert np.any(exact["residual"][pos] < 0.9 * exact["multinomial"][pos])
    assert np.any(exact["stratified"][pos] < 0.9 * exact["multinomial"][pos])
    z_crit = stats.norm.isf(FAMILY_ALPHA / (2 * len(SCHEMES) * pos.sum()))
    for s, c in counts.items():
        x = c[:, pos].astype(float)
        d = x - x.mean(0)
        var = (d ** 2).sum(0) / (R_RESAMPLE - 1)
        se = np.sqrt(np.maximum((d ** 4).mean(0) - var ** 2, 1e-300) / R_RESAMPLE)
        z = (var - exact[s][pos]) / se
        assert np.all(np.abs(z) < z_crit), (s, var, exact[s][pos], z)


def test_ess_identities(x64):
    n = 9
    assert float(smc.ess(jnp.zeros(n))) == pytest.approx(n, rel=1e-13)
    one = jnp.full(n, -jnp.inf).at[4].set(0.3)
    assert float(smc.ess(one)) == pytest.approx(1.0, rel=1e-13)
    lw = jnp.asarray(np.random.default_rng(0).normal(size=n) * 2.0)
    w = np.exp(np.asarray(lw))
    direct = w.sum() ** 2 / (w ** 2).sum()
    for c in (0.0, 37.0, -1e4, 1e4):
        assert float(smc.ess(lw + c)) == pytest.approx(direct, rel=1e-12)
    assert np.isfinite(float(smc.ess(lw - 1e4)))
    from blackjax.smc.ess import ess as bj_ess
    assert float(smc.ess(lw)) == pytest.approx(float(bj_ess(lw)), rel=1e-12)
    assert float(smc.log_ess(jnp.full(n, -jnp.inf))) == -np.inf  # defined, not NaN


# --- normalising constant on a tempered Gaussian path ------------------------------------
# gamma_b(x) = N(x; 0, 1)^(1-b) f(x)^b, f(x) = c exp(-(x-mu)^2 / (2 s^2)), b: 0 -> 1.
# gamma_0 is normalised; Z_1 = c sqrt(2 pi) s.  pi_b is Gaussian with precision
# (1-b) + b/s^2 and mean (b mu / s^2) / precision.  The move is an exact pi_b-invariant AR(1)
# kernel x' = m + rho (x - m) + sqrt(1 - rho^2) sd eps; the increment log gamma_b - log gamma_{b-}
# is evaluated *before* the move (Del Moral, Doucet & Jasra 2006, Sec. 3).
MU, S, LOG_C, RHO = 1.5, 0.7, math.log(3.0), 0.5
BETAS = np.linspace(0.0, 1.0, 7)
LOG_Z = LOG_C + 0.5 * math.log(2 * math.pi) + math.log(S)
N_PART, N_RUNS = 16, 4000
Z_CRIT = 4.0  # two-sided z-test on the mean of Z_hat / Z: significance 6.3e-5


def _log_f(x):
    return LOG_C - 0.5 * (x - MU) ** 2 / S ** 2


def _log_gamma(x, b):
    return (1 - b) * (-0.5 * x ** 2 - 0.5 * math.log(2 * math.pi)) + b * _log_f(x)


def _mutation(wrong=False):
    betas = jnp.asarray(BETAS)

    def mutate(key, particles, t):
        x = particles["x"]
        b_prev, b = betas[t - 1], betas[t]
        prec = (1 - b) + b / S ** 2
        m, sd = (b * MU / S ** 2) / prec, 1.0 / jnp.sqrt(prec)
        x_new = m + RHO * (x - m) + jnp.sqrt(1 - RHO ** 2) * sd * jax.random.normal(key, x.shape)
        at = x_new if wrong else x  # wrong: increment evaluated after the move (a classic bug)
        return {"x": x_new, "tag": particles["tag"]}, _log_gamma(at, b) - _log_gamma(at, b_prev)

    return mutate


@functools.lru_cache(maxsize=None)
def _runner(scheme, threshold, wrong=False):
    """One compiled program of N_RUNS vmapped independent runs per setting (shared by tests)."""
    sampler = smc.smc(_mutation(wrong), resampling=scheme, ess_threshold=threshold)

    def one(key):
        k0, k1 = jax.random.split(key)
        particles = {"x": jax.random.normal(k0, (N_PART,)), "tag": jnp.arange(N_PART)}
        return smc.run(sampler, k1, sampler.init(particles), len(BETAS) - 1)

    return jax.jit(jax.vmap(one)), jax.jit(one)


def _runs(scheme, threshold, seed, wrong=False):
    return _runner(scheme, threshold, wrong)[0](jax.random.split(jax.random.key(seed), N_RUNS))


def _z_stat(log_z_hat):
    ratio = np.exp(np.asarray(log_z_hat) - LOG_Z)
    return (ratio.mean() - 1.0) / (ratio.std(ddof=1) / math.sqrt(ratio.size))


@pytest.mark.parametrize("scheme,threshold", [("systematic", 1.0), ("residual", 0.5), ("multinomial", 0.0)])
def test_log_z_unbiased(x64, scheme, threshold):
    """E[Z_hat] = Z: mean of Z_hat/Z over 4000 independent runs within 4 standard errors of 1
    (significance 6.3e-5).  E[log Z_hat] < log Z (Jensen) is visible at the same level."""
    state, info = _runs(scheme, threshold, seed=11)
    z = _z_stat(state.log_Z)
    assert abs(z) < Z_CRIT, z
    log_ratio = np.asarray(state.log_Z) - LOG_Z
    assert log_ratio.mean() < -Z_CRIT * log_ratio.std(ddof=1) / math.sqrt(log_ratio.size)
    assert (np.asarray(state.first_invalid_step) == -1).all()
    flags = np.asarray(info.resampled)
    if threshold == 1.0:
        assert flags.all()
    elif threshold == 0.0:
        assert not flags.any()
    else:  # adaptive: resampled exactly when ESS < threshold * n, and both happen here
        np.testing.assert_array_equal(flags, np.asarray(info.ess) < threshold * N_PART)
        assert 0 < flags.mean() < 1
    # particles stayed a pytree: the tag leaf follows the ancestry
    assert np.asarray(state.particles["tag"]).shape == (N_RUNS, N_PART)


def test_log_z_mutations_detected(x64):
    """Mutation tests: the same check must reject (|z| >= 4) (a) an increment evaluated after the
    move and (b) a driver that adds the weighted mean of log-increments instead of the log of the
    weighted mean (dropping the log-mean normaliser; this estimates exp E[log], biased low)."""
    state, _ = _runs("residual", 0.5, seed=12, wrong=True)
    assert abs(_z_stat(state.log_Z)) >= Z_CRIT
    state, info = _runs("residual", 0.5, seed=13)
    # reconstruct W_{t-1} from the info: uniform after a resampling, else the previous normalised weights
    wrong = np.zeros(N_RUNS)
    log_w = np.full((N_RUNS, N_PART), -math.log(N_PART))
    for t in range(len(BETAS) - 1):
        res = np.asarray(info.resampled[:, t])[:, None]
        lwp = np.where(res, -math.log(N_PART), log_w)
        g = np.asarray(info.log_weight_increment[:, t])
        wrong += (np.exp(lwp) * g).sum(1)
        u = lwp + g
        log_w = u - np.log(np.exp(u).sum(1, keepdims=True))
    assert abs(_z_stat(state.log_Z)) < Z_CRIT
    assert abs(_z_stat(wrong)) >= Z_CRIT


def test_vmap_over_runs_equals_separate_runs(x64):
    """Runs vmapped over keys equal the same runs done one by one (rtol 1e-12), pytree particles."""
    batched = _runs("residual", 0.5, seed=11)
    keys = jax.random.split(jax.random.key(11), N_RUNS)
    single_run = _runner("residual", 0.5)[1]
    for r in (0, 1, N_RUNS - 1):
        single = single_run(keys[r])
        jax.tree_util.tree_map(
            lambda a, b: np.testing.assert_allclose(np.asarray(a)[r], np.asarray(b), rtol=1e-12, atol=0),
            batched, single)
    assert np.asarray(batched[1].resampled).any() and not np.asarray(batched[1].resampled).all()


def test_nonfinite_weights_reported(x64):
    """A NaN increment at step 3 (one particle) and all -inf at step 5 in another run: counted,
    flagged invalid, first_invalid_step = 3 resp. 5; a few -inf (zero weights) are legitimate."""
    n = 6

    def mutate_factory(bad_step, kind):
        def mutate(key, x, t):
            g = jnp.zeros(n).at[0].set(-jnp.inf)  # one zero-weight particle every step: legitimate
            if kind == "nan":
                g = jnp.where(t == bad_step, g.at[2].set(jnp.nan), g)
            else:
                g = jnp.where(t == bad_step, jnp.full(n, -jnp.inf), g)
            return x + jax.random.normal(key, x.shape), g
        return mutate

    for bad_step, kind in ((3, "nan"), (5, "allneg")):
        sampler = smc.smc(mutate_factory(bad_step, kind), "systematic", 1.0)
        state, info = jax.jit(lambda k: smc.run(sampler, k, sampler.init(jnp.zeros(n)), 7))(jax.random.key(0))
        valid = np.asarray(info.valid)
        assert valid[: bad_step - 1].all() and not valid[bad_step - 1]
        assert int(state.first_invalid_step) == bad_step
        np.testing.assert_array_equal(np.asarray(info.first_invalid_step)[: bad_step - 1], -1)
        assert (np.asarray(info.first_invalid_step)[bad_step - 1:] == bad_step).all()
        assert (np.asarray(info.num_nonfinite)[: bad_step - 1] == 1).all()
        expected_nan = 1 if kind == "nan" else 0
        assert int(info.num_nan[bad_step - 1]) == expected_nan
        assert int(info.num_nonfinite[bad_step - 1]) == (2 if kind == "nan" else n)
        assert not np.isfinite(float(state.log_Z))


def test_resampling_invalid_inside_jit_is_identity(x64):
    """Inside jit nothing can raise: invalid log-weights give the identity ancestors arange(n) % N."""
    all_schemes = jax.jit(lambda k, lw: jnp.stack([smc.RESAMPLING[s](k, lw, 6) for s in SCHEMES]))
    for bad in (jnp.full(4, jnp.nan), jnp.full(4, -jnp.inf), jnp.array([0.0, jnp.inf, 0.0, 0.0])):
        out = np.asarray(all_schemes(jax.random.key(1), bad))
        np.testing.assert_array_equal(out, np.tile([0, 1, 2, 3, 0, 1], (len(SCHEMES), 1)))
        assert not bool(smc.log_weights_valid(bad))
    idx = all_schemes(jax.random.key(1), jnp.zeros(4))
    assert idx.dtype == jnp.int32 and idx.shape == (len(SCHEMES), 6)


def test_zero_weight_picks_repaired():
    """Exact: a pick of a zero-weight particle (what blackjax's searchsorted can return when u = 0
    or u exceeds the rounded cumulative sum) moves to the nearest positive weight below it, or the
    first positive one for leading zeros: where exact arithmetic puts it."""
    from samplax.smc.resampling import _repair_zero_picks
    w = jnp.array([0.0, 0.0, 0.25, 0.0, 0.75, 0.0, 0.0])
    idx = jnp.array([0, 1, 2, 3, 4, 5, 6])
    np.testing.assert_array_equal(np.asarray(_repair_zero_picks(idx, w)), [2, 2, 2, 2, 4, 4, 4])


def test_no_zero_weight_picks_float32():
    """Exact: no scheme ever picks a -inf log-weight particle, in float32 where the rounded total
    of the weights is 1 - 1.8e-7 (blackjax's raw multinomial picks one ~23 times in this setting:
    docs/smc.md)."""
    N = 1000
    lw = jnp.asarray(np.random.default_rng(0).normal(size=N) * 3, jnp.float32).at[-5:].set(-jnp.inf)
    keys = jax.random.split(jax.random.key(0), 1000)
    picks = jax.jit(jax.vmap(lambda k: jnp.stack([smc.RESAMPLING[s](k, lw, N) for s in SCHEMES])))(keys)
    assert int((np.asarray(picks) >= N - 5).sum()) == 0


def test_bad_input():
    key = jax.random.key(0)
    with pytest.raises(ValueError, match="resampling must be one of .*multinomial.*systematic"):
        smc.get_resampling("sobol")
    with pytest.raises(ValueError, match="resampling must be one of"):
        smc.smc(lambda k, x, t: (x, jnp.zeros(3)), resampling="Systematic")
    for thr in (-0.1, 1.5, "0.5", True, float("nan")):
        with pytest.raises(ValueError, match="ess_threshold"):
            smc.smc(lambda k, x, t: (x, jnp.zeros(3)), ess_threshold=thr)
    with pytest.raises(ValueError, match="mutation must be callable"):
        smc.smc(None)
    for bad in (jnp.zeros((2, 3)), jnp.zeros(()), jnp.zeros(0), jnp.zeros(3, jnp.int32)):
        with pytest.raises(ValueError, match="log_weights"):
            smc.systematic(key, bad, 3)
    with pytest.raises(ValueError, match="log_weights contains NaN"):
        smc.residual(key, jnp.array([0.0, jnp.nan]), 3)
    with pytest.raises(ValueError, match="log_weights are all -inf"):
        smc.multinomial(key, jnp.full(3, -jnp.inf), 3)
    for n in (0, -1, 2.0, True):
        with pytest.raises(ValueError, match="n \\(number of ancestors\\)"):
            smc.stratified(key, jnp.zeros(3), n)
    sampler = smc.smc(lambda k, x, t: (x, jnp.zeros(2)))
    with pytest.raises(ValueError, match="particles"):
        sampler.init({"a": jnp.zeros(3), "b": jnp.zeros(4)})
    with pytest.raises(ValueError, match="log_weights must have shape \\(3,\\)"):
        sampler.init(jnp.zeros(3), log_weights=jnp.zeros(4))
    with pytest.raises(ValueError, match="log_weight_increment of shape \\(3,\\)"):
        sampler.step(key, sampler.init(jnp.zeros(3)))
    with pytest.raises(ValueError, match="num_steps"):
        smc.run(sampler, key, sampler.init(jnp.zeros(2)), 0)
