"""Sharded start-up (``llm.model.materialise``, ``strategy.sharded_init``): the model is built on
the meta device and each rank fills only its shard, from a checkpoint's slices or by an
initialisation seeded per block; the full weights are the same whatever the number of ranks."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch


def _config(tied: bool = True, vocab: int = 96):
    from transformers import LlamaConfig

    return LlamaConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=vocab,
        tie_word_embeddings=tied,
    )


def _empty(config, cls=None):
    """(empty model, its meta template, its buffers) as ``BaseStage.configure_model`` makes them."""
    import copy

    from transformers import LlamaForCausalLM

    from llm.model.materialise import params_on_meta

    with params_on_meta():
        model = (cls or LlamaForCausalLM)(config)
    return model, copy.deepcopy(model), {k: b.clone() for k, b in model.named_buffers()}


def _fill(config, seed=7, checkpoint=None, cls=None):
    from llm.model.materialise import CheckpointSlices, materialise

    model, template, buffers = _empty(config, cls)
    assert all(p.is_meta for p in model.parameters())
    reader = CheckpointSlices(checkpoint) if checkpoint else None
    counts = materialise(model, template, torch.device("cpu"), seed, buffers, reader)
    return model, counts, reader


def test_checkpoint_slices_read_only_their_rows(tmp_path):
    """Each rank's slice of each tensor costs exactly its rows' bytes; the slices put together are
    the tensors, in every dtype; a sharded checkpoint is followed through its index."""
    from safetensors.torch import save_file

    from llm.model.materialise import CheckpointSlices

    g = torch.Generator().manual_seed(0)
    tensors = {
        "a": torch.randn(10, 6, generator=g),
        "b": torch.randn(7, generator=g).to(torch.bfloat16),
        "c": torch.randint(0, 100, (5, 2, 3), generator=g),
        "s": torch.tensor(3.5),
    }
    save_file(tensors, tmp_path / "model.safetensors")
    with CheckpointSlices(tmp_path) as r:
        assert set(r.entries) == set(tensors)
        for name, t in tensors.items():
            if t.dim() == 0:
                assert torch.equal(r.read(name), t)
                continue
            n = t.shape[0]
            half = (n + 1) // 2
            before = r.bytes_read
            parts = [r.read(name, (slice(0, half),)), r.read(name, (slice(half, n),))]
            assert r.bytes_read - before == t.numel() * t.element_size()  # every byte once, no more
            assert torch.equal(torch.cat(parts), t) and parts[0].dtype == t.dtype
            before = r.bytes_read
            assert torch.equal(r.read(name, (slice(1, 3),)), t[1:3])
            assert r.bytes_read - before == 2 * t[0].numel() * t.element_size()
        assert torch.equal(r.read("a", (slice(2, 5), slice(1, 4))), tensors["a"][2:5, 1:4])
    # a sharded checkpoint: two files and the index naming them
    d = tmp_path / "sharded"
    d.mkdir()
    save_file({"a": tensors["a"]}, d / "model-00001-of-00002.safetensors")
    save_file({"c": tensors["c"]}, d / "model-00002-of-00002.safetensors")
    wm = {"a": "model-00001-of-00002.safetensors", "c": "model-00002-of-00002.safetensors"}
    (d / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": wm}))
    with CheckpointSlices(d) as r:
        assert torch.equal(r.read("c", (slice(4, 5),)), tensors["c"][4:5]) and torch.equal(r.read("a"), tensors["a"])
    with pytest.raises(FileNotFoundError, match="no model.safetensors"):
        CheckpointSlices(tmp_path / "nothing-here")


def test_seeded_init_is_transformers_init_per_block():
    """The random start: each block initialised by transformers' own rule (normal(0, init std)
    matrices, unit norms), from (seed, block name) only; the same seed gives the same weights,
    another seed others; tied embeddings stay one tensor; RoPE's buffers are real."""
    from transformers import LlamaForCausalLM

    cfg = _config()
    a, counts, _ = _fill(cfg, seed=7)
    b, _, _ = _fill(cfg, seed=7)
    c, _, _ = _fill(cfg, seed=8)
    n_unique = len(list(a.parameters()))
    assert counts == {"loaded": 0, "initialised": n_unique}
    for (k, p), q, r in zip(a.named_parameters(), b.parameters(), c.parameters()):
        assert not p.is_meta and torch.equal(p, q), k
        if p.dim() >= 2:
            assert not torch.equal(p, r), k
            assert abs(p.std().item() - cfg.initializer_range) < 0.3 * cfg.initializer_range, k
        else:
            assert torch.equal(p, torch.ones_like(p)), k  # RMSNorm weights
    assert a.lm_head.weight is a.model.embed_tokens.weight
    ref = LlamaForCausalLM(cfg)
    torch.testing.assert_close(a.model.rotary_emb.inv_freq, ref.model.rotary_emb.inv_freq)
    ids = torch.randint(0, 96, (2, 12))
    out = a(input_ids=ids, labels=ids)
    assert torch.isfinite(out.loss) and abs(out.loss.item() - torch.log(torch.tensor(96.0)).item()) < 0.5


