"""A toy reasoning task with verifiable answers and an exact "noisy reasoner" LM for it.

The task (``sum_mod``): a question is ``Q`` digits ``d_1 .. d_Q`` in ``{0 .. m-1}`` (the prompt); the
reasoning chain is the running sums ``c_k = d_1 + .. + d_{k+1} mod m`` for ``k = 1 .. Q-1`` (``Q-1``
tokens); the last token is the answer, whose correct value is ``c_{Q-1} = sum(d) mod m``.  With the
defaults (``m = 4``, ``Q = 4``) a sequence is 4 + 3 + 1 = 8 tokens over V = 4 symbols: 4**8 = 65536
sequences, 256 questions, 256 completions per question -- everything is enumerable.

The LM (:func:`noisy_reasoner_log_probs`, an exact joint turned into an autoregressive LM by
:func:`samplax.decoding.exact.table_lm`) is a reasoner whose chain is right with a probability that
depends on the question, so that greedy decoding, majority voting and probability-weighted voting
give different answers (docs/decoding_evaluation.md has the per-question numbers):

* *on track* (every chain token so far is the true running sum), adding digit ``d``: the next chain
  token is right with probability ``acc[d]``; for the "hard" digit ``d = m-1`` a misconception puts
  ``confuse`` on ``c + 1`` (adding m-1 treated as adding 1); the rest is spread evenly.  Any error
  makes the reasoner *lost*.
* *lost*: a middle chain token follows the reasoner's own (wrong) chain with probability ``lost_follow``,
  the rest evenly; the last chain token falls back to a default ``guess`` token with probability
  ``guess_p`` (many low-probability confused chains ending at one wrong answer: the regime where
  pruning low-probability reasoning paths, RPC, beats the plain vote).
* the answer token copies the last chain token with probability ``1 - eta`` (the rest evenly): the
  answer follows the chain.

Everything exact lives here as float64 numpy: per-question completion log-probabilities, answer
distributions, greedy completions and the value function ``P(correct | prefix)`` (the self-evaluation
score of :mod:`samplax.decoding.adaptive`).
"""
from __future__ import annotations

import dataclasses
import functools
import itertools
from typing import Tuple

import jax
import jax.numpy as jnp
import numpy as np
from scipy.special import logsumexp as np_logsumexp

from samplax.decoding.base import LanguageModel, gather_logp, identity
from samplax.decoding.exact import table_lm
from samplax.discrete.base import categorical

__all__ = ["Task", "sample_with_prompts", "sum_mod_task", "noisy_reasoner_log_probs", "question_index", "completion_log_probs",
           "completion_answers", "prompt_log_probs", "answer_probs", "correct_probs", "greedy_completion", "value_tables",
           "prefix_values"]


@dataclasses.dataclass(frozen=True, eq=False)
class Task:
    """A reasoning task over fixed-length sequences ``[question (P tokens) | chain | answer]``.

    questions: ``int32[NQ, P]`` every question (the prompts); ``lm``: the exact model;
    ``log_probs``: ``float64[V**L]`` its joint (questions uniform); ``answer(x)``: the answer of
    sequences ``int[..., L]`` (the last token); ``correct(question)``: the right answer.
    """
    name: str
    vocab_size: int
    length: int
    prompt_length: int
    modulus: int
    questions: np.ndarray
    log_probs: np.ndarray
    lm: LanguageModel
    options: dict

    @property
    def n_answers(self) -> int:
        return self.modulus

    @property
    def completion_length(self) -> int:
        return self.length - self.prompt_length

    def answer(self, x):
        """The answer token of sequences ``x int[..., L]`` (or completions ``int[..., L-P]``)."""
        return np.asarray(x)[..., -1]

    def correct(self, question) -> int:
        """The right answer of a question ``int[P]``: the sum of its digits mod m."""
        q = np.asarray(question)
        if q.shape[-1] != self.prompt_length:
            raise ValueError(f"question: expected {self.prompt_length} tokens, got shape {q.shape}")
        return np.sum(q, axis=-1) % self.modulus

    def is_correct(self, x, question=None) -> np.ndarray:
        """bool[...]: whether sequences ``x int[..., L]`` answer right (their own prompt is the question
        unless ``question`` is given)."""
        x = np.asarray(x)
        q = x[..., :self.prompt_length] if question is None else question
        return self.answer(x) == self.correct(q)

    def accuracy(self, x) -> float:
        """The fraction of sequences ``x int[N, L]`` whose answer is right for their own prompt."""
        return float(np.mean(self.is_correct(x)))


