"""The mixture step streams (``llm/pipeline/mixture.py``): the shards hold the same documents with
the same multiplicities as the former in-memory mixture, reproducibly, while no more than one
shuffle bucket of documents is in memory.

The corpus is real text that every install has: the docstrings of Python's standard library,
cut into sentences and put together into documents of three sources."""

from __future__ import annotations

import gzip
import inspect
import io
import json
import math
import re
import tarfile
import tracemalloc
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from llm.pipeline.mixture import MixtureWriter, plan_mixture
from llm.pipeline.text import unit_hash

BUFFER_BYTES = 8192  # llm.pipeline.mixture.BUFFER_BYTES (not imported: the test must run on the former module)

pytestmark = pytest.mark.tier("integration")  # writes token shards (seconds), no training

SOURCES = {"docs": {"weight": 1.0, "max_repeats": 1}, "kjv": {"weight": 3.0, "max_repeats": 2.5}, "faq": {"weight": 0.2}}


def _sentences() -> list[str]:
    import argparse
    import collections
    import email
    import json as json_mod
    import logging
    import os
    import pathlib

    out = []
    for mod in (argparse, collections, email, json_mod, logging, os, pathlib):
        for _, obj in sorted(vars(mod).items()):
            doc = inspect.getdoc(obj) if callable(obj) else None
            for s in re.split(r"(?<=[.!?])\s+", (doc or "").replace("\n", " ")):
                if 5 <= len(s.split()) <= 40:
                    out.append(s)
    return sorted(set(out))


def write_final(folder: Path, n: int, seed: int = 0) -> list[dict]:
    """``n`` documents of 3-8 real sentences in two files, as the ``final`` stage writes them."""
    rng = np.random.default_rng(seed)
    sents = _sentences()
    docs = []
    for i in range(n):
        src = ("docs", "kjv", "faq")[i % 3]
        text = " ".join(sents[j] for j in rng.integers(0, len(sents), size=int(rng.integers(3, 9))))
        docs.append({"id": f"{src}/{i}", "text": text, "metadata": {"source": src}})
    folder.mkdir(parents=True, exist_ok=True)
    for rank in range(2):
        with gzip.open(folder / f"{rank:05d}.jsonl.gz", "wt", encoding="utf-8") as f:
            for d in docs[rank::2]:
                f.write(json.dumps(d) + "\n")
    return [d for rank in range(2) for d in docs[rank::2]]  # in the order the files hold them


def former_selection(docs: list[dict], sources: dict, seed: int) -> list[tuple[str, str, int]]:
    """(source, id, copy) drawn by the former in-memory mixture (its loop, as it was written)."""
    by_source: dict[str, list[tuple[str, str]]] = {}
    for rec in docs:
        by_source.setdefault(rec["metadata"]["source"], []).append((rec["id"], rec["text"]))
    sizes = {s: sum(len(t) for _, t in v) for s, v in by_source.items()}
    epochs = plan_mixture(sizes, sources)
    chosen = []
    for s in sorted(epochs):
        e = epochs[s]
        for copy in range(math.ceil(e)):
            part = e - copy
            for doc_id, _ in by_source[s]:
                if part >= 1 or unit_hash(f"{seed}:{copy}:{doc_id}") < part:
                    chosen.append((s, doc_id, copy))
    return chosen


def shard_texts(shards: Path, tok) -> list[str]:
    """Every document of the train and val shards, decoded, in shard order."""
    out = []
    for path in sorted(shards.glob("*.tar")):
        with tarfile.open(path) as tf:
            for m in tf.getmembers():
                ids = np.load(io.BytesIO(tf.extractfile(m).read()))
                out.append(tok.decode(ids[:-1].tolist()))  # the last token is the end-of-text id
    return out


def _writer(final: Path, out: Path, shard_max_tokens: int = 4000, **kw) -> MixtureWriter:
    return MixtureWriter(str(final), str(out), sources=SOURCES, vocab_size=300, shard_max_tokens=shard_max_tokens, val_fraction=0.05, **kw)


def _run(step) -> None:
    for _ in step.run():  # a datatrove step: a generator (this one yields nothing)
        pass


