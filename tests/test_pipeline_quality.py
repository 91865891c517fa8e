"""The quality classifier's figures and keep rule: the AUC function, the threshold chosen by a
target kept fraction, the warning on a low AUC, and link-list pages (an index, a "List of
Tables") scoring low. Inputs are generated from this repository's own text (tests/pipeline_texts.py),
so nothing here needs a Debian package."""

from __future__ import annotations

import itertools
import json
import math
import random
import statistics
from pathlib import Path

import numpy as np
import pytest
from pipeline_texts import function_index, list_of_tables, page, prose_sections

GENINDEX = sorted(Path("/usr/share/doc/python3.11/html").glob("genindex-*.html"))


def _pair_auc(pos, neg):
    """AUC by its definition: over every (positive, negative) pair, 1 if the positive scores
    higher, 1/2 on a tie."""
    pairs = list(itertools.product(pos, neg))
    return sum(1.0 if p > n else 0.5 if p == n else 0.0 for p, n in pairs) / len(pairs)


def test_roc_auc_is_the_pair_count_with_ties_halved():
    from llm.pipeline.classify import roc_auc

    rng = random.Random(0)
    for _ in range(50):
        pos = [rng.choice([0.1, 0.2, 0.5, 0.7, 0.9, rng.random()]) for _ in range(rng.randint(1, 30))]
        neg = [rng.choice([0.1, 0.2, 0.5, 0.7, rng.random()]) for _ in range(rng.randint(1, 30))]
        assert roc_auc(pos, neg) == pytest.approx(_pair_auc(pos, neg), abs=1e-12)
    assert roc_auc([0.9, 0.8], [0.1, 0.2]) == 1.0
    assert roc_auc([0.1], [0.9]) == 0.0
    assert roc_auc([0.5, 0.5], [0.5]) == 0.5
    assert math.isnan(roc_auc([], [0.5]))
    big = np.random.default_rng(0).random(200_000).round(3)  # many ties, n log n
    assert roc_auc(big[:100_000] + 0.05, big[100_000:]) > 0.5


def test_threshold_for_keep_fraction_keeps_that_share():
    from llm.pipeline.quality import threshold_for_keep_fraction

    scores = np.random.default_rng(1).random(1001)
    for f in (0.1, 0.25, 0.5, 0.9, 1.0):
        t = threshold_for_keep_fraction(scores, f)
        kept = (scores >= t).sum()
        assert kept == math.ceil(f * len(scores)), f  # distinct scores: exactly that many
    assert threshold_for_keep_fraction([0.2, 0.9, 0.9, 0.4], 0.25) == 0.9  # ties at the threshold are kept
    assert threshold_for_keep_fraction([0.3], 0.01) == 0.3  # at least one document
    with pytest.raises(ValueError, match="keep_fraction"):
        threshold_for_keep_fraction(scores, 0.0)


def test_keep_fraction_and_min_auc_are_checked_when_the_config_loads():
    from llm.data.__main__ import load_config
    from llm.pipeline.config import PipelineConfigError

    assert load_config("python_docs", ["quality.keep.keep_fraction=0.8"])["quality"]["keep"]["keep_fraction"] == 0.8
    assert load_config("python_docs", [])["quality"]["min_auc"] == 0.75
    with pytest.raises(PipelineConfigError, match=r"quality.keep.keep_fraction=1.5"):
        load_config("python_docs", ["quality.keep.keep_fraction=1.5"])
    with pytest.raises(PipelineConfigError, match=r"quality.keep.keep_fraction: only the threshold rule"):
        load_config("python_docs", ["quality.keep.keep_fraction=0.5", "quality.keep.rule=pareto"])
    with pytest.raises(PipelineConfigError, match=r"quality.min_auc=2"):
        load_config("python_docs", ["quality.min_auc=2"])


def test_low_auc_is_warned_about():
    from llm.pipeline.report import auc_warnings

    assert auc_warnings({"heldout_auc": 0.95, "eval_auc": 0.9}, 0.75) == []
    (w,) = auc_warnings({"heldout_auc": 0.68, "eval_auc": 0.9}, 0.75)
    assert "heldout_auc=0.680" in w and "quality.min_auc=0.75" in w
    assert len(auc_warnings({"heldout_auc": 0.7, "eval_auc": 0.6}, 0.75)) == 2
    assert auc_warnings({"heldout_auc": None}, 0.75) == [] and auc_warnings(None, 0.75) == []


