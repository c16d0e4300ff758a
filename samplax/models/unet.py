"""A small U-Net for images (NHWC), in the style of DDPM's (Ho et al. 2020) network.

Layout, for ``channels = (c_0, ..., c_{L-1})``:

* a 3x3 input convolution to c_0 channels;
* down path: at level i, ``num_res_blocks`` residual blocks of width c_i, then
  (except at the last level) a stride-2 3x3 convolution halving H and W;
* middle, at the lowest resolution: residual block, self-attention over the
  H*W positions (if ``attention``), residual block;
* up path: at level i (from L-1 down to 0), ``num_res_blocks + 1`` residual
  blocks of width c_i, each taking the concatenation of the running features
  and one stored skip activation of the down path, then (except at level 0)
  nearest-neighbour upsampling by 2 followed by a 3x3 convolution;
* GroupNorm -> silu -> 3x3 output convolution, zero-initialised, back to the
  input's channel count.

Residual block: GroupNorm -> silu -> conv3x3 -> + Dense(silu(emb)) -> GroupNorm
-> silu -> conv3x3 (zero-initialised) -> + skip (a 1x1 convolution when the
width changes).  Because the last convolution of every block and the output
convolution start at zero, the network's output is exactly 0 at initialisation
and each block starts as the identity (or its 1x1 projection).

The conditioning scalar ``s`` (per example; the time scaled to [0, 1000], the
log-SNR, or EDM's scaled c_noise: see :func:`samplax.models.networks.network_apply`)
is embedded exactly as in :class:`~samplax.models.networks.MLPScoreNet`:
a sinusoidal embedding followed by a two-layer MLP.  With ``num_classes > 0`` a
learned label embedding of ``num_classes + 1`` entries is added to it; index
``num_classes`` is the *null* label ("unconditional", used for
classifier-free guidance), which is also what ``y=None`` means.
"""
from __future__ import annotations

from typing import Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from samplax.models.networks import label_embedding, sinusoidal_embedding

_zeros = nn.initializers.zeros


class ResBlock(nn.Module):
    """Residual block of width ``features`` with an additive embedding projection."""

    features: int
    groups: int

    @nn.compact
    def __call__(self, x, emb):
        h = nn.silu(nn.GroupNorm(num_groups=self.groups)(x))
        h = nn.Conv(self.features, (3, 3))(h)
        h = h + nn.Dense(self.features)(nn.silu(emb))[:, None, None, :]
        h = nn.silu(nn.GroupNorm(num_groups=self.groups)(h))
        h = nn.Conv(self.features, (3, 3), kernel_init=_zeros)(h)
        skip = x if x.shape[-1] == self.features else nn.Conv(self.features, (1, 1))(x)
        return skip + h


class AttentionBlock(nn.Module):
    """GroupNorm -> multi-head self-attention over all H*W positions -> + x.
    The output projection is zero-initialised (the block starts as the identity)."""

    groups: int
    num_heads: int = 1

    @nn.compact
    def __call__(self, x):
        b, h, w, c = x.shape
        z = nn.GroupNorm(num_groups=self.groups)(x).reshape(b, h * w, c)
        z = nn.MultiHeadDotProductAttention(num_heads=self.num_heads, out_kernel_init=_zeros)(z, z)
        return x + z.reshape(b, h, w, c)


class UNet(nn.Module):
    """A small U-Net predictor out(x, s[, y]) for images x (B, H, W, C).

    * ``channels``: width of each resolution level; H and W must be divisible by
      2^(len(channels) - 1).
    * ``num_res_blocks``: residual blocks per level on the down path (one more on the up path).
    * ``attention``: one self-attention block (``num_heads`` heads) in the middle, at the
      lowest resolution.
    * ``embed_dim``: width of the conditioning embedding (even).
    * ``groups``: GroupNorm groups; must divide every entry of ``channels``.
    * ``num_classes``: 0 for an unconditional network; otherwise labels y in
      0..num_classes-1, and ``num_classes`` is the null label (= ``y=None``).
    """

    channels: Sequence[int] = (32, 64)
    num_res_blocks: int = 2
    attention: bool = True
    embed_dim: int = 128
    groups: int = 8
    num_classes: int = 0
    max_period: float = 10_000.0
    num_heads: int = 1

    def _check(self, x):
        if len(self.channels) < 1:
            raise ValueError("UNet: channels must name at least one level")
        if self.groups < 1 or any(c % self.groups for c in self.channels):
            raise ValueError(f"UNet: groups={self.groups} must divide every entry of channels={tuple(self.channels)}")
        if self.attention and self.channels[-1] % self.num_heads:
            raise ValueError(f"UNet: num_heads={self.num_heads} must divide channels[-1]={self.channels[-1]}")
        if x.ndim != 4:
            raise ValueError(f"UNet: x must be (B, H, W, C), got shape {x.shape}")
        f = 2 ** (len(self.channels) - 1)
        if x.shape[1] % f or x.shape[2] % f:
            raise ValueError(f"UNet: H and W must be divisible by 2^(levels-1) = {f}, got {x.shape[1:3]}")

    @nn.compact
    def __call__(self, x, s, y: Optional[jax.Array] = None):
        self._check(x)
        emb = sinusoidal_embedding(s, self.embed_dim, self.max_period)
        emb = nn.Dense(self.embed_dim)(nn.silu(nn.Dense(self.embed_dim)(emb)))
        emb = emb + label_embedding(self.num_classes, self.embed_dim, y, x.shape[0], "UNet")
        levels = len(self.channels)

        h = nn.Conv(self.channels[0], (3, 3))(x)
        skips = [h]
        for i, ch in enumerate(self.channels):
            for _ in range(self.num_res_blocks):
                h = ResBlock(ch, self.groups)(h, emb)
                skips.append(h)
            if i < levels - 1:
                h = nn.Conv(ch, (3, 3), strides=(2, 2))(h)
                skips.append(h)

        h = ResBlock(self.channels[-1], self.groups)(h, emb)
        if self.attention:
            h = AttentionBlock(self.groups, self.num_heads)(h)
        h = ResBlock(self.channels[-1], self.groups)(h, emb)

        for i in reversed(range(levels)):
            for _ in range(self.num_res_blocks + 1):
                h = ResBlock(self.channels[i], self.groups)(jnp.concatenate([h, skips.pop()], axis=-1), emb)
            if i > 0:
                b, hh, ww, c = h.shape
                h = jax.image.resize(h, (b, 2 * hh, 2 * ww, c), "nearest")
                h = nn.Conv(self.channels[i], (3, 3))(h)

        h = nn.silu(nn.GroupNorm(num_groups=self.groups)(h))
        return nn.Conv(x.shape[-1], (3, 3), kernel_init=_zeros)(h)