def test_seeded_init_keeps_parent_rules():
    """A module's parameters get its ancestors' rules too: GPT-2's residual projections (c_proj)
    start at std 0.02 / sqrt(2 L), the other matrices at 0.02."""
    from transformers import GPT2Config, GPT2LMHeadModel

    cfg = GPT2Config(n_embd=128, n_layer=8, n_head=4, vocab_size=300, n_positions=16)
    m, _, _ = _fill(cfg, cls=GPT2LMHeadModel)
    std = cfg.initializer_range
    h = m.transformer.h[3]
    for w, want in ((h.attn.c_proj.weight, std / 4), (h.mlp.c_proj.weight, std / 4), (h.attn.c_attn.weight, std), (h.mlp.c_fc.weight, std)):
        assert abs(w.std().item() - want) < 0.1 * want, (w.std().item(), want)
    assert torch.equal(h.ln_1.weight, torch.ones(128)) and torch.equal(h.attn.c_attn.bias, torch.zeros(384))


@pytest.mark.parametrize("shard", [None, "2KB"])
def test_checkpoint_start_equals_from_pretrained(tmp_path, shard):
    """From a save_pretrained directory (one file, or shards with an index): every tensor is the
    checkpoint's; a reward model's new score head is initialised (seeded), the backbone loaded."""
    from transformers import LlamaForCausalLM, LlamaForSequenceClassification

    torch.manual_seed(0)
    src = LlamaForCausalLM(_config(tied=False))
    src.save_pretrained(tmp_path, **({"max_shard_size": shard} if shard else {}))
    assert (tmp_path / "model.safetensors.index.json").is_file() == bool(shard)
    m, counts, reader = _fill(_config(tied=False), checkpoint=tmp_path)
    want = src.state_dict()
    assert counts == {"loaded": len(want), "initialised": 0}
    assert reader.bytes_read == sum(t.numel() * t.element_size() for t in want.values())
    for k, v in m.state_dict().items():
        assert torch.equal(v, want[k]), k
    rm_cfg = _config(tied=False)
    rm_cfg.num_labels = 1
    rm, counts, _ = _fill(rm_cfg, checkpoint=tmp_path, cls=LlamaForSequenceClassification)
    assert counts["initialised"] == 1 and counts["loaded"] == len(want) - 1  # the score head; lm_head unused
    assert torch.equal(rm.model.layers[1].mlp.up_proj.weight, src.model.layers[1].mlp.up_proj.weight)
    assert rm.score.weight.abs().sum() > 0


def test_stage_start_seeded_or_whole():
    """The stage builds empty and fills (the same weights as its init from the same seed), or the
    whole model when sharded start-up is off."""
    from llm.stages.lm import LMStage

    from conftest import compose

    cfg = compose(["model=tiny"])
    one = LMStage(cfg.model, cfg.stage, vocab_size=200, init_seed=3)
    one.configure_model()
    two = LMStage(cfg.model, cfg.stage, vocab_size=200, init_seed=3)
    two.configure_model()
    for p, q in zip(one.model.parameters(), two.model.parameters()):
        assert torch.equal(p, q)
    off = LMStage(cfg.model, cfg.stage, vocab_size=200, sharded_init=False)
    off.configure_model()
    assert not any(p.is_meta for p in off.model.parameters())
    assert not torch.equal(off.model.model.layers[0].mlp.up_proj.weight, one.model.model.layers[0].mlp.up_proj.weight)


# ------------------------------------------------------------ several processes
def _start(
    tmp_path: Path,
    nproc: int,
    unsharded: bool = False,
    override: tuple[str, ...] = (),
    stage: str = "pretrain",
    strategy: str = "fsdp",
) -> tuple[dict, dict]:
    """(result, full weights) of one start by the benchmark's worker under torchrun."""
    import argparse

    from safetensors.torch import load_file

    from llm.bench.startup import run_one

    args = argparse.Namespace(
        model="tiny", stage=stage, vocab=512, override=list(override), loss=True, loss_tokens=16, threads=1, timeout=600, strategy=strategy
    )
    dump = tmp_path / f"w-{nproc}-{int(unsharded)}-{len(override)}-{stage}-{strategy}.safetensors"
    res = run_one("sharded", nproc, args, tmp_path, unsharded=unsharded, dump=str(dump))
    return res, load_file(dump)


