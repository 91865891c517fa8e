"""Harmful-content filter: word and URL blocklists plus a trainable classifier, per language.

- Word blocklists: English uses datatrove's list (``assets/banned_words.txt``, the LDNOOBW-style
  list C4 used); Chinese uses ``llm/pipeline/assets/blocklist_zh.txt``; ``blocklists.<lang>``
  adds files. C4 dropped a page on a single hit, which also drops Bible chapters that say
  "whore" and Python's documentation ("xxx" placeholders, ``cum_weights``); here a document is
  dropped when it has at least ``min_hits`` occurrences (default 2) *and* they are at least
  ``min_hit_ratio`` of its words (default 0.01). Sources named in ``skip_sources`` are trusted.
- URL blocklist: banned words and sub-words of datatrove's URL filter in the URL, and
  optionally a domain list file (``url_domains``: one domain per line; datatrove's UT1 adult
  list has 4.5 M domains and costs ~0.5 GB per task, so it is opt-in).
- Classifier: a fastText model per language (``classifier.<lang>``), trained by the pipeline's
  ``classifiers`` stage from labelled examples (``llm/pipeline/assets/harmful_seed.jsonl`` plus
  any ``harmful.train`` files) against benign corpus text; documents scoring above
  ``threshold`` are dropped.

Every removal is counted with its reason (``harmful_blocklist_<lang>``, ``harmful_url``,
``harmful_classifier_<lang>``) and the score is kept in ``metadata["harmful_score"]``.
"""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import urlsplit

from datatrove.pipeline.filters.base_filter import BaseFilter

from llm.pipeline.classify import FastTextScorer
from llm.pipeline.text import words

ASSETS = Path(__file__).parent / "assets"


def _datatrove_asset(name: str) -> Path:
    import datatrove

    return Path(datatrove.__file__).parent / "assets" / name


DEFAULT_BLOCKLISTS = {"en": [str(_datatrove_asset("banned_words.txt"))], "zh": [str(ASSETS / "blocklist_zh.txt")]}


def read_list(path: str | Path) -> set[str]:
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"blocklist not found: {p}")
    out = set()
    for line in p.read_text(encoding="utf-8").splitlines():
        line = line.strip().lower()
        if line and not line.startswith("# "):
            out.add(line.lstrip("#"))
    return out


def load_blocklists(files_by_language: dict) -> tuple[dict[str, set[str]], dict[str, list[str]]]:
    """Per language: single words (matched as words) and phrases or CJK terms (matched as substrings)."""
    words_, phrases = {}, {}
    for lang, files in files_by_language.items():
        terms = set().union(*(read_list(f) for f in files)) if files else set()
        words_[lang] = {t for t in terms if " " not in t and not re.search(r"[\u4e00-\u9fff]", t)}
        phrases[lang] = sorted(terms - words_[lang])
    return words_, phrases


def blocklist_files(extra: dict | None) -> dict[str, list[str]]:
    return {**DEFAULT_BLOCKLISTS, **{k: list(v) for k, v in (extra or {}).items()}}


class HarmfulFilter(BaseFilter):
    name = "harmful"
    type = "☣ - HARMFUL"

    def __init__(
        self,
        blocklists: dict | None = None,
        min_hits: int = 2,
        min_hit_ratio: float = 0.01,
        url_domains: str | None = None,
        classifier: dict | None = None,
        threshold: float = 0.5,
        skip_sources=(),
        exclusion_writer=None,
    ):
        super().__init__(exclusion_writer)
        self.blocklist_files = blocklist_files(blocklists)
        self.min_hits, self.min_hit_ratio = min_hits, min_hit_ratio
        self.url_domains, self.threshold = url_domains, threshold
        self.classifier_paths = dict(classifier or {})
        self.skip_sources = set(skip_sources or ())
        self._loaded = False

    def _load(self):
        self.words, self.phrases = load_blocklists(self.blocklist_files)
        self.url_words = read_list(_datatrove_asset("banned_words.txt"))
        self.url_subwords = read_list(_datatrove_asset("banned_subwords.txt"))
        self.domains = read_list(self.url_domains) if self.url_domains else set()
        self.scorers = {lang: FastTextScorer(p) for lang, p in self.classifier_paths.items() if p}
        self._loaded = True

    def _url_hit(self, url: str) -> bool:
        parts = urlsplit(url.lower())
        host = parts.hostname or ""
        labels = host.split(".")
        if any(".".join(labels[i:]) in self.domains for i in range(len(labels) - 1)):
            return True
        tokens = set(re.split(r"[^a-z0-9]+", host + " " + parts.path))
        return bool(tokens & self.url_words) or any(s in host + parts.path for s in self.url_subwords)

    def filter(self, doc):
        if not self._loaded:
            self._load()
        if doc.metadata.get("source") in self.skip_sources:
            return True
        lang = doc.metadata.get("language", "en")
        url = doc.metadata.get("url")
        if url and self._url_hit(url):
            return False, "harmful_url"
        low = doc.text.lower()
        ws = words(low)
        hits = sum(1 for w in ws if w in self.words.get(lang, ()))
        hits += sum(low.count(p) for p in self.phrases.get(lang, ()))
        if hits >= self.min_hits and hits >= self.min_hit_ratio * max(1, len(ws)):
            doc.metadata["harmful_hits"] = hits
            return False, f"harmful_blocklist_{lang}"
        scorer = self.scorers.get(lang)
        if scorer is not None:
            score = scorer(doc.text)
            doc.metadata["harmful_score"] = round(score, 4)
            self.stat_update("harmful_scored")
            if score > self.threshold:
                return False, f"harmful_classifier_{lang}"
        return True
