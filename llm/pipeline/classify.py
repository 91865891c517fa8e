"""fastText-style n-gram linear classifiers (quality and harmful), trained and applied on CPU.

``train_fasttext`` writes a binary classifier (labels ``__label__pos`` / ``__label__neg``) from
two lists of texts, holding out a deterministic fraction (by a hash of the text) to report the
held-out ROC AUC; the model file is written atomically, the caller records the figures. ``FastTextScorer`` gives P(pos).
Texts are lower-cased words with every CJK character a token (``fasttext_tokens``), so one
model handles English and Chinese.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from llm.pipeline.text import fasttext_tokens, unit_hash


def held_out(text: str, fraction: float, seed: int = 0) -> bool:
    return unit_hash(f"{seed}:{text}") < fraction


def roc_auc(pos: Iterable[float], neg: Iterable[float]) -> float:
    """Probability that a random positive scores above a random negative (ties count half)."""
    pos, neg = np.asarray(list(pos), float), np.asarray(list(neg), float)
    if len(pos) == 0 or len(neg) == 0:
        return float("nan")
    allv = np.concatenate([pos, neg])
    order = allv.argsort(kind="mergesort")
    ranks = np.empty(len(allv))
    ranks[order] = np.arange(1, len(allv) + 1)
    for v in np.unique(allv):  # average ranks of ties
        m = allv == v
        if m.sum() > 1:
            ranks[m] = ranks[m].mean()
    return float((ranks[: len(pos)].sum() - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg)))


def fasttext_module():
    """``fasttext`` with its load-time warning silenced."""
    import fasttext

    fasttext.FastText.eprint = lambda *a, **k: None
    return fasttext


def train_fasttext(
    positive: list[str],
    negative: list[str],
    out: str | os.PathLike,
    *,
    holdout: float = 0.2,
    seed: int = 0,
    epoch: int = 25,
    lr: float = 0.5,
    word_ngrams: int = 2,
    dim: int = 32,
    min_count: int = 1,
    max_chars: int = 20000,
) -> dict:
    """Train and write ``out`` atomically; return the figures (counts, held-out AUC)."""
    if not positive or not negative:
        raise ValueError(f"classifier {out}: need positive and negative texts, got {len(positive)} and {len(negative)}")
    fasttext = fasttext_module()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    rows, test_pos, test_neg = [], [], []
    for label, texts, test in (("pos", positive, test_pos), ("neg", negative, test_neg)):
        for t in texts:
            if holdout and held_out(t, holdout, seed):
                test.append(t)
            else:
                rows.append(f"__label__{label} {fasttext_tokens(t[:max_chars])}")
    rng = np.random.default_rng(seed)
    rng.shuffle(rows)
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False, dir=out.parent) as f:
        f.write("\n".join(rows) + "\n")
        train_file = f.name
    try:
        model = fasttext.train_supervised(
            input=train_file,
            epoch=epoch,
            lr=lr,
            wordNgrams=word_ngrams,
            dim=dim,
            minCount=min_count,
            loss="softmax",
            thread=1,
            seed=seed,
            verbose=0,
        )
    finally:
        os.unlink(train_file)
    tmp = out.with_name(out.name + ".tmp")
    model.save_model(str(tmp))
    os.replace(tmp, out)
    scorer = FastTextScorer(out)
    figures = {
        "train_positive": sum(r.startswith("__label__pos") for r in rows),
        "train_negative": sum(r.startswith("__label__neg") for r in rows),
        "heldout_positive": len(test_pos),
        "heldout_negative": len(test_neg),
        "heldout_auc": roc_auc(map(scorer, test_pos), map(scorer, test_neg)) if test_pos and test_neg else None,
    }
    return figures


class FastTextScorer:
    """P(__label__pos) of a text under a model written by ``train_fasttext``."""

    def __init__(self, path: str | os.PathLike):
        if not Path(path).is_file():
            raise FileNotFoundError(f"classifier model not found: {path}")
        self.model = fasttext_module().load_model(str(path))

    def __call__(self, text: str) -> float:
        labels, probs = self.model.predict(fasttext_tokens(text[:20000]), k=2)
        for lab, p in zip(labels, probs):
            if lab == "__label__pos":
                return float(min(1.0, max(0.0, p)))
        return 0.0
