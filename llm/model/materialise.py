"""Sharded start-up: build a model without memory, then fill only what each rank holds.

The model is built with its parameters on the meta device (its buffers, such as RoPE's
``inv_freq``, are small and real: :func:`params_on_meta`), sharded (FSDP2 ``fully_shard``, or
nothing for an unsharded strategy), given empty storage for its local shards (``to_empty``) and
filled one block (a decoder layer, or one other module) at a time by :func:`materialise`:

* **from a Hugging Face checkpoint** (safetensors, one file or shards with an index): each rank
  reads only the rows of each tensor its shard holds (:class:`CheckpointSlices`, ``pread`` of
  exactly those bytes); tensors the checkpoint lacks (a new reward head) are initialised as below;
* **random initialisation, independent of the number of ranks**: every rank builds the whole
  tensors of ONE module (a linear layer, a norm) on the CPU, initialises them with transformers'
  own ``_init_weights`` under the CPU generator seeded from ``(seed, module name)``, keeps its
  slice and drops them (a module outside the decoder layers, such as the embeddings, in fixed
  chunks of rows seeded by their rows, and only the chunks its shard needs: the largest tensor is
  never built whole). The
  values depend on the seed and the block's name only, never on the world size or on the order
  the ranks get there, so a 1-rank (DDP, single) start and an N-rank FSDP start hold the same
  full weights; no rank ever holds more than one block's full tensors, and there is no
  communication (rank 0 initialising and scattering each tensor would also be exact, but it costs
  a broadcast of the whole model and makes every rank wait for one). Every strategy starts this
  way (``strategy.sharded_init=true``), so the unsharded and sharded runs of a seed are the same run.

Under DeepSpeed ZeRO-3 (:class:`Zero3Partition`) there is no FSDP sharding: each parameter is
turned into a ZeRO-3 parameter (``deepspeed.zero.Init``'s conversion, without its broadcast from
rank 0) as its block comes up, before it is filled, and the fill writes straight into the rank's
partition (``ds_tensor``: a flat range of the tensor's elements, read from the checkpoint as the
rows that cover it). The whole model never exists on a rank; the engine finds its parameters
already partitioned when it starts.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger(__name__)

WEIGHTS, INDEX = "model.safetensors", "model.safetensors.index.json"

_DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
    "F8_E4M3": torch.float8_e4m3fn,
    "F8_E5M2": torch.float8_e5m2,
}


@contextmanager
def params_on_meta() -> Iterator[None]:
    """Modules built inside get their parameters on the meta device (no memory) and keep real
    buffers (RoPE's ``inv_freq``: small, and computed at construction). A parameter is moved to
    meta as it is registered, before its module initialises it, so building a model costs one
    never-touched ``torch.empty`` at a time."""
    orig = torch.nn.Module.register_parameter

    def register(module: torch.nn.Module, name: str, param: Any) -> None:
        orig(module, name, param)
        if param is not None and param.device.type != "meta":
            module._parameters[name] = type(param)(param.to("meta"), requires_grad=param.requires_grad)

    torch.nn.Module.register_parameter = register  # type: ignore[method-assign]
    try:
        yield
    finally:
        torch.nn.Module.register_parameter = orig  # type: ignore[method-assign]


def has_meta_params(module: torch.nn.Module) -> bool:
    return any(p.is_meta for p in module.parameters())


class CheckpointSlices:
    """The tensors of a Hugging Face model directory's safetensors weights (``model.safetensors``,
    or the shards ``model.safetensors.index.json`` names), read a slice at a time: only the bytes
    of the rows asked for leave the disk (``os.pread``; no mmap, so nothing else is paged in).
    ``bytes_read`` counts them."""

    def __init__(self, directory: str | os.PathLike) -> None:
        self.directory = d = Path(directory)
        if (d / INDEX).is_file():
            files = sorted(set(json.loads((d / INDEX).read_text())["weight_map"].values()))
        elif (d / WEIGHTS).is_file():
            files = [WEIGHTS]
        else:
            raise FileNotFoundError(f"{d}: no {WEIGHTS} or {INDEX}")
        self.entries: dict[str, tuple[int, torch.dtype, tuple[int, ...], int]] = {}
        self._fds: list[int] = []
        self._paths: list[Path] = []
        self.bytes_read = 0
        for f in files:
            path = d / f
            fd = os.open(path, os.O_RDONLY)
            self._fds.append(fd)
            self._paths.append(path)
            n = int.from_bytes(os.pread(fd, 8, 0), "little")
            header = json.loads(os.pread(fd, n, 8))
            for name, t in header.items():
                if name == "__metadata__":
                    continue
                if t["dtype"] not in _DTYPES:
                    raise ValueError(f"{path}: tensor {name}: dtype {t['dtype']} is not supported")
                dtype, shape = _DTYPES[t["dtype"]], tuple(int(s) for s in t["shape"])
                b, e = t["data_offsets"]
                numel = 1
                for s in shape:
                    numel *= s
                if e - b != numel * dtype.itemsize:
                    raise ValueError(f"{path}: tensor {name}: {e - b} bytes for shape {list(shape)} of {t['dtype']}")
                self.entries[name] = (len(self._fds) - 1, dtype, shape, 8 + n + b)

    def __contains__(self, name: str) -> bool:
        return name in self.entries

    def shape(self, name: str) -> tuple[int, ...]:
        return self.entries[name][2]

    def read(self, name: str, index: tuple[slice, ...] | None = None) -> torch.Tensor:
        """Tensor ``name``, or its ``index`` (one slice per dimension, steps of 1): the rows of
        the first dimension's slice are read, the other dimensions are cut from them."""
        f, dtype, shape, start = self.entries[name]
        if not shape:
            index = None
        lo, hi = (0, shape[0] if shape else 1) if not index else index[0].indices(shape[0])[:2]
        row = dtype.itemsize
        for s in shape[1:]:
            row *= s
        hi = max(lo, hi)
        n = (hi - lo) * row if shape else dtype.itemsize
        buf = bytearray(n)
        view, got = memoryview(buf), 0
        while got < n:
            k = os.preadv(self._fds[f], [view[got:]], start + lo * row + got)
            if k <= 0:
                raise ValueError(f"{self._paths[f]}: tensor {name}: the file ends early")
            got += k
        self.bytes_read += n
        t = torch.frombuffer(buf, dtype=dtype) if n else torch.empty(0, dtype=dtype)
        t = t.reshape((hi - lo, *shape[1:]) if shape else ())
        if index and len(index) > 1:
            t = t[(slice(None), *index[1:])]
        return t

    def close(self) -> None:
        for fd in self._fds:
            os.close(fd)
        self._fds = []

    def __enter__(self) -> CheckpointSlices:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def local_index(dst: torch.Tensor, shape: tuple[int, ...] | torch.Size) -> tuple[slice, ...] | None:
    """The slice of the whole tensor (of ``shape``) that ``dst`` holds on this rank: ``None`` for a
    plain tensor (all of it), the shard's rows for a DTensor (FSDP2)."""
    from torch.distributed.tensor import DTensor

    if not isinstance(dst, DTensor):
        return None
    from torch.distributed.tensor._utils import compute_local_shape_and_global_offset

    size, offset = compute_local_shape_and_global_offset(tuple(shape), dst.device_mesh, dst.placements)
    return tuple(slice(o, o + s) for o, s in zip(offset, size))


