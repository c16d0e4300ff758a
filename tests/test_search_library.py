"""samplax.search: search space, scorer, random / evolutionary / S^3 search."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import samplax as sx
from samplax.search import (SearchSpace, evolution, gmm_mode_fn, gmm_reference, make_scorer, random_search, s3,
                            teacher_reference)
from samplax.search.s3 import make_predictor, spearman
from samplax.search.space import LOGIT_BOUND, stack, take
from samplax.search.strategies import offspring, run
from samplax.solvers.schedule import check_schedule, constant_schedule, schedule_table
from samplax.solvers.unified import run_table

BEST_HAND_DESIGNED_NFE5 = 0.0504  # docs/benchmarks/solver_accuracy.md, gmm2d, NFE 5, end=zero


@pytest.fixture(scope="module")
def gmm2d():
    gmm, sch, info = sx.load_problem("gmm2d")
    return gmm, sch, info


@pytest.mark.parametrize("end,afs", [("zero", False), ("zero", True), ("denoise", False)])
def test_decode_times_strictly_decreasing_with_exact_ends(gmm2d, end, afs):
    _, sch, _ = gmm2d
    sp = SearchSpace(sch, 6, end=end, afs=afs)

    @jax.jit
    def draw(key):
        pop = jax.vmap(sp.init)(jax.random.split(key, 256))
        pop["logits"] = pop["logits"].at[:64].multiply(20.0)  # extreme logits too (clipped by decode)
        return pop, jax.vmap(sp.decode)(pop)

    pop, scheds = draw(jax.random.PRNGKey(0))
    t = np.asarray(scheds.times)
    assert t.shape == (256, sp.n_nodes)
    assert np.all(np.diff(t, axis=1) < 0)
    assert np.all(t[:, 0] == np.float32(sch.t_max)) and np.all(t[:, -1] == np.float32(sch.t_min))
    for i in (0, 100, 200):
        s = take(scheds, i)
        check_schedule(s, sch, nfe=6)  # valid: orders within the history, codes in range
    assert sp.decode(take(pop, 0)).nfe == 6


def test_from_schedule_inverts_decode_for_the_times(gmm2d):
    _, sch, _ = gmm2d
    with jax.enable_x64(True):
        sp = SearchSpace(sch, 8)

        @jax.jit
        def round_trip(key):
            pop = jax.vmap(lambda k: sp.init(k, jnp.float64))(jax.random.split(key, 64))
            s = jax.vmap(sp.decode)(pop)
            g2 = jax.vmap(sp.from_schedule)(s)
            return pop, s, g2, jax.vmap(sp.decode)(g2)

        pop, s, g2, s2 = round_trip(jax.random.PRNGKey(1))
        np.testing.assert_allclose(np.asarray(s2.times), np.asarray(s.times), rtol=1e-12, atol=0)
        # logits are defined up to a constant
        d = np.asarray(g2["logits"]) - np.asarray(pop["logits"])
        np.testing.assert_allclose(d, np.broadcast_to(d.mean(axis=1, keepdims=True), d.shape), atol=1e-10)
        for f in ("order", "prediction", "derivative", "corrector"):
            assert np.array_equal(np.asarray(g2[f]), np.asarray(getattr(s, f)))


def test_constant_genotype_is_dpm_solver_pp_2m(gmm2d):
    gmm, sch, _ = gmm2d
    with jax.enable_x64(True):
        model = gmm.astype(jnp.float64).model(sch)
        sp = SearchSpace(sch, 7, searchable=("times",))
        g = sp.init(jax.random.PRNGKey(3), jnp.float64)  # random times, frozen DPM-Solver++(2M) decisions
        x_T = jnp.asarray(np.random.default_rng(0).standard_normal((64, 2)))
        solver = sx.get_solver("dpm_solver_pp", order=2, max_step_ratio=None, max_step=None)

        @jax.jit
        def both(g):
            sched = sp.decode(g)
            x_tab, _ = run_table(model, x_T, schedule_table(sched, sch, jnp.float64), diagnostics=False)
            return x_tab, sx.sample(solver, model, x_T, sched.grid(sch, jnp.float64))[0]

        x_tab, x_ref = both(g)
        np.testing.assert_allclose(np.asarray(x_tab), np.asarray(x_ref), rtol=0, atol=1e-12)
        assert float(jnp.max(jnp.abs(x_ref - x_T))) > 0.1  # a real solve


def test_scorer_batch_equals_per_candidate(gmm2d):
    gmm, sch, _ = gmm2d
    with jax.enable_x64(True):
        model = gmm.astype(jnp.float64).model(sch)
        sp = SearchSpace(sch, 5, afs=True)
        x_T = np.random.default_rng(1).standard_normal((32, 2))
        ref, mode = gmm_reference("gmm2d", x_T, n_steps=200)
        score = make_scorer(model, sch, sp, jnp.asarray(x_T), ref, reference_mode=mode, mode_fn=gmm_mode_fn(gmm))
        pop = jax.vmap(lambda k: sp.init(k, jnp.float64))(jax.random.split(jax.random.PRNGKey(2), 6))
        out = {k: np.asarray(v) for k, v in score(pop).items()}
        assert set(out) == {"score", "mean_l2", "max_l2", "mode_flip"}
        one = jax.jit(lambda g: run_table(model, jnp.asarray(x_T), schedule_table(sp.decode(g), sch, jnp.float64))[0])
        for i in range(6):
            x0 = one(take(pop, i))  # one candidate at a time (diagnostics on)
            err = np.linalg.norm(np.asarray(x0) - ref, axis=-1)
            flip = np.mean(np.asarray(jnp.argmax(gmm.component_log_posterior(x0, 0.0), -1)) != mode)
            np.testing.assert_allclose(out["mean_l2"][i], err.mean(), rtol=1e-10)
            np.testing.assert_allclose(out["max_l2"][i], err.max(), rtol=1e-10)
            np.testing.assert_allclose(out["mode_flip"][i], flip, rtol=0, atol=1e-12)
        assert np.array_equal(out["score"], out["mean_l2"])


def _toy(space, target_frac, target_order):
    """A cheap objective with a known minimum 0: logSNR fractions and orders to hit."""
    def score_fn(g):
        frac = jax.nn.softmax(jnp.clip(g["logits"], -LOGIT_BOUND, LOGIT_BOUND), axis=-1)
        s = jnp.sum((frac - target_frac) ** 2, -1) + 0.01 * jnp.sum(g["order"] != target_order, -1)
        return dict(score=s)
    return score_fn


def test_evolution_best_so_far_never_increases_and_converges(gmm2d):
    _, sch, _ = gmm2d
    sp = SearchSpace(sch, 6, searchable=("times", "order"))
    target = jnp.asarray([0.3, 0.25, 0.2, 0.15, 0.1])
    target_order = jnp.asarray([1, 2, 3, 3, 2, 1])
    fn = _toy(sp, target, target_order)
    strat = evolution(sp, fn, population=32, parents=8, mutation_rate=0.2)
    best = []
    state = run(strat, jax.random.PRNGKey(0), 40, callback=lambda i, s, r: best.append(float(s["best_score"])))
    best = np.asarray(best)
    assert np.all(np.diff(best) <= 0)
    assert best[-1] < 0.05 * best[0]
    g, sc = strat.best(state)
    assert float(fn(jax.tree.map(lambda a: a[None], g))["score"][0]) == pytest.approx(float(sc))
    assert int(strat.evaluations(state)) == 40 * 32
    # elitism: the population is sorted and its best is the best so far
    assert np.all(np.diff(np.asarray(state["scores"])) >= 0) and float(state["scores"][0]) == float(sc)
    # random search with the same budget does much worse on this objective
    rs = random_search(sp, fn, population=32)
    rstate = run(rs, jax.random.PRNGKey(0), 40)
    assert float(rs.best(rstate)[1]) > 2 * float(sc)


@pytest.fixture(scope="module")
def nfe5_search(gmm2d):
    """Space (NFE 5, sigma = 0 end, AFS), float32 scorer on 256 search start points
    (jax.random.normal, key 123: not the benchmark's start points)."""
    gmm, sch, _ = gmm2d
    sp = SearchSpace(sch, 5, end="zero", afs=True)
    x_search = np.asarray(jax.random.normal(jax.random.PRNGKey(123), (256, 2)), np.float64)
    ref, _ = gmm_reference("gmm2d", x_search, n_steps=500)
    return sp, x_search, make_scorer(gmm.model(sch), sch, sp, jnp.asarray(x_search, jnp.float32), ref)


def test_search_regression_beats_best_hand_designed_at_nfe5(gmm2d, nfe5_search):
    """A few-second evolutionary search at NFE 5 (float32, 256 search start points)
    beats the best hand-designed row on the held-out benchmark start points."""
    gmm, sch, info = gmm2d
    sp, x_search, score = nfe5_search
    strat = evolution(sp, score, population=64, parents=16, mutation_rate=0.2)
    state = run(strat, jax.random.PRNGKey(0), 30, jit=False)  # the scorer is the compiled part
    g, _ = strat.best(state)
    # held out: the benchmark start points (never seen by the search)
    x_bench = sx.problem_start_points(info)
    assert not np.any(np.isin(x_bench[:, 0], x_search[:, 0]))
    ref_b, mode_b = gmm_reference("gmm2d", x_bench, n_steps=500)
    held = make_scorer(gmm.model(sch), sch, sp, jnp.asarray(x_bench, jnp.float32), ref_b, reference_mode=mode_b,
                       mode_fn=gmm_mode_fn(gmm))(jax.tree.map(lambda a: a[None], g))
    assert float(held["mean_l2"][0]) < BEST_HAND_DESIGNED_NFE5
    check_schedule(jax.tree.map(np.asarray, sp.decode(g)), sch, nfe=5)


def test_s3_predictor_ranks_held_out_candidates(nfe5_search):
    """After 10 stages (640 evaluations) the predictor, retrained on its archive,
    ranks 256 fresh mutants of the elite (what S^3 ranks; never evaluated) by their
    real error with Spearman > 0.5 (chance: 0)."""
    sp, _, score = nfe5_search
    strat = s3(sp, score, population=32, candidates=256, top_k=64, train_steps=100, parents=8)
    state = run(strat, jax.random.PRNGKey(0), 10, jit=False)
    assert int(strat.evaluations(state)) == 10 * 64 and int(state["archive_count"]) == 640
    assert np.all(np.diff(np.asarray(state["scores"])) >= 0) and np.isfinite(float(state["scores"][0]))
    _, _, _, train, predict = make_predictor(sp.n_features)
    valid = jnp.arange(state["archive_features"].shape[0]) < state["archive_count"]
    params, _, _ = train(state["params"], state["opt_state"], jax.random.PRNGKey(5), state["archive_features"],
                         state["archive_log_score"], valid, 200, 256)
    held = offspring(sp, jax.random.PRNGKey(8), state["population"], 256, 0.2)
    real = np.log(np.asarray(score(held)["score"]))
    pred = np.asarray(predict(params, jax.vmap(sp.features)(held)))
    ok = np.isfinite(real)
    assert ok.sum() > 200
    assert spearman(pred[ok], real[ok]) > 0.5


def test_bad_input_names_the_field(gmm2d):
    _, sch, _ = gmm2d
    with pytest.raises(ValueError, match="SearchSpace.searchable"):
        SearchSpace(sch, 5, searchable=("times", "stepsize"))
    with pytest.raises(ValueError, match="SearchSpace.end"):
        SearchSpace(sch, 5, end="nowhere")
    with pytest.raises(ValueError, match="SearchSpace.max_order"):
        SearchSpace(sch, 5, max_order=4)
    sp = SearchSpace(sch, 5)
    with pytest.raises(ValueError, match="evolution.parents"):
        evolution(sp, lambda g: g, population=8, parents=16)
    with pytest.raises(ValueError, match="s3.top_k"):
        s3(sp, lambda g: g, candidates=16, top_k=32)
    with pytest.raises(ValueError, match="make_scorer.metric"):
        make_scorer(None, sch, sp, jnp.zeros((4, 2)), jnp.zeros((4, 2)), metric="fid")
    with pytest.raises(ValueError, match="from_schedule"):
        SearchSpace(sch, 6).from_schedule(constant_schedule(np.linspace(1.0, 0.01, 5)))
    assert stack([sp.default()] * 3)["order"].shape == (3, sp.n_steps)


def test_teacher_reference_is_close_to_the_exact_solution(gmm2d):
    gmm, sch, _ = gmm2d
    x_T = np.random.default_rng(3).standard_normal((64, 2))
    exact, _ = gmm_reference("gmm2d", x_T, n_steps=300)
    teacher = np.asarray(teacher_reference(gmm.model(sch), sch, jnp.asarray(x_T, jnp.float32), n_steps=200))
    err = np.linalg.norm(teacher - exact, axis=-1)
    assert err.mean() < 2e-3  # vs 0.05 for the best 5-evaluation solver
