"""A small bidirectional transformer denoiser for masked (absorbing-state) diffusion.

:class:`MaskedTransformer` maps a partly masked token sequence ``x`` (int32 (B, L),
ids 0..V-1 and the mask id V) and a time ``t`` (B,) to logits (B, L, V) over the V
*clean* tokens: the mask is never an output (Sahoo et al. 2024, "Simple and Effective
Masked Diffusion Language Models" (MDLM), Sec. 3.2.1 "zero masking probabilities").
Attention is full (non-causal): every position sees every other one.

Time conditioning (``time_conditioned=True``): a sinusoidal embedding of 1000 t
(Vaswani et al. 2017, as :func:`samplax.models.networks.sinusoidal_embedding`) goes
through an MLP and modulates each block's layer norms (adaptive layer norm: a shift,
a scale and a gate per sub-layer from a zero-initialised layer, as DiT's adaLN-Zero,
Peebles & Xie 2023, except that the gates start at 1, not 0, so a tiny network trains
from its first steps).  With ``time_conditioned=False`` the network never sees t.
For masked diffusion the optimal denoiser does not depend on t: the posterior of the clean
tokens given the revealed ones is the data's conditional whatever t produced the mask
(Ou et al. 2024, "Your Absorbing Discrete Diffusion Secretly Models the Conditional
Distributions of Clean Data", Thm. 1; MDLM Sec. 3.2.1), so the time-agnostic network
loses nothing and its output can be cached across steps with no new token.

The network returns logits; :func:`samplax.discrete.learned.learned_model` turns them
into a :class:`samplax.discrete.DiscreteModel` (log-softmax, then MDLM's "carry-over
unmasking" of revealed positions).
"""
from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from samplax.models.networks import sinusoidal_embedding


def _modulate(h, shift, scale):
    return h * (1.0 + scale[:, None, :]) + shift[:, None, :]


class _Block(nn.Module):
    width: int
    heads: int
    mlp_ratio: int

    @nn.compact
    def __call__(self, h, cond):
        if cond is None:
            shift1 = scale1 = shift2 = scale2 = jnp.zeros((h.shape[0], self.width), h.dtype)
            gate1 = gate2 = jnp.ones((h.shape[0], self.width), h.dtype)
        else:  # adaLN: zero-initialised modulation (shift 0, scale 0, gate 1 below)
            mod = nn.Dense(6 * self.width, kernel_init=nn.initializers.zeros, name="ada")(nn.silu(cond))
            shift1, scale1, gate1, shift2, scale2, gate2 = jnp.split(mod, 6, axis=-1)
            gate1, gate2 = gate1 + 1.0, gate2 + 1.0  # zero-init gates would stall the first steps of a tiny net
        a = _modulate(nn.LayerNorm(use_scale=cond is None, use_bias=cond is None, name="ln1")(h), shift1, scale1)
        a = nn.MultiHeadDotProductAttention(num_heads=self.heads, qkv_features=self.width, out_features=self.width,
                                            name="attn")(a, a)  # no mask: bidirectional
        h = h + gate1[:, None, :] * a
        m = _modulate(nn.LayerNorm(use_scale=cond is None, use_bias=cond is None, name="ln2")(h), shift2, scale2)
        m = nn.Dense(self.mlp_ratio * self.width, name="mlp_in")(m)
        m = nn.Dense(self.width, name="mlp_out")(nn.gelu(m))
        return h + gate2[:, None, :] * m


class MaskedTransformer(nn.Module):
    """Bidirectional transformer: (x int (B, L) in 0..V, t (B,)) -> logits (B, L, V).

    ``vocab_size`` V (the mask id is V; the input embedding has V + 1 rows), ``length``
    L (learned position embeddings), ``width`` (model dimension, divisible by
    ``heads``), ``depth`` (blocks), ``mlp_ratio``; ``time_conditioned``: adaLN from a
    sinusoidal embedding of t (module docstring), else t is ignored."""

    vocab_size: int
    length: int
    width: int = 64
    depth: int = 2
    heads: int = 4
    mlp_ratio: int = 4
    time_conditioned: bool = False

    def setup_check(self):
        for name in ("vocab_size", "length", "width", "depth", "heads", "mlp_ratio"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"MaskedTransformer: {name} must be an integer >= 1, got {v!r}")
        if self.width % self.heads:
            raise ValueError(f"MaskedTransformer: width ({self.width}) must be divisible by heads ({self.heads})")

    @nn.compact
    def __call__(self, x, t):
        self.setup_check()
        x = jnp.asarray(x)
        if x.ndim != 2 or x.shape[1] != self.length:
            raise ValueError(f"MaskedTransformer: x must be (B, {self.length}) tokens, got shape {x.shape}")
        b = x.shape[0]
        h = nn.Embed(self.vocab_size + 1, self.width, name="tokens")(x.astype(jnp.int32))
        pos = self.param("positions", nn.initializers.normal(0.02), (self.length, self.width))
        h = h + pos[None]
        cond = None
        if self.time_conditioned:
            s = 1000.0 * jnp.broadcast_to(jnp.asarray(t, jnp.float32), (b,))
            cond = sinusoidal_embedding(s, self.width)
            cond = nn.Dense(self.width, name="time_in")(cond)
            cond = nn.Dense(self.width, name="time_out")(nn.silu(cond))
        for i in range(self.depth):
            h = _Block(self.width, self.heads, self.mlp_ratio, name=f"block{i}")(h, cond)
        h = nn.LayerNorm(name="ln_out")(h)
        return nn.Dense(self.vocab_size, name="head")(h)


__all__ = ["MaskedTransformer"]
