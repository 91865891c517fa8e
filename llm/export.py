"""The hand-off format between stages: a plain Hugging Face model directory.

config.json, the weights, tokenizer files and generation_config.json; `transformers` loads it
with no code of ours. The weights are ``model.safetensors``, or, past ``export_max_shard_size``,
``model-00001-of-0000N.safetensors`` files with ``model.safetensors.index.json`` (transformers'
names and index). Written into a temporary sibling directory and renamed into place, so a crash
never leaves a half-written export under the final name.

Two writers: :func:`export_hf` (one process holds the whole model: ``save_pretrained``) and
:func:`export_hf_streamed` (ZeRO-3 and FSDP: every rank takes part, the parameters are gathered a
decoder layer at a time, rank 0 writes each shard file as soon as it is full and drops its
tensors, so no process ever holds the whole model).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from transformers import GenerationConfig

from llm.config import size_bytes
from llm.writes import write_guard

log = logging.getLogger(__name__)

WEIGHTS = "model.safetensors"
INDEX = "model.safetensors.index.json"
DEFAULT_MAX_SHARD_SIZE = "5GB"


class ShardWriter:
    """Safetensors shards of at most ``max_bytes`` each, written as the tensors arrive (in order,
    a tensor larger than the limit alone in its shard, as transformers splits a state dict); on
    :meth:`close` renamed to transformers' names: ``model.safetensors`` when one shard holds them
    all, else ``model-00001-of-0000N.safetensors`` and ``model.safetensors.index.json``."""

    def __init__(self, out_dir: str | os.PathLike, max_bytes: int) -> None:
        self.out, self.max_bytes = Path(out_dir), int(max_bytes)
        self.files: list[tuple[Path, list[str]]] = []
        self.current: dict[str, torch.Tensor] = {}
        self.current_bytes = self.total_bytes = self.total_params = 0

    def add(self, name: str, tensor: torch.Tensor, is_param: bool = True) -> None:
        n = tensor.numel() * tensor.element_size()
        if self.current and self.current_bytes + n > self.max_bytes:
            self.flush()
        self.current[name] = tensor.contiguous()
        self.current_bytes += n
        self.total_bytes += n
        self.total_params += tensor.numel() if is_param else 0

    def flush(self) -> None:
        from safetensors.torch import save_file

        if not self.current:
            return
        path = self.out / f"model-{len(self.files) + 1:05d}.part.safetensors"
        save_file(self.current, str(path), metadata={"format": "pt"})
        self.files.append((path, list(self.current)))
        self.current, self.current_bytes = {}, 0

    def close(self) -> list[Path]:
        self.flush()
        n = len(self.files)
        if n == 1:
            final = self.out / WEIGHTS
            os.replace(self.files[0][0], final)
            return [final]
        weight_map, out = {}, []
        for i, (path, names) in enumerate(self.files, 1):
            final = self.out / f"model-{i:05d}-of-{n:05d}.safetensors"
            os.replace(path, final)
            weight_map.update(dict.fromkeys(names, final.name))
            out.append(final)
        index = {"metadata": {"total_parameters": self.total_params, "total_size": self.total_bytes}, "weight_map": weight_map}
        (self.out / INDEX).write_text(json.dumps(index, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        return out


def saved_entries(model: Any) -> list[tuple[str, torch.Tensor, bool]]:
    """What ``save_pretrained`` writes, in its order, as ``(name, parameter or buffer, is a
    parameter)`` without reading a value (the tensors may be sharded: FSDP's DTensors, ZeRO-3's
    partitions): the state dict less ``_keys_to_ignore_on_save``, and each tied weight once under
    the name transformers keeps (its own rule, applied to placeholders: lm_head tied to the
    embeddings is stored as the embeddings)."""
    from transformers.modeling_utils import remove_tied_weights_from_state_dict

    sd = model.state_dict(keep_vars=True)
    for k in getattr(model, "_keys_to_ignore_on_save", None) or ():
        sd.pop(k, None)
    params = {id(p) for p in model.parameters()}
    one: dict[int, torch.Tensor] = {}
    placeholders = {k: one.setdefault(id(v), torch.empty(1)) for k, v in sd.items()}  # shared objects: one storage
    kept = remove_tied_weights_from_state_dict(placeholders, model)
    return [(k, v, id(v) in params) for k, v in sd.items() if k in kept]


def write_weights(
    out_dir: str | os.PathLike, tensors: Iterable[tuple[str, torch.Tensor | None, bool]], max_shard_size: int | str
) -> list[Path]:
    """Stream ``(name, whole tensor on CPU, is a parameter)`` into shard files (:class:`ShardWriter`).
    ``None`` tensors (another rank's turn in a collective) are skipped."""
    w = ShardWriter(out_dir, size_bytes(max_shard_size))
    for name, t, is_param in tensors:
        if t is not None:
            w.add(name, t, is_param)
    return w.close()


def _prepare(out_dir: str | os.PathLike) -> tuple[Path, Path]:
    out = Path(out_dir).absolute()
    tmp = out.with_name(out.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    return out, tmp


def _complete(tmp: Path, out: Path, tokenizer: Any, extra: dict | None, eos_token_id: Any) -> Path:
    """Tokenizer, generation_config.json and xiulian.json into ``tmp``, then ``tmp`` renamed to ``out``."""
    if tokenizer is not None:
        tokenizer.save_pretrained(tmp)
    gen = GenerationConfig(
        bos_token_id=getattr(tokenizer, "bos_token_id", None),
        eos_token_id=eos_token_id if eos_token_id is not None else getattr(tokenizer, "eos_token_id", None),
        pad_token_id=getattr(tokenizer, "pad_token_id", None),
        do_sample=False,
        max_new_tokens=128,
    )
    gen.save_pretrained(tmp)
    if extra:
        (tmp / "xiulian.json").write_text(json.dumps(extra, indent=2, default=str))
    old = out.with_name(out.name + ".old")
    if out.exists():
        if old.exists():
            shutil.rmtree(old)
        os.replace(out, old)
    os.replace(tmp, out)
    if old.exists():
        shutil.rmtree(old)
    return out


def export_hf(
    model: Any,
    tokenizer: Any,
    out_dir: str | os.PathLike,
    extra: dict | None = None,
    eos_token_id: Any = None,
    max_shard_size: int | str = DEFAULT_MAX_SHARD_SIZE,
) -> Path:
    """Write ``model`` and ``tokenizer`` as a plain HF directory. ``eos_token_id`` (an id or a
    list: a chat model stops at its end-of-turn token) goes into generation_config.json."""
    out, tmp = _prepare(out_dir)
    with write_guard(out, "export"):
        model.save_pretrained(tmp, safe_serialization=True, max_shard_size=max_shard_size)
    return _complete(tmp, out, tokenizer, extra, eos_token_id)


def export_hf_streamed(
    strategy: Any,
    model: Any,
    tokenizer: Any,
    out_dir: str | os.PathLike,
    extra: dict | None = None,
    eos_token_id: Any = None,
    max_shard_size: int | str = DEFAULT_MAX_SHARD_SIZE,
    dtype: torch.dtype = torch.float32,
    config: Any = None,
) -> Path | None:
    """:func:`export_hf` for a model whose parameters are sharded over the ranks (ZeRO-3, FSDP):
    a collective, every rank calls it. The tensors are gathered a decoder layer at a time
    (:func:`llm.strategy.gathered_tensors`), floating ones cast to ``dtype`` (the consolidated
    export's: a plain model is built in fp32), and rank 0 writes each shard as soon as it is full.
    Returns the export's path on rank 0, ``None`` elsewhere. config.json is ``config`` (default:
    the model's) with dtype and architectures set as ``save_pretrained`` sets them."""
    from llm.strategy import gathered_tensors

    first = strategy.is_global_zero
    out = Path(strategy.broadcast(str(Path(out_dir).absolute())))
    tmp = out.with_name(out.name + ".tmp")
    entries = saved_entries(model)
    if first:
        out, tmp = _prepare(out)
    strategy.barrier("export_tmp")
    with write_guard(out, "export") if first else _nothing():
        stream = (
            (k, None if t is None else (t.to(dtype) if t.is_floating_point() else t), p)
            for k, t, p in gathered_tensors(strategy, model, entries)
        )
        if first:
            files = write_weights(tmp, stream, max_shard_size)
            config = model.config if config is None else config
            config.dtype = str(dtype).split(".")[1]
            config.architectures = [type(model).__name__.removeprefix("FSDP")]
            config.save_pretrained(tmp)
            log.info("export: %d weight file(s) written as the %d gathered tensors arrived", len(files), len(entries))
        else:
            for _ in stream:  # take part in every gather
                pass
    path = _complete(tmp, out, tokenizer, extra, eos_token_id) if first else None
    strategy.barrier("export_done")
    return path


def _nothing() -> Any:
    from contextlib import nullcontext

    return nullcontext()


def load_weights(model: torch.nn.Module, export_dir: str | os.PathLike) -> None:
    """Load an export's weights into ``model`` one weight file at a time (the model plus one
    shard in memory, not two copies of the model); every tensor the model saves must be there."""
    from safetensors.torch import load_file

    d = Path(export_dir)
    index = d / INDEX
    files = sorted(set(json.loads(index.read_text())["weight_map"].values())) if index.exists() else [WEIGHTS]
    expected = {k for k, _, _ in saved_entries(model)}
    seen: set[str] = set()
    for f in files:
        part = load_file(str(d / f))
        model.load_state_dict(part, strict=False)
        seen.update(part)
        del part
    if missing := sorted(expected - seen):
        raise ValueError(f"{d}: the export lacks {len(missing)} tensors of the model, e.g. {missing[:3]}")