def test_streamed_mixture_writes_the_former_documents_and_copies(tmp_path):
    """Same documents, same copies, same counts per source as the in-memory mixture; a buffer of
    40 KiB for ~1 MiB of drawn copies forces many buckets; the same seed gives the same shards."""
    docs = write_final(tmp_path / "final", 900)
    text_of = {d["id"]: d["text"] for d in docs}
    former = former_selection(docs, SOURCES, seed=0)
    assert {c for _, _, c in former} == {0, 1, 2}  # whole repeats and a partial copy are exercised
    w = _writer(tmp_path / "final", tmp_path / "a", shuffle_buffer_mb=40 / 1024)
    _run(w)
    mix = json.loads((tmp_path / "a" / "mixture.json").read_text())
    assert mix["shuffle"]["buckets"] > 10 and 0 < mix["shuffle"]["max_bucket_bytes"] <= 40 * 1024
    assert mix["documents"] == len(former)
    assert {s: v["documents_written"] for s, v in mix["sources"].items()} == Counter(s for s, _, _ in former)

    from llm.data.tokenizer import load_tokenizer

    tok = load_tokenizer(str(tmp_path / "a" / "tokenizer"))
    got = shard_texts(tmp_path / "a" / "shards", tok)
    assert Counter(got) == Counter(text_of[d] for _, d, _ in former)

    sizes, _, mem = w.count()
    epochs = plan_mixture(sizes, SOURCES)
    streamed = [(s, d, c) for s, d, c, _ in w.stream(epochs, sum(mem[s] * e for s, e in epochs.items()))]
    assert sorted(streamed) == sorted(former) and len(set(streamed)) == len(streamed)
    assert streamed != former  # shuffled

    # reproducible: the same seed writes byte-identical shards; another seed another order
    _run(_writer(tmp_path / "final", tmp_path / "b", shuffle_buffer_mb=40 / 1024))
    for p in sorted((tmp_path / "a" / "shards").glob("*.tar")):
        assert p.read_bytes() == (tmp_path / "b" / "shards" / p.name).read_bytes()
    _run(_writer(tmp_path / "final", tmp_path / "c", shuffle_buffer_mb=40 / 1024, seed=1, tokenizer=str(tmp_path / "a" / "tokenizer")))
    other = shard_texts(tmp_path / "c" / "shards", tok)
    assert other != got


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory) -> str:
    from llm.data.tokenizer import train_tokenizer

    out = tmp_path_factory.mktemp("tok") / "tokenizer"
    train_tokenizer(_sentences(), 300, out, show_progress=False)
    return str(out)


def test_mixture_step_holds_one_bucket_in_memory(tmp_path, tokenizer_dir):
    """Python memory of the whole mixture step (given a tokenizer) for ~6 MiB of drawn copies
    stays within the 128 KiB shuffle buffer plus constants; the in-memory mixture held them all."""
    write_final(tmp_path / "final", 8000)
    budget = 128 * 1024
    w = _writer(tmp_path / "final", tmp_path / "out", shard_max_tokens=1 << 17, shuffle_buffer_mb=budget / 2**20, tokenizer=tokenizer_dir)
    sizes, _, mem = w.count()
    epochs = plan_mixture(sizes, SOURCES)
    expected = sum(mem[s] * e for s, e in epochs.items())
    tracemalloc.start()
    try:
        _run(w)
        now, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    transient = peak - now  # what lasts after the step (imports, caches) is not the step's working memory
    mix = json.loads((tmp_path / "out" / "mixture.json").read_text())
    assert mix["documents"] > 8000 and expected > 30 * budget
    assert mix["shuffle"]["max_bucket_bytes"] <= budget
    # one bucket (its records and the list holding them), the write buffers of the open bucket
    # files while scattering, the shard writer's batch of 256 documents (token ids as Python ints)
    bound = 2 * budget + mix["shuffle"]["buckets"] * (BUFFER_BYTES + 512) + 2 * 2**20
    assert transient < bound < expected / 2, (transient, bound, expected, mix["shuffle"])
