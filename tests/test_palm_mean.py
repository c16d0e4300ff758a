"""PALM-Mean (samplax.optim.palm_mean), its GP (samplax.optim.gp) and the "palm_mean"
search strategy (samplax.search.palm) against exact answers.

* lower bounds never above the true minimum over the box, on random GP means and many
  random boxes (the true minimum: the minimum of 1500 random points and the corners, an
  upper estimate of it -- a bound above it would be invalid);
* epsilon-convergence: single-bump means with the known minimum (c + a_0 at the bump
  centre), and random means where the certified [lower, upper] must contain the best
  of dense evaluation + local polishing;
* a constructed multi-well mean where multi-start L-BFGS (8 starts) misses the global
  well and the branch-and-bound finds it;
* the GP posterior mean interpolates noiseless data (1e-6 relative);
* the strategy improves on its initial design on a tiny problem with a known answer;
* bad arguments raise one ValueError / ConfigError naming the argument.
"""
import numpy as np
import pytest

from samplax.optim import gp as G
from samplax.optim import palm_mean as P


def _random_mean(rng, kernel, n, d, ls=0.3):
    return P.make_mean(kernel, rng.uniform(0, 1, (n, d)), rng.normal(0, 1, n), np.full(d, ls), rng.normal())


@pytest.mark.parametrize("kernel", ["se", "matern52"])
def test_lower_bounds_are_valid_on_random_boxes(kernel):
    rng = np.random.default_rng(0)
    for d in (1, 2, 3):
        pm = _random_mean(rng, kernel, 25, d)
        B = 80
        a = rng.uniform(0, 1, (B, d))
        b = np.minimum(a + rng.uniform(0.0, 0.6, (B, d)), 1.0)
        b[:10] = a[:10]                                  # degenerate boxes (points)
        u = rng.uniform(size=(B, 1500, d))
        pts = a[:, None] + u * (b - a)[:, None]
        true_min = np.minimum(P.evaluate(pm, pts).min(1), P.evaluate(pm, np.stack([a, b], 1)).min(1))
        for method in P.METHODS:
            lb, x = P.lower_bound(pm, a, b, method)
            assert np.all(lb <= true_min + 1e-12), (kernel, d, method, np.max(lb - true_min))
            assert np.all((x >= a - 1e-12) & (x <= b + 1e-12))
        lb_p, _ = P.lower_bound(pm, a, b, "palm")
        lb_a, _ = P.lower_bound(pm, a, b, "analytic")
        assert np.all(lb_p >= lb_a - 1e-9)            # the relaxation dominates the analytic bound
        # points: both bounds are exact up to the safety margin
        assert np.allclose(lb_p[:10], P.evaluate(pm, a[:10]), atol=1e-9)


def test_epsilon_convergence_to_known_minima():
    rng = np.random.default_rng(1)
    # one negative bump (+ far positive ones): the minimum is at the bump, value c + a_0 (+ e^-large)
    for kernel in ("se", "matern52"):
        x0 = np.array([0.3, 0.7])
        pm = P.make_mean(kernel, np.stack([x0, [5.0, 5.0]]), [-2.0, 1.0], [0.2, 0.3], 0.5)
        r = P.branch_and_bound(pm, np.zeros(2), np.ones(2), eps=1e-6)
        f_star = float(P.evaluate(pm, x0))
        assert r.converged and r.gap <= 1e-6 and r.lower <= f_star <= r.upper <= f_star + 1e-6
        assert np.allclose(r.x, x0, atol=1e-3)
    # random means: the certificate contains the best of dense evaluation + polishing
    for kernel, d in (("se", 2), ("matern52", 2), ("se", 3)):
        pm = _random_mean(rng, kernel, 20, d)
        lo, hi = np.zeros(d), np.ones(d)
        eps = 1e-4
        r = P.branch_and_bound(pm, lo, hi, eps=eps)
        grid = rng.uniform(0, 1, (20000, d))
        vals = P.evaluate(pm, grid)
        best = min(P.local_minimize(pm, grid[i], lo, hi)[1] for i in np.argsort(vals)[:5])
        assert r.converged and r.upper - r.lower <= eps
        assert r.lower <= best + 1e-12 and r.upper <= best + eps


def test_multistart_lbfgs_misses_a_narrow_global_well_that_bnb_finds():
    # 25 equal wells on a 5x5 grid in [0, 1]^2 and one 20% deeper well near a corner basin edge
    g = (np.arange(5) + 0.5) / 5
    centres = np.stack(np.meshgrid(g, g), -1).reshape(-1, 2)
    w = np.full(25, -1.0)
    deep = 18
    w[deep] = -1.2
    pm = P.make_mean("se", centres, w, [0.05, 0.05])
    lo, hi = np.zeros(2), np.ones(2)
    x_ms, v_ms, _ = P.multistart_lbfgs(pm, lo, hi, n_starts=8, seed=0)
    r = P.branch_and_bound(pm, lo, hi, eps=1e-6)
    f_star = float(P.evaluate(pm, centres[deep]))
    assert r.converged and abs(r.upper - f_star) <= 1e-6 and np.allclose(r.x, centres[deep], atol=1e-3)
    assert v_ms > f_star + 0.1  # the baseline is stuck in a shallower well


