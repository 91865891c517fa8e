"""Gopher / C4 heuristic quality rules, CJK-aware, thresholds in config.

Rules follow Gopher (Rae et al. 2021, appendix A) and C4 (Raffel et al. 2020) as implemented by
datatrove's ``GopherQualityFilter`` / ``GopherRepetitionFilter`` / ``C4QualityFilter``, with two
changes measured on real pages:

- Words come from ``llm.pipeline.text.words`` (a regex; every CJK character is a word), not from
  spaCy, which datatrove needs for every word rule and which has no Chinese word splitter without
  extra models. For CJK documents the rules that assume spaces (mean word length, stop words by
  default) are off, and lengths are counted in characters.
- C4's "every line must end in terminal punctuation" is off by default (``c4_terminal_punct``):
  it deletes every bullet item and heading, and a clean bulleted list with emoji must survive.

- The n-gram repetition rules (``top_ngram_max_fraction``, ``dup_ngram_max_fraction``) count
  Chinese in words (``repetition_words: jieba``): with a character as a "word", a 5-gram is five
  characters, and clean Chinese documentation repeats those three times as often as its English
  original repeats word 5-grams (median share of characters 0.104 vs 0.032 over the 17 chapters of
  the Debian FAQ; 3 chapters dropped, 39% of the characters). In jieba words the Chinese chapters
  look like the English ones (median 0.046, none over 0.15), so the English thresholds apply
  unchanged: 98.9% of the Chinese characters kept, 100% of the English. Text in another CJK language, for which no segmenter is installed (Japanese), is
  counted in characters with every n doubled (``cjk_chars_per_word: 2``, about the characters of
  a Chinese word). ``python -m llm.bench.data_lang`` measures both on the Debian FAQ.
- C4's policy-line rule (and its cookie-consent and newsletter phrases) removes only lines of at
  most ``c4_policy_max_chars`` characters: a banner is a sentence or two, a 600-character
  paragraph that ends "... see our privacy policy" is content.

Thresholds are read per language (``default``, then ``CJK_DEFAULTS`` for CJK text, then
``<lang>``; the pipeline config's ``heuristics.languages`` holds ``LANGUAGE_DEFAULTS``) and per
source (``sources.<name>``), e.g. short fortunes need a lower ``min_words`` than web pages.
"""

from __future__ import annotations

import re
from collections import Counter

from datatrove.pipeline.filters.base_filter import BaseFilter

from llm.pipeline.text import CJK_LANGUAGES, is_cjk, jieba_words, words

DEFAULTS = {
    "min_words": 50,
    "max_words": 100_000,
    "min_mean_word_length": 3.0,
    "max_mean_word_length": 10.0,
    "max_symbol_word_ratio": 0.1,
    "max_bullet_lines_ratio": 0.9,
    "max_ellipsis_lines_ratio": 0.3,
    "min_alpha_words_ratio": 0.8,
    "min_stop_words": 2,
    "max_dup_line_fraction": 0.3,
    "max_dup_line_char_fraction": 0.2,
    "max_dup_para_fraction": 0.3,
    "max_dup_para_char_fraction": 0.2,
    "top_ngram_max_fraction": {2: 0.2, 3: 0.18, 4: 0.16},
    "dup_ngram_max_fraction": {5: 0.15, 6: 0.14, 7: 0.13, 8: 0.12, 9: 0.11, 10: 0.10},
    "c4_lorem_ipsum": True,
    "c4_policy_lines": True,
    "c4_policy_max_chars": 300,
    "c4_terminal_punct": False,
    "repetition_words": "regex",
    "cjk_chars_per_word": 1,
}
REPETITION_WORDS = ("regex", "jieba")  # how the n-gram repetition rules split words
# The pipeline config's defaults of ``heuristics.languages`` (``llm/pipeline/config.py``),
# measured on the Debian FAQ in Chinese against its English original (``python -m llm.bench.data_lang``).
LANGUAGE_DEFAULTS = {
    "zh": {"repetition_words": "jieba"},
    "ja": {"cjk_chars_per_word": 2},
}
STOP_WORDS = {
    "en": {"the", "be", "to", "of", "and", "that", "have", "with"},
    "zh": set("的了是在不我有这人他你们就也和"),
}
CJK_DEFAULTS = {
    "min_words": 20,
    "min_mean_word_length": None,
    "max_mean_word_length": None,
    "min_stop_words": 0,
    "min_alpha_words_ratio": 0.5,
}

