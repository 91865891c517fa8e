"""Token shards: reading them back as packed, resumable streams, and finding corrupt ones.

Reading (``PackedTokenStream``) -- the epoch layout
---------------------------------------------------
For one split and one epoch, with ``L = seq_len``, ``M = micro_batch_size * grad_accum``:

1. *Epoch token stream*: the split's shards in a permutation seeded by ``(seed, epoch)``
   (manifest order if ``shuffle=False``), their documents in file order, concatenated: ``T``
   tokens. Shard offsets come from the manifest's token counts, without reading anything.
2. *Chunks*: the stream is cut into ``N = T // (L + 1)`` consecutive chunks of ``L + 1`` tokens
   (tail dropped); chunk ``c`` gives ``input_ids = chunk[:-1]``, ``labels = chunk[1:]``.
   Documents are separated by the end-of-text token inside chunks (nanoGPT-style packing).
3. *Streams*: ``S = world_size * W`` streams (``W`` = DataLoader workers, 1 without workers).
   Stream ``s`` owns the chunk range ``[s*K, (s+1)*K)``, ``K = N // S``, and yields
   ``B = K // M`` step-batches (chunks past ``B*M`` are dropped). All streams yield the same
   number of batches, so all DDP ranks run the same number of steps whatever the shard count.
4. *Shuffle* (no buffer): a stream's first ``B*M`` chunks are grouped into blocks of
   ``shuffle_block * M`` chunks (the last may be shorter); inside block ``q`` the order is a
   permutation seeded by ``(seed, epoch, s, q)``; batch ``b`` is the ``b``-th run of ``M``
   chunks of that order. A block's tokens are contiguous, so a worker reads one block at a
   time (``shuffle_block * M * (L+1)`` tokens in memory) sequentially from the shards.
5. *Rank steps*: rank ``r`` runs ``W * B`` steps per epoch; its step ``j`` is batch ``j // W``
   of stream ``r*W + j % W``. The DataLoader collects worker outputs round-robin, so worker
   ``w`` of a loader started at step ``k`` (``start_step``) produces steps
   ``k + w, k + w + W, ...``: exactly the steps an uninterrupted loader would have produced
   from step ``k`` on, in the same order. Resuming seeks straight to the right document (it
   reads only npy headers of the documents it skips); it never materialises skipped batches.
   Resuming is exact only with the same seed, epoch, world size, worker count, ``seq_len``,
   ``micro_batch_size``, ``grad_accum`` and ``shuffle_block``.

Each step yields ``{"input_ids": LongTensor[grad_accum, micro_batch_size, L], "labels": same}``;
use ``DataLoader(ds, batch_size=None)`` and Lightning's ``accumulate_grad_batches=1`` (the
micro-batches of one optimizer step arrive together).
"""

from __future__ import annotations

import bisect
import io
import logging
import os
import tarfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from llm.data.shards.manifest import SAMPLE_EXT, load_manifest

log = logging.getLogger("llm.data.shards")

_NPY_HEAD_BYTES = 1024  # a 1-D .npy header is 128 bytes; read at most this much to parse it


class ShardError(RuntimeError):
    """A shard is missing, truncated or corrupt.

    The message always names the shard file (and the sample key when known). The constructor
    takes the message as its only positional argument so that DataLoader workers can re-raise
    it in the main process with the same type.
    """

    def __init__(self, message: str, shard: str | None = None, key: str | None = None):
        super().__init__(message)
        self.shard = shard
        self.key = key


def _shard_error(shard: str, problem: str, key: str | None = None) -> ShardError:
    where = f"shard {shard}" + (f", sample {key}" if key is not None else "")
    return ShardError(f"{where}: {problem}", shard=shard, key=key)


