"""Build a transformers causal LM from a size preset or load one from a directory.

No model code of our own: presets are transformers config classes (``LlamaConfig`` for RoPE /
RMSNorm / SwiGLU / grouped-query attention, ``GPT2Config`` for the GPT family).
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Optional

import torch
from transformers import AutoModelForCausalLM, GPT2Config, LlamaConfig, PretrainedConfig

from llm.config import ModelConfig

log = logging.getLogger(__name__)


def _pad_vocab(n: int, multiple: int = 64) -> int:
    return int(math.ceil(n / multiple) * multiple)


def llama_intermediate(n_embd: int, multiple: int = 64) -> int:
    """Llama's SwiGLU width rule: 2/3 of 4 * d, rounded up to a multiple."""
    return _pad_vocab(int(2 * 4 * n_embd / 3), multiple)


def hf_config(cfg: ModelConfig, vocab_size: Optional[int] = None, special: Optional[dict] = None) -> PretrainedConfig:
    """The transformers config for a preset. ``vocab_size`` (from the tokenizer) is used when
    the preset leaves it unset; ``special`` holds bos/eos/pad token ids."""
    special = special or {}
    vocab = cfg.vocab_size or (_pad_vocab(vocab_size) if vocab_size else None)
    if vocab is None:
        raise ValueError(f"model '{cfg.name}': vocab_size is unset and no tokenizer gave one")
    if vocab_size is not None and vocab < vocab_size:
        raise ValueError(
            f"model '{cfg.name}': model.vocab_size={vocab} is smaller than the tokenizer's "
            f"{vocab_size} tokens; set model.vocab_size=null to follow the tokenizer"
        )
    if cfg.arch == "llama":
        return LlamaConfig(
            vocab_size=vocab,
            hidden_size=cfg.n_embd,
            intermediate_size=cfg.intermediate_size or llama_intermediate(cfg.n_embd),
            num_hidden_layers=cfg.n_layer,
            num_attention_heads=cfg.n_head,
            num_key_value_heads=cfg.n_kv_head or cfg.n_head,
            max_position_embeddings=cfg.max_seq_len,
            rms_norm_eps=cfg.norm_eps,
            rope_theta=cfg.rope_theta,
            attention_dropout=cfg.dropout,
            initializer_range=cfg.init_std,
            tie_word_embeddings=cfg.tie_embeddings,
            use_cache=True,
            **special,
        )
    if cfg.arch == "gpt2":
        if cfg.n_kv_head not in (None, cfg.n_head):
            raise ValueError(f"model '{cfg.name}': arch=gpt2 has no grouped-query attention (n_kv_head)")
        return GPT2Config(
            vocab_size=vocab,
            n_positions=cfg.max_seq_len,
            n_embd=cfg.n_embd,
            n_layer=cfg.n_layer,
            n_head=cfg.n_head,
            n_inner=cfg.intermediate_size,
            resid_pdrop=cfg.dropout,
            embd_pdrop=cfg.dropout,
            attn_pdrop=cfg.dropout,
            layer_norm_epsilon=cfg.norm_eps,
            initializer_range=cfg.init_std,
            tie_word_embeddings=cfg.tie_embeddings,
            use_cache=True,
            **special,
        )
    raise ValueError(f"model '{cfg.name}': unknown arch '{cfg.arch}' (choose llama or gpt2)")


def build_model(
    cfg: ModelConfig,
    vocab_size: Optional[int] = None,
    special: Optional[dict] = None,
    dtype: torch.dtype = torch.float32,
) -> torch.nn.Module:
    """A causal LM: ``from_pretrained(cfg.pretrained)`` or ``from_config`` of the preset.

    Call it under ``torch.device("meta")`` to get the shape without memory.
    """
    if cfg.pretrained:
        path = Path(cfg.pretrained)
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"model.pretrained={cfg.pretrained}: no config.json there (expected a Hugging Face model directory)")
        model = AutoModelForCausalLM.from_pretrained(
            str(path), dtype=dtype, trust_remote_code=cfg.trust_remote_code, attn_implementation=cfg.attn_implementation
        )
        if vocab_size is not None and model.get_input_embeddings().num_embeddings < vocab_size:
            raise ValueError(
                f"{cfg.pretrained}: the model has {model.get_input_embeddings().num_embeddings} embeddings "
                f"but the tokenizer has {vocab_size} tokens"
            )
        return model
    config = hf_config(cfg, vocab_size, special)
    config._attn_implementation = cfg.attn_implementation
    model = AutoModelForCausalLM.from_config(config, dtype=dtype, trust_remote_code=False)
    return model


def count_params(model: torch.nn.Module, trainable_only: bool = False) -> int:
    seen, n = set(), 0
    for p in model.parameters():
        if id(p) in seen or (trainable_only and not p.requires_grad):
            continue
        seen.add(id(p))
        n += p.numel()
    return n


def flops_per_token(config: PretrainedConfig, n_params: int, seq_len: int) -> float:
    """Training FLOPs per token (forward + backward): 6 N plus attention 12 L d T (PaLM, App. B).

    N counts non-embedding matmul parameters; the output projection (LM head) is counted.
    """
    n_layer = getattr(config, "num_hidden_layers", None) or config.n_layer
    d = getattr(config, "hidden_size", None) or config.n_embd
    emb = config.vocab_size * d
    n_matmul = n_params - emb if not getattr(config, "tie_word_embeddings", False) else n_params
    # untied: the input embedding is a lookup, not a matmul; the LM head is. tied: the shared
    # matrix is used as the LM head.
    return 6.0 * n_matmul + 12.0 * n_layer * d * seq_len
