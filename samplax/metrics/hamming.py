"""Text-to-pattern Hamming distances, exact, and the memorisation metric of discrete samples.

Problem (Chan, Jin, Vassilevska Williams, Xu, "Faster Algorithms for Text-to-Pattern Hamming
Distances", FOCS 2023, arXiv:2310.13174, §1): a text ``t`` of length n, a pattern ``p`` of length
m <= n over an integer alphabet; for every shift i in 0..n-m the distance

    d(i) = #{ j < m : t[i + j] != p[j] } = m - sum_a  sum_j [t[i+j] = a] [p[j] = a].        (1)

Three exact algorithms, all giving the same int32 vector (tested for equality):

* ``naive``: (1) as m shifted comparisons of the whole text (``lax.fori_loop`` over j, O(n m)
  work, O(n) memory); the reference.
* ``fft``: the per-letter cross-correlation of (1): for each letter a of the pattern, the
  indicator vectors of a in the text and in the pattern are correlated with ``rfft``; the sum over
  letters is done in the frequency domain, so one inverse FFT per text block.  The text is cut in
  overlapping blocks of length L (a power of two >= 2m) so the cost is O(K n log m) for the K
  distinct letters of the pattern (K <= min(sigma, m)), not O(K n log n).  The float result is
  rounded to integers; :func:`fft_error_bound` bounds the rounding error (a Cooley-Tukey error
  bound, Higham, *Accuracy and Stability of Numerical Algorithms*, 2nd ed., Thm 24.2) and the
  pattern is split into pieces short enough that the bound is < 1/4 (float32) -- see
  :func:`max_exact_piece`.  Exactness is therefore guaranteed, not hoped for; ``split=False``
  refuses the sizes where one piece would not be exact.
* ``abrahamson``: Abrahamson's heavy/light split (SICOMP 1987; the paper's §1 baseline
  O(n sqrt(m log m))): letters occurring more than ``tau`` times in the pattern (at most m / tau of
  them) go through the FFT correlation; every text position of a light letter adds 1 to the <= tau
  shifts it matches (a scatter-add, O(n tau)).  tau ~ sqrt(m log m) balances the two parts.

The paper's new algorithms are not implemented, by design (see docs/hamming.md): its exact
O(n sqrt m) Las Vegas algorithm (§4) and the deterministic O(n sqrt m (log m log log m)^{1/4}) one
(§5) shave a sqrt(log m) factor from Abrahamson in the word-RAM model with bit-packed FFTs, hashing
and recursion -- tools with no counterpart in XLA's vectorised array programs, and a log factor that
is below the constant factors at our sizes (m <= a few thousand); its k-bounded O(n + nk/sqrt m)
variant and the (1+eps)-approximate O~(eps^-0.93 n) algorithm (§3, via 3SUM counting) are
asymptotic improvements over approximate/k-bounded versions we do not need: our counts of
alignments within distance k (:func:`count_within`) are exact, from the exact distances.

Uses (discrete samples, ``samplax.experiment.discrete``): :func:`memorisation` -- for each
generated sequence its Hamming distance to the nearest training sequence (equal lengths: the
single full alignment, as a one-hot matrix product), and optionally, for sub-patterns (windows of
length w < L of the sample), the nearest distance over all training sequences and all alignments,
and the number of (training sequence, alignment) pairs within distance k (approximate pattern
counts).
"""
from __future__ import annotations

import functools
import math
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

METHODS = ("auto", "naive", "fft", "abrahamson")
#: rounding of the FFT result is exact when the bound on the float error is below this
ERROR_MARGIN = 0.25
_EPS = {"float32": float(np.finfo(np.float32).eps) / 2, "float64": float(np.finfo(np.float64).eps) / 2}


# ---------------------------------------------------------------------------------------
# The FFT error bound
# ---------------------------------------------------------------------------------------
def _pow2_at_least(x: int) -> int:
    return 1 << max(0, int(x - 1).bit_length())