class _ShardDocReader:
    """Reads one shard's documents in order, checking them against the manifest entry.

    Uses random-access tar reading: skipping a document reads only its 512-byte tar header
    and its ~128-byte npy header. ``tarfile`` treats a corrupt header in the middle of an
    archive as the end of the archive, so the final document/token counts are always checked.
    """

    def __init__(self, root: Path, info: dict, dtype: np.dtype, vocab_size: int | None = None, eot_id: int | None = None):
        self.name = info["name"]
        self.vocab_size = vocab_size
        self.eot_id = eot_id
        self.expected_docs = int(info["docs"])
        self.expected_tokens = int(info["tokens"])
        self.dtype = dtype
        self.docs_seen = 0
        self.tokens_seen = 0
        self.last_key: str | None = None
        self.finished = False
        path = root / self.name
        try:
            self._fh = open(path, "rb")
        except FileNotFoundError:
            raise _shard_error(self.name, f"file {path} is missing") from None
        try:
            self._tf = tarfile.open(fileobj=self._fh, mode="r:")
        except (tarfile.TarError, OSError, EOFError) as e:
            self._fh.close()
            raise _shard_error(self.name, f"not a readable tar file ({e})") from e

    def close(self) -> None:
        try:
            self._tf.close()
        finally:
            self._fh.close()

    def next_doc(self, skip_until: int) -> tuple[int, np.ndarray | None] | None:
        """Advance one document; return ``(n_tokens, tokens)``, or None at the end of the shard.

        ``tokens`` is None (and not read) when the document ends at or before the shard-local
        token offset ``skip_until``. Pass -1 to read (and fully check) every document.
        """
        after = f"after sample {self.last_key}" if self.last_key else "at the start"
        try:
            member = self._tf.next()
        except (tarfile.TarError, OSError, EOFError) as e:
            raise _shard_error(self.name, f"tar read error {after}: {e}") from e
        self._tf.members.clear()  # tarfile keeps every TarInfo; we never need them again
        if member is None:
            self.finished = True
            if self.docs_seen != self.expected_docs or self.tokens_seen != self.expected_tokens:
                raise _shard_error(
                    self.name,
                    f"truncated or corrupt: the tar ends {after} with {self.docs_seen} documents / "
                    f"{self.tokens_seen} tokens, but manifest.json says {self.expected_docs} / "
                    f"{self.expected_tokens}",
                )
            return None
        key, _, ext = member.name.partition(".")
        if not member.isfile() or ext != SAMPLE_EXT:
            raise _shard_error(self.name, f"unexpected tar member {member.name!r} (expected KEY.{SAMPLE_EXT})", key)
        self.last_key = key
        try:
            self._fh.seek(member.offset_data)
            head = self._fh.read(min(member.size, _NPY_HEAD_BYTES))
            bio = io.BytesIO(head)
            version = np.lib.format.read_magic(bio)
            if version == (1, 0):
                shape, _, dtype = np.lib.format.read_array_header_1_0(bio)
            elif version == (2, 0):
                shape, _, dtype = np.lib.format.read_array_header_2_0(bio)
            else:
                raise ValueError(f"unsupported npy version {version}")
            header_len = bio.tell()
        except (ValueError, OSError, EOFError, SyntaxError) as e:
            raise _shard_error(self.name, f"bad npy data ({e})", key) from e
        if dtype != self.dtype or len(shape) != 1:
            raise _shard_error(self.name, f"expected a 1-D {self.dtype} array, found shape {shape} dtype {dtype}", key)
        n = int(shape[0])
        nbytes = n * self.dtype.itemsize
        if member.size != header_len + nbytes:
            raise _shard_error(self.name, f"member size {member.size} != npy header {header_len} + {n} tokens", key)
        self.docs_seen += 1
        self.tokens_seen += n
        if self.docs_seen > self.expected_docs or self.tokens_seen > self.expected_tokens:
            raise _shard_error(
                self.name,
                f"holds more than manifest.json says ({self.expected_docs} documents, {self.expected_tokens} tokens)",
                key,
            )
        if self.tokens_seen <= skip_until:
            return n, None
        body = head[header_len:]
        if len(body) < nbytes:
            body += self._fh.read(nbytes - len(body))
        if len(body) != nbytes:
            raise _shard_error(self.name, "truncated: file ends inside this sample's data", key)
        arr = np.frombuffer(body, dtype=self.dtype)
        # payload corruption that keeps the tar structure: ids outside the vocabulary, or a
        # document that does not end with the end-of-text token
        if n and self.vocab_size is not None and int(arr.max()) >= self.vocab_size:
            raise _shard_error(self.name, f"token id {int(arr.max())} outside the vocabulary ({self.vocab_size}): corrupt data", key)
        if n and self.eot_id is not None and int(arr[-1]) != self.eot_id:
            raise _shard_error(self.name, f"document does not end with the end-of-text id {self.eot_id}: corrupt data", key)
        return n, arr


