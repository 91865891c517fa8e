"""Token shards: writing WebDataset tars atomically, with ``manifest.json`` last.

See :mod:`llm.data.shards.manifest` for the format. ``atomic_write_json`` (temp file, fsync,
``os.replace``) is also what the rest of the framework writes JSON reports with.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import time
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from llm.data.shards.manifest import FORMAT_VERSION, MANIFEST_NAME, SAMPLE_EXT, SHARD_RE, SPLITS, summarize_manifest

log = logging.getLogger("llm.data.shards")


def _dtype_for_vocab(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16) if vocab_size < 65536 else np.dtype(np.uint32)


def _is_val(seed: int, doc_index: int, val_fraction: float) -> bool:
    """Deterministic, order-independent split draw: hash(seed, index) < val_fraction."""
    if val_fraction <= 0.0:
        return False
    if val_fraction >= 1.0:
        return True
    digest = hashlib.blake2b(f"{seed}:{doc_index}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") / 2.0**64 < val_fraction


def _npy_bytes(arr: np.ndarray) -> bytes:
    bio = io.BytesIO()
    np.save(bio, arr, allow_pickle=False)
    return bio.getvalue()


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover - filesystems without directory fsync
        pass
    finally:
        os.close(fd)


def atomic_write_json(path: str | os.PathLike, obj) -> None:
    """Write JSON to ``path`` via a temp file + fsync + ``os.replace``."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(obj, f, indent=2, sort_keys=False)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


class _SplitWriter:
    """Writes one split's shards; a shard is closed once it holds >= max_tokens tokens."""

    def __init__(self, out_dir: Path, split: str, max_tokens: int):
        import webdataset as wds

        self._wds = wds
        self.out_dir = out_dir
        self.split = split
        self.max_tokens = max_tokens
        self.shards: list[dict] = []
        self._tw = None
        self._fh = None
        self._tmp: Path | None = None
        self._docs = 0
        self._tokens = 0
        self.total_docs = 0
        self.total_tokens = 0

    def _name(self) -> str:
        return f"{self.split}-{len(self.shards):06d}.tar"

    def add(self, doc_index: int, tokens: np.ndarray) -> None:
        if self._tw is None:
            self._tmp = self.out_dir / (self._name() + ".tmp")
            self._fh = open(self._tmp, "wb")
            # mtime=0 and fixed owner: byte-identical shards for identical inputs
            self._tw = self._wds.TarWriter(self._fh, encoder=False, mtime=0)
            self._docs = self._tokens = 0
        self._tw.write({"__key__": f"{doc_index:09d}", SAMPLE_EXT: _npy_bytes(tokens)})
        self._docs += 1
        self._tokens += len(tokens)
        self.total_docs += 1
        self.total_tokens += len(tokens)
        if self._tokens >= self.max_tokens:
            self._close()

    def _close(self) -> None:
        name = self._name()
        self._tw.close()  # writes the tar end blocks; does not close a file object we passed
        self._fh.flush()
        os.fsync(self._fh.fileno())
        self._fh.close()
        size = self._tmp.stat().st_size
        os.replace(self._tmp, self.out_dir / name)
        self.shards.append({"name": name, "docs": self._docs, "tokens": self._tokens, "bytes": size})
        self._tw = self._fh = self._tmp = None

    def finish(self) -> None:
        if self._tw is not None:
            self._close()

    def abort(self) -> None:
        """Drop the shard being written (never renamed to its final name)."""
        if self._tw is not None:
            try:
                self._tw.close()  # so tarfile's __del__ does not write to a closed file later
            except Exception:  # pragma: no cover - e.g. the disk error that got us here
                pass
        if self._fh is not None:
            try:
                self._fh.close()
            except OSError:  # pragma: no cover
                pass
        if self._tmp is not None:
            self._tmp.unlink(missing_ok=True)
        self._tw = self._fh = self._tmp = None


def _tokenized(docs: Iterable[str], tokenizer, batch_size: int, eot_id: int, dtype: np.dtype):
    """Yield (doc_index, tokens+eot as ``dtype`` array), encoding in batches."""

    def encode(batch):
        # split_special_tokens: a literal "<|endoftext|>" in raw text is encoded as text, so
        # documents can never inject control tokens
        enc = tokenizer(
            batch,
            add_special_tokens=False,
            split_special_tokens=True,
            return_attention_mask=False,
            return_token_type_ids=False,
        )["input_ids"]
        for ids in enc:
            arr = np.empty(len(ids) + 1, dtype=dtype)
            arr[:-1] = ids
            arr[-1] = eot_id
            yield arr

    index = 0
    batch: list[str] = []
    for doc in docs:
        if not isinstance(doc, str):
            raise TypeError(f"document {index + len(batch)} is a {type(doc).__name__}, expected str")
        batch.append(doc)
        if len(batch) >= batch_size:
            for arr in encode(batch):
                yield index, arr
                index += 1
            batch = []
    if batch:
        for arr in encode(batch):
            yield index, arr
            index += 1