def test_gp_interpolates_noiseless_data_and_fits():
    rng = np.random.default_rng(2)
    X = rng.uniform(-1, 1, (12, 2))
    y = np.sin(3 * X[:, 0]) + X[:, 1] ** 2
    for kernel in G.KERNELS:
        gp = G.fit_gp(X, y, kernel, noise=1e-10)
        assert np.max(np.abs(G.posterior_mean(gp, X) - y)) <= 1e-6 * np.max(np.abs(y))
        assert np.max(G.posterior_var(gp, X)) <= 1e-6
        # the expanded form the bounds use is the same function
        pm = P.posterior_mean_terms(gp)
        xt = rng.uniform(-1, 1, (50, 2))
        assert np.allclose(P.evaluate(pm, xt), G.posterior_mean(gp, xt), atol=1e-9)
        v, g = P.value_and_grad(pm, xt[0])
        h = 1e-6
        num = [(P.evaluate(pm, xt[0] + h * e) - P.evaluate(pm, xt[0] - h * e)) / (2 * h) for e in np.eye(2)]
        assert np.allclose(g, num, rtol=1e-5, atol=1e-6)


def test_bad_arguments_name_the_argument():
    pm = P.make_mean("se", np.zeros((2, 2)), [1.0, -1.0], [1.0, 1.0])
    with pytest.raises(ValueError, match="lower_bound.method"):
        P.lower_bound(pm, np.zeros(2), np.ones(2), "exact")
    with pytest.raises(ValueError, match="lo / hi"):
        P.branch_and_bound(pm, np.ones(2), np.zeros(2))
    with pytest.raises(ValueError, match="branch_and_bound.eps"):
        P.branch_and_bound(pm, np.zeros(2), np.ones(2), eps=0.0)
    with pytest.raises(ValueError, match="make_mean.lengthscales"):
        P.make_mean("se", np.zeros((2, 2)), [1.0, -1.0], [1.0, -1.0])
    with pytest.raises(ValueError, match="kernel"):
        G.fit_gp(np.zeros((2, 1)), np.zeros(2), "rbf")
    with pytest.raises(ValueError, match="fit_gp.y"):
        G.fit_gp(np.zeros((2, 1)), np.zeros(3))
    from samplax.search.palm import palm_mean

    with pytest.raises(ValueError, match="palm_mean.radius"):
        palm_mean(None, None, radius=-1.0)
    from samplax.experiment import search
    from samplax.experiment.config import ConfigError

    c = search.search_config()
    c.search.strategy = "palm_mean"
    c.search.palm.kernel = "rbf"
    with pytest.raises(ConfigError, match="config.search.palm.kernel"):
        search.validate_search(c)
    c.search.palm.kernel = "se"
    c.search.searchable = ("order",)
    with pytest.raises(ConfigError, match="config.search.searchable"):
        search.validate_search(c)


def test_the_palm_strategy_improves_on_its_initial_design():
    """A tiny problem with a known answer: gmm2d's schedule space at NFE 5 (4 logits, the
    full embedding, dims=0), scored by the squared distance of the decoded logSNR fractions
    to those of a target grid inside the box; 8 design candidates (random), then 6 GP
    iterations of 4 through the jitted step (the host callback inside jit).  The best must
    beat the design's best by 10x, and the config file validates and resolves the factory."""
    import jax
    import jax.numpy as jnp

    import samplax as sx
    from samplax.search.palm import legendre_basis, palm_mean
    from samplax.search.space import SearchSpace
    from samplax.solvers.base import jit_cpu_fast

    _, sch, _ = sx.load_problem("gmm2d")
    space = SearchSpace(sch, 5, searchable=("times",))
    target = jax.nn.softmax(jnp.asarray(legendre_basis(4, 0) @ np.array([0.6, -0.4, 0.2, 0.1]) * 2.0))

    def score_fn(g):
        return dict(score=jnp.sum((jax.nn.softmax(g["logits"], -1) - target) ** 2, -1))

    strat = palm_mean(space, score_fn, population=8, batch=4, dims=0, max_nodes=1000)
    key = jax.random.PRNGKey(0)
    state = strat.init(key)
    step = jit_cpu_fast(strat.step)
    design = []
    for i in range(8):
        state, rec = step(state, jax.random.fold_in(key, i))
        if i < 2:
            design += list(np.asarray(rec["score"]))
    assert int(strat.evaluations(state)) == 32
    g, best = strat.best(state)
    assert float(best) < 0.1 * min(design)
    assert np.isfinite(float(rec["bnb_nodes"][0])) and float(rec["bnb_nodes"][0]) >= 1
    # the template (best design genotype) keeps its discrete fields
    assert np.array_equal(np.asarray(g["order"]), np.asarray(state["template"]["order"]))

    from configs import search_palm
    from samplax.experiment import search

    cfg = search.validate_search(search_palm.get_config())
    assert cfg["search"]["strategy"] == "palm_mean"
    assert search._resolve(search.STRATEGIES["palm_mean"].factory, "palm") is palm_mean
