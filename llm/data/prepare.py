"""Prepare a training-data cache: tokenizer + token shards, idempotent and multi-process safe.

Layout of ``out_dir``::

    out_dir/
      .lock                  fcntl lock held while preparing
      tokenizer/             tokenizer.json + tokenizer_config.json (AutoTokenizer-loadable)
      shards/                train-*.tar, val-*.tar, manifest.json (written last),
                             prepare.json (written after the manifest: the cache key)

``prepare_data`` returns at once when ``shards/manifest.json`` exists and ``shards/prepare.json``
records the same arguments (and the same source files by path/size/mtime). Several processes
(e.g. all torchrun ranks) may call it at the same time: the first to take the lock prepares,
the others block on the lock and then reuse the result.

CLI::

    python -m llm.data.prepare --source builtin:python-docs --out data/pydocs --vocab-size 8192
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import json
import logging
import os
import sys
from pathlib import Path

from llm.data.shards import MANIFEST_NAME, atomic_write_json, load_manifest, summarize_manifest, write_shards
from llm.data.text import iter_documents, source_fingerprint
from llm.data.tokenizer import load_tokenizer, save_tokenizer, train_tokenizer

__all__ = ["prepare_data", "main", "PREPARE_NAME"]

log = logging.getLogger("llm.data.prepare")

PREPARE_NAME = "prepare.json"
_CACHE_VERSION = 1


class _FileLock:
    def __init__(self, path: Path):
        self.path = path
        self._fd: int | None = None

    def __enter__(self):
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("waiting for another process preparing %s (lock %s)", self.path.parent, self.path)
            fcntl.flock(self._fd, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc):
        try:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
        finally:
            os.close(self._fd)
            self._fd = None


def _cache_key(sources, vocab_size, tokenizer, shard_max_tokens, val_fraction, val_min_docs, seed, text_field, min_frequency) -> dict:
    key = {
        "version": _CACHE_VERSION,
        "sources": [str(s) for s in sources],
        "sources_fingerprint": source_fingerprint(list(sources), text_field),
        "text_field": text_field,
        "shard_max_tokens": shard_max_tokens,
        "val_fraction": val_fraction,
        "val_min_docs": val_min_docs,
        "seed": seed,
    }
    if tokenizer is None:
        key.update(vocab_size=vocab_size, min_frequency=min_frequency, tokenizer=None)
    else:
        tok_json = Path(tokenizer) / "tokenizer.json"
        if not tok_json.is_file():
            raise FileNotFoundError(f"--tokenizer {tokenizer}: no tokenizer.json there")
        key.update(
            tokenizer=str(Path(tokenizer).resolve()),
            tokenizer_sha256=hashlib.sha256(tok_json.read_bytes()).hexdigest(),
        )
    return key


def _cached(out_dir: Path, key: dict) -> bool:
    shards = out_dir / "shards"
    try:
        recorded = json.loads((shards / PREPARE_NAME).read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError):
        return False
    return recorded == key and (shards / MANIFEST_NAME).is_file() and (out_dir / "tokenizer" / "tokenizer.json").is_file()


def prepare_data(
    sources: list[str],
    out_dir: str | os.PathLike,
    vocab_size: int | None = None,
    *,
    tokenizer: str | os.PathLike | None = None,
    shard_max_tokens: int = 1 << 20,
    val_fraction: float = 0.01,
    seed: int = 0,
    val_min_docs: int = 1,
    text_field: str = "text",
    min_frequency: int = 2,
) -> Path:
    """Train (or copy) a tokenizer into ``out_dir/tokenizer`` and write shards to ``out_dir/shards``.

    Returns ``out_dir`` (as a Path). ``vocab_size`` is required unless ``tokenizer`` (a
    directory with ``tokenizer.json``) is given, in which case that tokenizer is used as is
    and copied to ``out_dir/tokenizer`` so the cache is self-contained.
    """
    if tokenizer is None and vocab_size is None:
        raise ValueError("prepare_data needs vocab_size (to train a tokenizer) or tokenizer (a directory)")
    if isinstance(sources, (str, os.PathLike)):
        sources = [sources]
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    key = _cache_key(sources, vocab_size, tokenizer, shard_max_tokens, val_fraction, val_min_docs, seed, text_field, min_frequency)
    with _FileLock(out_dir / ".lock"):
        if _cached(out_dir, key):
            log.info("prepare_data: reusing %s (same arguments and sources)", out_dir)
            return out_dir
        shards_dir = out_dir / "shards"
        (shards_dir / PREPARE_NAME).unlink(missing_ok=True)  # invalidate before touching anything
        tok_dir = out_dir / "tokenizer"
        if tokenizer is not None:
            tok = load_tokenizer(tokenizer)
            save_tokenizer(tok, tok_dir)
            log.info("prepare_data: using tokenizer %s (copied to %s)", tokenizer, tok_dir)
        else:
            log.info("prepare_data: training a %d-token BPE tokenizer on %s", vocab_size, sources)
            tok = train_tokenizer(iter_documents(sources, text_field), vocab_size, tok_dir, min_frequency)
        write_shards(
            iter_documents(sources, text_field),
            tok,
            shards_dir,
            shard_max_tokens=shard_max_tokens,
            val_fraction=val_fraction,
            val_min_docs=val_min_docs,
            seed=seed,
            tokenizer_path=tok_dir,
        )
        atomic_write_json(shards_dir / PREPARE_NAME, key)
    return out_dir


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m llm.data.prepare",
        description="Train a byte-level BPE tokenizer and write WebDataset token shards (cached).",
    )
    p.add_argument(
        "--source",
        action="append",
        required=True,
        metavar="PATH",
        help="file (.txt/.md/.rst/.jsonl), directory, or builtin:python-docs; repeatable",
    )
    p.add_argument("--out", required=True, metavar="DIR", help="output directory (tokenizer/ and shards/)")
    p.add_argument("--vocab-size", type=int, metavar="N", help="tokenizer vocabulary size (needed unless --tokenizer)")
    p.add_argument("--tokenizer", metavar="DIR", help="use this tokenizer directory instead of training one")
    p.add_argument("--shard-max-tokens", type=int, default=1 << 20, metavar="N")
    p.add_argument("--val-fraction", type=float, default=0.01)
    p.add_argument("--val-min-docs", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--text-field", default="text", help="JSONL field holding the text (default: text)")
    args = p.parse_args(argv)
    if args.vocab_size is None and args.tokenizer is None:
        p.error("one of --vocab-size or --tokenizer is required")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        out = prepare_data(
            args.source,
            args.out,
            args.vocab_size,
            tokenizer=args.tokenizer,
            shard_max_tokens=args.shard_max_tokens,
            val_fraction=args.val_fraction,
            val_min_docs=args.val_min_docs,
            seed=args.seed,
            text_field=args.text_field,
        )
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    manifest = load_manifest(out / "shards")
    print(f"tokenizer: {out / 'tokenizer'}")
    print(f"shards:    {out / 'shards'}")
    print(summarize_manifest(manifest))
    return 0


if __name__ == "__main__":
    sys.exit(main())
