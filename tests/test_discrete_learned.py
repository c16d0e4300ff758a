"""The learned masked-diffusion model: the bidirectional transformer, the MDLM loss against the
exact denoiser, training through the existing trainer and loading back as a DiscreteModel,
and dParallel's threshold decoding and certainty-forcing loss."""
import itertools
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from samplax.discrete import (chi_square_test, decode, enumerate_log_probs, exact_model, markov_chain,
                              mask_schedule)
from samplax.discrete.base import LOG_ZERO
from samplax.discrete.dparallel import certainty_forcing_loss, dparallel, threshold_select
from samplax.discrete.learned import learned_model
from samplax.experiment.config import ConfigError, discrete_train_config, validate_train
from samplax.models.transformer import MaskedTransformer
from samplax.training.discrete_losses import (forward_mask, masked_diffusion_loss, masked_nelbo_enumerated,
                                              sample_mask_times)

V, L = 3, 4


def tiny_chain():
    """A correlated 3-token Markov chain of length 4 (81 sequences)."""
    init = np.array([0.5, 0.3, 0.2])
    trans = np.array([[0.8, 0.15, 0.05], [0.1, 0.2, 0.7], [0.3, 0.6, 0.1]])
    return markov_chain(init, trans, L, "tiny")


def all_seqs(v, length):
    return np.array(list(itertools.product(range(v), repeat=length)), np.int32)


# ---------------------------------------------------------------------------------------
# The transformer
# ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def net_params():
    net = MaskedTransformer(vocab_size=V, length=L, width=16, depth=1, heads=2, time_conditioned=True)
    x = jnp.full((1, L), V, jnp.int32)
    params = jax.jit(net.init)(jax.random.PRNGKey(0), x, jnp.zeros(1))
    # the adaLN layers start at zero (t ignored): give them weights so that t matters
    params = jax.tree_util.tree_map_with_path(
        lambda p, a: 0.3 * np.random.default_rng(len(str(p))).normal(size=a.shape) if "ada" in str(p) else a,
        params)
    return net, params


def test_transformer_is_bidirectional_batch_independent_and_clean_only(net_params):
    net, params = net_params
    apply = jax.jit(net.apply)
    x = jnp.array([[0, V, 2, V], [V, 1, V, V]], jnp.int32)
    t = jnp.array([0.5, 0.75])
    out = apply(params, x, t)
    assert out.shape == (2, L, V)  # logits over the V clean tokens: the mask is never an output
    for i, j in itertools.product(range(L), range(L)):  # every position reads every other one (non-causal)
        if i != j:
            x2 = x.at[0, j].set((x[0, j] + 1) % (V + 1))
            assert float(jnp.max(jnp.abs(apply(params, x2, t)[0, i] - out[0, i]))) > 1e-6, (i, j)
    # a sample's output does not depend on the rest of the batch
    np.testing.assert_allclose(apply(params, x[::-1], t[::-1])[0], out[1], rtol=1e-5, atol=1e-6)
    # time-conditioned: t matters; time-agnostic: it does not
    assert float(jnp.max(jnp.abs(apply(params, x, t + 0.2) - out))) > 1e-4
    agn = MaskedTransformer(vocab_size=V, length=L, width=16, depth=1, heads=2)
    pa = jax.jit(agn.init)(jax.random.PRNGKey(1), x, t)
    apply_agn = jax.jit(agn.apply)
    np.testing.assert_array_equal(apply_agn(pa, x, t), apply_agn(pa, x, 1.0 - t))


def test_learned_model_carries_revealed_tokens_and_normalises(net_params):
    net, params = net_params
    model = learned_model(net, params, V, L, time_agnostic=False)
    x = jnp.array([[0, V, 2, V], [V, 1, V, 0]], jnp.int32)
    logp = jax.jit(model.fn)(x, jnp.array([0.5, 0.5]))
    revealed = np.asarray(x != V)
    lp = np.asarray(logp)
    for b, i in zip(*np.nonzero(revealed)):
        expect = np.full(V, LOG_ZERO, np.float32)
        expect[int(x[b, i])] = 0.0
        np.testing.assert_array_equal(lp[b, i], expect)
    np.testing.assert_allclose(jax.scipy.special.logsumexp(logp, -1)[~revealed], 0.0, atol=1e-6)
    assert np.all(np.isfinite(lp)) and not model.time_agnostic and model.mask_id == V


