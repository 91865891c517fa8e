"""LoRA adapters through PEFT: apply, save alone, merge, and serve several on one base.

A LoRA run keeps the base weights frozen (bit-identical after training) and trains low-rank
adapters ``B A`` added to the chosen linear layers. The run writes the adapter alone
(``<run_dir>/adapters/<name>``: adapter_config.json, adapter_model.safetensors and the
tokenizer with its chat template) and the merged model as a plain HF directory (the export).
Tokens added for the chat template train as rows (PEFT trainable tokens) and the adapter carries
those rows only; plain PEFT loads it once the base's embeddings are grown to ``len(tokenizer)``
(docs/sft.md).

Several adapters trained on one base load side by side into one model, and a request picks
one by name::

    model = load_with_adapters("base_dir", {"faq": "runs/a/adapters/faq", "code": "runs/b/adapters/code"})
    model.set_adapter("faq")

Command line::

    python -m llm.model.lora merge --base BASE --adapter ADAPTER_DIR --out OUT_DIR
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger(__name__)


def lora_config(cfg: Any, new_token_ids: Sequence[int] = (), model: Any = None) -> Any:
    """A ``peft.LoraConfig`` from the stage's ``lora`` section (llm.config.LoraConfig).

    ``new_token_ids``: tokens added to the vocabulary for the chat template. Only their rows
    train (PEFT trainable tokens): in the input embedding and, when ``model`` has an untied
    output layer, in that layer too, so that the model can learn to emit them. The adapter then
    carries those rows alone, never a whole embedding matrix. (An output layer with a bias,
    which trainable tokens cannot wrap, is trained whole through ``modules_to_save``.)
    """
    from peft import LoraConfig, TaskType

    targets = list(cfg.target_modules)
    target: Any = "all-linear" if targets == ["all-linear"] else targets
    kw: dict[str, Any] = {}
    if new_token_ids:
        ids = list(new_token_ids)
        if model is None:
            kw["trainable_token_indices"] = ids  # the input embedding (and an output layer tied to it)
        else:
            layers = {_module_name(model, model.get_input_embeddings()): ids}
            out = model.get_output_embeddings()
            if out is not None and not getattr(model.config, "tie_word_embeddings", False):
                if isinstance(out, torch.nn.Linear) and out.bias is None:
                    layers[_module_name(model, out)] = ids
                else:  # trainable tokens wrap an output layer as a bias-free linear map
                    log.warning("the output layer (%s) is not a bias-free Linear: it trains whole and the adapter carries it", out)
                    kw["modules_to_save"] = [_module_name(model, out)]
            kw["trainable_token_indices"] = layers
    return LoraConfig(
        task_type=TaskType.CAUSAL_LM,
        r=cfg.r,
        lora_alpha=cfg.alpha,
        lora_dropout=cfg.dropout,
        target_modules=target,
        bias=cfg.bias,
        **kw,
    )


def _module_name(model: Any, module: Any) -> str:
    return next(n for n, m in model.named_modules() if m is module)


def apply_lora(model: Any, cfg: Any, new_token_ids: Sequence[int] = ()) -> Any:
    """Wrap ``model`` in a PEFT model with one adapter named ``cfg.name``; only adapter
    parameters are trainable."""
    from peft import get_peft_model

    peft_model = get_peft_model(model, lora_config(cfg, new_token_ids, model), adapter_name=cfg.name)
    trainable = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in peft_model.parameters())
    log.info("LoRA adapter %r: %d trainable parameters of %d (%.2f%%)", cfg.name, trainable, total, 100 * trainable / total)
    return peft_model


def is_peft(model: Any) -> bool:
    try:
        from peft import PeftModel
    except ImportError:  # pragma: no cover
        return False
    return isinstance(model, PeftModel)


def save_adapter(model: Any, tokenizer: Any, out_dir: str | os.PathLike, name: str) -> Path:
    """Write the adapter alone (and the tokenizer, so its chat template and added tokens travel
    with it) to ``out_dir``, atomically.

    The base's embedding matrices are never written (PEFT would write them whole when the
    vocabulary grew): the rows of added tokens are in the adapter already. To load it, grow the
    base's embeddings to ``len(tokenizer)`` first (``load_with_adapters`` does; docs/sft.md)."""
    out = Path(out_dir).absolute()
    tmp = out.with_name(out.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    model.save_pretrained(str(tmp), selected_adapters=[name], save_embedding_layers=False)
    sub = tmp / name  # PEFT writes non-default adapters into a sub-directory
    if sub.is_dir() and (sub / "adapter_config.json").is_file():
        for f in sub.iterdir():
            os.replace(f, tmp / f.name)
        sub.rmdir()
    if tokenizer is not None:
        tokenizer.save_pretrained(str(tmp))
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)
    return out