class _EpochStreamReader:
    """Random access to the epoch token stream, cheap when reads move forward.

    Keeps the current shard open and the current document buffered, so reading consecutive
    ranges touches every byte once; a backwards or cross-shard jump reopens the right shard
    and skips documents by their headers.
    """

    def __init__(
        self,
        root: Path,
        shards: Sequence[dict],
        offsets: Sequence[int],
        dtype: np.dtype,
        vocab_size: int | None = None,
        eot_id: int | None = None,
    ):
        self.root = root
        self.vocab_size = vocab_size
        self.eot_id = eot_id
        self.shards = shards
        self.offsets = list(offsets)  # start of shard i in the stream
        self.total = self.offsets[-1] + int(shards[-1]["tokens"]) if shards else 0
        self.dtype = dtype
        self._i: int | None = None
        self._doc: _ShardDocReader | None = None
        self._buf: np.ndarray | None = None
        self._buf_start = 0

    def close(self) -> None:
        if self._doc is not None:
            self._doc.close()
            self._doc = None
            self._i = None
            self._buf = None

    def _open(self, i: int) -> None:
        if self._doc is not None:
            prev = self._doc
            # moving on after reading a shard to its last token: confirm nothing follows
            if i == self._i + 1 and prev.tokens_seen == prev.expected_tokens and not prev.finished:
                prev.next_doc(skip_until=prev.expected_tokens)
            self.close()
        self._doc = _ShardDocReader(self.root, self.shards[i], self.dtype, self.vocab_size, self.eot_id)
        self._i = i
        self._buf = None

    def _load(self, pos: int) -> None:
        """Make the buffered document the one containing stream position ``pos``."""
        i = bisect.bisect_right(self.offsets, pos) - 1
        local = pos - self.offsets[i]
        if self._i != i or self._doc is None or local < self._doc.tokens_seen:
            self._open(i)
        while True:
            got = self._doc.next_doc(skip_until=local)
            if got is None:  # only reachable if the manifest's offsets were inconsistent
                raise _shard_error(self.shards[i]["name"], f"ended before token {local}")
            n, arr = got
            if arr is not None:
                self._buf = arr
                self._buf_start = self.offsets[i] + self._doc.tokens_seen - n
                return

    def read(self, start: int, n: int) -> np.ndarray:
        if start < 0 or start + n > self.total:
            raise IndexError(f"token range [{start}, {start + n}) outside the stream of {self.total}")
        out = np.empty(n, dtype=self.dtype)
        filled = 0
        while filled < n:
            pos = start + filled
            buf = self._buf
            if buf is None or not (self._buf_start <= pos < self._buf_start + len(buf)):
                self._load(pos)
                buf = self._buf
            off = pos - self._buf_start
            take = min(n - filled, len(buf) - off)
            out[filled : filled + take] = buf[off : off + take]
            filled += take
        return out


