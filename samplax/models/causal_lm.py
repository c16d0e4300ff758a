"""A small causal (decoder-only) Flax transformer language model with a KV cache.

:class:`CausalTransformer` maps tokens ``x`` int32 (B, L') (L' <= ``length``) to logits
(B, L', V) where row i scores x_i given x_<i: the input is shifted right by one with a
learned BOS embedding in front (row 0 sees only BOS and predicts x_0), plus learned
position embeddings, then pre-LN blocks of causal multi-head self-attention (position i
attends to positions <= i; Vaswani et al. 2017, "Attention Is All You Need", Sec. 3.2.3,
the masked decoder self-attention) and a GELU MLP, a final layer norm and a linear head.

Two paths through the same parameters:

* ``net.apply(params, x)``: the uncached pass over a whole prefix, one model call.
* ``net.apply(params, prev_token, pos, cache, method="decode")``: the cached single-token
  path.  At position ``pos`` it embeds x_{pos-1} (BOS at pos 0, ``prev_token`` ignored),
  writes this position's keys and values into the cache and attends over cache rows
  <= pos; it returns the logits of x_pos and the updated cache.  The cache is a dict of
  two arrays ``k``, ``v`` of shape (B, depth, length, heads, head_dim) -- batch first,
  so an SMC driver can resample it by indexing axis 0 -- made by :func:`init_cache`.

Both paths compute the same function (the attention of row i is the softmax over
j <= i either way; the masked-out rows of the cache are still zero and excluded by the
mask): tests/test_decoding_causal_lm.py checks logits to 1e-5 and identical tokens.

:func:`causal_language_model` wraps a network and its parameters into a
:class:`samplax.decoding.LanguageModel` (``logits_fn`` = log-softmax of the uncached
pass, ``init``/``step`` = the cached path).  Training: ``loss.objective = "causal"``
with ``model.network = "causal_transformer"`` (:func:`samplax.experiment.config.causal_train_config`,
configs/train_causal_chain.py), loaded back with
:func:`samplax.experiment.trainer.load_causal_lm`.
"""
from __future__ import annotations

from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

#: masked attention scores (finite: no -inf arithmetic, NaN-free gradients)
_MASKED = -1e30


def _check_int(owner: str, name: str, v) -> None:
    if not isinstance(v, int) or isinstance(v, bool) or v < 1:
        raise ValueError(f"{owner}: {name} must be an integer >= 1, got {v!r}")


class _CausalBlock(nn.Module):
    width: int
    heads: int
    mlp_ratio: int

    def setup(self):
        hd = self.width // self.heads
        self.ln1 = nn.LayerNorm()
        self.qkv = nn.DenseGeneral((3, self.heads, hd), name="qkv")
        self.out = nn.DenseGeneral(self.width, axis=(-2, -1), name="out")
        self.ln2 = nn.LayerNorm()
        self.mlp_in = nn.Dense(self.mlp_ratio * self.width)
        self.mlp_out = nn.Dense(self.width)

    def _mlp(self, h):
        return h + self.mlp_out(nn.gelu(self.mlp_in(self.ln2(h))))

    @staticmethod
    def _attend(q, k, v, mask):
        """q (B, Q, H, D), k/v (B, K, H, D), mask bool broadcastable to (B, H, Q, K)."""
        s = jnp.einsum("bqhd,bkhd->bhqk", q, k) / jnp.sqrt(jnp.asarray(q.shape[-1], q.dtype))
        s = jnp.where(mask, s, jnp.asarray(_MASKED, s.dtype))
        return jnp.einsum("bhqk,bkhd->bqhd", jax.nn.softmax(s, axis=-1), v)

    def __call__(self, h):
        """Uncached: h (B, L', W) -> (B, L', W), position i attends to j <= i."""
        qkv = self.qkv(self.ln1(h))
        q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
        n = h.shape[1]
        mask = jnp.tril(jnp.ones((n, n), bool))[None, None]
        return self._mlp(h + self.out(self._attend(q, k, v, mask)))

    def decode(self, h, pos, k_cache, v_cache):
        """Cached: h (B, 1, W) at position ``pos``; k/v_cache (B, length, H, D).  Returns
        (h', k_cache', v_cache') with this position's keys and values written."""
        qkv = self.qkv(self.ln1(h))
        q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
        k_cache = jax.lax.dynamic_update_slice_in_dim(k_cache, k.astype(k_cache.dtype), pos, axis=1)
        v_cache = jax.lax.dynamic_update_slice_in_dim(v_cache, v.astype(v_cache.dtype), pos, axis=1)
        mask = (jnp.arange(k_cache.shape[1]) <= pos)[None, None, None, :]
        return self._mlp(h + self.out(self._attend(q, k_cache, v_cache, mask))), k_cache, v_cache


