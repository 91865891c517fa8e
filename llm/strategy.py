"""Strategy construction: the one place that knows about devices, processes and sharding.

Stages and models never ask whether they run on one CPU or 512 GPUs.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
from lightning.pytorch.strategies import DDPStrategy, SingleDeviceStrategy

from llm.config import StrategyConfig, TrainerConfig


@dataclass
class Placement:
    accelerator: str
    devices: Any
    num_nodes: int
    strategy: Any
    precision: str


def launched_by_torchrun() -> bool:
    return "TORCHELASTIC_RUN_ID" in os.environ or ("LOCAL_WORLD_SIZE" in os.environ and "RANK" in os.environ)


def resolve_precision(precision: str, accelerator: str) -> str:
    if precision == "auto":
        if accelerator == "gpu" and torch.cuda.is_available() and torch.cuda.is_bf16_supported():
            return "bf16-mixed"
        return "32-true"
    if precision in ("16-mixed", "16", "16-true"):
        raise ValueError(
            f"trainer.precision={precision}: fp16 needs loss scaling, which this framework does not do; "
            "use bf16-mixed (GPUs since Ampere) or 32-true"
        )
    return precision


def build_placement(cfg: StrategyConfig, trainer_cfg: TrainerConfig) -> Placement:
    accelerator = cfg.accelerator
    if accelerator == "auto":
        accelerator = "gpu" if torch.cuda.is_available() else "cpu"
    precision = resolve_precision(trainer_cfg.precision, accelerator)
    devices, num_nodes = cfg.devices, cfg.num_nodes
    if launched_by_torchrun():
        # the world is given by the launcher: one process per device
        local = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
        world = int(os.environ.get("WORLD_SIZE", "1"))
        devices, num_nodes = local, max(1, world // local)

    if cfg.name in ("single", "auto"):
        if launched_by_torchrun() and int(os.environ.get("WORLD_SIZE", "1")) > 1:
            raise ValueError("strategy=single cannot run under torchrun with several processes: use strategy=ddp")
        if accelerator == "gpu":
            device = torch.device("cuda", torch.cuda.current_device())
        else:
            device = torch.device("cpu")
        return Placement(accelerator, 1, 1, SingleDeviceStrategy(device=device), precision)

    if cfg.name == "ddp":
        if devices == "auto":
            devices = torch.cuda.device_count() if accelerator == "gpu" else 2
        backend = cfg.process_group_backend or ("nccl" if accelerator == "gpu" else "gloo")
        from datetime import timedelta

        extra = {"timeout": timedelta(minutes=cfg.timeout_minutes)} if cfg.timeout_minutes else {}
        strategy = DDPStrategy(
            process_group_backend=backend,
            find_unused_parameters=cfg.find_unused_parameters,
            gradient_as_bucket_view=True,
            **extra,
        )
        return Placement(accelerator, devices, num_nodes, strategy, precision)

    raise ValueError(f"strategy.name={cfg.name!r}: unknown (choose single or ddp)")


def atomic_checkpoint_io() -> Any:
    """Lightning's CheckpointIO writing each checkpoint to ``<name>.tmp`` in the same directory,
    fsyncing it, renaming it into place and fsyncing the directory: a crash, a kill or a full
    disk mid-write leaves the previous checkpoints as they were and never a truncated ``.ckpt``,
    also after a node loses power (Lightning's save goes through fsspec, which renames a temp
    file into place but never fsyncs, so the new name can reach the disk before the data)."""
    from lightning.pytorch.plugins.io import TorchCheckpointIO

    class AtomicCheckpointIO(TorchCheckpointIO):
        def save_checkpoint(self, checkpoint: dict, path: Any, storage_options: Any = None) -> None:
            if storage_options is not None:
                raise TypeError("AtomicCheckpointIO: storage_options are not supported")
            path = os.fspath(path)
            os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
            tmp = path + ".tmp"
            try:
                with open(tmp, "wb") as f:
                    torch.save(checkpoint, f)
                    f.flush()
                    os.fsync(f.fileno())
                os.replace(tmp, path)
            except BaseException:
                try:
                    os.remove(tmp)
                except OSError:
                    pass
                raise
            try:  # the rename itself reaches the disk
                fd = os.open(os.path.dirname(path) or ".", os.O_RDONLY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
            except OSError:
                pass

    return AtomicCheckpointIO()