def validate_shards(shards_dir: str | os.PathLike, split: str) -> list[tuple[str, str]]:
    """Read every shard of ``split`` completely; return ``[(shard_name, reason), ...]`` for bad ones.

    Checks: file present, size as recorded, readable tar, only ``KEY.ids.npy`` members holding
    1-D arrays of the manifest dtype, complete data, document and token counts as recorded.
    """
    root = Path(shards_dir)
    manifest = load_manifest(root)
    if split not in manifest["splits"]:
        raise ValueError(f"{root}: no split {split!r} in manifest.json (have {sorted(manifest['splits'])})")
    dtype = np.dtype(manifest["dtype"])
    bad = []
    for info in manifest["splits"][split]:
        try:
            _check_shard_file(root, info)
            reader = _ShardDocReader(root, info, dtype, int(manifest["vocab_size"]), int(manifest["eot_id"]))
            try:
                while reader.next_doc(skip_until=-1) is not None:
                    pass
            finally:
                reader.close()
        except ShardError as e:
            bad.append((info["name"], str(e)))
    return bad


def _check_shard_file(root: Path, info: dict) -> None:
    path = root / info["name"]
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise _shard_error(info["name"], f"file {path} is missing") from None
    if size != info["bytes"]:
        raise _shard_error(
            info["name"],
            f"file is {size} bytes but manifest.json says {info['bytes']} (truncated or replaced); "
            "run validate_shards() or use skip_corrupt=True to leave it out",
        )


@dataclass(frozen=True)
class _Layout:
    chunks: int  # N
    streams: int  # S
    chunks_per_stream: int  # K
    batches_per_stream: int  # B


