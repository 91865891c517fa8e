"""Loading checkpoints without running code stored in them, for every strategy.

A pickle can name any importable callable and call it while it loads: a checkpoint file with a
``__reduce__`` payload runs that payload in the loading process. Lightning's single-file
checkpoints load with ``torch.load(weights_only=True)``; the sharded strategies' libraries do not:
DeepSpeed reads its shard files with ``torch.load(weights_only=False)`` and torch's distributed
checkpoint (FSDP) reads its ``.metadata`` with bare ``pickle.load`` and its non-tensor items with
``torch.load(weights_only=False)``. This module is the one place that closes those doors:

- :func:`torch_load`: ``torch.load(weights_only=True)`` with an allow-list (:data:`DEEPSPEED_GLOBALS`)
  of the plain data classes DeepSpeed stores (a loss scaler, a ZeRO stage enum, fragment
  addresses). Installed as the DeepSpeed engine's checkpoint reader.
- :class:`SafeFileSystemReader` and :class:`SafeLoadPlanner`: DCP's reader and planner with the
  ``.metadata`` read by :class:`RestrictedUnpickler` (DCP's own metadata classes, ``torch.Size``,
  dtypes, paths; nothing else) and byte items read with ``weights_only=True``.
- :func:`check_directory`: reads every file of a directory checkpoint the same way before the
  run starts, so a refused file is named at once and ``ckpt_path=last`` can fall back to the
  checkpoint before it.

A refusal raises :class:`UnsafeCheckpointError` naming the file and the object it would have
built; nothing from the file has been called by then. ``weights_only=false`` (the run's config)
turns all of this off for a checkpoint the user trusts, with a warning.
"""

from __future__ import annotations

import io
import logging
import os
import pickle
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger(__name__)


class UnsafeCheckpointError(pickle.UnpicklingError):
    """A checkpoint file holds an object outside the allow-list; it was not built."""


#: ``module.name`` of the classes DeepSpeed pickles into its shard files (its ZeRO optimizer
#: state: loss scalers, the ZeRO stage, the address of each parameter's fragment). Each is a plain
#: data holder: building one from a pickle sets attributes and runs no other code.
DEEPSPEED_GLOBALS = (
    "deepspeed.runtime.fp16.loss_scaler.LossScaler",
    "deepspeed.runtime.fp16.loss_scaler.DynamicLossScaler",
    "deepspeed.runtime.zero.config.ZeroStageEnum",
    "deepspeed.utils.tensor_fragment.fragment_address",
)

#: what a DCP ``.metadata`` pickle may name: DCP's own metadata records and what they hold.
DCP_METADATA_GLOBALS = frozenset(
    {
        *(
            ("torch.distributed.checkpoint.metadata", n)
            for n in (
                "Metadata",
                "MetadataIndex",
                "ChunkStorageMetadata",
                "TensorStorageMetadata",
                "BytesStorageMetadata",
                "TensorProperties",
                "StorageMeta",
                "_MEM_FORMAT_ENCODING",
            )
        ),
        ("torch.distributed.checkpoint.filesystem", "_StorageInfo"),
        ("torch.distributed.checkpoint._extension", "ExtensionTransformDescriptor"),
        ("torch", "Size"),
        ("torch.serialization", "_get_layout"),
        ("pathlib", "PosixPath"),
        ("pathlib", "PurePosixPath"),
        ("pathlib", "WindowsPath"),
        ("pathlib", "PureWindowsPath"),
        ("collections", "OrderedDict"),
        ("builtins", "set"),
        ("builtins", "frozenset"),
    }
)


def _import(qualname: str) -> Any:
    module, _, name = qualname.rpartition(".")
    mod = __import__(module, fromlist=[name])
    return getattr(mod, name)


def _deepspeed_globals() -> list[Any]:
    found = []
    for q in DEEPSPEED_GLOBALS:
        try:
            found.append(_import(q))
        except (ImportError, AttributeError):  # another DeepSpeed version: what it lacks it cannot have written
            continue
    return found


def _refusal(path: Any, err: BaseException) -> UnsafeCheckpointError:
    first = str(err).strip().splitlines()
    # torch's message names the global ("Unsupported global: GLOBAL posix.system ...") and then
    # advises weights_only=False: keep the name, drop the advice
    what = next((ln.strip() for ln in first if "GLOBAL" in ln or "Unsupported" in ln), first[0] if first else type(err).__name__)
    return UnsafeCheckpointError(
        f"{path}: refused to load: it holds an object outside the allow-list of plain data ({what}). Nothing in it was "
        "run. Checkpoints this framework writes hold only tensors, numbers, strings and containers (and DeepSpeed's own "
        "data records); if you wrote this file yourself and trust it, weights_only=false loads it unchecked"
    )


def torch_load(path: Any, map_location: Any = None, mmap: bool = False) -> Any:
    """``torch.load(path, weights_only=True)`` with DeepSpeed's data classes allowed; a refused
    object raises :class:`UnsafeCheckpointError` naming ``path``."""
    try:
        with torch.serialization.safe_globals(_deepspeed_globals()):
            return torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as e:
        raise _refusal(path, e) from None


class RestrictedUnpickler(pickle.Unpickler):
    """``pickle.Unpickler`` that resolves only the names in ``allowed`` (plus any ``torch.<dtype>``);
    any other name raises :class:`UnsafeCheckpointError` before it is imported, let alone called."""

    def __init__(self, file: Any, allowed: frozenset[tuple[str, str]], source: Any) -> None:
        super().__init__(file)
        self.allowed, self.source = allowed, source

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in self.allowed:
            return super().find_class(module, name)
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)
        raise UnsafeCheckpointError(
            f"{self.source}: refused to load: it names {module}.{name}, which is not one of the distributed-checkpoint "
            "records a .metadata file holds. Nothing in it was run; if you trust this checkpoint, weights_only=false loads it unchecked"
        )


