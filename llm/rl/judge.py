"""A reward from an LLM judge behind an OpenAI-compatible ``/v1/chat/completions`` endpoint.

Each (prompt, response[, reference answer]) becomes one user message from a template; the judge's
replies are read for a score (:func:`parse_score`) and normalised to [0, 1]. The HTTP client is the
self-instruct one (:class:`llm.data.self_instruct.teachers.HTTPTeacher`): requests run
``max_concurrency`` at a time in a thread pool, 429 / 5xx / connection errors are retried with
exponential backoff, and a request that still fails stops training with an error naming the URL.
A reply with no readable score scores 0 and is counted (:attr:`Judge.unparseable`).
"""

from __future__ import annotations

import logging
import os
import re
import socket
import urllib.parse
from collections.abc import Sequence

from llm.data.self_instruct.teachers import HTTPTeacher, TeacherError

log = logging.getLogger(__name__)

DEFAULT_TEMPLATE = (
    "You are grading an assistant's answer.\n\n"
    "Question:\n{prompt}\n\n"
    "Reference answer (may be empty):\n{answer}\n\n"
    "Assistant's answer:\n{response}\n\n"
    "Rate the assistant's answer from 0 (wrong or useless) to {max_score} (correct and helpful). "
    "Reply with the score only, as 'Score: <number>'."
)
PLACEHOLDERS = ("{prompt}", "{response}", "{answer}", "{max_score}")

_SCORE = re.compile(r"score\s*[:=]?\s*\**\s*([+-]?\d+(?:\.\d+)?)", re.IGNORECASE)
_NUMBER = re.compile(r"(?<![\w.])([+-]?\d+(?:\.\d+)?)")


def parse_score(reply: str, max_score: float = 10.0) -> float | None:
    """The judge's score in ``reply`` divided by ``max_score``: the number after the last
    ``Score:`` (``score =``, ``**Score:** 7``), else the first number in the reply (``8/10`` reads
    8). None when there is none or it lies outside ``[0, max_score]``."""
    m = _SCORE.findall(reply)
    text = m[-1] if m else None
    if text is None:
        n = _NUMBER.search(reply)
        text = n.group(1) if n else None
    if text is None:
        return None
    value = float(text)
    if not 0.0 <= value <= max_score:
        return None
    return value / max_score


def render(template: str, prompt: str, response: str, answer: str = "", max_score: float = 10.0) -> str:
    """The template with ``{prompt}``, ``{response}``, ``{answer}`` and ``{max_score}`` replaced
    (plain replacement: other braces, e.g. ``\\boxed{}``, are left as they are)."""
    ms = f"{max_score:g}"
    out = []
    for piece in re.split(r"(\{prompt\}|\{response\}|\{answer\}|\{max_score\})", template):
        out.append({"{prompt}": prompt, "{response}": response, "{answer}": answer, "{max_score}": ms}.get(piece, piece))
    return "".join(out)


def check_reachable(url: str, timeout: float = 5.0) -> None:
    """Raise :class:`TeacherError` naming ``url`` when no TCP connection to its host and port opens
    within ``timeout`` seconds (the judge is down, or the URL is wrong)."""
    p = urllib.parse.urlsplit(url)
    port = p.port or (443 if p.scheme == "https" else 80)
    try:
        with socket.create_connection((p.hostname or "", port), timeout=timeout):
            pass
    except OSError as e:
        raise TeacherError(f"stage.reward.judge.url={url}: the judge endpoint is unreachable ({e})") from None


class Judge:
    """Scores responses with an LLM judge; ``calls``, ``unparseable`` count replies over its life."""

    def __init__(
        self,
        url: str,
        model: str = "default",
        *,
        prompt_template: str = DEFAULT_TEMPLATE,
        max_score: float = 10.0,
        api_key_env: str | None = None,
        timeout: float = 60.0,
        retries: int = 3,
        backoff: float = 1.0,
        max_concurrency: int = 8,
        max_tokens: int = 16,
        temperature: float = 0.0,
        check: bool = True,
    ) -> None:
        if "{response}" not in prompt_template:
            raise ValueError("stage.reward.judge.prompt_template must contain {response} (the answer to grade)")
        if max_score <= 0:
            raise ValueError(f"stage.reward.judge.max_score={max_score}: must be positive")
        api_key = None
        if api_key_env:
            api_key = os.environ.get(api_key_env)
            if not api_key:
                raise TeacherError(f"stage.reward.judge.api_key_env={api_key_env}: the environment variable is unset or empty")
        self.client = HTTPTeacher(
            url,
            model,
            temperature=temperature,
            max_tokens=max_tokens,
            api_key=api_key,
            timeout=timeout,
            retries=retries,
            backoff=backoff,
            concurrency=max_concurrency,
        )
        self.url = self.client.url
        self.template = prompt_template
        self.max_score = max_score
        self.calls = 0
        self.unparseable = 0
        if check:
            check_reachable(self.url, min(timeout, 10.0))

    def messages(self, prompt: str, response: str, answer: str = "") -> list[dict[str, str]]:
        return [{"role": "user", "content": render(self.template, prompt, response, answer, self.max_score)}]

    def score(self, prompts: Sequence[str], responses: Sequence[str], answers: Sequence[str] | None = None) -> list[float]:
        """One score in [0, 1] per response (0 for an unparseable reply, counted and logged)."""
        if len(prompts) != len(responses) or (answers is not None and len(answers) != len(responses)):
            raise ValueError(f"{len(prompts)} prompts, {len(responses)} responses, {len(answers or [])} answers")
        refs = answers if answers is not None else [""] * len(responses)
        replies = self.client.complete([self.messages(p, r, a) for p, r, a in zip(prompts, responses, refs, strict=True)])
        out, bad = [], 0
        for reply in replies:
            s = parse_score(reply, self.max_score)
            if s is None:
                bad += 1
                if self.unparseable + bad <= 5:
                    log.warning("judge %s: no score in its reply %r; scored 0", self.url, reply[:200])
                s = 0.0
            out.append(s)
        self.calls += len(replies)
        self.unparseable += bad
        return out