BULLETS = ("•", "●", "○", "▪", "■", "◦", "‣", "-", "*", "–", "—", "·")
_ELLIPSIS = ("...", "…")
_POLICY = re.compile(
    r"terms of use|privacy policy|cookie policy|uses cookies|use of cookies|use cookies|"
    r"javascript.{0,30}(enable|disabled|required)|"
    # cookie consent and newsletter sign-up text that no element marks
    r"accept (all )?cookies|cookie (settings|preferences|consent)|"
    r"(subscribe|sign up|signup|join).{0,30}newsletter|newsletter.{0,30}(subscribe|sign up)|enter your e-?mail|"
    r"使用\s*cookie|隐私政策|订阅.{0,6}(新闻|邮件|电子报)",
    re.I,
)
_TERMINAL = (".", "!", "?", '"', "'", "。", "！", "？", "”", "」", "…")


def check_value(key: str, value) -> str | None:
    """What is wrong with a threshold's value (``None``: nothing), for the keys whose values are
    a choice or must be positive."""
    if key == "repetition_words" and value not in REPETITION_WORDS:
        return f"one of {list(REPETITION_WORDS)}"
    if key in ("cjk_chars_per_word", "c4_policy_max_chars") and not (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
        return "a positive integer"
    return None


def _merge(base: dict, over: dict | None) -> dict:
    out = dict(base)
    for k, v in (over or {}).items():
        if k not in DEFAULTS:
            raise ValueError(f"heuristics: unknown threshold {k!r}; known: {sorted(DEFAULTS)}")
        bad = check_value(k, v)
        if bad:
            raise ValueError(f"heuristics: {k}={v!r}: must be {bad}")
        out[k] = {int(a): float(b) for a, b in v.items()} if isinstance(v, dict) else v
    return out


def repetition_words(text: str, t: dict, cjk: bool) -> tuple[list[str], int]:
    """The words the n-gram repetition rules count in, and the factor their n is multiplied by:
    jieba's words (``repetition_words: jieba``), else regex words (a CJK character each) with n
    times ``cjk_chars_per_word`` for CJK text."""
    if t["repetition_words"] == "jieba":
        return jieba_words(text), 1
    return words(text), t["cjk_chars_per_word"] if cjk else 1


def _dup_stats(items: list[str]) -> tuple[float, float]:
    """Fraction of items that repeat an earlier one, and the fraction of characters in them."""
    seen: set[str] = set()
    dup = dup_chars = 0
    for it in items:
        if it in seen:
            dup += 1
            dup_chars += len(it)
        seen.add(it)
    total_chars = sum(map(len, items)) or 1
    return dup / max(1, len(items)), dup_chars / total_chars


def _top_ngram_fraction(ws: list[str], n: int) -> float:
    grams = [" ".join(ws[i : i + n]) for i in range(len(ws) - n + 1)]
    if not grams:
        return 0.0
    gram, count = Counter(grams).most_common(1)[0]
    if count < 2:  # an n-gram seen once repeats nothing (Gopher's rule, for documents of any length)
        return 0.0
    return (len(gram) - (n - 1)) * count / max(1, sum(map(len, ws)))  # characters without the joining spaces


def _dup_ngram_fraction(ws: list[str], n: int) -> float:
    total = sum(map(len, ws)) or 1
    seen: set[tuple] = set()
    covered = [False] * len(ws)
    for i in range(len(ws) - n + 1):
        g = tuple(ws[i : i + n])
        if g in seen:
            for j in range(i, i + n):
                covered[j] = True
        seen.add(g)
    return sum(len(w) for w, c in zip(ws, covered) if c) / total


class HeuristicFilter(BaseFilter):
    name = "heuristics"
    type = "🔻 - FILTER"

    def __init__(self, default: dict | None = None, languages: dict | None = None, sources: dict | None = None, exclusion_writer=None):
        super().__init__(exclusion_writer)
        self.base = _merge(DEFAULTS, default)
        self.languages = {k: dict(v or {}) for k, v in (languages or {}).items()}
        self.sources = {k: dict(v or {}) for k, v in (sources or {}).items()}
        for over in list(self.languages.values()) + list(self.sources.values()):
            _merge(DEFAULTS, over)  # validate keys early
        self._cache: dict[str, dict] = {}  # str keys: datatrove writes the blocks' state to executor.json

    def thresholds(self, lang: str, source: str, cjk: bool) -> dict:
        key = f"{lang}|{source}|{int(cjk)}"
        if key not in self._cache:
            t = _merge(self.base, CJK_DEFAULTS if cjk else None)
            t = _merge(t, self.languages.get(lang))
            self._cache[key] = _merge(t, self.sources.get(source))
        return self._cache[key]

    def filter(self, doc) -> bool | tuple[bool, str]:
        text = doc.text
        lang = doc.metadata.get("language", "en")
        cjk = lang in CJK_LANGUAGES or is_cjk(text)
        t = self.thresholds(lang, doc.metadata.get("source", ""), cjk)
        lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
        ws = words(text)
        n = len(ws)
        # --- C4 rules
        if t["c4_lorem_ipsum"] and "lorem ipsum" in text.lower():
            return False, "c4_lorem_ipsum"
        if t["c4_policy_lines"] or t["c4_terminal_punct"]:
            kept = [
                ln
                for ln in lines
                if not (t["c4_policy_lines"] and len(ln) <= t["c4_policy_max_chars"] and _POLICY.search(ln))
                and not (t["c4_terminal_punct"] and not ln.endswith(_TERMINAL))
            ]
            if len(kept) != len(lines):
                self.stat_update("c4_lines_removed", value=len(lines) - len(kept))
                text = "\n".join(kept)
                doc.text, lines, ws = text, kept, words(text)
                n = len(ws)
        # --- Gopher quality
        if n < t["min_words"]:
            return False, "gopher_short_document"
        if n > t["max_words"]:
            return False, "gopher_long_document"
        if not cjk and t["min_mean_word_length"] is not None:
            mean = sum(map(len, ws)) / n
            if mean < t["min_mean_word_length"] or (t["max_mean_word_length"] and mean > t["max_mean_word_length"]):
                return False, "gopher_mean_word_length"
        symbols = text.count("#") + text.count("...") + text.count("…")
        if symbols / n > t["max_symbol_word_ratio"]:
            return False, "gopher_symbol_word_ratio"
        if lines and sum(ln.startswith(BULLETS) for ln in lines) / len(lines) > t["max_bullet_lines_ratio"]:
            return False, "gopher_bullet_lines"
        if lines and sum(ln.endswith(_ELLIPSIS) for ln in lines) / len(lines) > t["max_ellipsis_lines_ratio"]:
            return False, "gopher_ellipsis_lines"
        tokens = text.split() if not cjk else ws
        if tokens:
            alpha = sum(any(c.isalpha() for c in w) for w in tokens) / len(tokens)
            if alpha < t["min_alpha_words_ratio"]:
                return False, "gopher_alpha_words"
        stop = STOP_WORDS.get(lang)
        if t["min_stop_words"] and stop is not None:
            found = sum(1 for w in ws if w.lower() in stop)
            if found < t["min_stop_words"]:
                return False, "gopher_stop_words"
        # --- Gopher repetition
        paras = [p.strip() for p in re.split(r"\n\s*\n", text) if p.strip()]
        frac, chars = _dup_stats(paras)
        if frac > t["max_dup_para_fraction"] or chars > t["max_dup_para_char_fraction"]:
            return False, "gopher_dup_paragraphs"
        frac, chars = _dup_stats(lines)
        if frac > t["max_dup_line_fraction"] or chars > t["max_dup_line_char_fraction"]:
            return False, "gopher_dup_lines"
        rep, scale = repetition_words(text, t, cjk)
        low = [w.lower() for w in rep]
        for k, mx in t["top_ngram_max_fraction"].items():
            if _top_ngram_fraction(low, k * scale) > mx:
                return False, f"gopher_top_{k}gram"
        for k, mx in t["dup_ngram_max_fraction"].items():
            if _dup_ngram_fraction(low, k * scale) > mx:
                return False, f"gopher_dup_{k}gram"
        return True
