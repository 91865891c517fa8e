"""LoRA adapters on a base whose tokenizer lacks the chat tokens: the run adds them, and the
adapter it writes holds the LoRA weights and the new tokens' rows only (never a whole embedding
matrix), reloads with plain transformers + PEFT after one documented resize, and gives the
logits of the model at the end of training."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from llm.train import train

from conftest import SFT, compose


def _base_without_chat_tokens(path: Path, tied: bool) -> Path:
    """A random 2-layer Llama with a byte-level BPE tokenizer (trained here on the demo SFT text)
    that has no chat template and none of the framework's chat tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    from llm.data.chat import builtin_python_qa

    texts = [r["instruction"] + "\n" + r["output"] for r in builtin_python_qa()]
    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    tk.train_from_iterator(texts, trainer=trainer)
    tok = PreTrainedTokenizerFast(
        tokenizer_object=tk, eos_token="<|endoftext|>", bos_token="<|endoftext|>", clean_up_tokenization_spaces=False
    )
    assert len(tok) == 300  # + 4 chat tokens = 304: the run pads the embeddings to 320 rows
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        eos_token_id=0,
        bos_token_id=0,
        tie_word_embeddings=tied,
    )
    LlamaForCausalLM(cfg).save_pretrained(str(path))
    tok.save_pretrained(str(path))
    return path


def _logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids, use_cache=False).logits


@pytest.mark.tier("integration")
@pytest.mark.parametrize("tied", [False, True], ids=["untied", "tied"])
def test_adapter_with_added_tokens_is_small_and_reloads_with_plain_peft(tmp_path, tied):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from llm.data.chat import DEFAULT_CHAT_TOKENS
    from llm.model.lora import load_with_adapters

    base = str(_base_without_chat_tokens(tmp_path / "base", tied))
    res = train(
        compose(
            [
                *SFT,
                f"model.pretrained={base}",
                "stage=sft_lora",
                "stage.lora.name=chat",
                "stage.lora.r=4",
                "stage.optim.lr=1e-2",
                "trainer.max_steps=4",
                "trainer.val_every_n_steps=4",
                "trainer.ckpt_every_n_steps=0",
            ],
            run_dir=tmp_path / "run",
        )
    )
    adapter = Path(res["adapter"])
    base_sd = load_file(os.path.join(base, "model.safetensors"))
    n_base, hidden = base_sd["model.embed_tokens.weight"].shape
    base_params = sum(v.numel() for v in base_sd.values())

    # 1. the adapter holds LoRA matrices and the 4 new tokens' rows, no whole embedding matrix
    shapes = {}
    with safe_open(str(adapter / "adapter_model.safetensors"), "pt") as f:
        for k in f.keys():
            shapes[k] = tuple(f.get_slice(k).get_shape())
    assert all(max(s) < n_base for s in shapes.values()), {k: s for k, s in shapes.items() if max(s) >= n_base}
    deltas = {k: s for k, s in shapes.items() if "trainable_tokens_delta" in k}
    expect = ["model.embed_tokens"] + ([] if tied else ["lm_head"])
    assert sorted(deltas) == sorted(f"base_model.model.{m}.token_adapter.trainable_tokens_delta" for m in expect), deltas
    assert all(s == (len(DEFAULT_CHAT_TOKENS), hidden) for s in deltas.values())
    n_adapter = sum(torch.Size(s).numel() for s in shapes.values())
    assert n_adapter < 0.15 * base_params, (n_adapter, base_params)
    cfg = json.loads((adapter / "adapter_config.json").read_text())
    assert cfg["modules_to_save"] is None

    # 2. the tokenizer with the added tokens travels with the adapter
    tok = AutoTokenizer.from_pretrained(str(adapter))
    assert len(tok) == n_base + len(DEFAULT_CHAT_TOKENS)
    new_ids = tok.convert_tokens_to_ids(list(DEFAULT_CHAT_TOKENS))
    assert sorted(new_ids) == list(range(n_base, len(tok)))

    # 3. plain transformers + PEFT, with the documented resize, give the logits of the model at
    # the end of training (the merged export) and of load_with_adapters, over the tokenizer's vocabulary
    plain = AutoModelForCausalLM.from_pretrained(base)
    plain.resize_token_embeddings(len(tok))
    plain = PeftModel.from_pretrained(plain, str(adapter)).eval()
    ids = torch.cat([torch.tensor([new_ids[1]]), torch.randint(1, n_base, (20,)), torch.tensor(new_ids)]).repeat(2, 1)
    got = _logits(plain, ids)
    assert got.shape[-1] == len(tok)
    end_of_training = AutoModelForCausalLM.from_pretrained(res["export"]).eval()
    want = _logits(end_of_training, ids)[..., : len(tok)]
    assert (got - want).abs().max().item() < 1e-5
    multi = load_with_adapters(base, {"chat": adapter})
    assert (_logits(multi, ids)[..., : len(tok)] - want).abs().max().item() < 1e-5

    # 4. the new rows did train, and only they: the export's old rows are the base's, bit for bit
    exp = load_file(os.path.join(res["export"], "model.safetensors"))
    emb = exp["model.embed_tokens.weight"]
    assert torch.equal(emb[:n_base], base_sd["model.embed_tokens.weight"])
    init = emb[:n_base].mean(0)  # the new rows started at the mean embedding
    assert (emb[new_ids] - init).abs().max().item() > 1e-3
    if not tied:
        assert torch.equal(exp["lm_head.weight"][:n_base], base_sd["lm_head.weight"])
