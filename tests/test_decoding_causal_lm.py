"""The causal Flax transformer LM (samplax.models.causal_lm): the cached (KV) and uncached paths
compute the same conditionals and draw the same tokens, the cache is batch-first (resampling its
rows resamples the sequences), the network is causal, the next-token loss is -log q(x) / L
exactly, and the causal training config / loader wiring."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from samplax.decoding import sample, sample_keys, table_lm
from samplax.decoding.exact import all_sequences, sequence_index
from samplax.experiment.config import ConfigError, causal_train_config, validate_train
from samplax.models.causal_lm import CausalTransformer, causal_language_model, init_cache
from samplax.training.discrete_losses import causal_lm_loss

V, L = 4, 6


@pytest.fixture(scope="module")
def net_lm():
    net = CausalTransformer(vocab_size=V, length=L, width=16, depth=2, heads=2, mlp_ratio=2)
    params = jax.jit(net.init)(jax.random.PRNGKey(0), jnp.zeros((1, L), jnp.int32))
    return net, params, causal_language_model(net, params, name="fresh")


def test_cached_and_uncached_paths_agree_to_1e5_and_draw_identical_tokens(net_lm):
    net, params, lm = net_lm
    x = jax.random.randint(jax.random.PRNGKey(1), (5, L), 0, V)

    @jax.jit
    def run(x, keys):
        def body(state, pos):
            lp, state = lm.step(state, x[:, jnp.maximum(pos - 1, 0)], pos)
            return state, lp
        rows = jnp.swapaxes(jax.lax.scan(body, lm.init(x.shape[0]), jnp.arange(L))[1], 0, 1)
        return lm.logits_fn(x), rows, sample(lm, keys, cached=True), sample(lm, keys, cached=False)

    full, rows, (a, ia), (b, ib) = run(x, sample_keys(jax.random.PRNGKey(2), 2000))
    np.testing.assert_allclose(np.asarray(rows), np.asarray(full), atol=1e-5)
    np.testing.assert_allclose(np.exp(np.asarray(full)).sum(-1), 1.0, atol=1e-5)
    assert np.array_equal(np.asarray(a), np.asarray(b))
    np.testing.assert_allclose(np.asarray(ia.log_p), np.asarray(ib.log_p), atol=1e-4)
    assert len(np.unique(sequence_index(np.asarray(a), V))) > 100  # not a degenerate sampler


def test_causal_and_batch_first_cache(net_lm):
    net, params, lm = net_lm
    x = jax.random.randint(jax.random.PRNGKey(3), (4, L), 0, V)
    y = x.at[:, 3:].set((x[:, 3:] + 1) % V)  # change the tokens from position 3 on
    perm = jnp.array([2, 2, 0, 3])

    @jax.jit
    def run(x, y):
        st = lm.init(4)
        for pos in range(3):
            _, st = lm.step(st, x[:, max(pos - 1, 0)], pos)
        # the KV cache is batch-first: resampling its rows resamples the sequences
        lp_perm, _ = lm.step(jax.tree.map(lambda a: a[perm], st), x[perm, 2], 3)
        return lm.logits_fn(x), lm.logits_fn(y), lp_perm, st

    fx, fy, lp_perm, st = (jax.tree.map(np.asarray, r) for r in run(x, y))
    np.testing.assert_allclose(fx[:, :4], fy[:, :4], atol=1e-6)  # rows <= 3 read x_<=2 only
    assert np.abs(fx[:, 4:] - fy[:, 4:]).max() > 1e-3
    assert all(a.shape == (4, 2, L, 2, 8) for a in jax.tree.leaves(st))  # (B, depth, L, heads, head_dim)
    np.testing.assert_allclose(lp_perm, fx[np.asarray(perm), 3], atol=1e-5)
    cache = init_cache(net, 3)
    with pytest.raises(ValueError, match="L'"):
        net.apply(params, jnp.zeros((2, L + 1), jnp.int32))
    assert cache["k"].shape == (3, 2, L, 2, 8)


def test_next_token_loss_is_the_exact_negative_log_likelihood():
    rng = np.random.default_rng(0)
    v, n = 3, 4
    with jax.enable_x64(True):
        logits = rng.normal(size=v ** n) * 2.0
        lm = table_lm(logits, v, n)
        joint = logits - np.log(np.exp(logits).sum())
        x = all_sequences(v, n)[rng.choice(v ** n, 50)]
        loss, aux = jax.jit(lambda x: causal_lm_loss(lm.logits_fn, x))(jnp.asarray(x))
        np.testing.assert_allclose(np.asarray(aux["per_example"]), -joint[sequence_index(x, v)], atol=1e-10)
        assert abs(float(loss) - float(np.mean(-joint[sequence_index(x, v)])) / n) < 1e-10


def test_causal_train_config_validates_and_builds_the_lm_wiring():
    from configs import train_causal_chain
    from samplax.experiment.trainer import build_loss, init_params, setup

    v = validate_train(train_causal_chain.get_config())
    assert (v["loss"]["objective"], v["model"]["network"], v["data"]["name"]) == \
        ("causal", "causal_transformer", "markov4x8_lm")
    bad = [("model.network", "transformer", "config.model.network"), ("schedule.name", "linear", "config.schedule"),
           ("data.name", "gmm2d", "config.data.name"), ("model.transformer.heads", 3, "config.model.transformer.heads")]
    for dotted, value, path in bad:
        c = causal_train_config()
        sec, leaf = dotted.rsplit(".", 1)
        node = c
        for p in sec.split("."):
            node = node[p]
        node[leaf] = value
        with pytest.raises(ConfigError, match=path.replace(".", r"\.")):
            validate_train(c)
    c = causal_train_config()
    c.model.transformer.update(width=8, depth=1, heads=2, mlp_ratio=1)
    s = setup(c)
    assert s.schedule is None and isinstance(s.net, CausalTransformer) and s.dataset.vocab_size == 4
    params = init_params(s.cfg, s.net, s.dataset)
    x = s.dataset.batch(0, 0, 16)[0]  # exact samples of the markov4x8 LM
    assert x.shape == (16, 8) and x.dtype == jnp.int32 and int(x.max()) < 4
    lm = causal_language_model(s.net, params)
    loss_fn = build_loss(s.cfg, s.net, None, s.dataset)
    (loss, aux), ll = jax.jit(lambda p, x: (loss_fn(p, (x, None), jax.random.PRNGKey(0)), jnp.take_along_axis(
        lm.logits_fn(x), x[..., None], -1)[..., 0].sum(-1)))(params, x)
    np.testing.assert_allclose(np.asarray(aux["per_example"]), -np.asarray(ll), rtol=1e-6)
    assert abs(float(loss) - float(-ll.mean()) / 8) < 1e-5


def test_load_causal_lm_restores_a_checkpoint_as_the_same_language_model(tmp_path):
    """The loader on a freshly initialised model: a workdir holding its config and a checkpoint
    (written as run_train writes them) loads back as the LanguageModel of those parameters."""
    from samplax.experiment import results as store
    from samplax.experiment.checkpoints import Checkpoints
    from samplax.experiment.trainer import (CHECKPOINT_DIR, init_params, load_trained_causal, setup,
                                            train_identity)
    from samplax.training.train import init_train_state

    c = causal_train_config()
    c.model.transformer.update(width=8, depth=1, heads=2, mlp_ratio=1)
    s = setup(c)
    params = init_params(s.cfg, s.net, s.dataset)
    state = init_train_state(params, s.optimizer)
    state = state.replace(ema_params=jax.tree.map(lambda a: a + 0.1, params))  # tell EMA from raw parameters
    wd = tmp_path / "run"
    wd.mkdir()
    store.save_config(str(wd), "train", s.cfg, train_identity(s.cfg))
    with Checkpoints(wd / CHECKPOINT_DIR, s.identity, train_identity(s.cfg)) as ck:
        ck.save(7, state)
    lm, info = load_trained_causal(str(wd))
    assert (info["lm"], info["step"], lm.vocab_size, lm.length, lm.name) == ("markov4x8", 7, 4, 8,
                                                                                "causal:markov4x8_lm")
    x = jnp.asarray(all_sequences(4, 8)[::997])
    want = causal_language_model(s.net, state.ema_params).logits_fn
    raw = causal_language_model(s.net, params).logits_fn
    got = jax.jit(lambda x: (lm.logits_fn(x), want(x), raw(x)))(x)
    np.testing.assert_allclose(np.asarray(got[0]), np.asarray(got[1]), atol=1e-6)  # the EMA parameters
    assert np.abs(np.asarray(got[0]) - np.asarray(got[2])).max() > 1e-3
