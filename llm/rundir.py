"""The run directory: where a run writes, which checkpoint resumes it, and the metrics rows a
resumed run redoes."""

from __future__ import annotations

import csv
import logging
import os
import re
from pathlib import Path

import torch

from llm.config import Config

log = logging.getLogger(__name__)

CKPT_RE = re.compile(r"step(\d+)\.ckpt$")
"""A checkpoint's name: ``step<global step, 7 digits>.ckpt`` (a file, or a directory of shards)."""


def resolve_run_dir(cfg: Config) -> Path:
    if cfg.run_dir:
        run_dir = Path(cfg.run_dir)
    else:
        from hydra.core.hydra_config import HydraConfig

        run_dir = Path(HydraConfig.get().runtime.output_dir)
    run_dir = run_dir.absolute()
    run_dir.mkdir(parents=True, exist_ok=True)
    return run_dir


def find_checkpoint(ckpt_path: str | None, run_dir: Path) -> str | None:
    """``last``: the checkpoint with the highest step in run_dir/checkpoints (none: start fresh).
    A checkpoint is a file (single, ddp) or a directory of shards (DeepSpeed, FSDP); ``.tmp``
    ones are unfinished writes and never taken."""
    if not ckpt_path:
        return None
    if ckpt_path != "last":
        if not Path(ckpt_path).exists():
            raise FileNotFoundError(f"ckpt_path={ckpt_path}: no such file or directory")
        return ckpt_path
    found = []
    for p in (run_dir / "checkpoints").glob("step*.ckpt"):
        m = CKPT_RE.search(p.name)
        if m:
            found.append((int(m.group(1)), p))
    if not found:
        log.info("ckpt_path=last: no checkpoint in %s, starting from scratch", run_dir / "checkpoints")
        return None
    return str(max(found)[1])


def trim_metrics(run_dir: Path, ckpt: str) -> None:
    """On resume, drop metrics.csv rows of steps the checkpoint does not contain (they were
    logged after it, before the crash, and are about to be redone)."""
    path = run_dir / "metrics.csv"
    if not path.is_file():
        return
    m = CKPT_RE.search(Path(ckpt).name)
    if m:  # the file name holds the step (also for directory checkpoints)
        step = int(m.group(1))
    elif Path(ckpt).is_file():
        step = torch.load(ckpt, map_location="cpu", weights_only=True, mmap=True).get("global_step", 0)
    else:
        return
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        fields, rows = reader.fieldnames or [], [r for r in reader if r.get("step") and int(r["step"]) < step]
    tmp = path.with_suffix(".csv.tmp")
    with open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    os.replace(tmp, path)
