"""Mixture: sources with weights and maximum repeats -> the foundation's tokenizer and shards.

Each source ``s`` has a ``weight`` w_s and ``max_repeats`` r_s (epochs). With S_s the source's
characters and T the total budget (``total_chars``; default: all sources once), the source is
read ``e_s = min(r_s, w_s / sum(w) * T / S_s)`` times: whole copies, plus the fraction of a
copy drawn by a hash of (document id, copy), so the draw is reproducible. High-quality sources
(weight above their share) are thus repeated up to ``max_repeats`` times, as GPT-3 and The
Pile did; low-weight sources are subsampled. ``python -m llm.train data=shards
data.shards=<out>/shards`` trains on the result.

The step streams: no more than one shuffle bucket of documents is in memory at once, whatever
the corpus size.

1. **count**: one pass over the ``final`` documents: characters, documents and in-memory bytes
   per source (the epochs plan needs the sizes before any document is drawn).
2. **tokenizer**: the one given by path, or one trained (``llm.data.tokenizer.train_tokenizer``)
   on a streamed sample of one copy of the documents: all of them up to
   ``tokenizer_sample_chars`` characters, beyond that each document with probability
   ``tokenizer_sample_chars / total`` drawn by a hash of its id (so the trainer's word counts,
   its only state, are bounded by the sample).
3. **shuffle** (:class:`ExternalShuffle`): every drawn (document, copy) is appended to one of
   K bucket files under ``<out>/work/mixture`` chosen by a seeded hash of (source, id, copy),
   K = the planned bytes / ``shuffle_buffer_mb`` (x 1.25); then each bucket in turn is read,
   permuted by a generator seeded with (seed, bucket) and streamed into
   ``llm.data.shards.write_shards`` (atomic shards, manifest last), and its file deleted. A
   bucket that came out over the budget is scattered again into sub-buckets with another hash
   (at most ``MAX_OPEN_BUCKETS`` files are open at once, so a crawl-sized mixture is scattered
   in several levels). The order is a seeded random permutation of the drawn copies, the same
   for the same seed and input; it is not the order of the former in-memory shuffle
   (``np.random.permutation`` over all copies), the documents and their multiplicities are.

Peak memory of the step: one bucket (at most ``shuffle_buffer_mb``, or one document if a
single document is larger), the tokenizer trainer's word counts over the sample, the shard
writer's batch (256 documents) and ``MAX_OPEN_BUCKETS`` file buffers.
"""

from __future__ import annotations

import json
import math
import shutil
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from datatrove.pipeline.base import PipelineStep
from datatrove.utils.logging import logger

from llm.data.shards import atomic_write_json
from llm.pipeline.text import hash64, unit_hash
from llm.pipeline.writers import read_jsonl_gz

MAX_OPEN_BUCKETS = 256
"""Bucket files open at once while scattering."""
BUFFER_BYTES = 8192
"""The write buffer of each open bucket file."""
RECORD_OVERHEAD = 200
"""Bytes a bucket record takes in memory besides its text and id (list, source, copy, slot)."""
MAX_LEVELS = 8
"""Scatter levels at most: a bucket still over the budget after that is loaded as it is."""


def plan_mixture(sizes: dict[str, int], sources: dict[str, dict], total_chars: int | None = None) -> dict[str, float]:
    """Epochs per source (see the module docstring)."""
    unknown = set(sources) - set(sizes)
    if unknown:
        logger.warning(f"mixture: sources {sorted(unknown)} have no documents left")
    present = {s: sizes[s] for s in sizes if sizes[s] > 0}
    weights = {s: float(sources.get(s, {}).get("weight", 1.0)) for s in present}
    total_w = sum(weights.values()) or 1.0
    budget = total_chars or sum(present.values())
    out = {}
    for s, size in present.items():
        cap = float(sources.get(s, {}).get("max_repeats", 1.0))
        out[s] = min(cap, weights[s] / total_w * budget / size)
    return out


def drawn_copies(doc_id: str, epochs: float, seed: int) -> Iterator[int]:
    """The copies of a document in the mixture: every whole epoch, and the last, partial one
    when a hash of (seed, copy, id) falls under its fraction."""
    for copy in range(math.ceil(epochs)):
        part = epochs - copy
        if part >= 1 or unit_hash(f"{seed}:{copy}:{doc_id}") < part:
            yield copy


