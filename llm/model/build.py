"""Build a transformers causal LM from a size preset or load one from a directory.

No model code of our own: presets are transformers config classes (``LlamaConfig`` for RoPE /
RMSNorm / SwiGLU / grouped-query attention, ``GPT2Config`` for the GPT family).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import math
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, GPT2Config, LlamaConfig, PretrainedConfig

from llm.config import ModelConfig

log = logging.getLogger(__name__)


def _pad_vocab(n: int, multiple: int = 64) -> int:
    return int(math.ceil(n / multiple) * multiple)


def llama_intermediate(n_embd: int, multiple: int = 64) -> int:
    """Llama's SwiGLU width rule: 2/3 of 4 * d, rounded up to a multiple."""
    return _pad_vocab(int(2 * 4 * n_embd / 3), multiple)


def hf_config(cfg: ModelConfig, vocab_size: int | None = None, special: dict | None = None) -> PretrainedConfig:
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


def _file_key(path: Path) -> str:
    st = path.stat()
    h = hashlib.sha256(f"{path.resolve()}|{st.st_size}|{int(st.st_mtime)}".encode())
    with open(path, "rb") as f:  # and the first MiB: a different file under the same name
        h.update(f.read(1 << 20))
    return h.hexdigest()[:12]


def check_safetensors(path: Path) -> None:
    """Refuse, naming the file, a ``.safetensors`` file that is shorter than its header says (a
    copy or a write cut off) or has no readable header; reads the header only."""
    size = path.stat().st_size
    try:
        with open(path, "rb") as f:
            n = int.from_bytes(f.read(8), "little")
            if size < 8 or n <= 0 or 8 + n > size:
                raise ValueError("no complete header")
            header = json.loads(f.read(n))
        end = max((t["data_offsets"][1] for k, t in header.items() if k != "__metadata__"), default=0)
    except (ValueError, KeyError, TypeError, IndexError) as e:
        raise ValueError(f"{path}: not a readable safetensors file ({e}); export or copy it again") from None
    if size < 8 + n + end:
        raise ValueError(f"{path}: truncated: {size:,} bytes, its header describes {8 + n + end:,}; export or copy it again")


def resolve_pretrained(path: str | os.PathLike, cache_dir: str | os.PathLike | None = None) -> Path:
    """A Hugging Face model directory for ``path``.

    ``path`` is a model directory (returned as is: a stage export, a ``save_pretrained`` output,
    a local snapshot of any causal LM) or a ``.gguf`` file. A GGUF file is dequantised to
    float32 by transformers' gguf loader once and saved as a plain HF directory (model and
    tokenizer, with the chat template the file carries) under
    ``$XIULIAN_CACHE/models/<name>-<hash>``; later calls reuse it (loading it takes about a
    second instead of the 15 s the dequantisation takes for a 135M model).
    """
    path = Path(path)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"{path}: no config.json (expected a Hugging Face model directory or a .gguf file)")
        for f in sorted(path.glob("*.safetensors")):
            check_safetensors(f)
        return path
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such model directory or .gguf file")
    if path.suffix.lower() != ".gguf":
        raise ValueError(f"{path}: a model file must be .gguf (or give a Hugging Face model directory)")
    root = Path(cache_dir or os.environ.get("XIULIAN_CACHE", Path.home() / ".cache" / "xiulian")) / "models"
    out = root / f"{path.stem}-{_file_key(path)}"
    if (out / "config.json").is_file():
        return out
    root.mkdir(parents=True, exist_ok=True)
    with open(root / f".{out.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # several ranks: one converts, the others wait
        if (out / "config.json").is_file():
            return out
        from transformers import AutoTokenizer

        log.info("converting %s to a Hugging Face directory (once) at %s", path, out)
        tok = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
        model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32)
        model.hf_quantizer = None  # the weights are dequantised: save them as plain float32
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=root))
        try:
            os.chmod(tmp, 0o755)  # mkdtemp makes it private; the cache may be shared
            model.save_pretrained(str(tmp), safe_serialization=True)
            tok.save_pretrained(str(tmp))
            (tmp / "xiulian.json").write_text(json.dumps({"converted_from": str(path.resolve())}, indent=2))
            os.replace(tmp, out)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return out