class CausalTransformer(nn.Module):
    """Decoder-only transformer: x int (B, L') in 0..V-1 -> logits (B, L', V), row i = x_i | x_<i.

    ``vocab_size`` V (the BOS embedding is row V of the token table), ``length`` L (the
    maximum sequence length; learned position embeddings), ``width`` (divisible by
    ``heads``), ``depth`` blocks, ``mlp_ratio``."""

    vocab_size: int
    length: int
    width: int = 64
    depth: int = 2
    heads: int = 4
    mlp_ratio: int = 4

    def setup(self):
        for name in ("vocab_size", "length", "width", "depth", "heads", "mlp_ratio"):
            _check_int("CausalTransformer", name, getattr(self, name))
        if self.width % self.heads:
            raise ValueError(f"CausalTransformer: width ({self.width}) must be divisible by heads ({self.heads})")
        self.tokens = nn.Embed(self.vocab_size + 1, self.width)
        self.positions = self.param("positions", nn.initializers.normal(0.02), (self.length, self.width))
        self.blocks = [_CausalBlock(self.width, self.heads, self.mlp_ratio) for _ in range(self.depth)]
        self.ln_out = nn.LayerNorm()
        self.head = nn.Dense(self.vocab_size)

    @property
    def head_dim(self) -> int:
        return self.width // self.heads

    def __call__(self, x):
        x = jnp.asarray(x)
        if x.ndim != 2 or not 1 <= x.shape[1] <= self.length:
            raise ValueError(f"CausalTransformer: x must be (B, L') tokens with 1 <= L' <= {self.length}, got shape "
                             f"{x.shape}")
        b, n = x.shape
        bos = jnp.full((b, 1), self.vocab_size, jnp.int32)
        shifted = jnp.concatenate([bos, x[:, :-1].astype(jnp.int32)], axis=1)  # row i sees x_<i
        h = self.tokens(shifted) + self.positions[None, :n]
        for blk in self.blocks:
            h = blk(h)
        return self.head(self.ln_out(h))

    def decode(self, prev_token, pos, cache):
        """One cached step: logits (B, V) of x_pos given the cached x_<pos and ``prev_token``
        = x_{pos-1} (ignored at pos 0, where the input is BOS); returns (logits, cache)."""
        pos = jnp.asarray(pos, jnp.int32)
        prev = jnp.where(pos == 0, self.vocab_size, jnp.asarray(prev_token, jnp.int32))
        h = self.tokens(prev)[:, None, :] + jax.lax.dynamic_slice_in_dim(self.positions, pos, 1, axis=0)[None]
        ks, vs = [], []
        for i, blk in enumerate(self.blocks):
            h, k, v = blk.decode(h, pos, cache["k"][:, i], cache["v"][:, i])
            ks.append(k)
            vs.append(v)
        logits = self.head(self.ln_out(h))[:, 0]
        return logits, dict(k=jnp.stack(ks, axis=1), v=jnp.stack(vs, axis=1))


def init_cache(net: CausalTransformer, batch: int, dtype=jnp.float32) -> dict:
    """An empty KV cache: k, v zeros of shape (batch, depth, length, heads, head_dim)."""
    shape = (int(batch), net.depth, net.length, net.heads, net.width // net.heads)
    return dict(k=jnp.zeros(shape, dtype), v=jnp.zeros(shape, dtype))


def _param_dtype(params):
    leaves = jax.tree.leaves(params)
    return leaves[0].dtype if leaves else jnp.float32


def causal_language_model(net: CausalTransformer, params, name: str = "causal_transformer",
                          eos_id: Optional[int] = None):
    """The :class:`samplax.decoding.LanguageModel` of a causal network and its parameters:
    ``logits_fn(x)`` = log-softmax of the uncached pass (one model call), ``init(batch)`` =
    an empty cache (:func:`init_cache`, in the parameters' dtype), ``step(state, prev,
    pos)`` = log-softmax of the cached step (one model call).  ``vocab_size`` and
    ``length`` are the network's."""
    from samplax.decoding.base import LanguageModel  # decoding sits above models: imported when wrapping

    if not isinstance(net, CausalTransformer):
        raise ValueError(f"causal_language_model: net must be a CausalTransformer, got {type(net).__name__}")
    dtype = _param_dtype(params)

    def logits_fn(x):
        return jax.nn.log_softmax(net.apply(params, x), axis=-1)

    def init(batch):
        return init_cache(net, batch, dtype)

    def step(state, prev_token, pos):
        logits, state = net.apply(params, prev_token, pos, state, method=CausalTransformer.decode)
        return jax.nn.log_softmax(logits, axis=-1), state

    return LanguageModel(logits_fn=logits_fn, init=init, step=step, vocab_size=int(net.vocab_size),
                         length=int(net.length), name=name, eos_id=eos_id)


__all__ = ["CausalTransformer", "init_cache", "causal_language_model"]