def fft_error_bound(m: int, block: int, letters: int, dtype: str = "float32") -> float:
    """Upper bound on max_i |c_hat(i) - c(i)| of the match counts of one text block of length
    ``block`` (L) against a pattern piece of length ``m`` with ``letters`` (K) distinct letters.

    With u the unit round-off, eta = u + gamma_4 (sqrt 2 + u) the error of one butterfly and
    delta = log2(L) eta / (1 - log2(L) eta) the relative 2-norm error of a computed length-L FFT
    (Higham 2002, Thm 24.2), the letter indicators t_a (block) and p_a (pattern, counts m_a,
    sum_a m_a = m; text counts n_a, sum_a n_a <= L) have ||F t_a||_2 = sqrt(L) ||t_a||_2,
    ||F p_a||_inf <= m_a and ||F t_a||_inf <= n_a, so the frequency-domain sum C = sum_a T_a conj(P_a)
    has ||C_hat - C||_2 <= sqrt(L) [delta (1 + delta) (sqrt(L) m + L sqrt(m))] + gamma_{K+1} L m,
    and the inverse FFT (1/L) F* adds delta sqrt(L) m.  Hence

        max_i |c_hat - c| <= ||c_hat - c||_2
                          <= delta (1 + delta) (sqrt(L) m + L sqrt(m)) + (gamma_{K+1} + delta) sqrt(L) m.

    (XLA's CPU/GPU FFTs are mixed-radix Cooley-Tukey with accurately tabulated twiddles, so the
    bound holds up to its constants; the tests check the measured error at the largest exact piece
    against it.)"""
    u = _EPS[dtype]
    gamma = lambda k: k * u / (1 - k * u)  # noqa: E731
    eta = u + gamma(4) * (math.sqrt(2) + u)
    lg = math.log2(max(block, 2))
    delta = lg * eta / (1 - lg * eta)
    sl = math.sqrt(block)
    return delta * (1 + delta) * (sl * m + block * math.sqrt(m)) + (gamma(letters + 1) + delta) * sl * m


def _piece_block(m: int, n: int) -> int:
    """The text block length for a pattern piece of length m: a power of two >= 2m, at most the
    power of two >= n (one block covers a short text)."""
    return min(_pow2_at_least(2 * m), _pow2_at_least(n))


def max_exact_piece(dtype: str = "float32", limit: int = 1 << 24) -> int:
    """The longest pattern piece whose FFT match counts are provably within ERROR_MARGIN of the
    integers (blocks of length 2m rounded up to a power of two, any number of letters up to m)."""
    lo, hi = 1, limit
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if fft_error_bound(mid, _pow2_at_least(2 * mid), mid, dtype) < ERROR_MARGIN:
            lo = mid
        else:
            hi = mid - 1
    return lo


# ---------------------------------------------------------------------------------------
# Single-pair kernels (jittable: static shapes; no checks on traced values)
# ---------------------------------------------------------------------------------------
def naive_distances(text, pattern):
    """(1) directly: m shifted comparisons of the text, int32 (n - m + 1,).  O(n m)."""
    n, m = text.shape[-1], pattern.shape[-1]
    a = n - m + 1

    def body(j, acc):
        return acc + (lax.dynamic_slice_in_dim(text, j, a) != pattern[j]).astype(jnp.int32)

    return lax.fori_loop(0, m, body, jnp.zeros((a,), jnp.int32))


