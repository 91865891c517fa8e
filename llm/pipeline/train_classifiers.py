"""The ``prepare`` stage's classifier training (quality and harmful), one task, idempotent.

Quality (``quality.train``): positives are the reference texts read with the readers named in
``positive`` (e.g. Sphinx ``_sources/*.rst.txt``, with ``rst: true`` to drop reST markup so the
model cannot learn "markup = good"); negatives are raw crawl text: the pages of
``negative_sources`` rendered whole (navigation, sidebars and footers included, as a naive
crawl extraction would give them), not our cleaned documents, which share the reference
text's content. Documents whose id contains ``eval_negative_match`` (e.g.
"genindex": the index pages are pure link lists) are kept out of training and scored against
the held-out reference texts: that AUC is the figure the report shows. Pages that are mostly
links (indexes, tables of contents, "List of Tables") share the reference text's words, so
``link_list_negatives`` such pages are generated from the positives' own words
(``link_list_pages``) and added to the negatives, and the model sees one shape token per line
(``llm.pipeline.classify.line_shape_tokens``): it learns the layout, not the vocabulary.

Harmful (``harmful.classifier_languages``): per language, positives are the labelled harmful
examples of ``llm/pipeline/assets/harmful_seed.jsonl`` plus ``harmful.train`` files (jsonl with
text/label/lang); negatives are the seed's benign examples plus paragraphs of the extracted
documents of that language. Each model hashes its bigrams into ``harmful.buckets`` (50,000:
3.6 MB a model instead of fastText's default 2M buckets, 128 MB, with the same scores);
``harmful.quantize`` also quantises it (0.5 MB).
"""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

from datatrove.utils.logging import logger

from llm.data.shards import atomic_write_json
from llm.pipeline.classify import FastTextScorer, held_out, roc_auc, train_fasttext
from llm.pipeline.harmful import blocklist_files, load_blocklists
from llm.pipeline.readers import make_reader
from llm.pipeline.text import words
from llm.pipeline.writers import read_jsonl_gz

SEED = Path(__file__).parent / "assets" / "harmful_seed.jsonl"


_RST = [
    (re.compile(r"^\s*\.\. [^\n]*$", re.M), ""),  # directives, comments, targets
    (re.compile(r"^\s*:[a-zA-Z-]+:.*$", re.M), ""),  # field lists / directive options
    (re.compile(r"^([=\-~^\"'`#*+]{3,})\s*$", re.M), ""),  # section underlines
    (re.compile(r":[a-zA-Z:]+:`~?([^`<]*?)(?:\s*<[^>]*>)?`"), r"\1"),  # :role:`text <target>`
    (re.compile(r"`([^`<]*?)\s*<[^>]*>`_+"), r"\1"),  # `text <url>`_
    (re.compile(r"``([^`]*)``"), r"\1"),
    (re.compile(r"\*\*([^*]*)\*\*"), r"\1"),
    (re.compile(r"\|([^|\n]+)\|"), r"\1"),
    (re.compile(r"\n{3,}"), "\n\n"),
]


def strip_rst(text: str) -> str:
    for pat, rep in _RST:
        text = pat.sub(rep, text)
    return text.strip()


def read_spec_texts(spec: dict) -> list[tuple[str, str]]:
    """(id, text) of every document the reader spec gives."""
    reader = make_reader(spec, ignore=("rst",))
    out = []
    for f in sorted(reader.data_folder.list_files(glob_pattern=reader.glob_pattern, recursive=True)):
        out.extend((d.id, strip_rst(d.text) if spec.get("rst") else d.text) for d in reader.read_file(f))
    return out


_ENTRY_STYLES = (
    lambda r, i, j, p: f"{p} ({r.choice(['module', 'function', 'class', 'attribute', 'method'])})",
    lambda r, i, j, p: f"{p}() (in module {p.split()[0].lower()}.{r.choice(['core', 'util', 'api'])}), {r.randint(1, 900)}",
    lambda r, i, j, p: f"Table {i}.{j}. {p}",
    lambda r, i, j, p: f"Figure {i}.{j}. {p}",
    lambda r, i, j, p: f"{i}.{j}. {p}",
    lambda r, i, j, p: f"Chapter {i}. {p}",
    lambda r, i, j, p: p,
    lambda r, i, j, p: f"{p}, {r.randint(1, 400)}, {r.randint(401, 900)}",
)
_PAGE_TITLES = ("Index", "List of Tables", "List of Figures", "Table of Contents", "Contents", "Site map", "Related links")


