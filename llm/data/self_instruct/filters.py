"""Self-instruct filters: ROUGE-L similarity with a ``DedupIndex`` for near-duplicates, and the
quality filters of instructions, inputs and answers (``*_drop_reason``, ``FilterConfig``)."""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

# --------------------------------------------------------------------------------------------
# ROUGE-L
# --------------------------------------------------------------------------------------------

# Han (with extension A and compatibility ideographs), hiragana/katakana, Hangul syllables
_CJK = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uac00-\ud7af"
_TOKEN_RE = re.compile(rf"[{_CJK}]|(?:(?![{_CJK}])[^\W_])+")


def tokenize(text: str) -> list[str]:
    """Lower-cased words (runs of letters and digits); each CJK character is a token of its own."""
    return _TOKEN_RE.findall(text.lower())


def lcs_length(a: Sequence[Any], b: Sequence[Any]) -> int:
    """Length of the longest common subsequence (dynamic programming, O(len(a) * len(b)))."""
    if len(a) < len(b):
        a, b = b, a
    if not b:
        return 0
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b):
            cur.append(prev[j] + 1 if x == y else max(prev[j + 1], cur[j]))
        prev = cur
    return prev[-1]


def _f1_from_tokens(a: Sequence[str], b: Sequence[str]) -> float:
    if not a or not b:
        return 0.0
    lcs = lcs_length(a, b)
    if lcs == 0:
        return 0.0
    p, r = lcs / len(a), lcs / len(b)
    return 2 * p * r / (p + r)


def rouge_l(candidate: str, reference: str) -> float:
    """ROUGE-L F1 of two texts: LCS over ``tokenize`` tokens; P = LCS/|cand|, R = LCS/|ref|.

    Symmetric. 0.0 when either text has no tokens.
    """
    return _f1_from_tokens(tokenize(candidate), tokenize(reference))


class DedupIndex:
    """Texts to compare new ones against by ROUGE-L.

    Pairs that cannot reach the score sought are skipped with a cheap upper bound on the LCS:
    a token of one text that the other lacks is not in their LCS, so with ``u`` distinct
    tokens in common, LCS <= min(m - |set_a| + u, n - |set_b| + u) for lengths m and n. Most
    unrelated pairs cost one set intersection instead of the O(m * n) dynamic programme.
    """

    def __init__(self, texts: Iterable[str] = ()) -> None:
        self._entries: list[tuple[tuple[str, ...], frozenset[str]]] = []
        self.texts: list[str] = []
        for t in texts:
            self.add(t)

    def __len__(self) -> int:
        return len(self.texts)

    def add(self, text: str) -> None:
        toks = tuple(tokenize(text))
        self.texts.append(text)
        self._entries.append((toks, frozenset(toks)))

    def most_similar(self, text: str, threshold: float = 0.0) -> tuple[float, str | None]:
        """The most similar indexed text and its ROUGE-L F1.

        With ``threshold`` > 0 the search stops at the first text scoring >= threshold and
        skips texts that cannot reach it, so a score below the threshold is only a lower
        bound of the best one (enough to say "no near-duplicate").
        """
        toks = tuple(tokenize(text))
        n = len(toks)
        if not n:
            return 0.0, None
        token_set = frozenset(toks)
        best, best_text = 0.0, None
        for (other, other_set), other_text in zip(self._entries, self.texts):
            m = len(other)
            if not m:
                continue
            common = len(token_set & other_set)
            bound = 2 * min(n - len(token_set) + common, m - len(other_set) + common) / (n + m)
            if bound <= best or bound < threshold:
                continue
            score = _f1_from_tokens(toks, other)
            if score > best:
                best, best_text = score, other_text
                if threshold > 0 and best >= threshold:
                    break
        return best, best_text


# --------------------------------------------------------------------------------------------
# Quality filters
# --------------------------------------------------------------------------------------------