def _fft_matches(text, pattern, letters, dtype):
    """sum over ``letters`` (K,) (-1 = unused slot) of the correlation of the letter indicators:
    the match counts restricted to these letters, float (n - m + 1,), by blocked rfft."""
    n, m = text.shape[-1], pattern.shape[-1]
    a = n - m + 1
    block = _piece_block(m, n)
    step = block - m + 1
    nb = -(-a // step)
    need = (nb - 1) * step + block
    tp = jnp.pad(text, (0, max(0, need - n)), constant_values=-1)
    idx = (np.arange(nb)[:, None] * step + np.arange(block)[None, :]).astype(np.int32)
    blocks = tp[idx]                                                        # (nb, L)
    ft = (blocks[None] == letters[:, None, None]).astype(dtype)              # (K, nb, L)
    fp = (pattern[None] == letters[:, None]).astype(dtype)                   # (K, m)
    fp = jnp.pad(fp, ((0, 0), (0, block - m)))
    tf = jnp.fft.rfft(ft, axis=-1)
    pf = jnp.fft.rfft(fp, axis=-1)
    cf = jnp.einsum("kbf,kf->bf", tf, jnp.conj(pf))
    c = jnp.fft.irfft(cf, n=block, axis=-1)[:, :step]                        # (nb, step)
    return c.reshape(-1)[:a]


def _pattern_letters(pattern, k: int):
    """The distinct letters of the pattern, padded with -1 to length k (k >= their number)."""
    return jnp.unique(pattern, size=k, fill_value=-1)


def _fft_dtype(dtype):
    if dtype is None:
        return "float64" if jax.config.jax_enable_x64 else "float32"
    if dtype not in _EPS:
        raise ValueError(f"dtype: must be one of {tuple(_EPS)}, got {dtype!r}")
    if dtype == "float64" and not jax.config.jax_enable_x64:
        raise ValueError("dtype: 'float64' needs jax x64 (jax.config.update('jax_enable_x64', True) or "
                         "jax.enable_x64()); allowed without it: 'float32'")
    return dtype


def _pieces(m: int, dtype: str, split: bool, piece: Optional[int]):
    limit = max_exact_piece(dtype)
    size = limit if piece is None else int(piece)
    if piece is not None and not (1 <= size <= limit):
        raise ValueError(f"piece: must be in 1..{limit} (the longest exactly-rounded {dtype} FFT piece), got {piece}")
    if m > size and not split:
        raise ValueError(f"pattern length {m} > {size}: one {dtype} FFT of this size is not guaranteed exact "
                         f"(fft_error_bound >= {ERROR_MARGIN}); allowed: split=True (pieces of <= {size}) "
                         f"or dtype='float64'")
    return [(s, min(m, s + size)) for s in range(0, m, size)]


def fft_distances(text, pattern, alphabet_size: Optional[int] = None, dtype: Optional[str] = None,
                  split: bool = True, piece: Optional[int] = None):
    """Exact distances (int32, (n - m + 1,)) by per-letter FFT cross-correlation, rounded.
    ``alphabet_size`` (static, optional) bounds the number of letters K = min(sigma, piece length);
    the pattern is cut in pieces of at most :func:`max_exact_piece` (``split``) whose rounded
    counts are exact, and their integer counts are added at their offsets."""
    dtype = _fft_dtype(dtype)
    n, m = text.shape[-1], pattern.shape[-1]
    a = n - m + 1
    matches = jnp.zeros((a,), jnp.int32)
    for s, e in _pieces(m, dtype, split, piece):
        k = e - s if alphabet_size is None else min(e - s, int(alphabet_size))
        sub = pattern[s:e]
        c = _fft_matches(text[s:], sub, _pattern_letters(sub, k), dtype)    # alignments 0..n-s-(e-s)
        matches = matches + jnp.rint(c[:a]).astype(jnp.int32)
    return m - matches


def abrahamson_threshold(m: int, scale: float = 1.0) -> int:
    """tau = scale * sqrt(m log2 m) (at least 1): Abrahamson's balance of O(n tau) light work
    against O((m / tau) n log m) FFT work."""
    return max(1, int(round(scale * math.sqrt(m * max(1.0, math.log2(m))))))


def abrahamson_distances(text, pattern, tau: Optional[int] = None, dtype: Optional[str] = None,
                         alphabet_size: Optional[int] = None):
    """Exact distances by Abrahamson's heavy/light split: the <= m / (tau + 1) letters occurring
    more than ``tau`` times in the pattern through :func:`_fft_matches` (exact pieces as in
    :func:`fft_distances`), the light ones by scatter-adding each text position into the <= tau
    shifts where its letter sits in the pattern.  ``alphabet_size`` (static, optional) caps the
    number of heavy-letter FFT planes."""
    dtype = _fft_dtype(dtype)
    n, m = text.shape[-1], pattern.shape[-1]
    a = n - m + 1
    tau = abrahamson_threshold(m) if tau is None else int(tau)
    if tau < 1:
        raise ValueError(f"tau: must be >= 1, got {tau}")
    order = jnp.argsort(pattern, stable=True).astype(jnp.int32)
    sp = pattern[order]
    lo = jnp.searchsorted(sp, text, side="left").astype(jnp.int32)
    hi = jnp.searchsorted(sp, text, side="right").astype(jnp.int32)
    count = hi - lo                                                      # occurrences of t[i] in p
    light = (count > 0) & (count <= tau)
    k = jnp.arange(min(tau, m), dtype=jnp.int32)
    pos_idx = jnp.clip(lo[:, None] + k[None, :], 0, m - 1)
    j = order[pos_idx]                                                   # (n, tau') pattern positions
    shift = jnp.arange(n, dtype=jnp.int32)[:, None] - j
    ok = light[:, None] & (k[None, :] < count[:, None]) & (shift >= 0) & (shift < a)
    shift = jnp.where(ok, shift, a)                                      # out of range: dropped
    matches = jnp.zeros((a,), jnp.int32).at[shift.reshape(-1)].add(1, mode="drop")
    heavy_max = m // (tau + 1) if alphabet_size is None else min(m // (tau + 1), int(alphabet_size))
    if heavy_max > 0:
        letters, counts = jnp.unique(pattern, size=m, fill_value=-1, return_counts=True)
        counts = jnp.where(letters >= 0, counts, 0)
        top_counts, top = lax.top_k(counts, heavy_max)
        heavy = jnp.where(top_counts > tau, letters[top], -1)
        limit = max_exact_piece(dtype)
        for s in range(0, m, limit):
            e = min(m, s + limit)
            c = _fft_matches(text[s:], pattern[s:e], heavy, dtype)
            matches = matches + jnp.rint(c[:a]).astype(jnp.int32)
    return m - matches


# ---------------------------------------------------------------------------------------
# Validated, batched entry points
# ---------------------------------------------------------------------------------------
def _as_tokens(x, name: str):
    if isinstance(x, (list, tuple)):
        x = np.asarray(x)
    dt = getattr(x, "dtype", None)
    if dt is None or not (jnp.issubdtype(dt, jnp.integer)) or jnp.issubdtype(dt, jnp.bool_):
        raise ValueError(f"{name}: must be an integer array (token ids), got dtype {dt}")
    if x.ndim not in (1, 2):
        raise ValueError(f"{name}: must have shape (length,) or (batch, length), got shape {tuple(x.shape)}")
    if x.shape[-1] < 1 or x.shape[0] < 1:
        raise ValueError(f"{name}: must be non-empty, got shape {tuple(x.shape)}")
    return x


def _check_values(x, name: str, alphabet_size: Optional[int]):
    if isinstance(x, jax.core.Tracer):
        return
    v = np.asarray(x)
    if v.min() < 0:
        raise ValueError(f"{name}: symbols must be >= 0, got {int(v.min())}")
    top = alphabet_size if alphabet_size is not None else 2**31
    if v.max() >= top:
        raise ValueError(f"{name}: symbols must be < {'alphabet_size ' if alphabet_size else ''}{top}, "
                         f"got {int(v.max())}")


def check_inputs(texts, patterns, alphabet_size: Optional[int] = None):
    """Validated int32 (T, n) texts and (P, m) patterns (1-D inputs become one row) and whether
    each was 1-D; ValueError naming the argument otherwise."""
    texts, patterns = _as_tokens(texts, "texts"), _as_tokens(patterns, "patterns")
    if alphabet_size is not None and (not isinstance(alphabet_size, (int, np.integer)) or alphabet_size < 1):
        raise ValueError(f"alphabet_size: must be a positive int or None, got {alphabet_size!r}")
    n, m = texts.shape[-1], patterns.shape[-1]
    if m > n:
        raise ValueError(f"patterns: length m={m} must be <= the text length n={n}")
    _check_values(texts, "texts", alphabet_size)
    _check_values(patterns, "patterns", alphabet_size)
    t = jnp.asarray(texts, jnp.int32).reshape(-1, n)
    p = jnp.asarray(patterns, jnp.int32).reshape(-1, m)
    return t, p, texts.ndim == 1, patterns.ndim == 1


def choose_method(n: int, m: int, alphabet_size: Optional[int] = None, dtype: Optional[str] = None) -> str:
    """``auto``'s pick, from the CPU measurements of docs/benchmarks/hamming.md: the FFT when its
    cost model K * pieces * log2(2 * piece) (K = min(sigma, piece) letter planes) is below m / 2 of
    the naive loop's and the problem is big enough (n m >= 2^23) to amortise its overheads; else the
    naive loop.  Abrahamson's split never won there (XLA's CPU scatter-add is slow), so ``auto``
    does not pick it; an unknown alphabet counts as m letters."""
    if n * m < (1 << 23):
        return "naive"
    piece = min(m, max_exact_piece(_fft_dtype(dtype)))
    k = piece if alphabet_size is None else min(piece, int(alphabet_size))
    cost = k * -(-m // piece) * math.log2(2 * piece)
    return "fft" if cost < m / 2 else "naive"


def _kernel(method: str, m: int, alphabet_size, dtype, tau):
    if method == "naive":
        return naive_distances
    if method == "fft":
        return functools.partial(fft_distances, alphabet_size=alphabet_size, dtype=dtype)
    if method == "abrahamson":
        return functools.partial(abrahamson_distances, tau=tau, dtype=dtype, alphabet_size=alphabet_size)
    raise ValueError(f"method: must be one of {METHODS}, got {method!r}")


@functools.partial(jax.jit, static_argnames=("method", "alphabet_size", "dtype", "tau"))
def _all_pairs(t, p, method, alphabet_size, dtype, tau):
    f = _kernel(method, p.shape[-1], alphabet_size, dtype, tau)
    return jax.vmap(lambda x: jax.vmap(lambda y: f(x, y))(p))(t)


def hamming_distances(texts, patterns, method: str = "auto", alphabet_size: Optional[int] = None,
                      dtype: Optional[str] = None, tau: Optional[int] = None):
    """Exact text-to-pattern Hamming distances for every (text, pattern) pair: int32
    (T, P, n - m + 1) for texts (T, n) and patterns (P, m); a 1-D argument drops its axis.

    ``method``: "naive", "fft", "abrahamson" or "auto" (:func:`choose_method`); all give the same
    integers.  ``alphabet_size``: optional bound on the symbols (checked; lets the FFT use fewer
    letter planes).  ``dtype``: the FFT's float type (default float64 under x64, else float32;
    both exact by :func:`max_exact_piece`).  ``tau``: Abrahamson's threshold (default
    :func:`abrahamson_threshold`).  Raises ValueError for non-integer or negative symbols, bad
    shapes, m > n."""
    if method not in METHODS:
        raise ValueError(f"method: must be one of {METHODS}, got {method!r}")
    t, p, t1, p1 = check_inputs(texts, patterns, alphabet_size)
    if method == "auto":
        method = choose_method(t.shape[-1], p.shape[-1], alphabet_size, dtype)
    out = _all_pairs(t, p, method, alphabet_size, _fft_dtype(dtype), tau)
    if p1:
        out = out[:, 0]
    if t1:
        out = out[0]
    return out


def nearest(texts, patterns, method: str = "auto", chunk: int = 256, **kw):
    """For each pattern: the smallest distance over all texts and alignments, and where
    (text index, shift): three int32 (P,) arrays.  Patterns are processed ``chunk`` at a time
    (memory T x chunk x (n - m + 1))."""
    t, p, _, _ = check_inputs(texts, patterns, kw.get("alphabet_size"))
    best, where_t, where_s = [], [], []
    for s in range(0, p.shape[0], chunk):
        d = hamming_distances(t, p[s:s + chunk], method=method, **kw)                 # (T, c, A)
        d = jnp.moveaxis(d, 1, 0).reshape(d.shape[1], -1)                             # (c, T*A)
        i = jnp.argmin(d, axis=1)
        best.append(jnp.take_along_axis(d, i[:, None], 1)[:, 0])
        where_t.append(i // (t.shape[1] - p.shape[1] + 1))
        where_s.append(i % (t.shape[1] - p.shape[1] + 1))
    return jnp.concatenate(best), jnp.concatenate(where_t), jnp.concatenate(where_s)


def count_within(texts, patterns, k: int, method: str = "auto", chunk: int = 256, **kw):
    """Approximate pattern counts: for each pattern, the number of (text, alignment) pairs whose
    Hamming distance is <= k (the k-mismatch occurrences), int32 (P,).  Exact counts (from the
    exact distances), not the paper's approximate / k-bounded algorithms."""
    if not isinstance(k, (int, np.integer)) or k < 0:
        raise ValueError(f"k: must be a non-negative int, got {k!r}")
    t, p, _, _ = check_inputs(texts, patterns, kw.get("alphabet_size"))
    out = []
    for s in range(0, p.shape[0], chunk):
        d = hamming_distances(t, p[s:s + chunk], method=method, **kw)
        out.append(jnp.sum(d <= k, axis=(0, 2)).astype(jnp.int32))
    return jnp.concatenate(out)


# ---------------------------------------------------------------------------------------
# Memorisation of training sequences
# ---------------------------------------------------------------------------------------
@functools.partial(jax.jit, static_argnames=("vocab",))
def _full_nearest(x, y, vocab):
    """Min over rows of y of the Hamming distance to each row of x (equal lengths): L minus the
    largest one-hot inner product (exact: integer sums <= L < 2^24 in float32)."""
    ox = jax.nn.one_hot(x, vocab, dtype=jnp.float32).reshape(x.shape[0], -1)
    oy = jax.nn.one_hot(y, vocab, dtype=jnp.float32).reshape(y.shape[0], -1)
    match = jnp.rint(ox @ oy.T).astype(jnp.int32)
    return x.shape[1] - jnp.max(match, axis=1), jnp.argmax(match, axis=1)


def nearest_sequence(samples, train, chunk: int = 1024):
    """Hamming distance of each sample (N, L) to its nearest training sequence (M, L) and that
    sequence's index: two int32 (N,) arrays (the full-alignment case of (1))."""
    x, y, _, _ = check_inputs(train, samples)
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"samples: length {y.shape[1]} must equal the training sequences' length {x.shape[1]}")
    vocab = int(max(int(jnp.max(x)), int(jnp.max(y)))) + 1
    ds, js = [], []
    for s in range(0, y.shape[0], chunk):
        if vocab > 4096:  # one-hot rows too wide: the naive count of the single alignment
            d = hamming_distances(x, y[s:s + chunk], method="naive")[:, :, 0]
            d, j = jnp.min(d, axis=0), jnp.argmin(d, axis=0)
        else:
            d, j = _full_nearest(y[s:s + chunk], x, vocab)
        ds.append(d)
        js.append(j)
    return jnp.concatenate(ds), jnp.concatenate(js)


def memorisation(samples, train, window: int = 0, k: int = 0, method: str = "auto", held_out=None) -> dict:
    """Memorisation summary of generated sequences ``samples`` (N, L) against ``train`` (M, L).

    * ``nearest_mean`` / ``nearest_median`` / ``nearest_min``: Hamming distance to the nearest
      training sequence (full alignment); ``copies``: fraction of samples equal to a training
      sequence; ``within_k``: fraction at distance <= k.
    * with ``window`` = w (0 < w < L): each sample's non-overlapping windows of length w are patterns
      searched in every training sequence at every alignment: ``window_nearest_mean`` (mean over
      samples of their windows' smallest distance), ``window_copies`` (fraction of samples with a
      window found verbatim), ``window_count_mean`` (mean number of (training sequence, alignment)
      occurrences within distance k per window: the approximate pattern count).
    * ``held_out`` (N', L): the same nearest-training distance of held-out real sequences, the
      reference a non-memorising model should match (``held_nearest_mean``, ``held_copies``)."""
    x, t, _, _ = check_inputs(samples, train)
    L = t.shape[1]
    if x.shape[1] != L:
        raise ValueError(f"samples: length {x.shape[1]} must equal the training sequences' length {L}")
    if not isinstance(window, (int, np.integer)) or not 0 <= window < L:
        raise ValueError(f"window: must be an int in 0..{L - 1} (0: full sequences only), got {window!r}")
    if not isinstance(k, (int, np.integer)) or k < 0:
        raise ValueError(f"k: must be a non-negative int, got {k!r}")
    d, _ = nearest_sequence(x, t)
    d = np.asarray(d)
    out = dict(n_samples=int(x.shape[0]), n_train=int(t.shape[0]), length=int(L), k=int(k),
               nearest_mean=float(d.mean()), nearest_median=float(np.median(d)), nearest_min=int(d.min()),
               copies=float((d == 0).mean()), within_k=float((d <= k).mean()))
    if held_out is not None:
        h, _ = nearest_sequence(held_out, t)
        h = np.asarray(h)
        out.update(held_nearest_mean=float(h.mean()), held_copies=float((h == 0).mean()),
                   held_within_k=float((h <= k).mean()))
    if window:
        starts = range(0, L - window + 1, window)
        pats = jnp.stack([x[:, s:s + window] for s in starts], axis=1).reshape(-1, window)   # (N * W, w)
        best, _, _ = nearest(t, pats, method=method)
        counts = count_within(t, pats, k, method=method)
        best = np.asarray(best).reshape(x.shape[0], -1).min(axis=1)
        out.update(window=int(window), window_nearest_mean=float(best.mean()),
                   window_copies=float((best == 0).mean()), window_count_mean=float(np.asarray(counts).mean()))
    return out


__all__ = ["METHODS", "ERROR_MARGIN", "fft_error_bound", "max_exact_piece", "naive_distances", "fft_distances",
           "abrahamson_distances", "abrahamson_threshold", "check_inputs", "choose_method", "hamming_distances",
           "nearest", "count_within", "nearest_sequence", "memorisation"]