def _check_prob(name, v, low=0.0, high=1.0):
    if isinstance(v, bool) or not isinstance(v, (int, float, np.floating)) or not low <= v <= high:
        raise ValueError(f"{name}: must be a number in [{low}, {high}], got {v!r}")
    return float(v)


def noisy_reasoner_log_probs(modulus: int = 4, n_digits: int = 4, acc: Tuple[float, ...] = (0.97, 0.9, 0.75, 0.42),
                             confuse: float = 0.46, lost_follow: float = 0.4, guess: int = 0,
                             guess_p: float = 0.6, eta: float = 0.03) -> np.ndarray:
    """float64[m**L], L = 2 * n_digits: the exact joint log-probabilities of the noisy reasoner
    (module docstring) with uniformly distributed questions, built for all sequences at once."""
    m, Q = modulus, n_digits
    if len(acc) != m:
        raise ValueError(f"acc: needs one accuracy per digit value (modulus {m}), got {acc!r}")
    for i, a in enumerate(acc):
        _check_prob(f"acc[{i}]", a)
    if acc[m - 1] + confuse > 1:
        raise ValueError(f"confuse: acc[{m - 1}] + confuse must be <= 1, got {acc[m - 1]} + {confuse}")
    acc = np.asarray(acc, np.float64)
    L = 2 * Q
    x = np.array(list(itertools.product(range(m), repeat=L)), np.int64)      # [m**L, L]
    q = x[:, :Q]
    p = np.full(len(x), float(m) ** -Q)
    on_track = np.ones(len(x), bool)
    own = q[:, 0]
    for k in range(1, Q):                      # chain token k-1 (position Q+k-1) adds digit q[k]
        d = q[:, k]
        tok = x[:, Q + k - 1]
        want = (own + d) % m
        slip = (own + 1) % m
        hard = (d == m - 1) & (confuse > 0)
        # on track: acc[d] on the right token, `confuse` on own+1 for the hard digit, the rest even
        fixed = acc[d] + np.where(hard, confuse, 0.0)
        n_free = np.where(hard & (slip != want), m - 2, m - 1)
        p_track = np.where(tok == want, acc[d] + np.where(hard & (slip == want), confuse, 0.0),
                           np.where(hard & (tok == slip), confuse, (1 - fixed) / np.maximum(n_free, 1)))
        p_lost = np.where(tok == want, lost_follow, (1 - lost_follow) / (m - 1))
        if k == Q - 1:
            p_lost = guess_p * (tok == guess) + (1 - guess_p) * p_lost
        p *= np.where(on_track, p_track, p_lost)
        on_track &= tok == want
        own = tok
    ans = x[:, -1]
    p *= np.where(ans == own, 1 - eta, eta / (m - 1))
    with np.errstate(divide="ignore"):
        return np.log(p)


