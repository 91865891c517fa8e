"""Token shards on real text (CPython's documentation): writer, packed reader, resume, DDP layout.

The expected token streams are rebuilt independently of the reader, from the tar files with
plain ``tarfile``/``numpy`` (and ``webdataset.WebDataset`` for the format check).
"""

from __future__ import annotations

import io
import itertools
import json
import logging
import multiprocessing as mp
import os
import shutil
import tarfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # the tests fork DataLoader workers

from llm.data.prepare import main as prepare_main  # noqa: E402
from llm.data.prepare import prepare_data  # noqa: E402
from llm.data.shards import (  # noqa: E402
    PackedTokenStream,
    ShardError,
    load_manifest,
    validate_shards,
    write_shards,
)
from llm.data.shards.datamodule import TokenDataModule  # noqa: E402
from llm.data.text import BUILTIN_PYTHON_DOCS, builtin_python_docs  # noqa: E402
from llm.data.tokenizer import load_tokenizer  # noqa: E402

VOCAB = 512
SHARD_TOKENS = 60_000
CHINESE = ["床前明月光，疑是地上霜。举头望明月，低头思故乡。", "春眠不觉晓，处处闻啼鸟。夜来风雨声，花落知多少。"]


# ---------------------------------------------------------------------------- fixtures/helpers


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("prep") / "pydocs"
    prepare_data([BUILTIN_PYTHON_DOCS], out, VOCAB, shard_max_tokens=SHARD_TOKENS, val_fraction=0.05, seed=0)
    return out


@pytest.fixture(scope="module")
def shards(prepared) -> Path:
    return prepared / "shards"


@pytest.fixture(scope="module")
def tok(prepared):
    return load_tokenizer(prepared / "tokenizer")


@pytest.fixture(scope="module")
def small_docs() -> list[str]:
    return list(builtin_python_docs()[:300]) + CHINESE


@pytest.fixture(scope="module")
def small_total(tok, small_docs) -> int:
    return sum(len(x) + 1 for x in tok(small_docs, add_special_tokens=False)["input_ids"])


def read_shard(path: Path) -> list[tuple[str, np.ndarray]]:
    """(key, tokens) of every sample, with plain tarfile + numpy."""
    out = []
    with tarfile.open(path) as tf:
        for m in tf:
            key, _, ext = m.name.partition(".")
            assert ext == "ids.npy"
            out.append((key, np.load(io.BytesIO(tf.extractfile(m).read()))))
    return out


def epoch_stream(shards_dir: Path, order: list[str]) -> np.ndarray:
    return np.concatenate([arr for name in order for _, arr in read_shard(shards_dir / name)])