def link_list_pages(texts: list[str], n: int, seed: int = 0) -> list[str]:
    """``n`` link-list pages (index, table-of-contents, "List of Tables" and menu styles) whose
    entries are runs of 1 to 6 words taken from ``texts``: negatives with the positives' own
    vocabulary, so a classifier can tell them apart only by their layout (many short lines
    without sentences)."""
    rng = random.Random(seed)
    pool = [ws for t in texts if len(ws := words(t)) >= 3]
    if not pool or n <= 0:
        return []
    pages = []
    for _ in range(n):
        style = rng.randrange(len(_ENTRY_STYLES))
        lines = [rng.choice(_PAGE_TITLES)]
        for i in range(1, rng.randint(20, 150) + 1):
            ws = rng.choice(pool)
            k = rng.randint(1, min(6, len(ws)))
            start = rng.randrange(len(ws) - k + 1)
            phrase = " ".join(ws[start : start + k])
            lines.append(
                _ENTRY_STYLES[style if rng.random() < 0.8 else rng.randrange(len(_ENTRY_STYLES))](rng, 1 + i // 9, 1 + i % 9, phrase)
            )
        lines += rng.sample(["Previous", "Next", "Home", "Up", "Search", "Top of page"], 3)
        pages.append("\n".join(lines))
    return pages


class ClassifierTrainer:
    name = "classifiers"

    def __init__(self, cfg: dict, extracted: str, models: str):
        self.cfg, self.extracted, self.models = cfg, extracted, Path(models)

    def run(self, data=None, rank: int = 0, world_size: int = 1):
        q = self.cfg["quality"]
        if q.get("enabled", True) and not q.get("model"):
            self.train_quality(q)
        for lang in self.cfg["harmful"].get("classifier_languages", []):
            self.train_harmful(lang)
        return iter(())

    def train_quality(self, q: dict) -> None:
        out = self.models / "quality.bin"
        if out.with_name("quality.bin.json").exists():  # written after the model: training finished
            return
        from llm.pipeline.extract import raw_extract

        t = q["train"]
        positive = [x for spec in t["positive"] for _, x in read_spec_texts(spec)]
        match = t.get("eval_negative_match")
        negative, eval_negative = [], []
        wanted = set(t["negative_sources"])
        for inp in self.cfg["inputs"]:
            if inp["name"] not in wanted:
                continue
            for doc_id, text in read_spec_texts(inp):
                if inp["kind"] in ("html", "warc"):
                    text = raw_extract(text)
                (eval_negative if match and match in doc_id else negative).append(text)
        holdout = float(t.get("holdout", 0.2))
        seed = int(self.cfg.get("seed", 0))
        links = link_list_pages(positive, int(t.get("link_list_negatives", 200)), seed)
        figures = train_fasttext(
            positive,
            negative + links,
            out,
            holdout=holdout,
            seed=seed,
            epoch=t.get("epoch", 25),
            word_ngrams=t.get("word_ngrams", 2),
            dim=t.get("dim", 32),
            line_shapes=True,
        )
        figures["link_list_negatives"] = len(links)
        if eval_negative:
            scorer = FastTextScorer(out, line_shapes=True)
            pos = [scorer(x) for x in positive if held_out(x, holdout, seed)]
            figures["eval_negative_match"] = match
            figures["eval_negative"] = len(eval_negative)
            figures["eval_auc"] = roc_auc(pos, [scorer(x) for x in eval_negative])
        atomic_write_json(out.with_name("quality.bin.json"), figures)
        logger.info(f"quality classifier: {figures}")

    def train_harmful(self, lang: str) -> None:
        out = self.models / f"harmful_{lang}.bin"
        if out.with_name(out.name + ".json").exists():
            return
        hf = self.cfg["harmful"]
        pos, neg = harmful_examples(lang, read_jsonl_gz(self.extracted), hf)
        figures = train_fasttext(
            pos,
            neg,
            out,
            holdout=0.0,
            seed=int(self.cfg.get("seed", 0)),
            epoch=int(hf.get("epoch", 50)),
            word_ngrams=2,
            dim=16,
            buckets=int(hf.get("buckets", 50000)),
            quantize=bool(hf.get("quantize", False)),
        )
        atomic_write_json(out.with_name(out.name + ".json"), figures)
        logger.info(f"harmful classifier ({lang}): {figures}")


def harmful_examples(lang: str, records, hf: dict) -> tuple[list[str], list[str]]:
    """The harmful classifier's training texts for ``lang``: positives, the harmful examples of
    the seed and ``harmful.train`` files; negatives, their benign examples plus up to
    ``benign_paragraphs`` paragraphs of ``records`` (documents ``{"text", "metadata":
    {"language"}}``) without a blocklist term; positives repeated to about 1:2."""
    pos, neg = [], []
    for f in [str(SEED)] + list(hf.get("train") or []):
        for line in Path(f).read_text(encoding="utf-8").splitlines():
            if line.strip():
                rec = json.loads(line)
                if rec.get("lang", lang) == lang:
                    (pos if rec["label"] == "harmful" else neg).append(rec["text"])
    limit = int(hf.get("benign_paragraphs", 3000))
    block_words, block_phrases = load_blocklists(blocklist_files(hf.get("blocklists")))
    terms, phrases = block_words.get(lang, set()), block_phrases.get(lang, [])
    for rec in records:
        if len(neg) >= limit:
            break
        if rec.get("metadata", {}).get("language") != lang:
            continue
        for para in rec["text"].split("\n\n"):
            if len(neg) >= limit:
                break
            low = para.lower()
            if len(para.strip()) >= 20 and not (set(words(low)) & terms or any(p in low for p in phrases)):
                neg.append(para.strip())  # corpus text is assumed benign unless a blocklist term is in it
    if pos and neg:  # a few dozen labelled examples against thousands of paragraphs: rebalance to 1:2
        pos = pos * max(1, len(neg) // (2 * len(pos)))
    return pos, neg