def write_shards(
    docs: Iterable[str],
    tokenizer,
    out_dir: str | os.PathLike,
    *,
    shard_max_tokens: int = 1 << 20,
    val_fraction: float = 0.01,
    val_min_docs: int = 1,
    seed: int = 0,
    batch_size: int = 256,
    tokenizer_path: str | os.PathLike | None = None,
) -> dict:
    """Tokenize ``docs`` and write train/val WebDataset shards plus ``manifest.json``.

    Document ``i`` goes to "val" when ``blake2b(f"{seed}:{i}") / 2**64 < val_fraction``. If that
    leaves fewer than ``val_min_docs`` val documents and there are at least 2 documents, the
    last train-drawn documents are moved to val (at least one document stays in train); to do
    that without knowing the document count in advance, train documents are written
    ``val_min_docs`` documents late.

    Any existing ``manifest.json`` is removed first and stale ``*.tar.tmp`` / unlisted
    ``train-*.tar``/``val-*.tar`` files are deleted, so ``out_dir`` always describes the last
    successful run. ``tokenizer_path`` (default: the tokenizer's ``name_or_path``, made absolute
    when it is a local directory) is recorded in the manifest. Returns the manifest dict.
    """
    if shard_max_tokens < 1:
        raise ValueError(f"shard_max_tokens must be >= 1, got {shard_max_tokens}")
    if not 0.0 <= val_fraction <= 1.0:
        raise ValueError(f"val_fraction must be in [0, 1], got {val_fraction}")
    if val_min_docs < 0 or batch_size < 1:
        raise ValueError(f"need val_min_docs >= 0 and batch_size >= 1, got {val_min_docs}, {batch_size}")
    eot_id = tokenizer.eos_token_id
    if eot_id is None:
        raise ValueError("the tokenizer has no eos_token (the end-of-text id separates documents)")
    vocab_size = len(tokenizer)
    dtype = _dtype_for_vocab(vocab_size)
    if tokenizer_path is None:
        tokenizer_path = getattr(tokenizer, "name_or_path", None) or None
    if tokenizer_path is not None and Path(tokenizer_path).exists():
        tokenizer_path = Path(tokenizer_path).resolve()  # usable from any working directory

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / MANIFEST_NAME).unlink(missing_ok=True)  # from now on the directory is incomplete
    for stale in out_dir.glob("*.tar.tmp"):
        stale.unlink()

    writers = {split: _SplitWriter(out_dir, split, shard_max_tokens) for split in SPLITS}
    train, val = writers["train"], writers["val"]
    held: list[tuple[int, np.ndarray]] = []  # train-drawn docs written val_min_docs docs late
    n_docs = 0
    t_start = t_log = time.monotonic()
    try:
        for index, tokens in _tokenized(docs, tokenizer, batch_size, eot_id, dtype):
            n_docs = index + 1
            if _is_val(seed, index, val_fraction):
                val.add(index, tokens)
            else:
                held.append((index, tokens))
                if len(held) > val_min_docs:
                    train.add(*held.pop(0))
            now = time.monotonic()
            if now - t_log > 30:
                t_log = now
                done = train.total_tokens + val.total_tokens
                log.info("write_shards: %d docs, %d tokens (%.0f tokens/s)", n_docs, done, done / (now - t_start))
        missing = val_min_docs - val.total_docs
        if n_docs >= 2 and missing > 0:
            movable = len(held) - (0 if train.total_docs > 0 else 1)
            move = max(0, min(missing, movable))
            for item in held[len(held) - move :]:
                val.add(*item)
            del held[len(held) - move :]
        for item in held:
            train.add(*item)
        held.clear()
        for w in writers.values():
            w.finish()
    except BaseException:
        for w in writers.values():
            w.abort()
        raise

    listed = {s["name"] for w in writers.values() for s in w.shards}
    for p in out_dir.iterdir():
        if SHARD_RE.fullmatch(p.name) and p.name not in listed:
            p.unlink()

    splits = {split: w.shards for split, w in writers.items()}
    totals = {
        split: {
            "shards": len(shards),
            "docs": sum(s["docs"] for s in shards),
            "tokens": sum(s["tokens"] for s in shards),
            "bytes": sum(s["bytes"] for s in shards),
        }
        for split, shards in splits.items()
    }
    totals["docs"] = sum(totals[s]["docs"] for s in SPLITS)
    totals["tokens"] = sum(totals[s]["tokens"] for s in SPLITS)
    manifest = {
        "version": FORMAT_VERSION,
        "eot_id": int(eot_id),
        "vocab_size": int(vocab_size),
        "dtype": dtype.name,
        "tokenizer": str(tokenizer_path) if tokenizer_path is not None else None,
        "seed": seed,
        "val_fraction": val_fraction,
        "shard_max_tokens": shard_max_tokens,
        "splits": splits,
        "totals": totals,
    }
    _fsync_dir(out_dir)
    atomic_write_json(out_dir / MANIFEST_NAME, manifest)
    log.info("wrote %s: %s", out_dir, summarize_manifest(manifest))
    return manifest
