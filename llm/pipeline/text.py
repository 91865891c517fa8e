"""Text helpers shared by the blocks: word splitting that needs no model (CJK as characters),
Chinese words (jieba) for the repetition rules, and table rows as the extractors render them."""

from __future__ import annotations

import hashlib
import logging
import re
import unicodedata

# CJK Unified Ideographs (+ext A), compatibility ideographs, kana, hangul syllables
_CJK = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\u3040-\u30ff\uac00-\ud7af]")
_WORD = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\u3040-\u30ff\uac00-\ud7af]|[^\W_]+(?:['’][^\W_]+)*", re.UNICODE)
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
_SPACES = re.compile(r"\s+")
_NON_WORD = re.compile(r"[\W_]+")  # punctuation, symbols and white space: one pass

CJK_LANGUAGES = frozenset({"zh", "ja", "ko"})


def cjk_ratio(text: str) -> float:
    """Fraction of non-space characters that are CJK ideographs, kana or hangul."""
    chars = len(text) - text.count(" ") - text.count("\n")
    return len(_CJK.findall(text)) / chars if chars > 0 else 0.0


def is_cjk(text: str, threshold: float = 0.2) -> bool:
    return cjk_ratio(text) >= threshold


def words(text: str) -> list[str]:
    """Words of space-delimited scripts; every CJK character counts as one word."""
    return _WORD.findall(text)


_HAS_WORD = re.compile(r"[^\W_]")


def jieba_words(text: str) -> list[str]:
    """Chinese words (jieba's default dictionary, HMM for unknown words); punctuation and white
    space are left out, Latin words stay whole. About 470k characters/s on one core here; the
    dictionary loads once per process (~1 s)."""
    try:
        import jieba
    except ImportError as e:
        raise ImportError(
            "jieba splits Chinese into words for the repetition rules (heuristics repetition_words=jieba): "
            "pip install -e '.[data]', or set heuristics.languages.zh.repetition_words=regex"
        ) from e
    if not jieba.dt.initialized:
        jieba.setLogLevel(logging.WARNING)  # no "Building prefix dict" chatter per worker
    return [w for w in jieba.lcut(text) if _HAS_WORD.search(w)]


_TABLE_ROW = re.compile(r"\S\t+\S|\S\s+\|\s+\S.*\|\s*$")


def is_table_row(line: str) -> bool:
    """A row of a table of two or more cells as the extractors render it: resiliparse separates
    cells by tabs (``a\t\tb``), trafilatura by bars (``a | b |``)."""
    return bool(_TABLE_ROW.search(line.strip()))


def strip_ansi(text: str) -> str:
    return _ANSI.sub("", text)


def normalize(text: str) -> str:
    """Normalisation for exact-duplicate hashing: NFKC, lower case, no punctuation, one space."""
    return _NON_WORD.sub(" ", unicodedata.normalize("NFKC", text).lower()).strip()


def normalize_line(line: str) -> str:
    return _SPACES.sub(" ", unicodedata.normalize("NFKC", line)).strip().lower()


def hash64(key: str) -> int:
    """A reproducible 64-bit hash of ``key`` (the same on every machine and executor)."""
    return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "little")


def unit_hash(key: str) -> float:
    """A reproducible draw in [0, 1) from ``key``."""
    return hash64(key) / 2**64


def fasttext_tokens(text: str) -> str:
    """One line of space-separated tokens for fastText: lower-cased words, CJK characters apart."""
    return " ".join(w.lower() for w in words(text))
