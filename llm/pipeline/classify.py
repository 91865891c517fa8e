"""fastText-style n-gram linear classifiers (quality and harmful), trained and applied on CPU.

``train_fasttext`` writes a binary classifier (labels ``__label__pos`` / ``__label__neg``) from
two lists of texts, holding out a deterministic fraction (by a hash of the text) to report the
held-out ROC AUC; the model file is written atomically, the caller records the figures. ``FastTextScorer`` gives P(pos).
Texts are lower-cased words with every CJK character a token (``fasttext_tokens``), so one
model handles English and Chinese.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from llm.pipeline.text import fasttext_tokens, unit_hash, words


def held_out(text: str, fraction: float, seed: int = 0) -> bool:
    return unit_hash(f"{seed}:{text}") < fraction


def roc_auc(pos: Iterable[float], neg: Iterable[float]) -> float:
    """Area under the ROC curve: the probability that a random positive scores above a random
    negative, ties counting half (the Mann-Whitney U statistic over the rank sum, tied scores
    sharing their mean rank). ``nan`` when either side is empty. O(n log n)."""
    pos, neg = np.asarray(list(pos), float), np.asarray(list(neg), float)
    if len(pos) == 0 or len(neg) == 0:
        return float("nan")
    allv = np.concatenate([pos, neg])
    uniq, inverse, counts = np.unique(allv, return_inverse=True, return_counts=True)
    first = np.cumsum(counts) - counts  # 0-based rank of the first element of each tie group
    mean_rank = first + (counts + 1) / 2.0  # 1-based mean rank of each tie group
    ranks = mean_rank[inverse]
    return float((ranks[: len(pos)].sum() - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg)))


def accuracy(pos: Iterable[float], neg: Iterable[float], threshold: float = 0.5) -> float:
    """Fraction of texts on the right side of ``threshold`` (positives above it, negatives at or below)."""
    pos, neg = np.asarray(list(pos), float), np.asarray(list(neg), float)
    n = len(pos) + len(neg)
    return float(((pos > threshold).sum() + (neg <= threshold).sum()) / n) if n else float("nan")


_SENTENCE_END = re.compile(r"[.!?:;\u3002\uff01\uff1f\uff1a\uff1b\u2026][\"')\]\u201d\u2019\u300d\u300f\uff09]*\s*$")
SHORT_LINE_WORDS = 8


def line_shape_tokens(text: str) -> str:
    """One token per non-empty line describing its shape, so that a linear bag-of-n-grams model
    can see layout as well as words: ``__ln_long__`` (more than ``SHORT_LINE_WORDS`` words),
    ``__ln_shortp__`` (a short line ending a sentence) or ``__ln_short__`` (a short line without
    sentence punctuation: a link, a menu item, an index or table-of-contents entry). A link-list
    page is mostly ``__ln_short__``; wrapped prose and one-line paragraphs are both ``__ln_long__``."""
    out = []
    for line in text.splitlines():
        n = len(words(line))
        if not n:
            continue
        if n > SHORT_LINE_WORDS:
            out.append("__ln_long__")
        else:
            out.append("__ln_shortp__" if _SENTENCE_END.search(line) else "__ln_short__")
    return " ".join(out)


def model_tokens(text: str, line_shapes: bool = False, max_chars: int = 20000) -> str:
    """The line fastText sees for ``text``: its words (``fasttext_tokens``), then, with
    ``line_shapes``, the shape token of each of its lines (``line_shape_tokens``)."""
    text = text[:max_chars]
    toks = fasttext_tokens(text)
    return f"{toks} {line_shape_tokens(text)}" if line_shapes else toks


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
    line_shapes: bool = False,
    buckets: int = 2_000_000,
    quantize: bool = False,
    cutoff: int = 100000,
) -> dict:
    """Train and write ``out`` atomically; return the figures (counts, held-out AUC, accuracy,
        recall and false-positive rate at 0.5, each distinct held-out text scored once; the model's
        size on disk). ``line_shapes``: the model also sees one shape token per
        line (``line_shape_tokens``; the scorer then adds them too). ``buckets``: hash buckets of
    the word n-grams (fastText's ``bucket``; each costs ``dim`` floats on disk). ``quantize``: fastText's product
        quantisation (``qnorm``, ``retrain`` on the training rows, at most ``cutoff`` words and
        n-grams kept); the held-out figures of the model before it are kept under ``unquantized``."""
    if not positive or not negative:
        raise ValueError(f"classifier {out}: need positive and negative texts, got {len(positive)} and {len(negative)}")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    rows, test_pos, test_neg = [], [], []
    for label, texts, test in (("pos", positive, test_pos), ("neg", negative, test_neg)):
        for t in texts:
            if holdout and held_out(t, holdout, seed):
                test.append(t)
            else:
                rows.append(f"__label__{label} {model_tokens(t, line_shapes, max_chars)}")
    test_pos, test_neg = list(dict.fromkeys(test_pos)), list(dict.fromkeys(test_neg))  # each held-out text scored once
    rng = np.random.default_rng(seed)
    rng.shuffle(rows)
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False, dir=out.parent) as f:
        f.write("\n".join(rows) + "\n")
        train_file = f.name
    tmp = out.with_name(out.name + ".tmp")

    def heldout_figures() -> dict:
        scorer = FastTextScorer(tmp, line_shapes=line_shapes)
        pos, neg = [scorer(t) for t in test_pos], [scorer(t) for t in test_neg]
        both = bool(pos and neg)
        return {
            "bytes": tmp.stat().st_size,
            "heldout_auc": roc_auc(pos, neg) if both else None,
            "heldout_accuracy": accuracy(pos, neg) if both else None,
            "heldout_recall": accuracy(pos, []) if pos else None,  # positives scored above 0.5
            "heldout_false_positive_rate": 1 - accuracy([], neg) if neg else None,
        }

    params = dict(
        epoch=epoch, lr=lr, wordNgrams=word_ngrams, dim=dim, minCount=min_count, bucket=buckets, loss="softmax", thread=1, seed=seed
    )
    full_tmp = out.with_name(out.name + ".full.tmp")
    try:
        _train_in_fresh_process(train_file, tmp, params, full_tmp if quantize else None, cutoff)
        if quantize:
            tmp, quantized = full_tmp, tmp
            full = heldout_figures()
            tmp = quantized
            os.unlink(full_tmp)
            small = heldout_figures()
        else:
            full = small = heldout_figures()
    finally:
        os.unlink(train_file)
    os.replace(tmp, out)
    figures = {
        "train_positive": sum(r.startswith("__label__pos") for r in rows),
        "train_negative": sum(r.startswith("__label__neg") for r in rows),
        "heldout_positive": len(test_pos),
        "heldout_negative": len(test_neg),
        "heldout_auc": small["heldout_auc"],
        "heldout_accuracy": small["heldout_accuracy"],
        "heldout_recall": small["heldout_recall"],
        "heldout_false_positive_rate": small["heldout_false_positive_rate"],
        "model_bytes": small["bytes"],
        "line_shapes": line_shapes,
    }
    if quantize:
        figures["quantized"] = True
        figures["unquantized"] = full
    return figures


def _train_in_fresh_process(train_file: str, out: Path, params: dict, full_out: Path | None, cutoff: int) -> None:
    """fastText training in a new interpreter (``python -m llm.pipeline.classify``): in a process
    that has trained or loaded models before, its training came out different from one run to
    the next and, with small models, diverged ("Encountered NaN"); in a fresh process it is
    deterministic. With ``full_out``, the trained model is written there and its quantised copy
    to ``out``."""
    job = {"train_file": train_file, "out": str(out), "params": params, "full_out": str(full_out) if full_out else None, "cutoff": cutoff}
    root = str(Path(__file__).resolve().parents[2])  # this checkout's llm package, whatever is installed
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))}
    r = subprocess.run([sys.executable, "-m", "llm.pipeline.classify", json.dumps(job)], capture_output=True, text=True, env=env)
    if r.returncode != 0:
        raise RuntimeError(f"fastText training of {out} failed: {r.stderr.strip()[-2000:]}")


def _train_child(job: dict) -> None:
    model = fasttext_module().train_supervised(input=job["train_file"], verbose=0, **job["params"])
    if job["full_out"]:
        model.save_model(job["full_out"])
        model.quantize(input=job["train_file"], qnorm=True, retrain=True, cutoff=job["cutoff"], thread=1, verbose=0)
    model.save_model(job["out"])


class FastTextScorer:
    """P(__label__pos) of a text under a model written by ``train_fasttext``.

    ``line_shapes``: add the line shape tokens the model was trained with; ``None``: as the
    figures beside the model (``<model>.json``, written by the pipeline's training) say, else
    without (a model trained elsewhere on words only)."""

    def __init__(self, path: str | os.PathLike, line_shapes: bool | None = None):
        if not Path(path).is_file():
            raise FileNotFoundError(f"classifier model not found: {path}")
        if line_shapes is None:
            side = Path(f"{path}.json")
            line_shapes = bool(side.is_file() and json.loads(side.read_text()).get("line_shapes"))
        self.line_shapes = line_shapes
        self.model = fasttext_module().load_model(str(path))

    def __call__(self, text: str) -> float:
        labels, probs = self.model.predict(model_tokens(text, self.line_shapes), k=2)
        for lab, p in zip(labels, probs):
            if lab == "__label__pos":
                return float(min(1.0, max(0.0, p)))
        return 0.0


if __name__ == "__main__":
    _train_child(json.loads(sys.argv[1]))