def record_bytes(doc_id: str, text: str) -> int:
    """What a bucket record ``[source, id, copy, text]`` takes in memory (estimate, bytes)."""
    return sys.getsizeof(text) + sys.getsizeof(doc_id) + RECORD_OVERHEAD


class ExternalShuffle:
    """A seeded shuffle of records ``[source, id, copy, text]`` in bounded memory (see the module
    docstring): :meth:`add` scatters a record to a bucket file, iterating yields them all in a
    random order while holding at most ``budget_bytes`` of them (or one record) in memory."""

    def __init__(self, folder: str | Path, budget_bytes: int, expected_bytes: int, seed: int = 0):
        self.folder, self.budget, self.seed = Path(folder), int(budget_bytes), seed
        if self.folder.exists():
            shutil.rmtree(self.folder)
        self.folder.mkdir(parents=True)
        self.stats = {"buckets": 0, "rescattered": 0, "max_bucket_docs": 0, "max_bucket_bytes": 0}
        self._top = self._open(self.folder / "b", math.ceil(1.25 * expected_bytes / self.budget))
        self.stats["buckets"] = len(self._top[0])

    def _open(self, stem: Path, k: int):
        k = max(1, min(MAX_OPEN_BUCKETS, k))
        paths = [stem.with_name(f"{stem.name}{i:03d}.jsonl") for i in range(k)]
        return paths, [open(p, "wb", buffering=BUFFER_BYTES) for p in paths], [0] * k, [0] * k

    def _bucket(self, level: int, rec: list, k: int) -> int:
        return hash64(f"{self.seed}:shuffle{level}:{rec[0]}:{rec[1]}:{rec[2]}") % k

    @staticmethod
    def _put(bucket, i: int, rec: list, nbytes: int) -> None:
        _, files, sizes, counts = bucket
        files[i].write(json.dumps(rec, ensure_ascii=False).encode() + b"\n")
        sizes[i] += nbytes
        counts[i] += 1

    def add(self, source: str, doc_id: str, copy: int, text: str) -> None:
        rec = [source, doc_id, copy, text]
        self._put(self._top, self._bucket(0, rec, len(self._top[0])), rec, record_bytes(doc_id, text))

    def __iter__(self) -> Iterator[tuple[str, str, int, str]]:
        yield from self._drain(self._top, level=0, ident=())
        shutil.rmtree(self.folder, ignore_errors=True)

    def _drain(self, bucket, level: int, ident: tuple) -> Iterator[tuple[str, str, int, str]]:
        paths, files, sizes, counts = bucket
        for f in files:
            f.close()
        for i, path in enumerate(paths):
            if sizes[i] > self.budget and counts[i] > 1 and level + 1 < MAX_LEVELS:
                self.stats["rescattered"] += 1
                sub = self._open(path.with_suffix(""), math.ceil(1.25 * sizes[i] / self.budget))
                with open(path, "rb") as f:
                    for line in f:
                        rec = json.loads(line)
                        self._put(sub, self._bucket(level + 1, rec, len(sub[0])), rec, record_bytes(rec[1], rec[3]))
                path.unlink()
                yield from self._drain(sub, level + 1, (*ident, i))
                continue
            with open(path, "rb") as f:
                records = [json.loads(line) for line in f]
            path.unlink()
            self.stats["max_bucket_docs"] = max(self.stats["max_bucket_docs"], len(records))
            self.stats["max_bucket_bytes"] = max(self.stats["max_bucket_bytes"], sizes[i])
            for j in np.random.default_rng([self.seed, level, *ident, i]).permutation(len(records)):
                s, d, c, t = records[j]
                records[j] = None  # each text is freed once written
                yield s, d, c, t


