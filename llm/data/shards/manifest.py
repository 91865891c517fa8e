"""Token shards: the on-disk format and its manifest.

A shard directory holds ``train-000000.tar``, ``train-000001.tar``, ..., ``val-000000.tar``, ...
and ``manifest.json``. Each tar is a plain WebDataset shard with one sample per document:
``{__key__: f"{doc_index:09d}", "ids.npy": 1-D uint16 (uint32 if vocab >= 65536) array}``,
the document's tokens followed by the end-of-text id. Shards are written as ``name.tmp`` and
renamed only once complete and fsynced; ``manifest.json`` is written last, so a directory
without it is incomplete and a final-named shard is never partial.

``manifest.json`` records the format version, the end-of-text id, the vocabulary size, the
token dtype, the tokenizer, ``seed``, ``val_fraction`` and ``shard_max_tokens``, and per split
every shard's name with its document, token and byte counts (``splits``), and the totals.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

MANIFEST_NAME = "manifest.json"
FORMAT_VERSION = 1
SPLITS = ("train", "val")
SAMPLE_EXT = "ids.npy"
SHARD_RE = re.compile(r"(train|val)-\d{6,}\.tar")


def summarize_manifest(manifest: dict) -> str:
    """One line: docs, tokens and shards per split."""
    parts = []
    for split in SPLITS:
        t = manifest["totals"][split]
        parts.append(f"{split}: {t['docs']:,} docs, {t['tokens']:,} tokens in {t['shards']} shard(s)")
    return "; ".join(parts) + f" (vocab {manifest['vocab_size']}, {manifest['dtype']})"


def load_manifest(shards_dir: str | os.PathLike) -> dict:
    path = Path(shards_dir) / MANIFEST_NAME
    if not path.is_file():
        if not Path(shards_dir).is_dir():
            raise FileNotFoundError(f"shard directory not found: {shards_dir}")
        raise FileNotFoundError(
            f"{path} not found: {shards_dir} is not a finished shard directory "
            "(write_shards writes manifest.json last; without it the directory is incomplete)"
        )
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from e
    if manifest.get("version") != FORMAT_VERSION:
        raise ValueError(f"{path}: format version {manifest.get('version')!r}, expected {FORMAT_VERSION}")
    return manifest
