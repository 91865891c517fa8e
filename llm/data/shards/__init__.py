"""Token shards: writing WebDataset tars, and reading them back as packed, resumable streams.

* :mod:`llm.data.shards.manifest` - the on-disk format: shard names, ``manifest.json``;
* :mod:`llm.data.shards.writer` - ``write_shards`` (atomic shards, manifest last) and
  ``atomic_write_json``;
* :mod:`llm.data.shards.stream` - ``PackedTokenStream`` (the epoch layout: packing, DDP
  streams, shuffle, exact resume) and ``validate_shards`` / ``ShardError`` for corrupt shards;
* :mod:`llm.data.shards.datamodule` - ``TokenDataModule``, the Lightning data module. It is
  not re-exported here: importing this package does not import Lightning.
"""

from __future__ import annotations

from llm.data.shards.manifest import FORMAT_VERSION, MANIFEST_NAME, load_manifest, summarize_manifest
from llm.data.shards.stream import PackedTokenStream, ShardError, validate_shards
from llm.data.shards.writer import atomic_write_json, write_shards

__all__ = [
    "MANIFEST_NAME",
    "FORMAT_VERSION",
    "ShardError",
    "write_shards",
    "atomic_write_json",
    "load_manifest",
    "summarize_manifest",
    "validate_shards",
    "PackedTokenStream",
]
