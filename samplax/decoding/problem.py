"""Named parts of a decoding problem, so a config can build one from strings.

``make_problem(lm="hmm8x5", draft="mix_uniform", draft_options={"eps": 0.3}, reward="token_count", ...)``
looks each part up in its registry and builds it for the target LM:

* ``DRAFTS``: ``name -> factory(lm, **options) -> LanguageModel`` (draft models for speculative decoding)
* ``REWARDS``: ``name -> factory(lm, **options) -> Reward`` (reward-guided SMC)
* ``CONSTRAINTS``: ``name -> factory(lm, **options) -> constraint`` (constrained decoding)
* ``TASKS``: ``name -> factory(**options) -> task`` (toy reasoning tasks; a task brings its own LM)
"""
from __future__ import annotations

from typing import Any, Callable, Dict, Optional

import numpy as np

from samplax.decoding import constrained as _constrained
from samplax.decoding import rewards as _rewards
from samplax.decoding import speculative as _speculative
from samplax.decoding.base import LanguageModel, Problem, check_prompt
from samplax.decoding.exact import LMS, load_lm
from samplax.decoding.tasks import sum_mod_task

DRAFTS: Dict[str, Callable[..., Any]] = {
    "mix_uniform": _speculative.mix_uniform_draft,
    "bigram": _speculative.bigram_draft,
    "hmm_perturbed": _speculative.hmm_perturbed_draft,
}
REWARDS: Dict[str, Callable[..., Any]] = {
    "token_count": _rewards.token_count,
    "regex": _rewards.regex,
}
CONSTRAINTS: Dict[str, Callable[..., Any]] = {
    "regex_contains": _constrained.regex_contains,
    "regex_even": _constrained.regex_even,
    "dyck": _constrained.dyck,
}
TASKS: Dict[str, Callable[..., Any]] = {
    "sum_mod": sum_mod_task,
}

__all__ = ["DRAFTS", "REWARDS", "CONSTRAINTS", "TASKS", "make_problem", "get_part"]


def get_part(kind: str, table: Dict[str, Callable], name: str) -> Callable:
    if name not in table:
        raise ValueError(f"{kind}: unknown {name!r}; allowed: {sorted(table)}")
    return table[name]


def _opts(kind: str, options) -> dict:
    if options is None:
        return {}
    if not isinstance(options, dict):
        try:
            options = dict(options)
        except (TypeError, ValueError):
            raise ValueError(f"{kind}_options: expected a mapping of option -> value, got {options!r}") from None
    return dict(options)


def _build(kind: str, table, name, lm, options):
    factory = get_part(kind, table, name)
    try:
        return factory(lm, **_opts(kind, options))
    except TypeError as e:
        raise ValueError(f"{kind}_options for {name!r}: {e}") from None


def make_problem(lm="hmm8x5", draft: Optional[str] = None, draft_options=None, reward: Optional[str] = None,
                 reward_options=None, constraint: Optional[str] = None, constraint_options=None,
                 task: Optional[str] = None, task_options=None, prompt=None) -> Problem:
    """A :class:`~samplax.decoding.base.Problem` from names.  ``lm``: a LanguageModel or one of
    ``samplax.decoding.LMS``; with ``task`` the task's own LM is the target (``lm`` is ignored)."""
    task_obj = None
    if task is not None:
        factory = get_part("task", TASKS, task)
        try:
            task_obj = factory(**_opts("task", task_options))
        except TypeError as e:
            raise ValueError(f"task_options for {task!r}: {e}") from None
        lm = task_obj.lm
    if isinstance(lm, str):
        lm = load_lm(lm)
    if not isinstance(lm, LanguageModel):
        raise ValueError(f"lm: expected a LanguageModel or one of {list(LMS)}, got {lm!r}")
    d = None if draft is None else _build("draft", DRAFTS, draft, lm, draft_options)
    r = None if reward is None else _build("reward", REWARDS, reward, lm, reward_options)
    c = None if constraint is None else _build("constraint", CONSTRAINTS, constraint, lm, constraint_options)
    if prompt is not None:
        prompt = check_prompt(np.asarray(prompt), lm)
    return Problem(lm=lm, draft=d, reward=r, constraint=c, task=task_obj, prompt=prompt)
