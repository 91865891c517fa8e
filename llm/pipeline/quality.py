"""Quality classifier: ``train`` a fastText n-gram linear model on reference text (positive)
against crawl text (negative), ``apply`` it to score every document, and keep by a rule:

- ``threshold``: keep when the score is at least ``threshold``;
- ``pareto`` (GPT-3, Brown et al. 2020, appendix A): keep when ``np.random.pareto(alpha) > 1 -
  score`` with ``alpha`` = 9, so most high-scoring and a few low-scoring documents survive. The
  draw is seeded by the document id, so local and Slurm runs keep the same documents.

Only documents of the sources listed in ``sources`` are judged (default: all); the score is kept
in ``metadata["quality_score"]`` for the report and the mixture.
"""

from __future__ import annotations

import numpy as np
from datatrove.pipeline.filters.base_filter import BaseFilter

from llm.pipeline.classify import FastTextScorer
from llm.pipeline.text import hash64


def pareto_keep(doc_id: str, score: float, alpha: float, seed: int = 0) -> bool:
    return float(np.random.default_rng(hash64(f"{seed}:{doc_id}")).pareto(alpha)) > 1.0 - score


class QualityFilter(BaseFilter):
    name = "quality"
    type = "⭐ - QUALITY"

    def __init__(
        self,
        model: str,
        rule: str = "threshold",
        threshold: float = 0.5,
        alpha: float = 9.0,
        sources=None,
        seed: int = 0,
        exclusion_writer=None,
    ):
        super().__init__(exclusion_writer)
        if rule not in ("threshold", "pareto"):
            raise ValueError(f"quality.keep.rule must be 'threshold' or 'pareto', got {rule!r}")
        self.model_path, self.rule, self.threshold, self.alpha = model, rule, threshold, alpha
        self.sources = set(sources) if sources else None
        self.seed = seed
        self._scorer = None

    def filter(self, doc):
        if self.sources is not None and doc.metadata.get("source") not in self.sources:
            return True
        if self._scorer is None:
            self._scorer = FastTextScorer(self.model_path)
        score = self._scorer(doc.text)
        doc.metadata["quality_score"] = round(score, 4)
        if self.rule == "threshold":
            keep = score >= self.threshold
        else:
            keep = pareto_keep(doc.id, score, self.alpha, self.seed)
        return True if keep else (False, f"quality_{self.rule}")