def sum_mod_task(modulus: int = 4, n_digits: int = 4, acc=(0.97, 0.9, 0.75, 0.42), confuse: float = 0.46,
                 lost_follow: float = 0.4, guess: int = 0, guess_p: float = 0.6, eta: float = 0.03) -> Task:
    """The sum-mod-m task with its noisy-reasoner LM (``TASKS["sum_mod"]``).  V = m, L = 2 Q."""
    if isinstance(modulus, bool) or not isinstance(modulus, (int, np.integer)) or not 2 <= modulus <= 16:
        raise ValueError(f"modulus: must be an integer in [2, 16], got {modulus!r}")
    if isinstance(n_digits, bool) or not isinstance(n_digits, (int, np.integer)) or not 2 <= n_digits <= 5:
        raise ValueError(f"n_digits: must be an integer in [2, 5], got {n_digits!r}")
    if modulus ** (2 * n_digits) > 2 ** 20:
        raise ValueError(f"sum_mod: modulus**(2*n_digits) = {modulus ** (2 * n_digits)} sequences is more "
                         f"than 2**20 (not enumerable); lower modulus or n_digits")
    acc = tuple(float(a) for a in (acc if not isinstance(acc, (int, float)) else [acc] * modulus))
    for name, v in (("confuse", confuse), ("lost_follow", lost_follow), ("guess_p", guess_p), ("eta", eta)):
        _check_prob(name, v)
    if isinstance(guess, bool) or not isinstance(guess, (int, np.integer)) or not 0 <= guess < modulus:
        raise ValueError(f"guess: must be a token in [0, {modulus}), got {guess!r}")
    m, Q = int(modulus), int(n_digits)
    lp = noisy_reasoner_log_probs(m, Q, acc, confuse, lost_follow, guess, guess_p, eta)
    questions = np.array(list(itertools.product(range(m), repeat=Q)), np.int32)
    lm = table_lm(lp, m, 2 * Q, name=f"noisy_reasoner_m{m}q{Q}")
    opts = dict(modulus=m, n_digits=Q, acc=acc, confuse=confuse, lost_follow=lost_follow, guess=guess,
                guess_p=guess_p, eta=eta)
    return Task("sum_mod", m, 2 * Q, Q, m, questions, lp, lm, opts)


# ---------------------------------------------------------------------------------------
# Exact per-question quantities (float64 numpy)
# ---------------------------------------------------------------------------------------
def question_index(task: Task, question) -> int:
    q = np.asarray(question, np.int64)
    if q.shape != (task.prompt_length,) or q.min() < 0 or q.max() >= task.vocab_size:
        raise ValueError(f"question: expected {task.prompt_length} tokens in [0, {task.vocab_size}), got {q.tolist()}")
    return int(np.sum(q * task.vocab_size ** np.arange(task.prompt_length - 1, -1, -1)))


def completion_log_probs(task: Task, question) -> np.ndarray:
    """float64[V**C]: ``log p(completion | question)`` (completions in base-V order, first most
    significant; C = L - P)."""
    n = task.vocab_size ** task.completion_length
    qi = question_index(task, question)
    row = task.log_probs[qi * n:(qi + 1) * n]
    return row - np_logsumexp(row)


def prompt_log_probs(task: Task, question) -> np.ndarray:
    """float64[V**L]: the law of a whole sequence sampled from the prompt ``question`` (-inf elsewhere)."""
    out = np.full(task.vocab_size ** task.length, -np.inf)
    n = task.vocab_size ** task.completion_length
    qi = question_index(task, question)
    out[qi * n:(qi + 1) * n] = completion_log_probs(task, question)
    return out


def completion_answers(task: Task) -> np.ndarray:
    """int[V**C]: the answer (last token) of every completion."""
    return np.arange(task.vocab_size ** task.completion_length) % task.vocab_size


def answer_probs(task: Task, question) -> np.ndarray:
    """float64[m]: the exact distribution of the model's answer to the question."""
    p = np.exp(completion_log_probs(task, question))
    return np.bincount(completion_answers(task), weights=p, minlength=task.n_answers)


def correct_probs(task: Task) -> np.ndarray:
    """float64[NQ]: the probability that one sample answers each question right."""
    return np.array([answer_probs(task, q)[task.correct(q)] for q in task.questions])