UNSUPPORTED_WORDS = (
    "image", "images", "graph", "graphs", "picture", "pictures", "file", "files", "map", "maps",
    "draw", "plot", "go to", "video", "audio", "music", "flowchart", "diagram",
)  # fmt: skip
_UNSUPPORTED_RE = re.compile(r"\b(?:" + "|".join(re.escape(w) for w in UNSUPPORTED_WORDS) + r")\b", re.IGNORECASE)
_REFUSAL_RE = re.compile(
    r"^\W*(?:as an ai\b|as a language model|i(?:'m| am) (?:sorry|unable|not able)|sorry,? (?:but )?i|"
    r"i (?:cannot|can't|can not|won't) (?:help|assist|provide|answer|do|complete|fulfil|fulfill))",
    re.IGNORECASE,
)


@dataclass
class FilterConfig:
    """Thresholds of the filters (defaults follow the paper where it gives one)."""

    min_words: int = 3
    max_words: int = 150
    similarity: float = 0.7  # ROUGE-L F1 at or above which an instruction is a near-duplicate
    answer_repeat_similarity: float = 0.8  # ROUGE-L F1 of answer vs instruction
    min_printable: float = 0.95
    min_letters: float = 0.3
    keep_truncated: bool = False


def _is_text(text: str, cfg: FilterConfig) -> bool:
    if not text:
        return False
    printable = sum(1 for c in text if (c.isprintable() or c in "\n\t") and c != "\ufffd")
    if printable / len(text) < cfg.min_printable:
        return False
    visible = [c for c in text if not c.isspace()]
    if not visible:
        return False
    letters = sum(1 for c in visible if c.isalpha())
    return letters / len(visible) >= cfg.min_letters


def instruction_drop_reason(instruction: str, cfg: FilterConfig | None = None) -> str | None:
    """Why an instruction is malformed or unsuitable, or ``None`` to keep it (duplicates are
    checked separately)."""
    cfg = cfg or FilterConfig()
    if not instruction.strip():
        return "empty"
    if not _is_text(instruction, cfg):
        return "not_text"
    n = len(tokenize(instruction))
    if n < cfg.min_words:
        return "too_short"
    if n > cfg.max_words:
        return "too_long"
    first = instruction.lstrip()[0]
    if unicodedata.category(first).startswith("P") and first not in "\"'“‘([¿¡«「『":
        return "starts_with_punctuation"
    if _UNSUPPORTED_RE.search(instruction):
        return "unsupported"
    if instruction.lower().lstrip().startswith("write a program"):
        return "write_a_program"
    return None


def input_drop_reason(instruction: str, inp: str, truncated: bool = False, cfg: FilterConfig | None = None) -> str | None:
    """Why an input (already parsed, ``""`` for none) is unusable, or ``None``."""
    cfg = cfg or FilterConfig()
    if truncated and not cfg.keep_truncated:
        return "truncated"
    if not inp:
        return None
    if not _is_text(inp, FilterConfig(min_printable=cfg.min_printable, min_letters=0.0)):
        return "not_text"
    if rouge_l(inp, instruction) >= cfg.answer_repeat_similarity:
        return "repeats_instruction"
    return None


def answer_drop_reason(
    instruction: str, answer: str, truncated: bool = False, cfg: FilterConfig | None = None, *, inp: str = ""
) -> str | None:
    """Why an answer (to ``instruction`` with input ``inp``) is unusable, or ``None``."""
    cfg = cfg or FilterConfig()
    if not answer.strip():
        return "empty"
    if truncated and not cfg.keep_truncated:
        return "truncated"
    if not _is_text(answer, FilterConfig(min_printable=cfg.min_printable, min_letters=0.0)):
        return "not_text"
    if rouge_l(answer, instruction) >= cfg.answer_repeat_similarity:
        return "repeats_instruction"
    if inp and tokenize(answer) == tokenize(inp):
        return "repeats_input"
    if _REFUSAL_RE.match(answer):
        return "refusal"
    return None