@pytest.fixture(scope="module")
def unsharded_tied(tmp_path_factory) -> tuple[dict, dict]:
    """The 1-process start (DDP's and single's) of the tiny preset with tied embeddings."""
    return _start(tmp_path_factory.mktemp("unsharded"), 1, unsharded=True, override=("model.tie_embeddings=true",))


@pytest.mark.slow
def test_fsdp_start_equals_unsharded(tmp_path, unsharded_tied):
    """FSDP over 2 ranks: the full weights after the start are bitwise the 1-process (DDP, single)
    start's, the loss of the same batch equal; from a checkpoint (one file, and sharded with an
    index) every tensor is the checkpoint's."""
    from transformers import LlamaForCausalLM

    tied = ("model.tie_embeddings=true",)
    one, w1 = unsharded_tied
    two, w2 = _start(tmp_path, 2, override=tied)
    assert set(w1) == set(w2)
    for k in w1:
        assert torch.equal(w1[k], w2[k]), k
    assert two["ranks"][0]["tied"] and one["ranks"][0]["tied"]
    assert abs(one["ranks"][0]["loss"] - two["ranks"][0]["loss"]) < 1e-6
    assert two["ranks"][0]["loss"] == two["ranks"][1]["loss"]
    torch.manual_seed(0)
    src = LlamaForCausalLM(_config(tied=False, vocab=97))  # 97 rows: 49 and 48 on 2 ranks
    for shard in (None, "20KB"):
        d = tmp_path / f"ckpt-{shard}"
        src.save_pretrained(d, **({"max_shard_size": shard} if shard else {}))
        _, w = _start(tmp_path, 2, override=("model=hf", f"model.pretrained={d}"), stage="sft")
        want = src.state_dict()
        assert set(w) == set(want)
        for k in want:
            assert torch.equal(w[k], want[k]), (shard, k)
    # DPO: its frozen reference is sharded like the policy and holds the same weights
    dpo, _ = _start(tmp_path, 2, override=("model=hf", f"model.pretrained={d}"), stage="dpo")
    assert [r["copy_losses"] for r in dpo["ranks"]] == [[r["loss"]] for r in dpo["ranks"]]


@pytest.mark.slow
def test_zero3_start_equals_unsharded(tmp_path, unsharded_tied):
    """DeepSpeed ZeRO-3 over 3 ranks (partitions of uneven length): the full weights gathered after
    the start are bitwise the 1-process start's, the loss of the same batch equal (each module's
    partitions gathered for its forward); from a checkpoint sharded with an index, every tensor is
    the checkpoint's while each of 2 ranks reads only about half of its bytes, and DPO's whole
    frozen reference gets the policy's weights (its loss equal)."""
    from transformers import LlamaForCausalLM

    tied = ("model.tie_embeddings=true",)
    one, w1 = unsharded_tied
    three, w3 = _start(tmp_path, 3, override=tied, strategy="deepspeed_zero3")
    assert set(w1) == set(w3)
    for k in w1:
        assert torch.equal(w1[k], w3[k]), k
    assert three["ranks"][0]["tied"]
    assert {r["loss"] for r in three["ranks"]} == {one["ranks"][0]["loss"]}
    torch.manual_seed(0)
    src = LlamaForCausalLM(_config(tied=False, vocab=97))
    d = tmp_path / "ckpt"
    src.save_pretrained(d, max_shard_size="20KB")
    dpo, w = _start(tmp_path, 2, override=("model=hf", f"model.pretrained={d}"), stage="dpo", strategy="deepspeed_zero3")
    want = src.state_dict()
    assert set(w) == set(want)
    for k in want:
        assert torch.equal(w[k], want[k]), k
    total = sum(t.numel() * t.element_size() for t in want.values())
    for r in dpo["ranks"]:
        assert 0.45 * total < r["bytes_read"] < 0.6 * total, (r["bytes_read"], total)
        assert r["copy_losses"] == [r["loss"]]


def test_rows_covering_a_zero3_flat_range_by_hand():
    """A ZeRO-3 partition holds a flat range of elements: the checkpoint rows that cover it, and
    where its first element sits in the first row (97 x 32 over 2 ranks: 1,552 elements each)."""
    from llm.model.materialise import _rows_of_flat

    assert _rows_of_flat((97, 32), 0, 1552) == (0, 49, 0)  # row 48 is shared: 1,552 = 48.5 rows
    assert _rows_of_flat((97, 32), 1552, 3104) == (48, 97, 16)
    assert _rows_of_flat((7,), 4, 7) == (4, 7, 0)  # a vector: one element per row
    assert _rows_of_flat((4, 2, 3), 5, 13) == (0, 3, 5)  # rows of 6 elements
