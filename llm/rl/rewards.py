"""Rule-based (verifiable) reward functions for PPO, and the loader for user-supplied ones.

A reward function takes the prompts and the decoded responses of a batch and returns one float
per response::

    def my_reward(prompts: list[str], responses: list[str], **kwargs) -> list[float]

Select one with ``stage.reward.function=package.module:function`` and its keyword arguments
with ``stage.reward.kwargs``, or several, each with its own weight, with ``stage.reward.functions``
(a list of ``{function, weight, kwargs, name}``). Built in (give the bare name): ``contains_word``,
``short``, ``length`` (a target range), ``think_format`` (``<think>...</think>`` then an answer)
and ``regex`` (a pattern given in kwargs). GRPO's own ``format`` component (an answer in
``\\boxed{}`` or an ``Answer:`` line, for tasks) is not one of these.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable, Sequence
from typing import Any

RewardFn = Callable[..., Sequence[float]]


def contains_word(prompts: Sequence[str], responses: Sequence[str], word: str = "Python", case_sensitive: bool = False) -> list[float]:
    """1.0 for a response that contains ``word`` (as a whole word), else 0.0."""
    flags = 0 if case_sensitive else re.IGNORECASE
    pat = re.compile(rf"(?<!\w){re.escape(word)}(?!\w)", flags)
    return [1.0 if pat.search(r) else 0.0 for r in responses]


def short(prompts: Sequence[str], responses: Sequence[str], max_chars: int = 40) -> list[float]:
    """1.0 for a non-empty response of at most ``max_chars`` characters, decreasing linearly to 0
    at twice that length."""
    out = []
    for r in responses:
        n = len(r.strip())
        if n == 0:
            out.append(0.0)
        elif n <= max_chars:
            out.append(1.0)
        else:
            out.append(max(0.0, 1.0 - (n - max_chars) / max_chars))
    return out


def length(prompts: Sequence[str], responses: Sequence[str], min_chars: int = 0, max_chars: int = 200, words: bool = False) -> list[float]:
    """1.0 for a response whose length (characters after trimming, or whitespace-separated words
    with ``words``) lies in ``[min_chars, max_chars]``; below, ``n / min_chars``; above, decreasing
    linearly to 0 at twice ``max_chars``."""
    if not 0 <= min_chars <= max_chars or max_chars <= 0:
        raise ValueError(f"length: need 0 <= min_chars <= max_chars and max_chars > 0 (got {min_chars}, {max_chars})")
    out = []
    for r in responses:
        n = len(r.split()) if words else len(r.strip())
        if n < min_chars:
            out.append(n / min_chars)
        elif n <= max_chars:
            out.append(1.0)
        else:
            out.append(max(0.0, 1.0 - (n - max_chars) / max_chars))
    return out


_THINK = re.compile(r"\s*<think>(.*?)</think>(.*)", re.DOTALL)


def think_format(prompts: Sequence[str], responses: Sequence[str], require_answer: bool = True) -> list[float]:
    """1.0 for a response that opens with one ``<think>...</think>`` block with something in it,
    followed by an answer: with ``require_answer`` one in the asked form (a ``\\boxed{}`` or an
    ``Answer:`` line, :func:`llm.rl.tasks.extract_answer`), else any non-empty text; else 0.0."""
    from llm.rl.tasks import extract_answer

    out = []
    for r in responses:
        m = _THINK.fullmatch(r)
        ok = m is not None and bool(m.group(1).strip()) and "<think>" not in m.group(2) and bool(m.group(2).strip())
        if ok and require_answer:
            ok = extract_answer(m.group(2)) is not None
        out.append(1.0 if ok else 0.0)
    return out


def regex(
    prompts: Sequence[str], responses: Sequence[str], pattern: str = "", full: bool = False, ignore_case: bool = False
) -> list[float]:
    """1.0 for a response that the regular expression ``pattern`` matches (anywhere, or the whole
    response with ``full``; ``.`` matches newlines), else 0.0."""
    if not pattern:
        raise ValueError("regex: give the pattern in kwargs, e.g. {pattern: '^<think>.+</think>'}")
    pat = re.compile(pattern, re.DOTALL | (re.IGNORECASE if ignore_case else 0))
    match = pat.fullmatch if full else pat.search
    return [1.0 if match(r) else 0.0 for r in responses]


BUILTIN = {"contains_word": contains_word, "short": short, "length": length, "think_format": think_format, "regex": regex}


def load_reward_fn(spec: str) -> RewardFn:
    """``name`` of a built-in, or ``module.path:function``."""
    if spec in BUILTIN:
        return BUILTIN[spec]
    if ":" not in spec:
        raise ValueError(f"stage.reward.function={spec!r}: a built-in ({', '.join(BUILTIN)}) or 'module.path:function'")
    mod, _, name = spec.partition(":")
    try:
        fn: Any = getattr(importlib.import_module(mod), name)
    except (ImportError, AttributeError) as e:
        raise ValueError(f"stage.reward.function={spec!r}: cannot load it ({e})") from None
    if not callable(fn):
        raise ValueError(f"stage.reward.function={spec!r} is not callable")
    return fn