# ---------------------------------------------------------------------------------------
# The loss against the exact denoiser
# ---------------------------------------------------------------------------------------
def test_enumerated_nelbo_of_exact_denoiser_is_minus_log_likelihood():
    """The schedule-free NELBO (sum over masks of B(|M|, L-|M|+1) x masked CE) equals -log p(x)
    exactly for the exact conditionals (any-order chain rule), for every x."""
    with jax.enable_x64(True):
        hmm = tiny_chain()
        xs = all_seqs(V, L)
        nelbo = masked_nelbo_enumerated(exact_model(hmm), xs, V)
        np.testing.assert_allclose(nelbo, -np.asarray(enumerate_log_probs(hmm)), rtol=1e-12)


def test_exact_denoiser_minimises_the_expected_loss():
    """E_x NELBO(x) = H(p) for the exact model; tempering or mixing its conditionals raises it."""
    with jax.enable_x64(True):
        hmm = tiny_chain()
        m = exact_model(hmm)
        xs = all_seqs(V, L)
        p = np.exp(np.asarray(enumerate_log_probs(hmm)))
        entropy = float(-(p * np.log(p)).sum())

        def expected(fn):
            return float((p * masked_nelbo_enumerated(fn, xs, V)).sum())

        assert abs(expected(m) - entropy) < 1e-10
        for beta in (0.8, 1.25):
            tempered = lambda z, t, b=beta: jax.nn.log_softmax(b * m(z, t), -1)
            assert expected(tempered) > entropy + 1e-3
        mixed = lambda z, t: jnp.log(0.9 * jnp.exp(m(z, t)) + 0.1 / V)
        assert expected(mixed) > entropy + 1e-3


def test_monte_carlo_loss_is_the_weighted_masked_cross_entropy():
    """Per sequence: -alpha'/(1 - alpha) x sum of -log p over the masked positions, with the
    mask drawn at rate 1 - alpha(t) (binomial check at 4.5 sigma; a wrong rate fails it)."""
    with jax.enable_x64(True):
        hmm = tiny_chain()
        m = exact_model(hmm)
        x0 = jnp.asarray(all_seqs(V, L))
        key = jax.random.PRNGKey(3)
        for name in ("linear", "cosine"):
            s = mask_schedule(name)

            @jax.jit
            def both(key):
                loss, aux = masked_diffusion_loss(m, x0, key, s, V)
                t = sample_mask_times(jax.random.fold_in(key, 0), x0.shape[0])
                z, masked = forward_mask(jax.random.fold_in(key, 1), x0, t, s, V)
                ll = jnp.take_along_axis(m(z, t), x0[..., None], -1)[..., 0]
                w = -jax.vmap(jax.grad(s.alpha))(t) / (1 - s.alpha(t))
                return loss, aux, t, masked, ll, w
            loss, aux, t, masked, ll, w = both(key)
            if name == "linear":
                np.testing.assert_allclose(w, 1.0 / t, rtol=1e-12)
            np.testing.assert_allclose(aux["per_example"], w * jnp.sum(jnp.where(masked, -ll, 0), -1), rtol=1e-12)
            np.testing.assert_allclose(loss, jnp.mean(aux["per_example"]) / L, rtol=1e-12)
        # the masking rate at fixed t
        s = mask_schedule("cosine")
        n = 200_000
        for t0, wrong in ((0.3, False), (0.3, True)):
            sched = s if not wrong else mask_schedule("linear")
            _, masked = jax.jit(lambda k: forward_mask(k, jnp.zeros((n, 1), jnp.int32), jnp.full((n,), t0), sched,
                                                       V))(jax.random.PRNGKey(5))
            q = 1 - float(s.alpha(t0))
            z = (float(jnp.mean(masked)) - q) / np.sqrt(q * (1 - q) / n)
            assert (abs(z) < 4.5) != wrong, z


# ---------------------------------------------------------------------------------------
# Training through the trainer, loading back
# ---------------------------------------------------------------------------------------
def test_discrete_train_config_validates_and_refuses_mismatches():
    c = discrete_train_config()
    v = validate_train(c)
    assert v["loss"]["objective"] == "masked" and v["model"]["network"] == "transformer"
    from configs import train_discrete_chain, train_discrete_digits

    for mod in (train_discrete_chain, train_discrete_digits):
        validate_train(mod.get_config())
    bad = [("model.network", "mlp", "config.model.network"), ("schedule.name", "vp_cosine", "config.schedule.name"),
           ("data.name", "gmm2d", "config.data.name"), ("model.transformer.heads", 3, "config.model.transformer.heads"),
           ("model.class_conditional", True, "config.model.class_conditional")]
    for dotted, value, path in bad:
        c = discrete_train_config()
        sec, leaf = dotted.rsplit(".", 1)
        node = c
        for p in sec.split("."):
            node = node[p]
        node[leaf] = value
        with pytest.raises(ConfigError, match=path.replace(".", r"\.")):
            validate_train(c)
    c = discrete_train_config()
    c.loss.objective = "noise"
    with pytest.raises(ConfigError, match=r"config\.model\.network"):
        validate_train(c)