class MixtureWriter(PipelineStep):
    name = "mixture"
    type = "🧪 - MIXTURE"

    def __init__(
        self,
        input_folder,
        out_dir: str,
        sources: dict | None = None,
        total_chars: int | None = None,
        tokenizer: str | None = None,
        vocab_size: int = 8192,
        shard_max_tokens: int = 1 << 20,
        val_fraction: float = 0.01,
        seed: int = 0,
        shuffle_buffer_mb: float = 256.0,
        tokenizer_sample_chars: int | None = 200_000_000,
        work_dir: str | None = None,
    ):
        super().__init__()
        self.input_folder = str(input_folder)
        self.out_dir = out_dir
        self.sources = {k: dict(v or {}) for k, v in (sources or {}).items()}
        self.total_chars, self.tokenizer = total_chars, tokenizer
        self.vocab_size, self.shard_max_tokens = vocab_size, shard_max_tokens
        self.val_fraction, self.seed = val_fraction, seed
        self.shuffle_buffer_mb, self.tokenizer_sample_chars = shuffle_buffer_mb, tokenizer_sample_chars
        self.work_dir = Path(work_dir) if work_dir else Path(out_dir) / "work" / "mixture"
        self.shuffle_stats: dict = {}

    def count(self) -> tuple[dict[str, int], dict[str, int], dict[str, int]]:
        """Pass 1: characters, documents and in-memory record bytes per source."""
        chars: Counter = Counter()
        docs: Counter = Counter()
        mem: Counter = Counter()
        for rec in read_jsonl_gz(self.input_folder):
            s, text = rec.get("metadata", {}).get("source", ""), rec["text"]
            chars[s] += len(text)
            docs[s] += 1
            mem[s] += record_bytes(rec["id"], text)
        return dict(chars), dict(docs), dict(mem)

    def tokenizer_texts(self, total_chars: int) -> Iterator[str]:
        """One copy of the documents, sampled down to about ``tokenizer_sample_chars`` characters."""
        cap = self.tokenizer_sample_chars
        frac = 1.0 if cap is None or total_chars <= cap else cap / total_chars
        for rec in read_jsonl_gz(self.input_folder):
            if frac >= 1 or unit_hash(f"{self.seed}:tokenizer:{rec['id']}") < frac:
                yield rec["text"]

    def stream(self, epochs: dict[str, float], expected_bytes: int) -> Iterator[tuple[str, str, int, str]]:
        """(source, id, copy, text) of every drawn copy, in the mixture's seeded order."""
        shuffle = ExternalShuffle(self.work_dir, int(self.shuffle_buffer_mb * 2**20), expected_bytes, self.seed)
        for rec in read_jsonl_gz(self.input_folder):
            s = rec.get("metadata", {}).get("source", "")
            if s in epochs:
                for copy in drawn_copies(rec["id"], epochs[s], self.seed):
                    shuffle.add(s, rec["id"], copy, rec["text"])
        yield from shuffle
        self.shuffle_stats = dict(shuffle.stats, buffer_mb=self.shuffle_buffer_mb)

    def run(self, data=None, rank: int = 0, world_size: int = 1):
        from llm.data.shards import write_shards
        from llm.data.tokenizer import load_tokenizer, train_tokenizer

        sizes, n_docs, mem = self.count()
        if not n_docs:
            raise RuntimeError(f"mixture: no documents in {self.input_folder}: every document was filtered out")
        epochs = plan_mixture(sizes, self.sources, self.total_chars)
        out = Path(self.out_dir)
        out.mkdir(parents=True, exist_ok=True)
        if self.tokenizer:
            tok = load_tokenizer(self.tokenizer)
        else:
            tok = train_tokenizer(self.tokenizer_texts(sum(sizes.values())), self.vocab_size, out / "tokenizer", show_progress=False)
        written: Counter = Counter()

        def texts():
            for s, _, _, text in self.stream(epochs, sum(mem[s] * e for s, e in epochs.items())):
                written[s] += 1
                yield text

        manifest = write_shards(
            texts(), tok, out / "shards", shard_max_tokens=self.shard_max_tokens, val_fraction=self.val_fraction, seed=self.seed
        )
        plan = {}
        for s in sorted(epochs):
            plan[s] = {
                "documents": n_docs[s],
                "chars": sizes[s],
                "epochs": round(epochs[s], 4),
                "documents_written": written[s],
                "weight": self.sources.get(s, {}).get("weight", 1.0),
                "max_repeats": self.sources.get(s, {}).get("max_repeats", 1.0),
            }
            self.stat_update(f"written_{s}", value=written[s])
        atomic_write_json(
            out / "mixture.json",
            {"sources": plan, "documents": sum(written.values()), "shards": manifest["totals"], "shuffle": self.shuffle_stats},
        )
        self.stat_update("documents", value=sum(written.values()))
        return
        yield