def build_model(
    cfg: ModelConfig,
    vocab_size: int | None = None,
    special: dict | None = None,
    dtype: torch.dtype = torch.float32,
    resize_embeddings: bool = False,
    head: str = "causal_lm",
) -> torch.nn.Module:
    """A causal LM: ``from_pretrained(cfg.pretrained)`` or ``from_config`` of the preset.
    ``head="reward"``: the same backbone with a scalar head (``AutoModelForSequenceClassification``,
    one label), the reward model's form.

    Call it under ``torch.device("meta")`` to get the shape without memory.
    """
    if cfg.pretrained:
        try:
            path = resolve_pretrained(cfg.pretrained)
        except (FileNotFoundError, ValueError) as e:
            raise type(e)(f"model.pretrained: {e}") from None
        kw: dict = {}
        auto: Any = AutoModelForCausalLM
        if head == "reward":
            from transformers import AutoModelForSequenceClassification

            auto, kw = AutoModelForSequenceClassification, {"num_labels": 1}
        model = auto.from_pretrained(
            str(path), dtype=dtype, trust_remote_code=cfg.trust_remote_code, attn_implementation=cfg.attn_implementation, **kw
        )
        n_emb = model.get_input_embeddings().num_embeddings
        if vocab_size is not None and n_emb < vocab_size:
            if not resize_embeddings:
                raise ValueError(f"{cfg.pretrained}: the model has {n_emb} embeddings but the tokenizer has {vocab_size} tokens")
            # tokens added for the chat template: new rows start at the mean embedding
            model.resize_token_embeddings(vocab_size, pad_to_multiple_of=64, mean_resizing=True)
            log.info("resized the embeddings of %s from %d to %d rows", cfg.pretrained, n_emb, model.get_input_embeddings().num_embeddings)
        return model
    config = hf_config(cfg, vocab_size, special)
    config._attn_implementation = cfg.attn_implementation
    model = AutoModelForCausalLM.from_config(config, dtype=dtype, trust_remote_code=False)
    return model


def build_empty_model(
    cfg: ModelConfig,
    vocab_size: int | None = None,
    special: dict | None = None,
    dtype: torch.dtype = torch.float32,
    head: str = "causal_lm",
) -> tuple[torch.nn.Module, Path | None] | str:
    """The model :func:`build_model` would return, with its parameters on the meta device (no
    memory; buffers real), and the checkpoint directory to fill it from (``None``: a preset,
    initialised by ``llm.model.materialise``). A string instead when this model cannot start
    that way (the reason; the caller builds it whole)."""
    from llm.model.materialise import INDEX, WEIGHTS, params_on_meta

    if not cfg.pretrained:
        config = hf_config(cfg, vocab_size, special)
        config._attn_implementation = cfg.attn_implementation
        with params_on_meta():
            return AutoModelForCausalLM.from_config(config, dtype=dtype, trust_remote_code=False), None
    if cfg.trust_remote_code:
        return "model.trust_remote_code=true (the model's own code may not build on the meta device)"
    try:
        path = resolve_pretrained(cfg.pretrained)
    except (FileNotFoundError, ValueError) as e:
        raise type(e)(f"model.pretrained: {e}") from None
    if not (path / WEIGHTS).is_file() and not (path / INDEX).is_file():
        return f"{path} has no {WEIGHTS} or {INDEX}"
    from transformers import AutoConfig, GenerationConfig

    config = AutoConfig.from_pretrained(str(path), trust_remote_code=False)
    config._attn_implementation = cfg.attn_implementation
    auto: Any = AutoModelForCausalLM
    if head == "reward":
        from transformers import AutoModelForSequenceClassification

        auto, config.num_labels = AutoModelForSequenceClassification, 1
    with params_on_meta():
        model = auto.from_config(config, dtype=dtype, trust_remote_code=False)
    n_emb = model.get_input_embeddings().num_embeddings
    if vocab_size is not None and n_emb < vocab_size:
        return f"the embeddings of {cfg.pretrained} are resized for new tokens ({n_emb} -> {vocab_size} rows)"
    if (path / "generation_config.json").is_file():
        model.generation_config = GenerationConfig.from_pretrained(str(path))
    return model, path


def count_params(model: torch.nn.Module, trainable_only: bool = False) -> int:
    seen, n = set(), 0
    for p in model.parameters():
        if id(p) in seen or (trainable_only and not p.requires_grad):
            continue
        seen.add(id(p))
        n += getattr(p, "ds_numel", None) or p.numel()  # a ZeRO-3 partition's own numel is its local part's
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


def build_seeded_model(cfg: ModelConfig, vocab_size: int | None, special: dict | None, seed: int) -> torch.nn.Module:
    """A preset (no checkpoint) built whole on the CPU with the weights a training run of ``seed``
    starts from under every strategy: the per-module seeded initialisation of
    ``llm.model.materialise`` (not ``torch.manual_seed`` then ``from_config``, whose draws depend on
    the order of construction). For code outside the stages that must start where a run does (the
    benchmarks' bare loops)."""
    import copy

    from llm.model.materialise import materialise

    built = build_empty_model(cfg, vocab_size, special)
    if isinstance(built, str):
        raise ValueError(f"model {cfg.name}: {built}")
    model, checkpoint = built
    if checkpoint is not None:
        raise ValueError(f"model {cfg.name}: build_seeded_model builds presets; {checkpoint} is a checkpoint (use build_model)")
    template = copy.deepcopy(model)
    buffers = {k: b.detach().clone() for k, b in model.named_buffers()}
    materialise(model, template, torch.device("cpu"), seed, buffers)
    return model
