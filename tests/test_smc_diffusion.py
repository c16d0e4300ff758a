"""The diffusion-SMC driver (samplax.smc.diffusion) and the exact-target metrics
(samplax.smc.targets): group keys independent of the batch, the plain particle system when
weights stay equal, the unbiased normalising constant of a tilted target with a known Z,
non-finite weights reported with their step, bad input.  float64 throughout."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from samplax.models.analytic import GaussianMixture
from samplax.smc.diffusion import DiffusionSMCInfo, Kernel, diffusion_smc
from samplax.smc.targets import MixtureTarget, label_chi_square, target_metrics
from samplax.timesteps import Grid


@pytest.fixture
def x64():
    with jax.enable_x64(True):
        yield


def _grid(n_steps):
    t = jnp.linspace(1.0, 0.0, n_steps + 1)
    return Grid(t=t, alpha=jnp.ones_like(t), sigma=t, lam=-jnp.log(jnp.maximum(t, 1e-12)), end="zero")


def _walk_kernel(step_std=0.3):
    """x <- x + step_std * z with zero weights: the uncorrected particle system."""
    def init(models, grid, x):
        return jnp.zeros(x.shape[0]), jnp.zeros(x.shape[0])

    def step(models, grid, i, x, aux, key):
        z = jax.random.normal(key, x.shape, x.dtype)
        return x + step_std * z, aux + 1, jnp.zeros(x.shape[0], x.dtype)

    return Kernel(init, step, "walk")


def _tilt_kernel(a, n_steps):
    """Static particles from N(0, I), tilted by exp(a . x) in n_steps equal pieces: the target
    N(a, I) with Z = E exp(a . x) = exp(|a|^2 / 2)."""
    def init(models, grid, x):
        return (), jnp.zeros(x.shape[0], x.dtype)

    def step(models, grid, i, x, aux, key):
        return x, aux, (x @ a) / n_steps

    return Kernel(init, step, "tilt")


def test_groups_do_not_depend_on_the_batch(x64):
    P, S = 4, 5
    x = jax.random.normal(jax.random.PRNGKey(1), (4 * P, 2))
    key = jax.random.PRNGKey(7)
    k = _tilt_kernel(jnp.array([1.0, 0.5]), S)._replace(step=lambda m, g, i, x, aux, key: (
        x + 0.1 * jax.random.normal(key, x.shape), aux, x[:, 0]))
    full, info = diffusion_smc(k, None, x, _grid(S), key, num_particles=P, ess_threshold=0.9)
    half, info_h = diffusion_smc(k, None, x[2 * P:], _grid(S), key, num_particles=P, ess_threshold=0.9,
                                 index_offset=2 * P)
    np.testing.assert_array_equal(np.asarray(full[2 * P:]), np.asarray(half))
    np.testing.assert_array_equal(np.asarray(info.log_Z[2:]), np.asarray(info_h.log_Z))
    assert bool(np.any(info.resampled)), "the test must exercise resampling"
    # (a traced offset, as the runner passes it, is checked through the runner in test_smc_runner)


def test_equal_weights_give_the_plain_particle_system(x64):
    P, S = 8, 6
    x = jax.random.normal(jax.random.PRNGKey(2), (3 * P, 2))
    out, info = diffusion_smc(_walk_kernel(), None, x, _grid(S), jax.random.PRNGKey(3), num_particles=P,
                              resampling="systematic", ess_threshold=0.99)
    assert isinstance(info, DiffusionSMCInfo)
    assert info.ess.shape == (S, 3) and info.log_weights.shape == (3, P)
    np.testing.assert_allclose(np.asarray(info.ess), P, rtol=1e-12)
    assert not bool(np.any(info.resampled))
    np.testing.assert_allclose(np.asarray(info.log_Z), 0.0, atol=1e-12)
    # no resampling, and a systematic final pass on equal weights picks each particle once: out = the walk
    group_keys = [jax.random.fold_in(jax.random.PRNGKey(3), g) for g in range(3)]
    expect = []
    for g, gk in enumerate(group_keys):
        xg = x[g * P:(g + 1) * P]
        for k in range(S):
            _, k_move = jax.random.split(jax.random.fold_in(gk, k))
            xg = xg + 0.3 * jax.random.normal(k_move, xg.shape)
        expect.append(xg)
    # (shuffled within each group: the same particles in a random order)
    got = np.asarray(out).reshape(3, P, 2)
    want = np.asarray(jnp.concatenate(expect)).reshape(3, P, 2)
    for g in range(3):
        np.testing.assert_allclose(got[g][np.lexsort(got[g].T)], want[g][np.lexsort(want[g].T)], rtol=0, atol=1e-12)


def test_normalising_constant_is_unbiased_on_a_tilted_target(x64):
    """E[Z_hat] = exp(|a|^2/2) for the tilt of N(0, I) by exp(a . x), with adaptive resampling
    between the pieces; 4000 independent groups, a two-sided z-test at 1e-4."""
    a = jnp.array([1.0, -0.5])
    P, S, G = 8, 4, 4000
    x = jax.random.normal(jax.random.PRNGKey(4), (G * P, 2))
    _, info = diffusion_smc(_tilt_kernel(a, S), None, x, _grid(S), jax.random.PRNGKey(5), num_particles=P,
                            resampling="systematic", ess_threshold=0.8)
    z_hat = np.exp(np.asarray(info.log_Z))
    Z = float(np.exp(0.5 * np.sum(np.asarray(a) ** 2)))
    se = z_hat.std(ddof=1) / np.sqrt(G)
    assert abs(z_hat.mean() - Z) < 3.89 * se, (z_hat.mean(), Z, se)
    assert float(np.mean(np.asarray(info.resampled))) > 0.2, "resampling must happen for the test to bite"
    # mutation: reporting E[log Z_hat] instead is biased low by many standard errors
    assert np.exp(np.mean(np.log(z_hat))) < Z - 5 * se


def test_nonfinite_weights_are_reported_with_their_step(x64):
    P, S = 4, 6

    def step(models, grid, i, x, aux, key):
        bad = (i == 2) & (x[0, 0] > 100.0)  # only the group whose first particle is huge
        inc = jnp.where(bad, jnp.nan, 0.0) * jnp.ones(x.shape[0])
        return x, aux, inc

    k = Kernel(lambda m, g, x: ((), jnp.zeros(x.shape[0])), step, "nan_at_3")
    x = jnp.zeros((2 * P, 1)).at[P, 0].set(1e3)
    _, info = diffusion_smc(k, None, x, _grid(S), jax.random.PRNGKey(0), num_particles=P)
    np.testing.assert_array_equal(np.asarray(info.first_invalid_step), [-1, 3])


def test_bad_input_names_the_argument(x64):
    x = jnp.zeros((10, 2))
    k = _walk_kernel()
    with pytest.raises(ValueError, match="num_particles"):
        diffusion_smc(k, None, x, _grid(3), jax.random.PRNGKey(0), num_particles=4)
    with pytest.raises(ValueError, match="num_particles"):
        diffusion_smc(k, None, x, _grid(3), jax.random.PRNGKey(0), num_particles=0)
    with pytest.raises(ValueError, match="index_offset"):
        diffusion_smc(k, None, x, _grid(3), jax.random.PRNGKey(0), num_particles=5, index_offset=3)
    with pytest.raises(ValueError, match="resampling"):
        diffusion_smc(k, None, x, _grid(3), jax.random.PRNGKey(0), num_particles=5, resampling="best")
    with pytest.raises(ValueError, match="kernel"):
        diffusion_smc(lambda: 0, None, x, _grid(3), jax.random.PRNGKey(0), num_particles=5)
    with pytest.raises(ValueError, match="x_T"):
        diffusion_smc(k, None, jnp.zeros((10, 2), jnp.int32), _grid(3), jax.random.PRNGKey(0), num_particles=5)


def test_target_metrics_pass_exact_samples_and_fail_shifted_ones(x64):
    gmm = GaussianMixture.create([0.6, 0.3, 0.1], [[0.0, 0.0], [3.0, 0.0], [0.0, 3.0]], [0.5, 0.4, 0.3])
    target = MixtureTarget(gmm, n_per_component=50_000)
    x = gmm.sample(jax.random.PRNGKey(11), 20000)
    m = target_metrics(target, x, jax.random.PRNGKey(12))
    assert m["chi2_p"] > 1e-3 and m["mean_z_max"] < 4.0 and m["cov_rel"] < 0.05 and m["label_tv"] < 0.02
    # the wrong weights: the label test rejects at p < 1e-6
    wrong = GaussianMixture.create([0.5, 0.3, 0.2], gmm.means, gmm.stds).sample(jax.random.PRNGKey(13), 20000)
    assert label_chi_square(target, wrong)["p_value"] < 1e-6
    bad = np.asarray(x).copy()
    bad[:3] = np.nan
    assert target_metrics(target, bad)["n_nonfinite"] == 3


@pytest.mark.parametrize("scheme", ["systematic", "stratified"])
def test_one_sample_per_group_is_an_unbiased_draw(x64, scheme):
    """After the final resampling the first sample of each group is one draw from the weights
    (sorted systematic ancestors would favour low indices): 4000 groups of 4 static particles
    with weights (0.1, 0.2, 0.3, 0.4), chi-square at significance 1e-3."""
    from scipy import stats
    P, G = 4, 4000
    w = jnp.log(jnp.array([0.1, 0.2, 0.3, 0.4]))

    def init(models, grid, x):
        return (), jnp.broadcast_to(w, (x.shape[0],))

    k = Kernel(init, lambda m, g, i, x, aux, key: (x, aux, jnp.zeros(x.shape[0])), "fixed")
    x = jnp.tile(jnp.arange(P, dtype=jnp.float64)[:, None], (G, 1))
    out, _ = diffusion_smc(k, None, x, _grid(1), jax.random.PRNGKey(3), num_particles=P, resampling=scheme,
                           ess_threshold=0.0)
    counts = np.bincount(np.asarray(out[::P, 0]).astype(int), minlength=P)
    assert stats.chisquare(counts, G * np.array([0.1, 0.2, 0.3, 0.4])).pvalue > 1e-3, counts


def test_import_does_not_initialise_the_backend():
    """``import samplax`` (which registers the particle samplers, hence imports blackjax's users)
    must leave JAX's backend uninitialised: multi-process runs call jax.distributed.initialize
    after importing samplax, and that must come before any backend use."""
    import subprocess
    import sys
    code = ("import jax._src.xla_bridge as xb, samplax, samplax.smc, samplax.experiment; "
            "import samplax.smc.posterior, samplax.models.guidance, samplax.discrete, samplax.experiment.discrete; "
            "print(bool(xb._backends))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "False", out.stdout
