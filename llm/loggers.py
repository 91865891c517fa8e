"""The run's loggers (metrics.csv, W&B) and the Lightning messages that do not apply here."""

from __future__ import annotations

import csv
import hashlib
import logging
import os
import warnings
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from llm.config import Config


def wandb_mode(mode: str) -> str:
    if mode != "auto":
        return mode
    if os.environ.get("WANDB_MODE"):
        return os.environ["WANDB_MODE"]
    if os.environ.get("WANDB_API_KEY"):
        return "online"
    netrc = Path(os.environ.get("NETRC", Path.home() / ".netrc"))
    if netrc.is_file() and "api.wandb.ai" in netrc.read_text(errors="ignore"):
        return "online"
    return "offline"


def _resumable_csv_logger(run_dir: Path) -> Any:
    """Lightning's CSVLogger deletes an existing metrics.csv when it starts; a resumed run must
    append to it instead (rows of redone steps were trimmed by ``trim_metrics``)."""
    from lightning.pytorch.loggers import CSVLogger
    from lightning.pytorch.utilities.rank_zero import rank_zero_only

    class ResumableCSVLogger(CSVLogger):
        @property
        def experiment(self) -> Any:
            if self._experiment is not None or rank_zero_only.rank != 0:
                return super().experiment
            path = Path(self.log_dir) / "metrics.csv"
            keep = path.with_name("metrics.csv.keep")
            if path.is_file():
                os.replace(path, keep)
            exp = super().experiment
            if keep.is_file():
                os.replace(keep, path)
                with open(path, newline="") as f:
                    exp.metrics_keys = sorted(next(csv.reader(f), []))
            return exp

    return ResumableCSVLogger(save_dir=str(run_dir), name="", version="")


def build_loggers(cfg: Config, run_dir: Path) -> list:
    loggers: list = [_resumable_csv_logger(run_dir)]
    if cfg.logger.wandb:
        from lightning.pytorch.loggers import WandbLogger

        mode = wandb_mode(cfg.logger.mode)
        os.environ.setdefault("WANDB_INIT_TIMEOUT", "60")
        loggers.append(
            WandbLogger(
                project=cfg.logger.project,
                entity=cfg.logger.entity,
                save_dir=str(run_dir),
                name=f"{cfg.stage.name}-{run_dir.name}",
                id=(run_dir.name + "-" + hashlib.sha1(str(run_dir).encode()).hexdigest()[:8]).replace("/", "_"),
                resume="allow",
                mode=mode,
                tags=list(cfg.logger.tags),
                config=OmegaConf.to_container(cfg, resolve=True, enum_to_str=True),
            )
        )
    return loggers


class _DropAdverts(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "litlogger" not in str(record.msg)


def quiet_lightning() -> None:
    """Silence advice that does not apply to this framework (it would hide real warnings)."""
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.pytorch"):
        logging.getLogger(name).addFilter(_DropAdverts())
    for msg in (
        ".*does not have many workers.*",
        ".*Using ModelCheckpoint with manual optimization.*",  # we checkpoint after the step, by design
        ".*Experiment logs directory .* exists and is not empty.*",  # resume appends to metrics.csv
        ".*`IterableDataset` has `__len__` defined.*",  # ours is exact per rank and worker
        ".*isinstance\\(treespec, LeafSpec\\)` is deprecated.*",
        ".*When saving the DeepSpeed Stage 3 checkpoint.*",  # the export is consolidated for the user
        ".*torch.distributed.(all_gather_into_tensor|reduce_scatter_tensor)` is deprecated.*",  # inside DeepSpeed
    ):
        warnings.filterwarnings("ignore", message=msg)
