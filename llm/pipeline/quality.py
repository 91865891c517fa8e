"""Quality classifier: ``train`` a fastText n-gram linear model on reference text (positive)
against crawl text (negative), ``apply`` it to score every document, and keep by a rule:

- ``threshold``: keep when the score is at least ``threshold``;
- ``pareto`` (GPT-3, Brown et al. 2020, appendix A): keep when ``np.random.pareto(alpha) > 1 -
  score`` with ``alpha`` = 9, so most high-scoring and a few low-scoring documents survive. The
  draw is seeded by the document id, so local and Slurm runs keep the same documents.

Only documents of the sources listed in ``sources`` are judged (default: all); the score is kept
in ``metadata["quality_score"]`` for the report and the mixture.

``keep_fraction`` (``quality.keep.keep_fraction``) replaces a fixed threshold by one chosen for
a target share of kept documents: ``QualityThreshold`` (the one-task step after the filter
stage) scores the judged documents that reached it and writes the matching quantile
(``threshold_for_keep_fraction``) to ``<work>/models/quality_threshold.json``, which every
final task reads.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import numpy as np
from datatrove.pipeline.filters.base_filter import BaseFilter

from llm.data.shards import atomic_write_json
from llm.pipeline.classify import FastTextScorer
from llm.pipeline.text import hash64
from llm.pipeline.writers import read_jsonl_gz

log = logging.getLogger(__name__)


def threshold_for_keep_fraction(scores, keep_fraction: float) -> float:
    """The score threshold (keep a score >= it) that keeps ``keep_fraction`` of ``scores``: the
    ``ceil(keep_fraction * n)``-th highest score, so at least that share is kept (more when
    scores tie at the threshold). ``keep_fraction`` in (0, 1]; ``scores`` not empty."""
    if not 0 < keep_fraction <= 1:
        raise ValueError(f"keep_fraction={keep_fraction}: a fraction in (0, 1]")
    s = np.sort(np.asarray(list(scores), float))[::-1]
    if len(s) == 0:
        raise ValueError("no scores to choose a threshold from")
    k = max(1, math.ceil(keep_fraction * len(s) - 1e-9))
    return float(s[k - 1])


def read_threshold(path: str | Path) -> float:
    f = Path(path)
    if not f.is_file():
        raise FileNotFoundError(f"{f}: the quality threshold for quality.keep.keep_fraction is missing (the cluster stage writes it)")
    return float(json.loads(f.read_text())["threshold"])


class QualityThreshold:
    """Score the judged documents of ``folder`` (the filter stage's output) and write the
    threshold keeping ``keep_fraction`` of them to ``out`` (JSON: threshold, keep_fraction,
    documents); one task, idempotent."""

    name = "quality_threshold"

    def __init__(self, folder: str, model: str, out: str, keep_fraction: float, sources=None):
        self.folder, self.model, self.out, self.keep_fraction = folder, model, Path(out), keep_fraction
        self.sources = set(sources) if sources else None

    def run(self, data=None, rank: int = 0, world_size: int = 1):
        if self.out.is_file():
            return iter(())
        scorer = FastTextScorer(self.model)
        scores = [
            scorer(rec["text"])
            for rec in read_jsonl_gz(self.folder)
            if self.sources is None or rec.get("metadata", {}).get("source") in self.sources
        ]
        if scores:
            threshold = threshold_for_keep_fraction(scores, self.keep_fraction)
            kept = sum(s >= threshold for s in scores) / len(scores)
        else:
            threshold, kept = 0.5, None
        atomic_write_json(
            self.out,
            {"threshold": round(threshold, 6), "keep_fraction": self.keep_fraction, "documents": len(scores), "kept_fraction": kept},
        )
        log.info(
            "quality threshold %.4f keeps %s of %d scored documents (quality.keep.keep_fraction=%s)",
            threshold,
            f"{kept:.3f}" if kept is not None else "-",
            len(scores),
            self.keep_fraction,
        )
        return iter(())


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
        threshold_file: str | None = None,
        exclusion_writer=None,
    ):
        super().__init__(exclusion_writer)
        if rule not in ("threshold", "pareto"):
            raise ValueError(f"quality.keep.rule must be 'threshold' or 'pareto', got {rule!r}")
        self.model_path, self.rule, self.threshold, self.alpha = model, rule, threshold, alpha
        self.sources = set(sources) if sources else None
        self.seed = seed
        self.threshold_file = threshold_file  # quality.keep.keep_fraction: the threshold chosen after the filter stage
        self._scorer = None

    def filter(self, doc):
        if self.sources is not None and doc.metadata.get("source") not in self.sources:
            return True
        if self._scorer is None:
            self._scorer = FastTextScorer(self.model_path)
            if self.threshold_file:
                self.threshold = read_threshold(self.threshold_file)
        score = self._scorer(doc.text)
        doc.metadata["quality_score"] = round(score, 4)
        if self.rule == "threshold":
            keep = score >= self.threshold
        else:
            keep = pareto_keep(doc.id, score, self.alpha, self.seed)
        return True if keep else (False, f"quality_{self.rule}")