def local(dst: torch.Tensor) -> torch.Tensor:
    """The storage this rank holds of ``dst`` (a DTensor's local shard, a view into what FSDP2
    all-gathers from; a ZeRO-3 parameter's partition, without its padding; or ``dst``)."""
    flat = flat_range(dst)
    if flat is not None:
        return dst.ds_tensor.narrow(0, 0, flat[1] - flat[0])  # type: ignore[attr-defined]
    t = getattr(dst, "_local_tensor", None)
    return t if t is not None else dst


def flat_range(dst: torch.Tensor) -> tuple[int, int] | None:
    """ZeRO-3: the elements ``[a, b)`` of the flattened whole tensor that this rank's partition
    holds (set by :class:`Zero3Partition`); ``None`` for any other tensor."""
    return getattr(dst, "_xiulian_flat", None)


def _rows_of_flat(shape: tuple[int, ...] | torch.Size, a: int, b: int) -> tuple[int, int, int]:
    """(first row, end row, offset of element ``a`` in the first row's data): the rows of a
    tensor of ``shape`` that hold its flat elements ``[a, b)``."""
    width = 1
    for s in shape[1:]:
        width *= s
    lo = a // max(1, width)
    return lo, max(lo, -(-b // max(1, width))), a - lo * width


def _tie_groups(model: torch.nn.Module) -> list[list[tuple[torch.nn.Module, str]]]:
    """The (module, attribute) pairs that hold one shared parameter (tied embeddings), by parameter."""
    by: dict[int, list[tuple[torch.nn.Module, str]]] = {}
    for m in model.modules():
        for k, p in m._parameters.items():
            if p is not None:
                by.setdefault(id(p), []).append((m, k))
    return [g for g in by.values() if len(g) > 1]


def _empty_like(model: torch.nn.Module, device: torch.device, buffers: dict[str, torch.Tensor]) -> None:
    """``to_empty`` on ``device``, keeping tied parameters one tensor (``to_empty`` gives each
    module its own) and the buffers' values (``to_empty`` clears them too)."""
    tied = _tie_groups(model)
    model.to_empty(device=device)
    for group in tied:
        (m0, k0), rest = group[0], group[1:]
        for m, k in rest:
            if m._parameters[k] is not m0._parameters[k0]:
                m._parameters[k] = m0._parameters[k0]
    for name, b in model.named_buffers():
        if name in buffers:
            local(b).copy_(buffers[name])


def _put(dst: torch.Tensor, full: torch.Tensor) -> None:
    flat = flat_range(dst)
    if flat is not None:
        local(dst).copy_(full.reshape(-1)[flat[0] : flat[1]])
        return
    idx = local_index(dst, full.shape)
    local(dst).copy_(full if idx is None else full[idx])


def _read(dst: torch.Tensor, checkpoint: CheckpointSlices, key: str, shape: torch.Size) -> None:
    """Fill ``dst``'s part of a tensor of ``shape`` from the checkpoint's tensor ``key``: only
    the rows it holds are read."""
    flat = flat_range(dst)
    if flat is None:
        local(dst).copy_(checkpoint.read(key, local_index(dst, shape)))
        return
    a, b = flat
    if not shape:
        local(dst).copy_(checkpoint.read(key).reshape(-1)[a:b])
        return
    lo, hi, off = _rows_of_flat(shape, a, b)
    local(dst).copy_(checkpoint.read(key, (slice(lo, hi),)).reshape(-1)[off : off + b - a])


def block_seed(seed: int, name: str) -> int:
    """The seed of one block's initialisation: from the run's seed and the block's name only."""
    return int.from_bytes(hashlib.sha256(f"{seed}/{name}".encode()).digest()[:8], "little") & (2**63 - 1)


def blocks(model: torch.nn.Module) -> list[tuple[str, torch.nn.Module, list[torch.nn.Module]]]:
    """``(name, module, ancestors)`` of every module with parameters of its own, in module order.
    ``ancestors``: inside a decoder layer, the modules from its parent up to the layer, whose
    ``_init_weights`` may also set its parameters (GPT-2 scales its ``c_proj`` from the attention
    block); ``None`` outside the layers (embeddings, LM head, final norm: initialised by rows)."""
    from llm.strategy import decoder_layers

    try:
        layers = {id(m) for m in decoder_layers(model)}
    except ValueError:
        layers = set()
    out: list[tuple[str, torch.nn.Module, Any]] = []

    def walk(m: torch.nn.Module, name: str, up: list[torch.nn.Module] | None) -> None:
        if id(m) in layers:
            up = []
        if any(True for _ in m.parameters(recurse=False)):
            out.append((name, m, up))
        for k, c in m._modules.items():
            if c is not None:
                walk(c, f"{name}.{k}" if name else k, None if up is None else [m, *up])

    walk(model, "", None)
    return out


def _init_fn(template: torch.nn.Module) -> Any:
    fn = getattr(template, "_init_weights", None)
    if fn is None:
        raise TypeError(f"{type(template).__name__}: no transformers _init_weights to initialise it with")
    return fn


@torch.no_grad()
def materialise(
    model: torch.nn.Module,
    template: torch.nn.Module,
    device: torch.device,
    seed: int,
    buffers: dict[str, torch.Tensor],
    checkpoint: CheckpointSlices | None = None,
    zero3: Zero3Partition | None = None,
) -> dict[str, int]:
    """Give ``model`` (meta parameters, perhaps sharded) storage on ``device`` and fill each rank's
    part: from ``checkpoint`` where it has the tensor, else by the seeded initialisation of its
    block (module docstring). ``template`` is an unsharded meta copy of ``model`` (same names),
    used to build one module's whole tensors at a time; ``buffers`` the model's buffers before
    sharding (``to_empty`` clears them). ``zero3``: each block's parameters become ZeRO-3
    partitions just before they are filled, instead of the whole model getting storage first.
    Returns counts: tensors ``loaded`` and ``initialised``."""
    if zero3 is None:
        _empty_like(model, device, buffers)
    else:
        zero3.begin(model)
    dst = dict(model.named_parameters(remove_duplicate=False))
    names: dict[int, list[str]] = {}
    for name, p in template.named_parameters(remove_duplicate=False):
        names.setdefault(id(p), []).append(name)
    base = getattr(template, "base_model_prefix", "") or ""
    done: set[int] = set()
    counts = {"loaded": 0, "initialised": 0}
    init = _init_fn(template)
    for block_name, block, ancestors in blocks(template):
        own = list(block.named_parameters(prefix=block_name, recurse=False, remove_duplicate=False))
        if zero3 is not None:
            dst.update(zero3.partition(model, block_name))
        missing = []
        for name, p in own:
            if id(p) in done:
                continue
            done.add(id(p))
            if name not in dst:
                raise KeyError(f"{type(model).__name__}: no parameter {name} (the template and the model differ)")
            key = _checkpoint_key(checkpoint, names[id(p)], base) if checkpoint is not None else None
            if key is None:
                missing.append(name)
                continue
            if tuple(checkpoint.shape(key)) != tuple(p.shape):  # type: ignore[union-attr]
                raise ValueError(
                    f"{checkpoint.directory}: tensor {key} has shape {list(checkpoint.shape(key))}, "  # type: ignore[union-attr]
                    f"the model's {name} {list(p.shape)}"
                )
            _read(dst[name], checkpoint, key, p.shape)  # type: ignore[arg-type]
            counts["loaded"] += 1
        if not missing:
            continue
        if ancestors is not None or not _init_rows(block, block_name, missing, dst, seed, init):
            _init_module(block, block_name, ancestors or [], missing, dst, seed, init, buffers)
        counts["initialised"] += len(missing)
    return counts


def _clear_init_flags(mods: list[torch.nn.Module]) -> None:
    for m in mods:
        m.__dict__.pop("_is_hf_initialized", None)
        for t in [*m.parameters(recurse=False), *m.buffers(recurse=False)]:
            t.__dict__.pop("_is_hf_initialized", None)


def _init_module(
    block: torch.nn.Module,
    block_name: str,
    ancestors: list[torch.nn.Module],
    missing: list[str],
    dst: dict[str, torch.Tensor],
    seed: int,
    init: Any,
    buffers: dict[str, torch.Tensor],
) -> None:
    """Build ``block``'s own tensors whole on the CPU, initialise them (seeded by its name; then
    its ``ancestors``' rules, which leave their other, meta, children as they are), put each rank's
    slice of the ``missing`` ones into ``dst``, drop them."""
    block.to_empty(device="cpu", recurse=False)
    mods = [block, *ancestors]
    _clear_init_flags(mods)
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(block_seed(seed, block_name))
        for m in mods:
            init(m)
    full = dict(block.named_parameters(prefix=block_name, recurse=False, remove_duplicate=False))
    for name in missing:
        _put(dst[name], full[name])
    del full
    block.to_empty(device="meta", recurse=False)
    for name, b in block.named_buffers(prefix=block_name, recurse=False):  # to_empty took them too
        if name in buffers:
            b.data = buffers[name]


#: elements per chunk of rows of a module outside the decoder layers (16 MiB of fp32)
CHUNK_ELEMENTS = 1 << 22


def _init_rows(block: torch.nn.Module, block_name: str, missing: list[str], dst: dict[str, torch.Tensor], seed: int, init: Any) -> bool:
    """A module outside the decoder layers (embeddings, LM head, final norm: initialised element by
    element) in fixed chunks of rows, each seeded by (block name, its rows), only the chunks that
    hold rows of this rank's shards: the whole embedding matrix (the largest tensor) is never
    built. ``False`` (nothing done) when its parameters do not share their first dimension."""
    own = dict(block.named_parameters(prefix=block_name, recurse=False, remove_duplicate=False))
    rows = {p.shape[0] if p.dim() else -1 for p in own.values()}
    if len(rows) != 1 or -1 in rows:
        return False
    n = rows.pop()
    width = max(max(1, p.numel() // max(1, n)) for p in own.values())
    step = max(1, CHUNK_ELEMENTS // width)
    saved = dict(block._parameters)
    pad = getattr(block, "padding_idx", None) if isinstance(block, torch.nn.Embedding) else None
    try:
        for a in range(0, n, step):
            b = min(n, a + step)
            if not any(_rows_overlap(dst[k], own[k].shape, a, b) for k in missing):
                continue
            for k, p in saved.items():
                if p is not None:
                    block._parameters[k] = torch.nn.Parameter(torch.empty((b - a, *p.shape[1:]), dtype=p.dtype), p.requires_grad)
            if pad is not None:
                block.padding_idx = None  # the row is zeroed below, at its place in the chunk
            _clear_init_flags([block])
            with torch.random.fork_rng(devices=[]):
                torch.default_generator.manual_seed(block_seed(seed, f"{block_name}[{a}:{b}]"))
                init(block)
            if pad is not None and a <= pad < b:
                block.weight.data[pad - a].zero_()
            chunk = dict(block.named_parameters(prefix=block_name, recurse=False, remove_duplicate=False))
            for k in missing:
                _put_rows(dst[k], chunk[k].data, a, own[k].shape)
            block._parameters.update(saved)
    finally:
        block._parameters.update(saved)
        if pad is not None:
            block.padding_idx = pad
    return True


def _local_rows(dst: torch.Tensor, shape: torch.Size) -> tuple[int, int, tuple[slice, ...] | None]:
    flat = flat_range(dst)
    if flat is not None:
        lo, hi, _ = _rows_of_flat(shape, *flat)
        return lo, hi, None
    idx = local_index(dst, shape)
    lo, hi = (0, shape[0]) if idx is None else idx[0].indices(shape[0])[:2]
    return lo, max(lo, hi), idx


def _rows_overlap(dst: torch.Tensor, shape: torch.Size, a: int, b: int) -> bool:
    lo, hi, _ = _local_rows(dst, shape)
    return max(a, lo) < min(b, hi)


def _put_rows(dst: torch.Tensor, chunk: torch.Tensor, a: int, shape: torch.Size) -> None:
    """Rows ``a .. a + len(chunk)`` of a whole tensor of ``shape``: the part this rank holds."""
    flat = flat_range(dst)
    if flat is not None:  # ZeRO-3: the chunk's elements that fall in the partition's flat range
        width = chunk[0].numel() if chunk.shape[0] else 1
        s, e = max(flat[0], a * width), min(flat[1], (a + chunk.shape[0]) * width)
        if s < e:
            local(dst)[s - flat[0] : e - flat[0]].copy_(chunk.reshape(-1)[s - a * width : e - a * width])
        return
    lo, hi, idx = _local_rows(dst, shape)
    s, e = max(a, lo), min(a + chunk.shape[0], hi)
    if s >= e:
        return
    part = chunk[s - a : e - a]
    if idx is not None and len(idx) > 1:
        part = part[(slice(None), *idx[1:])]
    local(dst)[s - lo : e - lo].copy_(part)


def _checkpoint_key(checkpoint: CheckpointSlices, names: list[str], base: str) -> str | None:
    """The checkpoint's name of a parameter known as ``names`` (tied weights have several), with or
    without the base model's prefix (``model.``, ``transformer.``), as transformers matches them."""
    for n in names:
        cands = [n]
        if base:
            cands += [n[len(base) + 1 :]] if n.startswith(base + ".") else [f"{base}.{n}"]
        for c in cands:
            if c in checkpoint:
                return c
    return None


@torch.no_grad()
def copy_into(src: torch.nn.Module, dst: torch.nn.Module, device: torch.device, buffers: dict[str, torch.Tensor]) -> None:
    """Fill ``dst`` (meta parameters, sharded like ``src`` or not at all; a frozen reference built
    as a copy of the model before it was filled) with ``src``'s values, shard by shard."""
    _empty_like(dst, device, buffers)
    theirs = dict(src.named_parameters(remove_duplicate=False))
    for name, p in dst.named_parameters(remove_duplicate=False):
        if flat_range(theirs[name]) is not None and flat_range(p) is None:  # ZeRO-3 into a whole copy
            import deepspeed

            with deepspeed.zero.GatheredParameters([theirs[name]]):  # collective: every rank, same order
                p.copy_(theirs[name])
            continue
        local(p).copy_(local(theirs[name]))


class Zero3Partition:
    """DeepSpeed ZeRO-3 partitions made one block at a time (:func:`materialise`): each of the
    block's parameters gets an untouched whole buffer, becomes a ZeRO-3 parameter
    (``deepspeed.zero.Init``'s own conversion and ``partition``, which keeps the rank's flat range
    of elements in ``ds_tensor`` and frees the buffer) and is then filled through
    :func:`flat_range`. Nothing is broadcast (``zero.Init`` would broadcast each tensor from rank
    0): every rank computes or reads exactly its range. ``config``: the run's DeepSpeed config
    (its ``auto`` values filled), whose process group, offload device and dtype the engine uses too."""

    def __init__(self, config: dict) -> None:
        import deepspeed

        # not entered (constructors stay unpatched); given a module, as the engine's own conversion
        # is, it sets up what that conversion sets up (ZeRO-3's memory-efficient linear)
        self.init = deepspeed.zero.Init(module=torch.nn.Module(), config_dict_or_path=config)
        self.device = self.init.local_device
        self._ties: dict[tuple[str, str], list[tuple[torch.nn.Module, str]]] = {}
        self._names: dict[int, str] = {}

    def begin(self, model: torch.nn.Module) -> None:
        """Record the tied parameters: a block's new parameter replaces them all."""
        self._names = {id(m): n for n, m in model.named_modules()}
        self._ties = {}
        for group in _tie_groups(model):
            for m, k in group:
                self._ties[(self._names[id(m)], k)] = group

    @torch.no_grad()
    def partition(self, model: torch.nn.Module, block_name: str) -> dict[str, torch.Tensor]:
        """Turn the block's own meta parameters into (unfilled) ZeRO-3 partitions; returns them by
        every name they have in ``model`` (tied names included)."""
        module = model.get_submodule(block_name)
        out: dict[str, torch.Tensor] = {}
        prefix = f"{block_name}." if block_name else ""
        for k, p in list(module._parameters.items()):
            if p is None or not p.is_meta:
                continue
            new = torch.nn.Parameter(torch.empty(p.shape, dtype=p.dtype, device=self.device), requires_grad=p.requires_grad)
            self.init._convert_to_deepspeed_param(new)
            new.partition()
            part = new.ds_tensor.ds_numel
            a = part * self.init._partition_rank(new)
            if new.ds_tensor.numel() != part or part * self.init._partition_world_size(new) < new.ds_numel:
                raise RuntimeError(f"{prefix}{k}: DeepSpeed's ZeRO-3 partition layout is not the one expected (flat ranges of ceil(n / N))")
            new._xiulian_flat = (min(a, new.ds_numel), min(a + part, new.ds_numel))
            for m, attr in self._ties.get((block_name, k), [(module, k)]):
                m._parameters[attr] = new
                out[f"{self._names[id(m)]}.{attr}".lstrip(".")] = new
        return out