def expected_chunks(stream: np.ndarray, seq_len: int, streams: int, per_step: int) -> Counter:
    """The spec's layout: N chunks, S streams of K chunks, each using B*M of them."""
    chunk = seq_len + 1
    n = len(stream) // chunk
    k = n // streams
    used = (k // per_step) * per_step
    return Counter(tuple(stream[(s * k + i) * chunk : (s * k + i + 1) * chunk].tolist()) for s in range(streams) for i in range(used))


def collect(ds: PackedTokenStream, num_workers: int) -> list[dict]:
    return list(DataLoader(ds, batch_size=None, num_workers=num_workers))


def batch_chunks(batch: dict) -> list[tuple]:
    x, y = batch["input_ids"], batch["labels"]
    assert x.dtype == torch.int64 and x.shape == y.shape
    assert torch.equal(x[..., 1:], y[..., :-1])  # labels are inputs shifted by one
    full = torch.cat([x, y[..., -1:]], dim=-1).reshape(-1, x.shape[-1] + 1)
    return [tuple(row.tolist()) for row in full]


def assert_same_batches(a: list[dict], b: list[dict]) -> None:
    assert len(a) == len(b)
    for i, (x, y) in enumerate(zip(a, b)):
        assert torch.equal(x["input_ids"], y["input_ids"]) and torch.equal(x["labels"], y["labels"]), f"batch {i}"


# ---------------------------------------------------------------------------- writer


def test_manifest_counts_and_contents_match_tokenizer(shards, tok):
    import webdataset as wds

    docs = builtin_python_docs()
    ids = tok(list(docs), add_special_tokens=False)["input_ids"]
    expected = {f"{i:09d}": x + [tok.eos_token_id] for i, x in enumerate(ids)}
    m = load_manifest(shards)
    assert m["eot_id"] == 0 and m["vocab_size"] == VOCAB and m["dtype"] == "uint16"
    assert m["totals"]["docs"] == len(docs)
    assert m["totals"]["tokens"] == sum(len(x) + 1 for x in ids)
    assert 0 < m["totals"]["val"]["docs"] < 0.1 * len(docs)
    assert m["tokenizer"].endswith("tokenizer")

    # every shard is a plain WebDataset shard; per-shard counts are as recorded
    seen: dict[str, str] = {}
    for split in ("train", "val"):
        for entry in m["splits"][split]:
            path = shards / entry["name"]
            assert path.stat().st_size == entry["bytes"]
            samples = list(wds.WebDataset(str(path), shardshuffle=False))
            assert len(samples) == entry["docs"]
            n_tokens = 0
            for sample in samples:
                arr = np.load(io.BytesIO(sample["ids.npy"]))
                assert arr.dtype == np.uint16
                assert arr.tolist() == expected[sample["__key__"]]
                assert sample["__key__"] not in seen
                seen[sample["__key__"]] = split
                n_tokens += len(arr)
            assert n_tokens == entry["tokens"]
        for entry in m["splits"][split][:-1]:  # a shard closes once it reaches the limit
            assert entry["tokens"] >= SHARD_TOKENS
    assert set(seen) == set(expected)  # every document in exactly one split
    assert not list(shards.glob("*.tmp"))


def test_split_assignment_is_deterministic_with_val_min_docs(tmp_path, tok, small_docs):
    def val_keys(manifest_dir):
        entries = load_manifest(manifest_dir)["splits"]["val"]
        return sorted(k for e in entries for k, _ in read_shard(manifest_dir / e["name"]))

    a = write_shards(small_docs, tok, tmp_path / "a", shard_max_tokens=50_000, val_fraction=0.1, seed=1)
    b = write_shards(small_docs, tok, tmp_path / "b", shard_max_tokens=50_000, val_fraction=0.1, seed=1)
    write_shards(small_docs, tok, tmp_path / "c", shard_max_tokens=50_000, val_fraction=0.1, seed=2)
    assert a["splits"] == b["splits"] and val_keys(tmp_path / "a") == val_keys(tmp_path / "b")
    assert val_keys(tmp_path / "a") != val_keys(tmp_path / "c")
    # byte-identical shards for identical inputs
    assert (tmp_path / "a" / "train-000000.tar").read_bytes() == (tmp_path / "b" / "train-000000.tar").read_bytes()

    # val_fraction=0: the last val_min_docs documents still go to val, at least one stays in train
    m = write_shards(small_docs[:5], tok, tmp_path / "d", val_fraction=0.0, val_min_docs=2)
    assert (m["totals"]["train"]["docs"], m["totals"]["val"]["docs"]) == (3, 2)
    assert val_keys(tmp_path / "d") == ["000000003", "000000004"]
    m = write_shards(small_docs[:2], tok, tmp_path / "e", val_fraction=0.0, val_min_docs=5)
    assert (m["totals"]["train"]["docs"], m["totals"]["val"]["docs"]) == (1, 1)
    m = write_shards(small_docs[:1], tok, tmp_path / "f", val_fraction=0.0, val_min_docs=1)
    assert (m["totals"]["train"]["docs"], m["totals"]["val"]["docs"]) == (1, 0)


def test_special_token_text_in_documents_stays_text(tmp_path, tok):
    docs = ["a raw <|endoftext|> and <|user|> in web text", CHINESE[0]]
    write_shards(docs, tok, tmp_path, val_fraction=0.0, val_min_docs=0)
    (key0, first), (key1, second) = read_shard(tmp_path / "train-000000.tar")
    assert (key0, key1) == ("000000000", "000000001")
    # only the appended end-of-text is a control token; the literal strings are plain bytes
    assert first[-1] == 0 and not set(first[:-1].tolist()) & set(range(6))
    assert tok.decode(first[:-1].tolist()) == docs[0]
    assert tok.decode(second[:-1].tolist()) == CHINESE[0]


def test_crash_leaves_no_partial_shard_and_no_manifest(tmp_path, tok, small_docs):
    out = tmp_path / "shards"
    write_shards(small_docs[:50], tok, out, shard_max_tokens=5_000)  # an older, complete run
    assert (out / "manifest.json").exists()

    def docs_then_crash():
        yield from small_docs[:250]
        raise RuntimeError("disk on fire")

    with pytest.raises(RuntimeError, match="disk on fire"):
        write_shards(docs_then_crash(), tok, out, shard_max_tokens=5_000, batch_size=16)
    assert not (out / "manifest.json").exists()  # directory is marked incomplete
    assert not [p.name for p in out.iterdir() if not p.name.endswith(".tar")]  # no *.tmp left
    tars = sorted(out.glob("*.tar"))
    assert len(tars) > 5
    for path in tars:  # every final-named shard is a complete tar that reached the limit
        tokens = sum(len(arr) for _, arr in read_shard(path))
        assert tokens >= 5_000 or path.name.startswith("val-"), path.name

    # a fresh run over the same directory is complete and removes stale shards
    m = write_shards(small_docs[:50], tok, out, shard_max_tokens=5_000)
    listed = {e["name"] for split in m["splits"].values() for e in split}
    assert {p.name for p in out.glob("*.tar")} == listed
    assert validate_shards(out, "train") == []


# ---------------------------------------------------------------------------- reader


def test_exactly_once_across_2_ranks_x_2_workers(shards):
    seq_len, mb, ga = 128, 4, 2
    got: Counter = Counter()
    counts = []
    orders = set()
    for rank in range(2):
        ds = PackedTokenStream(
            shards,
            "train",
            seq_len,
            mb,
            ga,
            seed=5,
            epoch=1,
            rank=rank,
            world_size=2,
            shuffle_block=4,
            num_workers_hint=2,
        )
        orders.add(tuple(ds.shard_order))
        batches = collect(ds, num_workers=2)
        counts.append(len(batches))
        assert len(batches) == len(ds) == ds.steps_per_epoch()
        assert all(b["input_ids"].shape == (ga, mb, seq_len) for b in batches)
        for b in batches:
            got.update(batch_chunks(b))
        if rank == 0:
            ds0, batches0 = ds, batches
            first_rank_chunks = [c for b in batches for c in batch_chunks(b)]
    assert counts[0] == counts[1] > 0
    assert len(orders) == 1  # every rank agrees on the epoch's shard order
    order = list(orders.pop())
    manifest_order = [e["name"] for e in load_manifest(shards)["splits"]["train"]]
    assert sorted(order) == sorted(manifest_order) and order != manifest_order

    stream = epoch_stream(shards, order)
    want = expected_chunks(stream, seq_len, streams=4, per_step=mb * ga)
    assert got == want  # every used chunk exactly once, nothing else
    assert sum(want.values()) == 2 * counts[0] * mb * ga
    assert ds.tokens_dropped == len(stream) - sum(want.values()) * (seq_len + 1)
    # and it is shuffled: rank 0's chunks do not come in stream order
    chunk = seq_len + 1
    in_order = [tuple(stream[i * chunk : (i + 1) * chunk].tolist()) for i in range(len(first_rank_chunks))]
    assert first_rank_chunks != in_order
    # the documented step -> (stream, batch) -> chunk-ids mapping is what the loader produced
    for j in (0, 1, 2, 3, len(batches0) - 1):
        stream_id, batch_id = ds0.rank_step_location(j)
        assert (stream_id, batch_id) == (j % 2, j // 2)
        ids = ds0.batch_chunk_ids(stream_id, batch_id)
        assert batch_chunks(batches0[j]) == [tuple(stream[c * chunk : (c + 1) * chunk].tolist()) for c in ids]


@pytest.mark.parametrize("n_shards", [1, 3])
def test_uneven_shard_counts_give_equal_steps_per_rank(tmp_path, tok, small_docs, small_total, n_shards):
    limit = small_total + 1 if n_shards == 1 else small_total // n_shards + 1
    m = write_shards(small_docs, tok, tmp_path, shard_max_tokens=limit, val_fraction=0.0, val_min_docs=0)
    assert len(m["splits"]["train"]) == n_shards
    seq_len, mb, ga = 64, 3, 2
    # 4 streams: 2 ranks x 2 DataLoader workers, and 4 ranks x 1 (main-process) worker
    for world, workers in [(2, 2), (4, 0)]:
        got: Counter = Counter()
        counts = []
        for rank in range(world):
            ds = PackedTokenStream(
                tmp_path,
                "train",
                seq_len,
                mb,
                ga,
                seed=0,
                epoch=0,
                rank=rank,
                world_size=world,
                num_workers_hint=max(1, workers),
                shuffle_block=2,
            )
            batches = collect(ds, workers)
            counts.append(len(batches))
            for b in batches:
                got.update(batch_chunks(b))
        assert len(set(counts)) == 1 and counts[0] > 0, counts
        want = expected_chunks(epoch_stream(tmp_path, ds.shard_order), seq_len, streams=4, per_step=mb * ga)
        assert got == want


@pytest.mark.parametrize("workers", [0, 2])
def test_resume_from_step_k_matches_uninterrupted(shards, workers):
    kw = dict(seed=11, epoch=2, rank=1, world_size=2, shuffle_block=3, num_workers_hint=max(1, workers))
    full = collect(PackedTokenStream(shards, "train", 256, 4, 2, **kw), workers)
    n = len(full)
    assert n > 50
    for k in sorted({1, 2, 3, 7, n // 2 + 1, n - 1, n}):
        ds = PackedTokenStream(shards, "train", 256, 4, 2, start_step=k, **kw)
        assert len(ds) == n  # Lightning convention: whole-epoch length, it adds the restored index
        assert_same_batches(collect(ds, workers), full[k:])
    with pytest.raises(ValueError, match="past the end of the epoch"):
        PackedTokenStream(shards, "train", 256, 4, 2, start_step=n + 1, **kw)


def test_order_is_deterministic_per_seed_and_epoch(shards):
    def first(**kw):
        ds = PackedTokenStream(shards, "train", 64, 4, 1, shuffle_block=8, **kw)
        return ds.shard_order, list(itertools.islice(iter(ds), 20))

    order_a, a = first(seed=0, epoch=0)
    order_b, b = first(seed=0, epoch=0)
    assert order_a == order_b
    assert_same_batches(a, b)
    order_c, c = first(seed=0, epoch=1)
    assert order_c != order_a
    assert not torch.equal(a[0]["input_ids"], c[0]["input_ids"])
    _, d = first(seed=1, epoch=0)
    assert not torch.equal(a[0]["input_ids"], d[0]["input_ids"])

    # shuffle=False: manifest order, chunks in stream order
    ds = PackedTokenStream(shards, "train", 64, 4, 1, shuffle=False)
    manifest = load_manifest(shards)
    assert ds.shard_order == [e["name"] for e in manifest["splits"]["train"]]
    first_shard = np.concatenate([arr for _, arr in read_shard(shards / ds.shard_order[0])])
    x = next(iter(ds))["input_ids"]
    assert x[0, 0].tolist() == first_shard[:64].tolist()
    assert x[0, 1].tolist() == first_shard[65 : 65 + 64].tolist()


def test_val_stream(shards):
    ds = PackedTokenStream(shards, "val", 64, 4, 1, shuffle=False, max_steps=3)
    batches = list(ds)
    assert len(batches) == len(ds) == 3
    assert batches[0]["input_ids"].shape == (1, 4, 64)
    stream = epoch_stream(shards, [e["name"] for e in load_manifest(shards)["splits"]["val"]])
    flat = [c for b in batches for c in batch_chunks(b)]
    assert flat == [tuple(stream[i * 65 : (i + 1) * 65].tolist()) for i in range(12)]


def test_bad_configurations_are_explained(shards, tmp_path):
    with pytest.raises(ValueError, match=r"needs .* at least [\d,]+ tokens, but only [\d,]+ are available"):
        PackedTokenStream(shards, "val", 1024, 32, 4, world_size=8)
    with pytest.raises(ValueError, match="no split 'test'"):
        PackedTokenStream(shards, "test", 64, 4)
    ds = PackedTokenStream(shards, "train", 64, 4, num_workers_hint=2)
    with pytest.raises(ValueError, match="num_workers_hint=2 but is iterated by 1 worker"):
        next(iter(ds))
    (tmp_path / "half").mkdir()
    with pytest.raises(FileNotFoundError, match="incomplete"):
        PackedTokenStream(tmp_path / "half", "train", 64, 4)


# ---------------------------------------------------------------------------- corruption


def _copy(shards: Path, dst: Path) -> Path:
    shutil.copytree(shards, dst)
    return dst


def test_truncated_shard_is_named_and_can_be_skipped(shards, tmp_path, caplog):
    root = _copy(shards, tmp_path / "s")
    victim = "train-000003.tar"
    data = (root / victim).read_bytes()
    (root / victim).write_bytes(data[: len(data) // 2])

    with pytest.raises(ShardError, match=f"{victim}.*truncated"):
        PackedTokenStream(root, "train", 64, 4)
    bad = validate_shards(root, "train")
    assert [name for name, _ in bad] == [victim]
    assert validate_shards(root, "val") == []

    with caplog.at_level(logging.WARNING, logger="llm.data.shards"):
        ds = PackedTokenStream(root, "train", 64, 4, 2, skip_corrupt=True, shuffle_block=4)
    assert [name for name, _ in ds.skipped_shards] == [victim]
    assert victim in caplog.text
    assert victim not in ds.shard_order
    entries = load_manifest(root)["splits"]["train"]
    assert ds.total_tokens == sum(e["tokens"] for e in entries if e["name"] != victim)
    got = Counter(c for b in ds for c in batch_chunks(b))
    assert got == expected_chunks(epoch_stream(root, ds.shard_order), 64, streams=1, per_step=8)


def _member_offsets(path: Path) -> list[tuple[str, int, int]]:
    with tarfile.open(path) as tf:
        return [(m.name.split(".")[0], m.offset, m.offset_data) for m in tf]


def test_corrupt_bytes_raise_shard_error_naming_shard_and_sample(shards, tmp_path):
    root = _copy(shards, tmp_path / "s")
    order = [e["name"] for e in load_manifest(root)["splits"]["train"]]

    # 1) a clobbered npy header inside the first shard (same file size, so construction passes)
    victim = root / order[0]
    key, _, data_off = _member_offsets(victim)[5]
    with open(victim, "r+b") as f:
        f.seek(data_off)
        f.write(b"GARBAGE!")
    ds = PackedTokenStream(root, "train", 64, 4, shuffle=False, num_workers_hint=2)
    it = iter(DataLoader(ds, batch_size=None, num_workers=2))
    try:
        # raised in a DataLoader worker, re-raised here with its type and message
        with pytest.raises(ShardError, match=rf"shard {order[0]}, sample {key}: bad npy data"):
            for _ in it:
                pass
    finally:
        it._shutdown_workers()  # else a garbage-collected loader waits 5 s per worker to join

    # 2) zeroed tar headers in the middle of the second shard: tarfile sees an early end
    root2 = _copy(shards, tmp_path / "s2")
    victim = root2 / order[1]
    _, hdr_off, _ = _member_offsets(victim)[3]
    with open(victim, "r+b") as f:
        f.seek(hdr_off)
        f.write(b"\0" * 1024)
    ds = PackedTokenStream(root2, "train", 64, 4, shuffle=False)
    with pytest.raises(ShardError, match=rf"shard {order[1]}: truncated or corrupt: .* manifest.json says"):
        list(ds)
    assert [name for name, _ in validate_shards(root2, "train")] == [order[1]]
    ds = PackedTokenStream(root2, "train", 64, 4, shuffle=False, skip_corrupt=True)
    assert [name for name, _ in ds.skipped_shards] == [order[1]]
    assert len(list(ds)) == len(ds)


# ---------------------------------------------------------------------------- data module + Lightning


def test_datamodule_state_and_resume(shards):
    kw = dict(seq_len=256, micro_batch_size=4, grad_accum=2, num_workers=2, seed=3, shuffle_block=4, val_batches=2)
    dm = TokenDataModule(shards, **kw)
    steps = dm.steps_per_epoch()
    assert steps == dm.steps_per_epoch(world_size=1, num_workers=2) > 2 * dm.steps_per_epoch(world_size=2) - 2
    dm.on_epoch_start(0)
    full = list(dm.train_dataloader())
    assert len(full) == steps
    dm.on_epoch_start(0)
    for _ in range(5):
        dm.on_train_step_done()
    assert dm.state_dict() == {"epoch": 0, "step_in_epoch": 5}

    dm2 = TokenDataModule(shards, **kw)
    dm2.load_state_dict({"epoch": 0, "step_in_epoch": 5})
    loader = dm2.train_dataloader()
    dm2.on_epoch_start(0)  # same epoch: keeps the resumed count
    assert dm2.state_dict() == {"epoch": 0, "step_in_epoch": 5}
    assert_same_batches(list(loader), full[5:])
    dm2.on_epoch_start(1)
    assert dm2.state_dict() == {"epoch": 1, "step_in_epoch": 0}
    epoch1 = next(iter(dm2.train_dataloader()))
    assert not torch.equal(epoch1["input_ids"], full[0]["input_ids"])

    val = list(dm.val_dataloader())
    assert len(val) == 2 and val[0]["input_ids"].shape == (1, 4, 256)


def test_lightning_trainer_epochs_and_mid_epoch_resume(shards, tmp_path):
    import lightning as L

    class Recorder(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))
            self.seen: list[tuple[int, torch.Tensor]] = []
            self.val_shapes: list[tuple] = []

        def training_step(self, batch, batch_idx):
            self.seen.append((self.current_epoch, batch["input_ids"].clone()))
            self.trainer.datamodule.on_train_step_done()
            return (self.w * batch["input_ids"].float().mean()).sum()

        def validation_step(self, batch, batch_idx):
            self.val_shapes.append(tuple(batch["input_ids"].shape))

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.0)

    kw = dict(seq_len=512, micro_batch_size=4, grad_accum=2, num_workers=2, seed=7, shuffle_block=4, val_batches=2)
    common = dict(
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        reload_dataloaders_every_n_epochs=1,
        default_root_dir=tmp_path,
        enable_checkpointing=False,
    )
    reference = [
        collect(PackedTokenStream(shards, "train", 512, 4, 2, seed=7, epoch=e, shuffle_block=4, num_workers_hint=2), 2) for e in range(2)
    ]
    steps = len(reference[0])

    # two full epochs: each epoch gets its own shuffle and exactly steps_per_epoch steps
    model, dm = Recorder(), TokenDataModule(shards, **kw)
    L.Trainer(max_epochs=2, **common).fit(model, datamodule=dm)
    for e in range(2):
        got = [x for ep, x in model.seen if ep == e]
        assert len(got) == steps
        assert all(torch.equal(g, r["input_ids"]) for g, r in zip(got, reference[e]))
    assert model.val_shapes and set(model.val_shapes) == {(1, 4, 512)}

    # a checkpoint written mid-epoch at step k (then the run dies); resume continues exactly
    k = 37
    model, dm = Recorder(), TokenDataModule(shards, **kw)
    every_k = L.pytorch.callbacks.ModelCheckpoint(
        dirpath=tmp_path / "ckpt", filename="mid", every_n_train_steps=k, save_top_k=-1, save_last=False
    )
    L.Trainer(max_steps=k + 5, **{**common, "enable_checkpointing": True, "callbacks": [every_k]}).fit(model, datamodule=dm)
    ckpt = tmp_path / "ckpt" / "mid.ckpt"
    assert torch.load(ckpt, weights_only=False)["TokenDataModule"] == {"epoch": 0, "step_in_epoch": k}
    model2, dm2 = Recorder(), TokenDataModule(shards, **kw)
    L.Trainer(max_epochs=1, **common).fit(model2, datamodule=dm2, ckpt_path=ckpt)
    resumed = [x for _, x in model.seen[:k]] + [x for _, x in model2.seen]
    assert len(model2.seen) == steps - k
    assert all(torch.equal(g, r["input_ids"]) for g, r in zip(resumed, reference[0]))

    with pytest.raises(ValueError, match="reload_dataloaders_every_n_epochs=1"):
        L.Trainer(max_epochs=1, **{**common, "reload_dataloaders_every_n_epochs": 0}).fit(
            Recorder(), datamodule=TokenDataModule(shards, **kw)
        )


# ---------------------------------------------------------------------------- prepare_data


def _prepare_in_child(args, queue):
    records = []

    class Grab(logging.Handler):
        def emit(self, record):
            records.append(record.getMessage())

    logger = logging.getLogger("llm.data.prepare")
    logger.addHandler(Grab())
    logger.setLevel(logging.INFO)
    try:
        prepare_data(*args, shard_max_tokens=20_000, val_fraction=0.05, seed=0)
        queue.put(any("reusing" in r for r in records))
    except BaseException as e:  # pragma: no cover - reported to the parent
        queue.put(repr(e))


def test_prepare_data_is_cached_and_process_safe(tmp_path, small_docs, capsys):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for i, doc in enumerate(small_docs[:40]):
        (corpus / f"doc{i:03d}.txt").write_text(doc, encoding="utf-8")
    (corpus / "zh.jsonl").write_text("".join(json.dumps({"text": t}, ensure_ascii=False) + "\n" for t in CHINESE))
    out = tmp_path / "out"

    # two processes at once: one prepares, the other waits on the lock and reuses
    ctx = mp.get_context("fork")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_prepare_in_child, args=(([str(corpus)], out, 300), queue)) for _ in range(2)]
    for p in procs:
        p.start()
    results = sorted(str(queue.get(timeout=120)) for _ in procs)
    for p in procs:
        p.join(timeout=60)
    assert results == ["False", "True"]
    manifest = load_manifest(out / "shards")
    assert manifest["totals"]["docs"] == 42
    assert len(load_tokenizer(out / "tokenizer")) == 300

    # same arguments: immediate reuse, nothing rewritten
    stamp = (out / "shards" / "manifest.json").stat().st_mtime_ns
    assert prepare_data([str(corpus)], out, 300, shard_max_tokens=20_000, val_fraction=0.05, seed=0) == out
    assert (out / "shards" / "manifest.json").stat().st_mtime_ns == stamp
    # a changed source file invalidates the cache
    (corpus / "doc000.txt").write_text(small_docs[100], encoding="utf-8")
    prepare_data([str(corpus)], out, 300, shard_max_tokens=20_000, val_fraction=0.05, seed=0)
    assert (out / "shards" / "manifest.json").stat().st_mtime_ns != stamp

    # an existing tokenizer is used as is (and copied in); the CLI prints the summary
    rc = prepare_main(["--source", str(corpus), "--out", str(tmp_path / "cli"), "--tokenizer", str(out / "tokenizer")])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "train: " in printed and "val: " in printed and "vocab 300" in printed
    assert (tmp_path / "cli" / "tokenizer" / "tokenizer.json").read_bytes() != b""
    cli_totals = load_manifest(tmp_path / "cli" / "shards")["totals"]
    assert (cli_totals["docs"], cli_totals["tokens"]) == (42, load_manifest(out / "shards")["totals"]["tokens"])
    missing = ["--source", str(tmp_path / "missing"), "--out", str(tmp_path / "x"), "--vocab-size", "300"]
    assert prepare_main(missing) == 2
    assert "text source not found" in capsys.readouterr().err