def load_dcp_metadata(path: Path) -> Any:
    """The ``Metadata`` of a DCP checkpoint's ``.metadata`` file, through :class:`RestrictedUnpickler`."""
    with open(path, "rb") as f:
        return RestrictedUnpickler(f, DCP_METADATA_GLOBALS, path).load()


def _dcp_classes() -> tuple[type, type]:
    from torch.distributed.checkpoint import DefaultLoadPlanner, FileSystemReader
    from torch.distributed.checkpoint._traverse import set_element

    class SafeFileSystemReader(FileSystemReader):
        """DCP's file reader with the ``.metadata`` read by :class:`RestrictedUnpickler`
        (tensors it already reads with ``weights_only=True``)."""

        def read_metadata(self, *args: Any, **kwargs: Any) -> Any:
            from torch.distributed.checkpoint.metadata import StorageMeta

            try:
                metadata = load_dcp_metadata(Path(self._get_metadata_path(kwargs.get("rank"))))
            except UnsafeCheckpointError as e:
                self.refused = e  # DCP folds this into a message of its own; dcp_load raises it as it is
                raise
            if getattr(metadata, "storage_meta", None) is None:
                metadata.storage_meta = StorageMeta()
            metadata.storage_meta.load_id = self.load_id
            return metadata

    class SafeLoadPlanner(DefaultLoadPlanner):
        """DCP's default planner with non-tensor items (optimizer hyper-parameters, step counts)
        read with ``weights_only=True``."""

        def load_bytes(self, read_item: Any, value: io.BytesIO) -> None:
            try:
                obj = torch.load(value, weights_only=True)
            except pickle.UnpicklingError as e:
                raise _refusal(f"{getattr(self, '_xiulian_path', 'checkpoint')}: item {read_item.dest_index.fqn}", e) from None
            # DefaultLoadPlanner.load_bytes, on the safely loaded object
            if self.flatten_state_dict:
                set_element(self.original_state_dict, self.mappings[read_item.dest_index.fqn], obj)
            else:
                self.state_dict[read_item.dest_index.fqn] = obj

    return SafeFileSystemReader, SafeLoadPlanner


def dcp_load(state: dict[str, Any], path: Any) -> None:
    """``torch.distributed.checkpoint.load`` of ``state`` from the directory ``path`` through the
    safe reader and planner; a drop-in for Lightning's ``_distributed_checkpoint_load``."""
    from torch.distributed.checkpoint import load

    reader_cls, planner_cls = _dcp_classes()
    planner = planner_cls()
    planner._xiulian_path = path
    from torch.distributed.checkpoint.api import CheckpointException

    reader = reader_cls(path)
    try:
        load(state, storage_reader=reader, planner=planner)
    except CheckpointException as e:  # DCP gathers each rank's error into one; a refusal is the one to show
        refused = [exc for exc, _ in e.failures.values() if isinstance(exc, UnsafeCheckpointError)]
        refused += [reader.refused] if getattr(reader, "refused", None) else []
        if refused:
            raise refused[0] from None
        raise


# ------------------------------------------------------------------------- checking a directory
def check_directory(path: Path) -> None:
    """Read every file of a directory checkpoint the way resume will (DeepSpeed's ``*.pt`` with
    :func:`torch_load`, DCP's ``.metadata`` with :class:`RestrictedUnpickler` and its byte items
    and Lightning's ``meta.pt`` with ``weights_only=True``) without keeping the tensors: raises
    :class:`UnsafeCheckpointError` naming the first file that holds anything else, and any other
    error for a file that cannot be read at all."""
    path = Path(path)
    latest = path / "latest"  # DeepSpeed reads the tag named here and loads <dir>/<tag>/*.pt
    if latest.is_file():
        tag = latest.read_text(errors="replace").strip()
        if not tag or not (path / tag).resolve().is_relative_to(path.resolve()) or not (path / tag).is_dir():
            raise UnsafeCheckpointError(f"{latest}: names the tag {tag!r}, which is not a directory inside {path}; refused")
    for f in sorted(path.rglob("*.pt")):
        torch_load(f, map_location="cpu", mmap=_is_zip(f))
    meta = path / ".metadata"
    if meta.is_file():
        md = load_dcp_metadata(meta)
        _check_dcp_bytes(path, md)


def _is_zip(f: Path) -> bool:
    with open(f, "rb") as fh:
        return fh.read(4) == b"PK\x03\x04"


def _check_dcp_bytes(path: Path, md: Any) -> None:
    from torch.distributed.checkpoint.metadata import BytesStorageMetadata, MetadataIndex

    for fqn, item in md.state_dict_metadata.items():
        if not isinstance(item, BytesStorageMetadata):
            continue
        info = md.storage_data.get(MetadataIndex(fqn))
        if info is None:
            raise ValueError(f"{path / '.metadata'}: item {fqn} has no storage record")
        if getattr(info, "transform_descriptors", None):
            raise UnsafeCheckpointError(f"{path}: item {fqn} is stored transformed ({info.transform_descriptors}); not read unchecked")
        with open(path / info.relative_path, "rb") as fh:
            fh.seek(info.offset)
            raw = fh.read(info.length)
        try:
            torch.load(io.BytesIO(raw), weights_only=True)
        except pickle.UnpicklingError as e:
            raise _refusal(f"{path / info.relative_path}: item {fqn}", e) from None


def trusted_warning(path: Any) -> None:
    log.warning(
        "weights_only=false: %s is loaded without the allow-list; a pickled payload in it would run. "
        "Use this only for a checkpoint you wrote yourself",
        os.fspath(path),
    )
