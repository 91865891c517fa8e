"""The hand-off format between stages: a plain Hugging Face model directory.

config.json, the weights, tokenizer files and generation_config.json; `transformers` loads it
with no code of ours. The weights are ``model.safetensors``, or, past ``export_max_shard_size``,
``model-00001-of-0000N.safetensors`` files with ``model.safetensors.index.json`` (transformers'
names and index). Written into a temporary sibling directory and renamed into place, so a crash
never leaves a half-written export under the final name.

Two writers: :func:`export_hf` (one process holds the whole model: ``save_pretrained``) and
:func:`export_hf_streamed` (ZeRO-3 and FSDP: every rank takes part, the parameters are gathered a
decoder layer at a time, rank 0 writes each tensor into its place in its weight file and drops
it, so no process ever holds the whole model, nor a whole weight file).
"""

from __future__ import annotations

import json
import logging
import math
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


#: safetensors' names of torch dtypes
_ST_DTYPES = {
    torch.float64: "F64",
    torch.float32: "F32",
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.int64: "I64",
    torch.int32: "I32",
    torch.int16: "I16",
    torch.int8: "I8",
    torch.uint8: "U8",
    torch.bool: "BOOL",
}


def plan_shards(sizes: list[tuple[str, int]], max_bytes: int) -> list[list[str]]:
    """The tensor names of each weight file, from ``(name, bytes)`` in the state dict's order:
    transformers' split (``huggingface_hub.split_torch_state_dict_into_shards``): a file is closed
    when the next tensor would take it past ``max_bytes``; a tensor larger than that gets a file
    of its own, numbered where it comes."""
    shards: list[list[str]] = []
    current: list[str] = []
    size = 0
    for name, n in sizes:
        if n > max_bytes:
            shards.append([name])
            continue
        if size + n > max_bytes:
            shards.append(current)
            current, size = [], 0
        current.append(name)
        size += n
    if current:
        shards.append(current)
    return shards


class ShardWriter:
    """The weight files of an export, written while the tensors arrive one at a time: every
    shape and dtype is known before any value (``specs``), so each file's safetensors header is
    written first and each tensor goes straight to its place in its file; the writer holds no
    tensor. Files and index carry transformers' names: ``model.safetensors`` when one file holds
    everything, else ``model-00001-of-0000N.safetensors`` and ``model.safetensors.index.json``."""

    def __init__(
        self, out_dir: str | os.PathLike, specs: list[tuple[str, tuple[int, ...], torch.dtype]], max_bytes: int, params: int
    ) -> None:
        self.out = Path(out_dir)
        nbytes = {name: math.prod(shape) * _element_size(dtype) for name, shape, dtype in specs}
        spec = {name: (tuple(shape), dtype) for name, shape, dtype in specs}
        self.shards = plan_shards(list(nbytes.items()), int(max_bytes))
        n = len(self.shards)
        self.names = [WEIGHTS] if n == 1 else [f"model-{i:05d}-of-{n:05d}.safetensors" for i in range(1, n + 1)]
        self.total_bytes, self.params = sum(nbytes.values()), params
        self.where: dict[str, tuple[int, int, tuple[int, ...], torch.dtype]] = {}  # name -> (file, offset, shape, dtype)
        self.left = [len(s) for s in self.shards]
        self.files: dict[int, Any] = {}
        self.headers: list[bytes] = []
        for i, names in enumerate(self.shards):
            header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
            begin = 0
            for name in names:
                shape, dtype = spec[name]
                header[name] = {"dtype": _ST_DTYPES[dtype], "shape": list(shape), "data_offsets": [begin, begin + nbytes[name]]}
                begin += nbytes[name]
            raw = json.dumps(header, separators=(",", ":")).encode()
            raw += b" " * (-len(raw) % 8)  # the data starts 8-byte aligned, as safetensors writes it
            self.headers.append(len(raw).to_bytes(8, "little") + raw)
            for name in names:
                self.where[name] = (i, len(self.headers[i]) + header[name]["data_offsets"][0], *spec[name])

    def add(self, name: str, tensor: torch.Tensor) -> None:
        i, offset, shape, dtype = self.where[name]
        if tuple(tensor.shape) != shape or tensor.dtype != dtype:
            raise ValueError(f"{name}: got {tuple(tensor.shape)} {tensor.dtype}, the export's plan says {shape} {dtype}")
        f = self.files.get(i)
        if f is None:
            f = self.files[i] = open(self.out / self.names[i], "wb")
            f.write(self.headers[i])
        f.seek(offset)
        f.write(memoryview(tensor.detach().contiguous().reshape(-1).view(torch.uint8).numpy()))
        self.left[i] -= 1
        if self.left[i] == 0:
            f.close()
            del self.files[i]

    def close(self) -> list[Path]:
        missing = [n for i, names in enumerate(self.shards) if self.left[i] for n in names]
        if missing:
            raise ValueError(f"{self.out}: the export's weights are incomplete, e.g. {missing[:3]} never arrived")
        if len(self.names) > 1:
            index = {
                "metadata": {"total_parameters": self.params, "total_size": self.total_bytes},
                "weight_map": {name: self.names[i] for i, names in enumerate(self.shards) for name in names},
            }
            (self.out / INDEX).write_text(json.dumps(index, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        return [self.out / n for n in self.names]


def _element_size(dtype: torch.dtype) -> int:
    return torch.empty(0, dtype=dtype).element_size()


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
    out_dir: str | os.PathLike,
    specs: list[tuple[str, tuple[int, ...], torch.dtype]],
    tensors: Iterable[tuple[str, torch.Tensor | None]],
    max_shard_size: int | str,
    params: int,
) -> list[Path]:
    """Write ``(name, whole tensor on CPU)`` as they arrive into the weight files planned from
    ``specs`` (:class:`ShardWriter`); ``None`` tensors (another rank's turn in a collective) are
    skipped. ``params``: the parameter count the index records."""
    w = ShardWriter(out_dir, specs, size_bytes(max_shard_size), params)
    for name, t in tensors:
        if t is not None:
            w.add(name, t)
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
    export's: a plain model is built in fp32), and rank 0 writes each one into its place in its
    weight file as it arrives (:class:`ShardWriter`), holding one gathered tensor at a time.
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
        stream = ((k, None if t is None else t.to(_saved_dtype(t, dtype))) for k, t, _ in gathered_tensors(strategy, model, entries))
        if first:
            specs = [(k, tuple(getattr(t, "ds_shape", None) or t.shape), _saved_dtype(t, dtype)) for k, t, _ in entries]
            params = sum(math.prod(shape) for (_, shape, _), (_, _, is_param) in zip(specs, entries) if is_param)
            files = write_weights(tmp, specs, stream, max_shard_size, params)
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


def _saved_dtype(t: torch.Tensor, dtype: torch.dtype) -> torch.dtype:
    return dtype if t.is_floating_point() else t.dtype


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
