"""Rule-based (verifiable) reward functions for PPO, and the loader for user-supplied ones.

A reward function takes the prompts and the decoded responses of a batch and returns one float
per response::

    def my_reward(prompts: list[str], responses: list[str], **kwargs) -> list[float]

Select one with ``stage.reward.function=package.module:function`` and its keyword arguments
with ``stage.reward.kwargs``; ``contains_word`` and ``short`` below are built in (give the bare
name).
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


BUILTIN = {"contains_word": contains_word, "short": short}


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