def greedy_completion(task: Task, question) -> np.ndarray:
    """int[C]: the greedy completion (argmax of each conditional; ties to the lowest token)."""
    V, C = task.vocab_size, task.completion_length
    p = np.exp(completion_log_probs(task, question))
    idx = 0
    out = []
    for t in range(C):
        marg = p.reshape(V ** (t + 1), V ** (C - t - 1)).sum(1)   # prefix marginals of length t+1
        tok = int(np.argmax(marg[idx * V:(idx + 1) * V]))
        out.append(tok)
        idx = idx * V + tok
    return np.array(out, np.int32)


def value_tables(task: Task, question):
    """The self-evaluation oracle: ``[v_0, .., v_C]`` with ``v_t float64[V**t]`` the probability that
    the completion ends with the right answer given its first t tokens (``v_0`` = the probability that a
    sample is right; ``v_C`` in {0, 1}).  Impossible prefixes get 0."""
    V, C = task.vocab_size, task.completion_length
    p = np.exp(completion_log_probs(task, question))
    right = (completion_answers(task) == task.correct(question)).astype(np.float64)
    out = []
    for t in range(C + 1):
        tot = p.reshape(V ** t, -1).sum(1)
        good = (p * right).reshape(V ** t, -1).sum(1)
        out.append(np.where(tot > 0, good / np.where(tot > 0, tot, 1.0), 0.0))
    return out


def prefix_values(task: Task, question, completions, t: int) -> np.ndarray:
    """float64[B]: ``P(correct | first t completion tokens)`` for completions ``int[B, >= t]``."""
    v = value_tables(task, question)[t]
    c = np.asarray(completions, np.int64)[:, :t]
    idx = np.sum(c * task.vocab_size ** np.arange(t - 1, -1, -1), axis=1) if t else np.zeros(len(c), np.int64)
    return v[idx]


# ---------------------------------------------------------------------------------------
# Sampling many questions in one compiled program
# ---------------------------------------------------------------------------------------
@functools.partial(jax.jit, static_argnums=(0, 3))
def sample_with_prompts(lm: LanguageModel, keys, prompts, transform=identity):
    """Ancestral sampling with a prompt per sample, ``prompts int32[B, P]`` (data, not a constant: one
    compiled program for every question).  Same draws as :func:`samplax.decoding.base.sample` on the
    cached path: sample b at position i uses ``fold_in(keys[b], i)`` (so with equal prompts the tokens
    are identical).  Returns tokens ``int32[B, L]`` and ``log p`` of the generated part (untransformed
    model) ``[B]``; the model is called L times (the prompt is consumed one position per call)."""
    B, P = prompts.shape
    L = lm.length
    if lm.cached:
        init, step = lm.init, lm.step
        state0 = init(B)
    else:
        from samplax.decoding.base import uncached_step
        init, step = uncached_step(lm)
        state0 = init(B)
    x0 = jnp.zeros((B, L), jnp.int32).at[:, :P].set(prompts.astype(jnp.int32))

    def body(carry, pos):
        x, state, lp = carry
        prev = jax.lax.dynamic_index_in_dim(x, jnp.maximum(pos - 1, 0), axis=1, keepdims=False)
        logp, state = step(state, prev, pos)
        logq = transform(logp, pos)
        ks = jax.vmap(jax.random.fold_in, in_axes=(0, None))(keys, pos)
        tok = jax.vmap(lambda k, l: categorical(k, l, "high"))(ks, logq)
        given = pos < P
        tok = jnp.where(given, jax.lax.dynamic_index_in_dim(x, pos, axis=1, keepdims=False), tok)
        x = jax.lax.dynamic_update_index_in_dim(x, tok, pos, axis=1)
        lp = lp + jnp.where(given, 0.0, gather_logp(logp, tok))
        return (x, state, lp), None

    dt = jnp.float64 if jax.config.jax_enable_x64 else jnp.float32
    (x, _, lp), _ = jax.lax.scan(body, (x0, state0, jnp.zeros((B,), dt)), jnp.arange(L))
    return x, lp