class PackedTokenStream(IterableDataset):
    """Packed ``seq_len`` windows of one split, exactly once per epoch, DDP-safe and resumable.

    See the module docstring for the exact layout. Use with ``DataLoader(ds, batch_size=None,
    num_workers=W)`` and pass ``num_workers_hint=W`` (it is checked when iterating) so that
    ``len(ds)`` / ``steps_per_epoch()`` are right.

    Parameters beyond the obvious ones:

    ``start_step``
        Rank steps of this epoch already done; iteration starts with step ``start_step``.
    ``skip_corrupt``
        Validate every shard of the split at construction (reads them fully), leave bad ones
        out with a warning and list them in ``skipped_shards`` as ``(name, reason)``. Without
        it, construction only checks that each shard file exists with the recorded size, and
        any read error raises :class:`ShardError` naming the shard.
    ``known_bad``
        With ``skip_corrupt``, a result of :func:`validate_shards` to use instead of
        validating again (e.g. cached across epochs).
    ``max_steps``
        Cap on the rank steps per epoch (e.g. a fixed number of validation batches).

    ``len(ds)`` is the number of rank steps of the *whole* epoch (capped by ``max_steps``),
    not the number left after ``start_step`` -- the convention Lightning uses for resumed
    loaders (it adds the restored batch index to the fetched count).
    """

    def __init__(
        self,
        shards_dir: str | os.PathLike,
        split: str,
        seq_len: int,
        micro_batch_size: int,
        grad_accum: int = 1,
        *,
        seed: int = 0,
        epoch: int = 0,
        start_step: int = 0,
        rank: int = 0,
        world_size: int = 1,
        shuffle: bool = True,
        shuffle_block: int = 64,
        skip_corrupt: bool = False,
        num_workers_hint: int | None = None,
        max_steps: int | None = None,
        known_bad: Sequence[tuple[str, str]] | None = None,
    ):
        super().__init__()
        for name, value, low in [
            ("seq_len", seq_len, 1),
            ("micro_batch_size", micro_batch_size, 1),
            ("grad_accum", grad_accum, 1),
            ("world_size", world_size, 1),
            ("shuffle_block", shuffle_block, 1),
            ("seed", seed, 0),
            ("epoch", epoch, 0),
            ("start_step", start_step, 0),
        ]:
            if not isinstance(value, (int, np.integer)) or value < low:
                raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, {world_size}), got {rank}")
        if num_workers_hint is not None and num_workers_hint < 1:
            raise ValueError(f"num_workers_hint must be >= 1 (use 1 for num_workers=0), got {num_workers_hint}")
        if max_steps is not None and max_steps < 0:
            raise ValueError(f"max_steps must be >= 0, got {max_steps}")

        self.shards_dir = Path(shards_dir)
        self.split = split
        self.seq_len = int(seq_len)
        self.micro_batch_size = int(micro_batch_size)
        self.grad_accum = int(grad_accum)
        self.seed = int(seed)
        self.epoch = int(epoch)
        self.start_step = int(start_step)
        self.rank = int(rank)
        self.world_size = int(world_size)
        self.shuffle = bool(shuffle)
        self.shuffle_block = int(shuffle_block)
        self.num_workers_hint = num_workers_hint
        self.max_steps = max_steps

        manifest = load_manifest(self.shards_dir)
        if split not in manifest["splits"]:
            raise ValueError(f"{self.shards_dir}: no split {split!r} in manifest.json (have {sorted(manifest['splits'])})")
        self.dtype = np.dtype(manifest["dtype"])
        self.eot_id = int(manifest["eot_id"])
        self.vocab_size = int(manifest["vocab_size"])
        shards = list(manifest["splits"][split])

        self.skipped_shards: list[tuple[str, str]] = []
        if skip_corrupt:
            bad = list(known_bad) if known_bad is not None else validate_shards(self.shards_dir, split)
            bad_names = {name for name, _ in bad}
            for name, reason in bad:
                log.warning("skipping corrupt shard %s/%s: %s", self.shards_dir, name, reason)
            self.skipped_shards = [(n, r) for n, r in bad]
            shards = [s for s in shards if s["name"] not in bad_names]
        else:
            for info in shards:
                _check_shard_file(self.shards_dir, info)
        if not shards:
            skipped = "; ".join(f"{n}: {r}" for n, r in self.skipped_shards)
            raise ValueError(
                f"{self.shards_dir}: split {split!r} has no usable shards" + (f" (skipped as corrupt: {skipped})" if skipped else "")
            )

        if self.shuffle:
            perm = np.random.default_rng([self.seed, self.epoch, 0]).permutation(len(shards))
            shards = [shards[i] for i in perm]
        self._shards = shards
        self.shard_order: list[str] = [s["name"] for s in shards]
        self._offsets = np.concatenate([[0], np.cumsum([int(s["tokens"]) for s in shards])[:-1]]).tolist()
        self.total_tokens = int(sum(int(s["tokens"]) for s in shards))

        self._layout(self.num_workers_hint or 1)  # fail early if there is too little data
        if self.start_step > self.steps_per_epoch():
            raise ValueError(f"start_step {self.start_step} is past the end of the epoch ({self.steps_per_epoch()} steps)")

    # -- layout ------------------------------------------------------------------------------

    @property
    def chunks_per_step(self) -> int:
        """Chunks (sequences) per step-batch: micro_batch_size * grad_accum."""
        return self.micro_batch_size * self.grad_accum

    def _layout(self, num_workers: int) -> _Layout:
        chunk = self.seq_len + 1
        n = self.total_tokens // chunk
        s = self.world_size * num_workers
        k = n // s
        m = self.chunks_per_step
        b = k // m
        if b == 0:
            need = s * m * chunk
            raise ValueError(
                f"not enough tokens in split {self.split!r} of {self.shards_dir}: one step-batch on each of "
                f"{s} stream(s) ({self.world_size} rank(s) x {num_workers} worker(s)) needs "
                f"{m} sequences ({self.micro_batch_size} x {self.grad_accum} grad_accum) of "
                f"{chunk} tokens per stream, i.e. at least {need:,} tokens, but only "
                f"{self.total_tokens:,} are available; add data or reduce seq_len / micro_batch_size / "
                "grad_accum / workers / ranks"
            )
        return _Layout(chunks=n, streams=s, chunks_per_stream=k, batches_per_stream=b)

    def steps_per_epoch(self, num_workers: int | None = None) -> int:
        """Rank steps per epoch = W * B (W workers, B batches per worker stream).

        ``num_workers`` defaults to ``num_workers_hint`` (1 if not given). Not capped by
        ``max_steps`` (``len(self)`` is).
        """
        w = num_workers or self.num_workers_hint or 1
        return w * self._layout(w).batches_per_stream

    @property
    def tokens_dropped(self) -> int:
        """Tokens of the epoch (all ranks) in no batch: stream tail, remainder chunks, partial batches."""
        w = self.num_workers_hint or 1
        lay = self._layout(w)
        used = lay.streams * lay.batches_per_stream * self.chunks_per_step * (self.seq_len + 1)
        return self.total_tokens - used

    def __len__(self) -> int:
        steps = self.steps_per_epoch()
        return steps if self.max_steps is None else min(steps, self.max_steps)

    # -- iteration ---------------------------------------------------------------------------

    def rank_step_location(self, j: int, num_workers: int | None = None) -> tuple[int, int]:
        """(stream, batch-in-stream) that serves this rank's step ``j`` of the epoch."""
        w = num_workers or self.num_workers_hint or 1
        return self.rank * w + j % w, j // w

    def batch_chunk_ids(self, stream: int, batch: int, num_workers: int | None = None) -> np.ndarray:
        """Global chunk indices (positions in the epoch stream / (seq_len+1)) of a step-batch."""
        w = num_workers or self.num_workers_hint or 1
        lay = self._layout(w)
        local, _ = self._block_local(lay, stream, batch)
        return stream * lay.chunks_per_stream + local

    def _block_local(self, lay: _Layout, stream: int, batch: int) -> tuple[np.ndarray, tuple[int, int, int]]:
        """Stream-local chunk ids of ``batch``, plus (block, first local chunk, length) of its block."""
        m = self.chunks_per_step
        per_block = self.shuffle_block * m
        used = lay.batches_per_stream * m
        q = batch // self.shuffle_block
        first = q * per_block
        length = min(per_block, used - first)
        if self.shuffle:
            order = np.random.default_rng([self.seed, self.epoch, 1, stream, q]).permutation(length)
        else:
            order = np.arange(length)
        r = (batch - q * self.shuffle_block) * m
        return first + order[r : r + m], (q, first, length)

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        info = get_worker_info()
        num_workers = info.num_workers if info is not None else 1
        worker = info.id if info is not None else 0
        if self.num_workers_hint is not None and self.num_workers_hint != num_workers:
            raise ValueError(
                f"PackedTokenStream was built with num_workers_hint={self.num_workers_hint} but is "
                f"iterated by {num_workers} worker(s); pass the DataLoader's num_workers (1 for 0)"
            )
        lay = self._layout(num_workers)
        total = num_workers * lay.batches_per_stream
        end = total if self.max_steps is None else min(total, self.max_steps)
        reader = _EpochStreamReader(self.shards_dir, self._shards, self._offsets, self.dtype, self.vocab_size, self.eot_id)
        chunk = self.seq_len + 1
        block_key = None
        block_tokens = None
        try:
            for j in range(self.start_step + worker, end, num_workers):
                stream, batch = self.rank * num_workers + j % num_workers, j // num_workers
                local, (q, first, length) = self._block_local(lay, stream, batch)
                if block_key != (stream, q):
                    start_chunk = stream * lay.chunks_per_stream + first
                    block_tokens = reader.read(start_chunk * chunk, length * chunk).reshape(length, chunk)
                    block_key = (stream, q)
                rows = block_tokens[local - first]
                x = torch.from_numpy(rows.astype(np.int64)).view(self.grad_accum, self.micro_batch_size, chunk)
                yield {"input_ids": x[..., :-1].contiguous(), "labels": x[..., 1:].contiguous()}
        finally:
            reader.close()

    def __repr__(self) -> str:
        return (
            f"PackedTokenStream({str(self.shards_dir)!r}, split={self.split!r}, seq_len={self.seq_len}, "
            f"micro_batch_size={self.micro_batch_size}, grad_accum={self.grad_accum}, epoch={self.epoch}, "
            f"start_step={self.start_step}, rank={self.rank}/{self.world_size}, shards={len(self._shards)}, "
            f"tokens={self.total_tokens})"
        )