def test_twenty_steps_train_lower_the_loss_resume_and_load_back(tmp_path):
    from samplax.experiment.trainer import (EVAL_SEED_OFFSET, discrete_model, init_params, load_discrete_model,
                                            run_train, setup)

    c = discrete_train_config()
    c.model.transformer.width, c.model.transformer.depth, c.model.transformer.heads = 32, 1, 2
    c.model.transformer.time_conditioned = True
    c.optim.learning_rate, c.optim.warmup_steps = 3e-3, 0
    c.train.update(num_steps=20, batch_size=64, log_every=10, checkpoint_every=10)
    wd = str(tmp_path / "run")
    run_train(c, wd)
    s = setup(c)
    model = load_discrete_model(wd)  # the EMA parameters of the last checkpoint
    assert (model.vocab_size, model.length, model.time_agnostic) == (4, 8, False)
    sched = mask_schedule("linear")
    # the loaded model reproduces the eval loss the trainer logged from its in-memory EMA state
    eval_x = s.dataset.batch(c.train.data_seed + EVAL_SEED_OFFSET, 0, c.train.batch_size)[0]
    key = jax.random.PRNGKey(EVAL_SEED_OFFSET)
    ev = float(jax.jit(lambda k: masked_diffusion_loss(model, eval_x, k, sched, 4)[0])(key))
    logged = json.loads(open(os.path.join(wd, "train_log.jsonl")).read().splitlines()[-1])["eval_loss_ema"]
    assert abs(ev - logged) < 1e-5 * max(1.0, abs(logged))
    # same masks, same data: the 20 steps lowered the loss of the step-0 parameters
    p0 = init_params(s.cfg, s.net, s.dataset)
    fn = lambda p, z, t: jax.nn.log_softmax(s.net.apply(p, z, t), -1)
    loss0 = float(jax.jit(lambda p, k: masked_diffusion_loss(lambda z, t: fn(p, z, t), eval_x, k, sched, 4)[0])(
        p0, key))
    assert ev < loss0 - 0.02, (ev, loss0)
    # resuming from step 10 (the step-20 checkpoint removed) ends with the same parameters, bitwise
    import shutil

    wd2 = str(tmp_path / "resumed")
    shutil.copytree(wd, wd2)
    shutil.rmtree(os.path.join(wd2, "checkpoints", "20"))
    assert run_train(c, wd2)["resumed_from"] == 10
    from samplax.experiment.trainer import load_trained

    a, b = load_trained(wd, which="params").params, load_trained(wd2, which="params").params
    jax.tree.map(lambda u, v: np.testing.assert_array_equal(np.asarray(u), np.asarray(v)), a, b)
    # a time-agnostic transformer is flagged so
    assert discrete_model(setup(discrete_train_config()), None).time_agnostic  # (only wraps the parameters)


# ---------------------------------------------------------------------------------------
# dParallel
# ---------------------------------------------------------------------------------------
def test_threshold_rule_unmasks_exactly_the_positions_below_it():
    rng = np.random.default_rng(0)
    ent = jnp.asarray(rng.uniform(0, 1, (500, 6)))
    masked = jnp.asarray(rng.uniform(size=(500, 6)) < 0.6)
    pick = np.asarray(threshold_select(ent, masked, 0.3))
    e, m = np.asarray(ent), np.asarray(masked)
    for b in range(500):
        below = m[b] & (e[b] < 0.3)
        if below.any():
            np.testing.assert_array_equal(pick[b], below)
        elif m[b].any():
            expect = np.zeros(6, bool)
            expect[np.argmin(np.where(m[b], e[b], np.inf))] = True
            np.testing.assert_array_equal(pick[b], expect)
        else:
            assert not pick[b].any()


