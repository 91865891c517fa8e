"""Deduplication blocks: exact (normalised hash), near (MinHash LSH) and line boilerplate.

- Exact: datatrove's ``ExactDedupSignature`` / ``ExactFindDedups`` / ``ExactDedupFilter`` over
  ``normalized_content`` (NFKC, lower case, punctuation and white space collapsed), so copies
  that differ only in spacing or case are caught; the first copy is kept.
- Near: datatrove's MinHash buckets, clustering and filter; the signature block is ours because
  datatrove's needs spaCy for words: here shingles are word ``n_grams`` (regex words) and, for
  CJK text, character ``cjk_n_grams``. ``num_buckets`` x ``hashes_per_bucket`` permutations
  (default 14 x 8 = 112: P(candidate) = 1 - (1 - s^8)^14, 0.5 at s~0.72, 0.92 at s=0.8).
  Its signature is computed over blocks of shingles with a running minimum (the same values as
  datatrove's): datatrove builds one (shingles x 112) uint64 matrix per document, ~110 MiB for a
  50,000-word page, which sets the stage's peak memory (``python -m llm.bench.data``).
- Boilerplate lines: every task counts, per source, in how many documents each normalised line
  occurs (``LineCounter``); one task merges the counts (``BoilerplateFinder``) and marks lines
  found in at least ``min_docs`` documents and ``min_fraction`` of the source's documents;
  ``BoilerplateRemover`` deletes them. Only lines of at least ``min_chars`` characters count,
  so short code lines ("else:") and headings ("Note") stay, and table rows never count (a row of
  cells, ``is_table_row``): a table header that every page of a reference repeats ("Operation
  Result Notes") is content, while site chrome is lists, links and sentences. Navigation laid out
  as a table is removed by the extractor (DocBook's navheader/navfooter, the neighbours' titles).
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict

import numpy as np
import xxhash
from datatrove.data import DocumentsPipeline
from datatrove.io import get_datafolder
from datatrove.pipeline.base import PipelineStep
from datatrove.pipeline.dedup.minhash import MinhashConfig, MinhashDedupSignature, _mersenne_prime
from datatrove.utils.hashing import create_hash_func
from datatrove.utils.text import simplify_text

from llm.pipeline.text import is_cjk, is_table_row, normalize, normalize_line, words


def normalized_content(doc) -> str:
    return normalize(doc.text)


class MinhashSignature(MinhashDedupSignature):
    """MinHash signatures over word n-grams, or character n-grams for CJK text (no spaCy)."""

    def __init__(self, output_folder, config: MinhashConfig | None = None, cjk_n_grams: int = 5):
        PipelineStep.__init__(self)
        self.output_folder = get_datafolder(output_folder)
        self.config = config or MinhashConfig()
        self.num_hashes = self.config.num_buckets * self.config.hashes_per_bucket
        self._parameters = None
        self._hash_func = create_hash_func(self.config.hash_config)
        self.language = "multi"
        self.word_tokenizer = None
        self.skip_existing_sigs = False
        self.cjk_n_grams = cjk_n_grams

    SHINGLE_BLOCK = 4096  # rows per block: 4096 x 112 x 8 B = 3.5 MiB per intermediate

    def get_signature(self, shingles: np.ndarray) -> list[list[int]]:
        a, b = self.parameters
        low = None
        for i in range(0, len(shingles), self.SHINGLE_BLOCK):
            phv = (shingles[i : i + self.SHINGLE_BLOCK] * a + b) % _mersenne_prime
            if self.config.hash_config.precision == 32:
                phv = np.bitwise_and(phv, self.config.hash_config.max)
            m = phv.min(axis=0)
            low = m if low is None else np.minimum(low, m)
        return [x.tolist() for x in np.split(low.astype(self.config.hash_config.np_dtype), self.config.num_buckets)]

    def get_shingles(self, text: str) -> np.ndarray:
        simple = simplify_text(text, self.config.norm_config)
        if is_cjk(text):
            chars = [c for c in simple if not c.isspace()]
            n = self.cjk_n_grams
            grams = ("".join(chars[i : i + n]) for i in range(len(chars) - n + 1))
        else:
            ws = words(simple)
            n = self.config.n_grams
            grams = (" ".join(ws[i : i + n]) for i in range(len(ws) - n + 1))
        return np.fromiter((self._hash_func(g) for g in grams), dtype=np.uint64).reshape((-1, 1))


def _line_hash(line: str) -> int:
    return xxhash.xxh64_intdigest(line)


class LineCounter(PipelineStep):
    """Pass-through: counts, per source, the documents each normalised line occurs in."""

    name = "line_counter"
    type = "📊 - STATS"

    def __init__(self, output_folder, min_chars: int = 10, keep_examples: int = 2000):
        super().__init__()
        self.output_folder = get_datafolder(output_folder)
        self.min_chars, self.keep_examples = min_chars, keep_examples

    def run(self, data: DocumentsPipeline, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        counts: dict[str, Counter] = defaultdict(Counter)
        docs: Counter = Counter()
        text_of: dict[int, str] = {}
        for doc in data:
            src = doc.metadata.get("source", "")
            docs[src] += 1
            hs = set()
            for ln in doc.text.splitlines():
                norm = normalize_line(ln)
                if len(norm) >= self.min_chars and not is_table_row(ln):
                    h = _line_hash(norm)
                    hs.add(h)
                    if len(text_of) < 50 * self.keep_examples and h not in text_of:
                        text_of[h] = ln.strip()[:200]
            counts[src].update(hs)
            yield doc
        out = {"docs": dict(docs), "lines": {src: list(c.items()) for src, c in counts.items()}}
        examples = {}
        for c in counts.values():
            for h, n in c.most_common(self.keep_examples):
                if n > 1 and h in text_of:
                    examples[str(h)] = text_of[h]
        out["examples"] = examples
        with self.output_folder.open(f"{rank:05d}.json", "wt") as f:
            json.dump(out, f)


class BoilerplateFinder(PipelineStep):
    """One task: merge the line counts and write the boilerplate line hashes per source."""

    name = "boilerplate_finder"
    type = "📊 - STATS"

    def __init__(self, counts_folder, output_folder, min_docs: int = 5, min_fraction: float = 0.3):
        super().__init__()
        self.counts_folder = get_datafolder(counts_folder)
        self.output_folder = get_datafolder(output_folder)
        self.min_docs, self.min_fraction = min_docs, min_fraction

    def run(self, data: DocumentsPipeline = None, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        docs: Counter = Counter()
        lines: dict[str, Counter] = defaultdict(Counter)
        examples: dict[str, str] = {}
        for path in self.counts_folder.list_files(glob_pattern="*.json"):
            with self.counts_folder.open(path, "rt") as f:
                part = json.load(f)
            docs.update(part["docs"])
            for src, pairs in part["lines"].items():
                c = lines[src]
                for h, n in pairs:
                    c[h] += n
            examples.update(part["examples"])
        result = {}
        for src, c in lines.items():
            need = max(self.min_docs, self.min_fraction * docs[src])
            marked = sorted(((n, h) for h, n in c.items() if n >= need), reverse=True)
            result[src] = {
                "documents": docs[src],
                "hashes": [h for _, h in marked],
                "top": [{"documents": n, "line": examples.get(str(h), "?")} for n, h in marked[:20]],
            }
            self.stat_update(f"boilerplate_lines_{src}", value=len(marked))
        with self.output_folder.open("boilerplate.json", "wt") as f:
            json.dump(result, f, ensure_ascii=False, indent=1)
        return
        yield  # a generator that yields nothing


class BoilerplateRemover(PipelineStep):
    name = "boilerplate"
    type = "✂️ - FORMAT"

    def __init__(self, boilerplate_file_folder, min_chars: int = 10):
        super().__init__()
        self.folder = get_datafolder(boilerplate_file_folder)
        self.min_chars = min_chars
        self._sets = None

    def run(self, data: DocumentsPipeline, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        if self._sets is None:
            with self.folder.open("boilerplate.json", "rt") as f:
                self._sets = {src: set(v["hashes"]) for src, v in json.load(f).items()}
        for doc in data:
            self.stat_update("total")
            marked = self._sets.get(doc.metadata.get("source", ""), set())
            if marked:
                kept, removed = [], 0
                for ln in doc.text.splitlines():
                    norm = normalize_line(ln)
                    if len(norm) >= self.min_chars and _line_hash(norm) in marked and not is_table_row(ln):
                        removed += 1
                    else:
                        kept.append(ln)
                if removed:
                    self.stat_update("lines_removed", value=removed)
                    self.stat_update("documents_changed")
                    doc.text = "\n".join(kept).strip()
            if not doc.text.strip():
                self.stat_update("dropped_empty_after_boilerplate")
                continue
            self.stat_update("forwarded")
            self.update_doc_stats(doc)
            yield doc