def test_line_shapes_tell_link_lists_from_prose():
    from llm.pipeline.classify import line_shape_tokens

    prose = "Every summer we keep a list of the fruit that the family ate in the garden, and this year it is long."
    assert line_shape_tokens(prose) == "__ln_long__"
    assert line_shape_tokens("Table 3.1. Packages in Debian\nabs() (built-in function)\n\nIt works.") == (
        "__ln_short__ __ln_short__ __ln_shortp__"
    )
    assert line_shape_tokens("中文的一句话。") == "__ln_shortp__"


def test_link_list_negatives_share_the_positives_words():
    from llm.pipeline.text import words
    from llm.pipeline.train_classifiers import link_list_pages

    texts = [t for _, t in prose_sections()]
    pages = link_list_pages(texts, 20, seed=3)
    assert len(pages) == 20 and pages == link_list_pages(texts, 20, seed=3)
    vocab = {w for t in texts for w in words(t)}
    for p in pages:
        lines = p.splitlines()
        assert len(lines) >= 20
        assert (
            statistics.median(len(words(ln)) for ln in lines) <= 10
        )  # short entries, whatever the docs they are drawn from (prose lines run far longer)
        entry_words = [w for w in words(p) if not w.isdigit()]
        assert sum(w in vocab for w in entry_words) / len(entry_words) > 0.6


@pytest.mark.tier("integration")  # trains a fastText model (a second or two)
def test_link_list_pages_score_low(tmp_path):
    """The pipeline's recipe (reference text against the site's pages rendered whole), trained on
    this repository's documentation: an index of its functions, a "List of Tables" of its
    headings (and Python's genindex pages where python3.11-doc is installed) score under the
    threshold, while held-out reference text and one-paragraph texts score above it."""
    from llm.pipeline.classify import FastTextScorer, held_out
    from llm.pipeline.extract import raw_extract
    from llm.pipeline.train_classifiers import ClassifierTrainer

    secs = prose_sections()
    (tmp_path / "ref").mkdir()
    (tmp_path / "site").mkdir()
    for i, (title, text) in enumerate(secs):
        (tmp_path / "ref" / f"{i:03d}.txt").write_text(text, encoding="utf-8")
        (tmp_path / "site" / f"{i:03d}.html").write_text(page(title, text), encoding="utf-8")
    cfg = {
        "seed": 0,
        "inputs": [{"name": "site", "kind": "html", "path": str(tmp_path / "site")}],
        "quality": {"train": {"positive": [{"name": "ref", "kind": "txt", "path": str(tmp_path / "ref")}], "negative_sources": ["site"]}},
        "harmful": {},
    }
    ClassifierTrainer(cfg, str(tmp_path / "none"), str(tmp_path / "models")).train_quality(cfg["quality"])
    figures = json.loads((tmp_path / "models" / "quality.bin.json").read_text())
    score = FastTextScorer(tmp_path / "models" / "quality.bin")
    index, tables = function_index().splitlines(), list_of_tables().splitlines()
    links = ["\n".join(index[i : i + 80]) for i in range(0, len(index), 80)] + [
        "\n".join(tables[i : i + 40]) for i in range(0, len(tables), 40)
    ]
    links += [raw_extract(p.read_text(encoding="utf-8")) for p in GENINDEX[:5]]  # more where Debian's docs are installed
    link_scores = [score(p) for p in links]
    held = [score(t) for _, t in secs if held_out(t, 0.2, 0)]
    paragraphs = [score(t.split("\n\n")[0]) for _, t in secs if len(t.split("\n\n")[0]) >= 200]
    assert len(links) >= 5 and len(held) >= 5
    assert max(link_scores) < 0.5, link_scores
    assert statistics.median(held) > 0.5 and statistics.median(paragraphs) > 0.5
    assert min(held) > max(link_scores)
    assert figures["heldout_auc"] >= 0.9 and figures["link_list_negatives"] > 0 and figures["line_shapes"]