def test_dparallel_steps_on_a_model_of_known_entropies():
    """Position i has a fixed conditional of entropy e_i: the first step unmasks every
    position with e_i < threshold at once, then one (the least uncertain) per step; a prompt
    is carried over."""
    from samplax.discrete.base import DiscreteModel

    conf = jnp.array([0.99, 0.5, 0.97, 0.4, 0.6])  # p(token 0) per position, the rest uniform on 2 others
    logp_pos = jnp.log(jnp.stack([conf, (1 - conf) / 2, (1 - conf) / 2], -1))
    ent = -(jnp.exp(logp_pos) * logp_pos).sum(-1)
    fn = lambda x, t: jnp.broadcast_to(logp_pos, x.shape + (3,))
    model = DiscreteModel(fn=fn, vocab_size=3, length=5, time_agnostic=True)
    thr = float(jnp.sort(ent)[2] + 1e-3)  # 3 positions below, 2 above -> 1 + 2 steps
    run = jax.jit(lambda k, x: decode(dparallel(threshold=thr), model, k, x=x))
    x, info = run(jax.random.PRNGKey(0), jnp.full((8, 5), 3, jnp.int32))
    assert np.all(np.asarray(info.nfe) == 3) and np.all(np.asarray(info.steps) == 3)
    assert np.all(np.asarray(x) < 3)
    start = jnp.array([[3, 1, 3, 3, 2]] * 8, jnp.int32)  # positions 1 and 4 given
    x, info = run(jax.random.PRNGKey(1), start)
    assert np.all(np.asarray(x)[:, [1, 4]] == [1, 2])
    below = int(jnp.sum(ent[jnp.array([0, 2, 3])] < thr))
    assert np.all(np.asarray(info.nfe) == (1 if below else 0) + (3 - below))
    with pytest.raises(ValueError, match="threshold"):
        dparallel(threshold=-1.0)


def test_dparallel_one_token_per_step_is_exact_and_full_parallel_is_not():
    """threshold 0: one token per step, each from its exact conditional in an order chosen from
    the revealed tokens -> exact samples (chi-square at 1e-3); threshold 10 nats: all tokens at
    once from the marginals -> the chi-square test rejects it (the mutation check)."""
    hmm = tiny_chain()
    logp = enumerate_log_probs(hmm)
    m = exact_model(hmm)
    n = 6000
    x, info = jax.jit(lambda k: decode(dparallel(threshold=0.0), m, k, n))(jax.random.PRNGKey(11))
    assert np.all(np.asarray(info.nfe) == L)
    assert chi_square_test(np.asarray(x), logp, V).p_value > 1e-3
    x, info = jax.jit(lambda k: decode(dparallel(threshold=10.0), m, k, n))(jax.random.PRNGKey(12))
    assert np.all(np.asarray(info.nfe) == 1)
    assert chi_square_test(np.asarray(x), logp, V).p_value < 1e-6


def test_certainty_forcing_loss_terms():
    """Consistency = mean masked CE; certainty = mean tempered entropy over the masked positions
    whose argmax is the target; the complementary view masks the other positions."""
    logits = jnp.array([[[2.0, 0.0, -1.0], [0.0, 1.0, 0.5], [0.3, 0.2, 0.1], [-1.0, 2.0, 0.0]]])
    apply = lambda params, z, t: logits
    y = jnp.array([[0, 2, 0, 1]])
    key = jax.random.PRNGKey(0)
    masked = np.asarray(jax.random.uniform(key, y.shape) < 0.5)[0]
    loss, aux = jax.jit(lambda k: certainty_forcing_loss(apply, None, y, k, 3, temperature=0.5,
                                                         entropy_weight=2.0))(key)
    lp = np.asarray(jax.nn.log_softmax(logits[0], -1))
    lpt = np.asarray(jax.nn.log_softmax(logits[0] / 0.5, -1))
    ent = -(np.exp(lpt) * lpt).sum(-1)
    correct = np.argmax(lp, -1) == np.asarray(y[0])
    total = 0.0
    for m in (masked, ~masked):
        ce = -lp[np.arange(4), np.asarray(y[0])][m].mean() if m.any() else 0.0
        c = m & correct
        total += ce + 2.0 * (ent[c].mean() if c.any() else 0.0)
    np.testing.assert_allclose(float(loss), total, rtol=1e-5)


def test_token_data_sets():
    from samplax.data import TOKEN_DATASETS, digits_tokens, load_digits_dataset, make_dataset, tokens_to_digits

    images = load_digits_dataset("all").images
    tok = digits_tokens(images)
    assert tok.shape == (1797, 64) and tok.dtype == np.int32 and tok.min() == 0 and tok.max() == 16
    np.testing.assert_array_equal(tokens_to_digits(tok), images)  # exactly the images' p / 8 - 1
    assert {"digits_tokens", "markov4x8_tokens", "hmm8x5_tokens"} <= set(TOKEN_DATASETS)
    for name in ("digits_tokens", "markov4x8_tokens"):
        ds = make_dataset(name)
        x, _ = ds.batch(0, 3, 16)
        assert x.dtype == np.int32 and x.shape == (16,) + ds.shape and ds.vocab_size > 0
        assert 0 <= int(x.min()) and int(x.max()) < ds.vocab_size
        np.testing.assert_array_equal(np.asarray(ds.batch(0, 3, 16)[0]), np.asarray(x))