def load_with_adapters(base: str | os.PathLike, adapters: dict[str, str | os.PathLike], dtype: torch.dtype = torch.float32) -> Any:
    """One base model with several named adapters loaded side by side (``set_adapter(name)``
    picks the one a request uses; ``with model.disable_adapter():`` runs the base alone)."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from llm.model.build import resolve_pretrained

    if not adapters:
        raise ValueError("load_with_adapters: no adapters given")
    base_model = AutoModelForCausalLM.from_pretrained(str(resolve_pretrained(base)), dtype=dtype)
    items = list(adapters.items())
    for name, path in items:
        if not (Path(path) / "adapter_config.json").is_file():
            raise FileNotFoundError(f"adapter {name!r}: no adapter_config.json in {path}")
    _resize_for_adapter(base_model, items[0][1])
    model = PeftModel.from_pretrained(base_model, str(items[0][1]), adapter_name=items[0][0])
    for name, path in items[1:]:
        model.load_adapter(str(path), adapter_name=name)
    model.set_adapter(items[0][0])
    model.eval()
    return model


def _resize_for_adapter(model: Any, adapter_dir: str | os.PathLike) -> None:
    """An adapter trained with tokens added for the chat template carries its tokenizer: grow
    the base's embeddings to match before loading the adapter."""
    from transformers import AutoTokenizer

    if not (Path(adapter_dir) / "tokenizer_config.json").is_file():
        return
    n = len(AutoTokenizer.from_pretrained(str(adapter_dir)))
    if model.get_input_embeddings().num_embeddings < n:
        model.resize_token_embeddings(n, pad_to_multiple_of=64)


def merge(base: str | os.PathLike, adapter: str | os.PathLike, out_dir: str | os.PathLike, name: str = "default") -> Path:
    """Base + adapter -> a plain HF directory (no PEFT needed to load it)."""
    from transformers import AutoTokenizer

    from llm.export import export_hf

    model = load_with_adapters(base, {name: adapter})
    merged = model.merge_and_unload()
    tok_dir = adapter if (Path(adapter) / "tokenizer_config.json").is_file() else resolve_base_dir(base)
    tok = AutoTokenizer.from_pretrained(str(tok_dir))
    return export_hf(merged, tok, out_dir, extra={"merged_from": {"base": str(base), "adapter": str(adapter)}})


def resolve_base_dir(base: str | os.PathLike) -> Path:
    from llm.model.build import resolve_pretrained

    return resolve_pretrained(base)


def trainable_state(model: Any) -> dict[str, torch.Tensor]:
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m llm.model.lora", description="LoRA adapter tools")
    sub = ap.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("merge", help="merge an adapter into its base and write a plain HF directory")
    m.add_argument("--base", required=True, help="base model: HF directory or .gguf file")
    m.add_argument("--adapter", required=True, help="adapter directory (adapter_config.json)")
    m.add_argument("--out", required=True, help="output directory")
    args = ap.parse_args(argv)
    if args.cmd == "merge":
        out = merge(args.base, args.adapter, args.out)
        print(f"merged: {out}")


if __name__ == "__main__":
    main()
