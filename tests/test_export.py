"""The Hugging Face export's weight files: one ``model.safetensors`` under ``export_max_shard_size``,
else transformers' shards and index; the streamed writer (ZeRO-3/FSDP: tensors arrive one at a
time) writes what ``save_pretrained`` writes, and plain transformers loads it. The multi-process
exports are checked in tests/test_strategies.py."""

from __future__ import annotations

import json

import pytest
import torch


def _llama(tied: bool):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4, vocab_size=96, tie_word_embeddings=tied
    )
    return LlamaForCausalLM(cfg).eval()


def _gpt2():
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    return GPT2LMHeadModel(GPT2Config(n_embd=32, n_layer=2, n_head=4, vocab_size=96, n_positions=32)).eval()


@pytest.mark.parametrize("make", [lambda: _llama(True), lambda: _llama(False), _gpt2], ids=["llama-tied", "llama", "gpt2"])
def test_streamed_export_is_sharded_and_loads(tmp_path, make):
    """A tiny ``max_shard_size``: several shard files named as transformers names them, its index
    (the same weight map and total size as ``save_pretrained``'s), each tied weight stored once;
    ``AutoModelForCausalLM`` loads the directory with the model's logits."""
    from lightning.pytorch.strategies import SingleDeviceStrategy
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    from llm.export import INDEX, export_hf, export_hf_streamed

    model = make()
    strategy = SingleDeviceStrategy(torch.device("cpu"))
    out = export_hf_streamed(strategy, model, None, tmp_path / "streamed", max_shard_size="20KB")
    ref = export_hf(model, None, tmp_path / "hf", max_shard_size="20KB")
    index, ref_index = json.loads((out / INDEX).read_text()), json.loads((ref / INDEX).read_text())
    files = sorted(p.name for p in out.glob("*.safetensors"))
    n = len(files)
    assert n >= 3 and files == [f"model-{i:05d}-of-{n:05d}.safetensors" for i in range(1, n + 1)], files
    assert not (out / "model.safetensors").exists()
    assert index["weight_map"] == ref_index["weight_map"]  # the same split, the same names
    assert index["metadata"]["total_size"] == ref_index["metadata"]["total_size"]
    assert index["metadata"]["total_parameters"] == model.num_parameters()
    for f in files:  # each file within the limit unless one tensor alone is larger
        sd = load_file(out / f)
        size = sum(t.numel() * t.element_size() for t in sd.values())
        assert size <= 20_000 or len(sd) == 1, (f, size)
    if model.config.tie_word_embeddings:
        assert not any(k.startswith("lm_head") for k in index["weight_map"])
    assert json.loads((out / "config.json").read_text()) == json.loads((ref / "config.json").read_text())

    loaded = AutoModelForCausalLM.from_pretrained(out).eval()
    ids = torch.randint(0, 96, (2, 12))
    with torch.no_grad():
        torch.testing.assert_close(loaded(input_ids=ids).logits, model(input_ids=ids).logits, rtol=0, atol=0)


def test_small_model_stays_one_file_and_reloads(tmp_path):
    """Under the default limit (5GB): ``model.safetensors`` and no index, as before; ``load_weights``
    reads either layout back into a fresh model."""
    from lightning.pytorch.strategies import SingleDeviceStrategy

    from llm.export import INDEX, export_hf_streamed, load_weights

    model = _llama(True)
    strategy = SingleDeviceStrategy(torch.device("cpu"))
    one = export_hf_streamed(strategy, model, None, tmp_path / "one")
    assert sorted(p.name for p in one.glob("*.safetensors")) == ["model.safetensors"] and not (one / INDEX).exists()
    many = export_hf_streamed(strategy, model, None, tmp_path / "many", max_shard_size="10KB")
    for d in (one, many):
        fresh = _llama(True)
        torch.nn.init.zeros_(fresh.model.embed_tokens.weight)
        load_weights(fresh, d)
        for (k, a), b in zip(model.state_dict().items(), fresh.state_dict().values()):
            assert torch.equal(a, b), k


def test_export_max_shard_size_is_checked():
    from llm.config import check_config, size_bytes

    from conftest import compose

    assert size_bytes("5GB") == 5 * 10**9 and size_bytes("500MB") == 5 * 10**8 and size_bytes("1024") == 1024
    assert compose([]).export_max_shard_size == "5GB"
    with pytest.raises(ValueError, match="export_max_shard_size='5 parsecs'"):
        check_config(compose(["export_max_shard_size=5 parsecs"]))


def test_shard_writer_any_dtype_any_order(tmp_path):
    """Headers first, values in any order: bf16, fp16, int64, bool and 0-d tensors read back
    exactly with safetensors; the split equals huggingface_hub's (a tensor past the limit alone,
    numbered where it comes)."""
    from huggingface_hub import split_torch_state_dict_into_shards
    from safetensors.torch import load_file

    from llm.export import INDEX, ShardWriter

    g = torch.Generator().manual_seed(0)
    sd = {
        "a": torch.randn(10, 30, generator=g).bfloat16(),
        "big": torch.randn(700, generator=g),
        "b": torch.randint(0, 9, (7, 3), generator=g),
        "c": torch.randn(5, generator=g).half(),
        "d": torch.rand(40, generator=g) > 0.5,
        "e": torch.tensor(3.5),
        "f": torch.randn(200, generator=g),
    }
    w = ShardWriter(tmp_path, [(k, tuple(v.shape), v.dtype) for k, v in sd.items()], 1000, params=0)
    for k in ["f", "d", "a", "e", "big", "c", "b"]:
        w.add(k, sd[k])
    w.close()
    split = split_torch_state_dict_into_shards(sd, max_shard_size=1000)
    index = json.loads((tmp_path / INDEX).read_text())
    assert index["weight_map"] == split.tensor_to_filename and index["metadata"]["total_size"] == split.metadata["total_size"]
    back = {k: v for f in split.filename_to_tensors for k, v in load_file(tmp_path / f).items()}
    assert set(back) == set(sd) and all(back[k].dtype == v.dtype and torch.equal(back[k], v) for k, v in sd.items())
    with pytest.raises(ValueError, match="the export's plan says"):
        ShardWriter(tmp_path / "x", [("a", (2,), torch.float32)], 1000, 0).add("a", torch.zeros(3))
    with pytest.raises(ValueError, match="never arrived"):
        ShardWriter(tmp_path, [("a", (2,), torch.float32)], 1000, 0).close()
